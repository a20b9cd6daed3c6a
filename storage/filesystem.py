"""Filesystem region: objects are regular files under a root directory.

An upload writes to a hidden temporary file next to its final name,
``.<name>.partial-<random>``. On commit it fsyncs the file, checks size and
SHA-256, renames it over the final name and fsyncs the directories up to the
root. A crash therefore leaves either the old state or the complete object. Listing never shows names
that start with ``.``, so temporary files stay invisible; keys whose segments
start with ``.`` are rejected for the same reason.

The root must already exist: a missing root usually means an unmounted
volume, and creating it would silently write the backup to the local disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat as stat_module
import time
from pathlib import Path
from typing import BinaryIO, Iterator

from resguardo.i18n import _
from resguardo.log import get_logger
from storage.base import (
    AlreadyExists,
    ObjectInfo,
    ObjectNotFound,
    Region,
    RegionError,
    Upload,
    local_mismatch_error,
    validate_key,
    validate_prefix,
)

logger = get_logger("storage.filesystem")

PARTIAL_MARKER = ".partial-"

# errno values after which the same operation may succeed later (NFS and
# other network filesystems report timeouts and stale handles this way).
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE, errno.EBUSY}


class FilesystemDriver(Region):
    """A region stored as files under ``root``; see the module docstring for the layout."""

    kind = "filesystem"

    def __init__(self, name: str, root: Path | str, *, location: str = "local"):
        self.name = name
        self.location = location
        self.root = Path(os.path.abspath(root))
        if not self.root.is_dir():
            raise RegionError(
                _("region {region!r}: directory {path} does not exist or is not a directory").format(
                    region=name, path=self.root
                ),
                _("create the directory or mount the volume, or fix regions.{region}.path in the config").format(
                    region=name
                ),
                region=name,
            )

    def __repr__(self) -> str:
        return f"FilesystemDriver(name={self.name!r}, root={str(self.root)!r})"

    # -- paths -----------------------------------------------------------

    def path_of(self, key: str) -> Path:
        """Return the file path of ``key``; raise RegionError for keys that could escape the root."""
        validate_key(self.name, key)
        parts = key.split("/")
        if any(part.startswith(".") for part in parts):
            raise RegionError(
                _("invalid object key {key!r} for region {region!r}: a path segment starts with '.'").format(
                    key=key, region=self.name
                ),
                _("names starting with '.' are reserved for temporary upload files; rename the key"),
                region=self.name,
                key=key,
            )
        return self.root.joinpath(*parts)

    def _error(self, error: OSError, key: str | None, operation: str) -> RegionError:
        transient = error.errno in _TRANSIENT_ERRNOS
        if error.errno == errno.ENOSPC:
            hint = _("the filesystem under {root} is full; free space or move the region").format(root=self.root)
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = _("the process cannot write under {root}; check its owner, permissions and mount options").format(
                root=self.root
            )
        elif transient:
            hint = _("the error is temporary; retry, and check the mount if it persists")
        else:
            hint = _("check the disk and the mount of {root}").format(root=self.root)
        return RegionError(
            _("system call {operation}() failed on region {region!r}, key {key!r}: {reason}").format(
                operation=operation, region=self.name, key=key or "", reason=error.strerror or str(error)
            ),
            hint,
            region=self.name,
            key=key,
            transient=transient,
        )

    # -- Region interface -------------------------------------------------

    def begin_upload(self, key: str) -> Upload:
        path = self.path_of(key)
        try:
            return _FilesystemUpload(self, key, path)
        except OSError as error:
            raise self._error(error, key, "open") from error

    def open_read(self, key: str) -> BinaryIO:
        path = self.path_of(key)
        try:
            handle = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(self.name, key) from None
        except OSError as error:
            raise self._error(error, key, "open") from error
        if not stat_module.S_ISREG(os.fstat(handle.fileno()).st_mode):
            handle.close()
            raise ObjectNotFound(self.name, key)
        return handle

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        try:
            result = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise self._error(error, key, "stat") from error
        if not stat_module.S_ISREG(result.st_mode):
            return None
        # The SHA-256 is not stored beside the file and hashing it here would
        # read the whole object, so stat leaves it out.
        return ObjectInfo(region=self.name, key=key, size=result.st_size)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        validate_prefix(self.name, prefix)
        complete_parts = prefix.split("/")[:-1]
        if any(part.startswith(".") for part in complete_parts):
            return
        start = self.root.joinpath(*complete_parts)
        start_key = "".join(part + "/" for part in complete_parts)
        yield from self._walk(start, start_key, prefix)

    def _walk(self, directory: Path, directory_key: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as scan:
                entries = list(scan)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as error:
            raise self._error(error, directory_key, "scandir") from error

        # Sorting directories as "name/" puts "a.txt" (0x2E) before "a/..." (0x2F),
        # which is the byte order of the full keys.
        listed: list[tuple[bytes, str, bool]] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if not (is_dir or is_file):
                continue
            key = directory_key + entry.name
            sort_name = key + "/" if is_dir else key
            if is_dir and not ((key + "/").startswith(prefix) or prefix.startswith(key + "/")):
                continue
            if is_file and not key.startswith(prefix):
                continue
            listed.append((sort_name.encode("utf-8", "surrogateescape"), key, is_dir))
        listed.sort()

        for _sort_key, key, is_dir in listed:
            path = directory / key.rsplit("/", 1)[-1]
            if is_dir:
                yield from self._walk(path, key + "/", prefix)
                continue
            try:
                size = os.stat(path, follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # deleted while listing
            yield ObjectInfo(region=self.name, key=key, size=size)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo:
        path = self.path_of(key)
        digest = hashlib.sha256(data).hexdigest()
        upload = self.begin_upload(key)
        assert isinstance(upload, _FilesystemUpload)
        try:
            upload.write(data)
            if not if_absent:
                return upload.commit(len(data), digest)
            upload.flush_to_disk(len(data), digest)
            try:
                # link() fails with EEXIST instead of replacing, unlike rename().
                os.link(upload.temp_path, path)
            except FileExistsError:
                raise AlreadyExists(self.name, key) from None
            except OSError as error:
                raise self._error(error, key, "link") from error
            try:
                fsync_directories(path.parent, self.root)
            except OSError as error:
                raise self._error(error, key, "fsync") from error
            return ObjectInfo(region=self.name, key=key, size=len(data), sha256=digest)
        finally:
            upload.abort()

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # a directory is not an object
        except OSError as error:
            raise self._error(error, key, "unlink") from error
        try:
            fsync_directories(path.parent, path.parent)
        except OSError as error:
            raise self._error(error, key, "fsync") from error

    # -- maintenance ------------------------------------------------------

    def cleanup_incomplete(self, older_than_seconds: float) -> int:
        return self.remove_stale_partials(older_than_seconds)

    def remove_stale_partials(self, older_than_seconds: float) -> int:
        """Delete temporary upload files not modified for ``older_than_seconds``; return how many.

        A producer killed with SIGKILL or a power loss leaves its temporary
        file behind. Choose an age longer than the slowest upload.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        for directory, _dirnames, filenames in os.walk(self.root):
            for filename in filenames:
                if not (filename.startswith(".") and PARTIAL_MARKER in filename):
                    continue
                path = os.path.join(directory, filename)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                        logger.info("storage.filesystem.partial_removed", extra={"region": self.name, "path": path})
                except FileNotFoundError:
                    continue
        return removed


