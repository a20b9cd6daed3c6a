"""The interface every storage driver implements.

Drivers raise :class:`ObjectNotFound` (a :class:`resguardo.errors.NotFoundError`)
for a missing object and :class:`RegionError` (a
:class:`resguardo.errors.StorageError`) for anything else the region did wrong
(unreachable, denied, server error, checksum mismatch). Both carry a Spanish
message by default and a hint. ``RegionError.transient`` is true when a retry
may help; :func:`is_transient` also accepts other exceptions.

Object keys follow the rules of :func:`validate_key` in every driver, so one
key is valid in every region of a fan-out.
"""

from __future__ import annotations

import abc
import io
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from resguardo.errors import NotFoundError, StorageError
from resguardo.i18n import _


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one stored object."""

    region: str
    key: str
    size: int
    sha256: str | None = None


class Upload(abc.ABC):
    """A streaming write of one object that is invisible until committed."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Append ``data``; may block while earlier parts are sent."""

    @abc.abstractmethod
    def commit(self, expected_size: int, expected_sha256: str) -> ObjectInfo:
        """Finish the object and make it visible under its key.

        Raises StorageError, after aborting, when the region reports a size or
        checksum different from ``expected_size``/``expected_sha256``.
        """

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written; safe to call twice or after a failure."""


class Region(abc.ABC):
    """One storage location."""

    name: str
    kind: str
    #: Site, cloud region or zone of the data, shown in evidence records.
    location: str

    @abc.abstractmethod
    def begin_upload(self, key: str) -> Upload:
        """Start a streaming upload to ``key``."""

    @abc.abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` for streaming reads (a file-like object with ``read(n)``)."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Return the object's metadata, or None when it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield the committed objects under ``prefix`` in ascending byte order of key."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo:
        """Store a small object in one request.

        With ``if_absent`` the write fails with ``storage.base.AlreadyExists``
        when the key exists, so two writers never replace each other's object.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    def cleanup_incomplete(self, older_than_seconds: float) -> int:
        """Remove uploads left unfinished for ``older_than_seconds`` (a killed producer); return how many.

        Committed objects are never touched. Drivers that cannot list
        unfinished uploads return 0.
        """
        return 0

    def get_bytes(self, key: str) -> bytes:
        """Read a small object whole."""
        with self.open_read(key) as handle:
            return handle.read()


class AlreadyExists(Exception):
    """``put_bytes(..., if_absent=True)`` found the key taken."""

    def __init__(self, region: str, key: str):
        super().__init__(f"{region}:{key}")
        self.region = region
        self.key = key


