"""Unpacking a base backup's tar stream into a data directory while it is being fetched.

:func:`restore.fetch.fetch_object` pushes plaintext into a *sink* with
``write(bytes)``. :class:`TarExtractSink` parses the ustar stream that
``pg_basebackup -Ft`` writes as the bytes arrive and writes each member's data
straight to its file, so the backup is never stored twice and no extra copy
or thread sits between decompression and the disk.

Only what ``pg_basebackup`` produces for the default tablespace is accepted:
regular files and directories with relative names of at most 255 bytes (ustar
name plus prefix). Symbolic links (tablespaces), device files, absolute
names and ``..`` are rejected with IntegrityError. If a region's copy fails
half way, :meth:`TarExtractSink.abort` empties the directory so the next
region starts clean.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from resguardo.errors import IntegrityError, ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("restore.pitr_tar")

BLOCK = 512
REGULAR_TYPES = (b"0", b"\0")
DIRECTORY_TYPE = b"5"


def _number(field: bytes) -> int:
    """Decode a tar numeric field: octal text, or base-256 when the high bit is set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


class TarExtractSink:
    """A fetch sink that unpacks a tar stream under ``target``; ``close()`` returns the member count."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.target.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.members = 0
        self.bytes = 0
        self._header = bytearray()
        self._remaining = 0
        self._padding = 0
        self._file: int | None = None
        self._zero_blocks = 0
        self._complete = False

    # -- sink interface ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        view = memoryview(data)
        while view:
            if self._remaining:
                take = min(self._remaining, len(view))
                if self._file is not None:
                    self._write_all(view[:take])
                self._remaining -= take
                view = view[take:]
                if not self._remaining:
                    self._close_file()
                continue
            if self._padding:
                take = min(self._padding, len(view))
                self._padding -= take
                view = view[take:]
                continue
            if self._complete:
                # Anything after the end-of-archive blocks is tar's record padding.
                return
            take = min(BLOCK - len(self._header), len(view))
            self._header += view[:take]
            view = view[take:]
            if len(self._header) == BLOCK:
                try:
                    self._member(bytes(self._header))
                except OSError as error:
                    raise self._write_error(error) from None
                self._header.clear()

    def close(self) -> int:
        self._close_file()
        if not self._complete or self._remaining:
            raise IntegrityError(
                _("the base backup's tar stream ended before its end-of-archive blocks"),
                _("the copy is truncated; a damaged copy is skipped and another region is tried"),
            )
        log.info("pitr_tar.extracted", extra={"target": str(self.target), "members": self.members, "bytes": self.bytes})
        return self.members

    def abort(self) -> None:
        self._close_file()
        empty_directory(self.target)

    # -- parsing -------------------------------------------------------------------

    def _member(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self._zero_blocks += 1
            self._complete = self._zero_blocks >= 2
            return
        self._zero_blocks = 0
        name = block[0:100].split(b"\0", 1)[0]
        if block[257:262] == b"ustar":
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        path = self._safe_path(name.decode("utf-8", "replace"))
        mode = _number(block[100:108]) & 0o700
        size = _number(block[124:136])
        kind = block[156:157]
        self.members += 1
        if kind == DIRECTORY_TYPE:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            return
        if kind not in REGULAR_TYPES:
            raise IntegrityError(
                _("the base backup contains {name} of tar type {kind!r}, which a restore does not create").format(
                    name=name.decode("utf-8", "replace"), kind=kind.decode("ascii", "replace")),
                _("only the default tablespace is supported; symbolic links and devices are rejected"),
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode or 0o600)
        self._remaining = size
        self._padding = (-size) % BLOCK
        if size == 0:
            self._close_file()

    def _safe_path(self, name: str) -> Path:
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if not parts or name.startswith("/") or ".." in parts:
            raise IntegrityError(
                _("the base backup contains an unsafe member name {name!r}").format(name=name),
                _("the archive was not written by pg_basebackup; do not restore it"),
            )
        return self.target.joinpath(*parts)

    def _write_all(self, data: memoryview) -> None:
        try:
            while data:
                written = os.write(self._file, data)
                data = data[written:]
        except OSError as error:
            raise self._write_error(error) from None

    def _write_error(self, error: OSError) -> ResguardoError:
        # Not an IntegrityError: another region's copy would fail the same way.
        return ResguardoError(
            _("writing the restored files under {target} failed: {error}").format(
                target=self.target, error=error.strerror or error),
            _("check free space and permissions of the target directory"),
        )

    def _close_file(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None


def empty_directory(directory: Path) -> None:
    """Delete everything inside ``directory`` but keep the directory itself."""
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