def fsync_directories(directory: Path, root: Path) -> None:
    """Fsync ``directory`` and each parent up to and including ``root``.

    New directory entries (the renamed file and any directories created for
    it) are durable only once their parent directory is fsynced.
    """
    current = directory
    while True:
        descriptor = os.open(current, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if current == root or current.parent == current or root not in current.parents:
            return
        current = current.parent


class _FilesystemUpload(Upload):
    """A temporary file that becomes the object on commit."""

    def __init__(self, driver: FilesystemDriver, key: str, path: Path):
        self._driver = driver
        self._key = key
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.temp_path = path.parent / f".{path.name}{PARTIAL_MARKER}{secrets.token_hex(6)}"
        self._descriptor: int | None = os.open(
            self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666
        )
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._state = "open"

    def write(self, data: bytes) -> None:
        if self._state != "open":
            raise RuntimeError(f"write() on a {self._state} upload of {self._key!r}")
        assert self._descriptor is not None
        view = memoryview(data).cast("B")
        try:
            while view:
                written = os.write(self._descriptor, view)
                view = view[written:]
        except OSError as error:
            self.abort()
            raise self._driver._error(error, self._key, "write") from error
        self._sha256.update(data)
        self._size += len(data)

    def flush_to_disk(self, expected_size: int, expected_sha256: str) -> None:
        """Fsync and close the temporary file, then check it against the expected size and SHA-256.

        Aborts the upload and raises RegionError on a mismatch or an I/O error.
        """
        if self._state != "open":
            raise RuntimeError(f"commit() on a {self._state} upload of {self._key!r}")
        assert self._descriptor is not None
        try:
            os.fsync(self._descriptor)
            on_disk_size = os.fstat(self._descriptor).st_size
            os.close(self._descriptor)
            self._descriptor = None
        except OSError as error:
            self.abort()
            raise self._driver._error(error, self._key, "fsync") from error
        actual_sha256 = self._sha256.hexdigest()
        if self._size != expected_size or actual_sha256 != expected_sha256 or on_disk_size != self._size:
            self.abort()
            raise local_mismatch_error(
                self._driver.name,
                self._key,
                expected_size=expected_size,
                expected_sha256=expected_sha256,
                actual_size=on_disk_size,
                actual_sha256=actual_sha256,
            )
        self._state = "flushed"

    def commit(self, expected_size: int, expected_sha256: str) -> ObjectInfo:
        # NOTE: the SHA-256 checked is that of the bytes passed to write(), not a
        # read-back: right after writing, a read-back comes from the page cache
        # and would not prove what reached the disk.
        self.flush_to_disk(expected_size, expected_sha256)
        try:
            os.rename(self.temp_path, self._path)
            fsync_directories(self._path.parent, self._driver.root)
        except OSError as error:
            self.abort()
            raise self._driver._error(error, self._key, "rename") from error
        self._state = "committed"
        logger.info(
            "storage.upload.commit",
            extra={"region": self._driver.name, "key": self._key, "size": self._size},
        )
        return ObjectInfo(region=self._driver.name, key=self._key, size=self._size, sha256=expected_sha256)

    def abort(self) -> None:
        """Close and delete the temporary file; after a commit this does nothing."""
        if self._state in ("committed", "aborted"):
            return
        was_open = self._state == "open"
        self._state = "aborted"
        if self._descriptor is not None:
            try:
                os.close(self._descriptor)
            except OSError:
                pass
            self._descriptor = None
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass
        except OSError as error:
            logger.error(
                "storage.upload.abort_failed",
                extra={"region": self._driver.name, "key": self._key, "path": str(self.temp_path), "error": str(error)},
            )
            return
        if was_open:
            logger.info("storage.upload.abort", extra={"region": self._driver.name, "key": self._key})