class RegionError(StorageError):
    """A storage operation failed on one region, optionally on one object key."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        region: str,
        key: str | None = None,
        transient: bool = False,
    ):
        super().__init__(message, hint)
        self.region = region
        self.key = key
        self.transient = transient


class ObjectNotFound(NotFoundError):
    """The region has no object under the key."""

    def __init__(self, region: str, key: str):
        super().__init__(
            _("region {region!r} has no object {key!r}").format(region=region, key=key),
            _("check the key, or read the copy in another region of the backup"),
        )
        self.region = region
        self.key = key


def is_transient(error: BaseException) -> bool:
    """Return whether retrying the failed operation may succeed."""
    return bool(getattr(error, "transient", False))


# S3 and GCS both limit object names to 1024 bytes of UTF-8.
MAX_KEY_BYTES = 1024


def _key_problem(key: str, *, is_prefix: bool) -> str | None:
    if not isinstance(key, str):
        return _("the key is not a string")
    if not key and not is_prefix:
        return _("the key is empty")
    if key.startswith("/"):
        return _("the key starts with '/'; keys are relative to the region")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        return _("the key contains a control character")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return _("the key is not valid Unicode text")
    if len(encoded) > MAX_KEY_BYTES:
        return _("the key is longer than {limit} bytes in UTF-8").format(limit=MAX_KEY_BYTES)
    parts = key.split("/")
    if is_prefix:
        # The last part of a prefix may be empty ("db/") or partial ("db/20261").
        parts = parts[:-1]
    elif key.endswith("/"):
        return _("the key ends with '/'")
    if any(part == "" for part in parts):
        return _("the key contains an empty path segment ('//')")
    if any(part in (".", "..") for part in parts):
        return _("the key contains a '.' or '..' path segment")
    return None


def validate_key(region: str, key: str) -> str:
    """Return ``key`` unchanged, or raise RegionError when it is not a valid object key.

    A valid key is non-empty UTF-8 text of at most 1024 bytes, ``/``-separated,
    with no leading or trailing ``/``, no empty, ``.`` or ``..`` segment and no
    control character.
    """
    problem = _key_problem(key, is_prefix=False)
    if problem is not None:
        raise RegionError(
            _("invalid object key {key!r} for region {region!r}: {problem}").format(
                key=key, region=region, problem=problem
            ),
            _("use a relative '/'-separated key such as 'clientes/logical/20261204T201500Z-3f9a/dump.enc'"),
            region=region,
            key=str(key),
        )
    return key


def validate_prefix(region: str, prefix: str) -> str:
    """Return ``prefix`` unchanged, or raise RegionError when no valid key could start with it."""
    problem = _key_problem(prefix, is_prefix=True)
    if problem is not None:
        raise RegionError(
            _("invalid listing prefix {prefix!r} for region {region!r}: {problem}").format(
                prefix=prefix, region=region, problem=problem
            ),
            _("use '' or a relative prefix such as 'clientes/logical/'"),
            region=region,
            key=str(prefix),
        )
    return prefix


def ensure_ascending(region: str, items: Iterator[ObjectInfo]) -> Iterator[ObjectInfo]:
    """Yield ``items`` unchanged, raising RegionError if a key sorts below the one before it.

    The interface promises listings in byte order of the UTF-8 key, and the
    cloud drivers pass on the server's order instead of buffering the listing
    to sort it, so this check turns a server with another order into an error.
    """
    previous: bytes | None = None
    for item in items:
        current = item.key.encode("utf-8", "surrogateescape")
        if previous is not None and current < previous:
            raise RegionError(
                _("region {region!r} listed key {key!r} after a key that sorts above it").format(
                    region=region, key=item.key
                ),
                _("the storage server does not list keys in byte order; use another S3-compatible server"),
                region=region,
                key=item.key,
            )
        previous = current
        yield item


def join_prefix(region_prefix: str, key: str) -> str:
    """Return the provider-side object name of ``key`` under a region's configured prefix."""
    region_prefix = region_prefix.strip("/")
    return f"{region_prefix}/{key}" if region_prefix else key


def local_mismatch_error(
    region: str, key: str, *, expected_size: int, expected_sha256: str, actual_size: int, actual_sha256: str
) -> RegionError:
    """Build the error for bytes written that differ from what the caller expected to commit."""
    return RegionError(
        _(
            "upload of {key!r} to region {region!r} was not committed: {actual_size} bytes with SHA-256 "
            "{actual_sha256} were written, but {expected_size} bytes with SHA-256 {expected_sha256} were expected"
        ).format(
            key=key,
            region=region,
            actual_size=actual_size,
            actual_sha256=actual_sha256,
            expected_size=expected_size,
            expected_sha256=expected_sha256,
        ),
        _("the producer lost or changed data before it reached the driver; run the backup again"),
        region=region,
        key=key,
    )


def remote_mismatch_error(region: str, key: str, *, detail: str) -> RegionError:
    """Build the error for an object whose size or checksum, as reported by the region, is wrong.

    The object has been deleted (or was never made visible) when this is raised.
    Retrying may help because the usual cause is corruption in transit.
    """
    return RegionError(
        _("region {region!r} stored {key!r} with a different size or checksum than was sent ({detail}); "
          "the object was removed").format(region=region, key=key, detail=detail),
        _("retry the upload; if it fails again, check the network path and the storage provider's status"),
        region=region,
        key=key,
        transient=True,
    )


class ErrorMappingReader(io.RawIOBase):
    """A raw binary reader that turns a driver's read errors into RegionError.

    ``read_chunk(n)`` returns up to ``n`` bytes and ``b""`` at the end.
    ``map_error(exception)`` returns the exception to raise in its place.
    Wrap it in :class:`io.BufferedReader` for ``read(n)`` with few requests.
    """

    def __init__(
        self,
        read_chunk: Callable[[int], bytes],
        map_error: Callable[[Exception], BaseException],
        close_source: Callable[[], None] | None = None,
    ):
        super().__init__()
        self._read_chunk = read_chunk
        self._map_error = map_error
        self._close_source = close_source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        try:
            data = self._read_chunk(len(view))
        except Exception as error:  # noqa: BLE001 - every driver error is mapped, then raised
            raise self._map_error(error) from error
        if len(data) > len(view):
            raise ValueError(f"read_chunk returned {len(data)} bytes for a {len(view)}-byte request")
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed and self._close_source is not None:
            try:
                self._close_source()
            except Exception:  # noqa: BLE001 - closing a half-read HTTP stream may fail; nothing is lost
                pass
        super().close()
