"""Google Cloud Storage region with google-cloud-storage.

An upload is a resumable upload session (``blob.open("wb")``): each full
chunk of ``chunk_size_mib`` is sent as it fills, and the object becomes
visible only when the last chunk is sent, on commit. Memory per upload is
one chunk plus one ``write()`` argument.

Integrity: the last chunk carries the CRC32C of the whole object in
``X-Goog-Hash``, so GCS rejects a corrupted upload before it becomes visible.
After the upload the driver also reads the object's size and CRC32C back and
deletes the object (by generation) on a mismatch. CRC32C is used instead of
MD5 because GCS reports it for every object, composite ones included.

Credentials, first match wins: a ``credentials_provider`` callable returning
``google.auth.credentials.Credentials`` (inside Airflow, built from
``credentials.connection_id``), ``anonymous``, ``service_account_file``, else
Application Default Credentials.
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any, BinaryIO, Callable, Iterator

import google.api_core.exceptions as api_exceptions
import google.auth.exceptions
import google_crc32c
import requests
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.cloud.storage import exceptions as media_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY

from resguardo.config import GcsRegion
from resguardo.i18n import _
from resguardo.log import get_logger
from storage.base import (
    AlreadyExists,
    ErrorMappingReader,
    ObjectInfo,
    ObjectNotFound,
    Region,
    RegionError,
    Upload,
    ensure_ascending,
    join_prefix,
    local_mismatch_error,
    remote_mismatch_error,
    validate_key,
    validate_prefix,
)

logger = get_logger("storage.gcs")

MIB = 1024 * 1024

GcsCredentialsProvider = Callable[[], Credentials]

_TRANSIENT_API_ERRORS = (
    api_exceptions.TooManyRequests,
    api_exceptions.InternalServerError,
    api_exceptions.BadGateway,
    api_exceptions.ServiceUnavailable,
    api_exceptions.GatewayTimeout,
    api_exceptions.RequestRangeNotSatisfiable,
)
_TRANSIENT_TRANSPORT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    google.auth.exceptions.TransportError,
    ConnectionError,
    TimeoutError,
)


def _crc32c_b64(checksum: google_crc32c.Checksum) -> str:
    return base64.b64encode(checksum.digest()).decode("ascii")


class GcsDriver(Region):
    """A region in one GCS bucket, under an optional object-name prefix."""

    kind = "gcs"

    def __init__(
        self,
        name: str,
        config: GcsRegion,
        *,
        credentials_provider: GcsCredentialsProvider | None = None,
        retry_timeout: float = 120.0,
        request_timeout: float = 120.0,
    ):
        """Build the GCS client; raise RegionError naming the region if credentials cannot be loaded.

        ``retry_timeout`` is the total time in seconds spent retrying one
        request; ``request_timeout`` bounds each attempt.
        """
        self.name = name
        self.config = config
        self.location = config.location
        self.bucket_name = config.bucket
        self.prefix = config.prefix.strip("/")
        self.chunk_size = config.chunk_size_mib * MIB  # 1 MiB multiples satisfy the 256 KiB rule
        self.retry = DEFAULT_RETRY.with_timeout(retry_timeout)
        self.request_timeout = request_timeout
        credentials = self._credentials(credentials_provider)
        client_options = {"api_endpoint": config.endpoint_url} if config.endpoint_url else None
        try:
            self.client = storage.Client(
                project=config.project, credentials=credentials, client_options=client_options
            )
        except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as error:
            raise RegionError(
                _("region {region!r}: the GCS client could not be created: {reason}").format(
                    region=name, reason=error
                ),
                self._access_hint(),
                region=name,
            ) from error
        self.bucket = self.client.bucket(config.bucket)

    def __repr__(self) -> str:
        return f"GcsDriver(name={self.name!r}, bucket={self.bucket_name!r}, prefix={self.prefix!r})"

    def _credentials(self, provider: GcsCredentialsProvider | None) -> Credentials | None:
        settings = self.config.credentials
        if provider is not None:
            return provider()
        if settings.connection_id:
            logger.info(
                "storage.gcs.connection_unavailable",
                extra={"region": self.name, "connection_id": settings.connection_id},
            )
        if settings.anonymous:
            return AnonymousCredentials()
        if settings.service_account_file:
            from google.oauth2 import service_account

            try:
                return service_account.Credentials.from_service_account_file(str(settings.service_account_file))
            except (OSError, ValueError) as error:
                raise RegionError(
                    _("region {region!r}: service-account file {path} could not be loaded: {reason}").format(
                        region=self.name, path=settings.service_account_file, reason=error
                    ),
                    _("check the path and that the file is a service-account JSON key"),
                    region=self.name,
                ) from error
        return None  # Application Default Credentials

    # -- errors -------------------------------------------------------------

    def map_error(
        self, error: Exception, key: str | None, operation: str, *, not_found_is_object: bool = False
    ) -> Exception:
        """Translate a google-cloud-storage exception into ObjectNotFound or RegionError with a hint.

        ``not_found_is_object`` means that a 404 names the object (reads and
        deletes). Elsewhere, as on upload or list, a 404 means a missing bucket.
        """
        if isinstance(error, (RegionError, ObjectNotFound)):
            return error
        status = _status_code(error)
        if isinstance(error, api_exceptions.NotFound) or status == 404:
            if not_found_is_object and key is not None:
                return ObjectNotFound(self.name, key)
            return self._region_error(
                operation,
                key,
                str(error),
                _("bucket {bucket!r} does not exist; create it or fix regions.{region}.bucket").format(
                    bucket=self.bucket_name, region=self.name
                ),
                transient=False,
            )
        if isinstance(error, (api_exceptions.Forbidden, api_exceptions.Unauthorized)) or status in (401, 403):
            return self._region_error(operation, key, str(error), self._access_hint(), transient=False)
        if isinstance(error, google.auth.exceptions.DefaultCredentialsError):
            return self._region_error(operation, key, str(error), self._access_hint(), transient=False)
        transient = (
            isinstance(error, _TRANSIENT_API_ERRORS + _TRANSIENT_TRANSPORT_ERRORS + (media_exceptions.DataCorruption,))
            or status == 429
            or status >= 500
        )
        hint = self._transient_hint() if transient else self._default_hint()
        return self._region_error(operation, key, f"{type(error).__name__}: {error}", hint, transient)

    def _region_error(self, operation: str, key: str | None, reason: str, hint: str, transient: bool) -> RegionError:
        return RegionError(
            _("GCS request {operation} failed on region {region!r} (bucket {bucket!r}), key {key!r}: {reason}").format(
                operation=operation, region=self.name, bucket=self.bucket_name, key=key or "", reason=reason
            ),
            hint,
            region=self.name,
            key=key,
            transient=transient,
        )

    def _access_hint(self) -> str:
        return _(
            "check the credentials referenced under regions.{region}.credentials and that they may "
            "read and write objects in the bucket"
        ).format(region=self.name)

    def _transient_hint(self) -> str:
        return _(
            "the error is temporary (network, throttling or server error) and was already retried; retry "
            "later, and check endpoint_url and the network if it persists"
        )

    def _default_hint(self) -> str:
        return _("check regions.{region} in the config and the storage provider's status").format(region=self.name)

    # -- Region interface ---------------------------------------------------

    def object_name(self, key: str) -> str:
        """Return the GCS object name of ``key`` under the region's prefix."""
        return join_prefix(self.prefix, validate_key(self.name, key))

    def begin_upload(self, key: str) -> Upload:
        return _GcsUpload(self, key, self.object_name(key))

    def _get_blob(self, key: str) -> storage.Blob | None:
        try:
            return self.bucket.get_blob(self.object_name(key), retry=self.retry, timeout=self.request_timeout)
        except Exception as error:  # noqa: BLE001 - mapped below
            mapped = self.map_error(error, key, "objects.get", not_found_is_object=True)
            if isinstance(mapped, ObjectNotFound):
                return None
            raise mapped from error

    def open_read(self, key: str) -> BinaryIO:
        found = self._get_blob(key)
        if found is None:
            raise ObjectNotFound(self.name, key)
        # Pin the generation so that an overwrite during the read fails
        # instead of mixing two objects' bytes.
        blob = self.bucket.blob(found.name, chunk_size=self.chunk_size, generation=found.generation)
        reader = blob.open("rb", chunk_size=self.chunk_size, retry=self.retry, timeout=self.request_timeout)
        raw = ErrorMappingReader(
            reader.read,
            lambda error: self.map_error(error, key, "objects.get", not_found_is_object=True),
            close_source=reader.close,
        )
        return io.BufferedReader(raw, buffer_size=self.chunk_size)  # type: ignore[return-value]

    def stat(self, key: str) -> ObjectInfo | None:
        blob = self._get_blob(key)
        if blob is None:
            return None
        # GCS stores MD5 and CRC32C, not SHA-256, so sha256 stays None.
        return ObjectInfo(region=self.name, key=key, size=int(blob.size or 0))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        validate_prefix(self.name, prefix)
        full_prefix = join_prefix(self.prefix, prefix) if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0

        def objects() -> Iterator[ObjectInfo]:
            try:
                for blob in self.client.list_blobs(
                    self.bucket_name, prefix=full_prefix, retry=self.retry, timeout=self.request_timeout
                ):
                    yield ObjectInfo(region=self.name, key=blob.name[strip:], size=int(blob.size or 0))
            except Exception as error:  # noqa: BLE001 - mapped to a RegionError
                raise self.map_error(error, None, "objects.list") from error

        # Cloud Storage lists objects lexicographically by name; ensure_ascending
        # turns any other order into an error.
        yield from ensure_ascending(self.name, objects())

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo:
        object_name = self.object_name(key)
        blob = self.bucket.blob(object_name)
        crc32c = google_crc32c.Checksum(data)
        try:
            blob.upload_from_string(
                data,
                content_type="application/octet-stream",
                if_generation_match=0 if if_absent else None,
                checksum="crc32c",
                retry=self.retry,
                timeout=self.request_timeout,
            )
        except api_exceptions.PreconditionFailed:
            # A retried request whose first attempt succeeded also ends here:
            # the object is ours when it has our size and CRC32C.
            existing = self._get_blob(key)
            if existing is None or existing.size != len(data) or existing.crc32c != _crc32c_b64(crc32c):
                raise AlreadyExists(self.name, key) from None
        except Exception as error:  # noqa: BLE001 - mapped to a RegionError
            raise self.map_error(error, key, "objects.insert") from error
        return ObjectInfo(region=self.name, key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def delete(self, key: str, *, generation: int | None = None) -> None:
        """Delete ``key``; with ``generation``, only that generation of it."""
        blob = self.bucket.blob(self.object_name(key))
        try:
            blob.delete(if_generation_match=generation, retry=self.retry, timeout=self.request_timeout)
        except api_exceptions.NotFound:
            return
        except api_exceptions.PreconditionFailed:
            return  # another generation replaced ours; it is not ours to delete
        except Exception as error:  # noqa: BLE001 - mapped to a RegionError
            raise self.map_error(error, key, "objects.delete") from error


def _status_code(error: Exception) -> int:
    code = getattr(error, "code", None)
    if isinstance(code, int):
        return code
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else 0


class _GcsUpload(Upload):
    """One object written through a resumable upload session; see the module docstring."""

    def __init__(self, driver: GcsDriver, key: str, object_name: str):
        self._driver = driver
        self._key = key
        self._blob = driver.bucket.blob(object_name, chunk_size=driver.chunk_size)
        self._writer: Any = self._blob.open(
            "wb",
            chunk_size=driver.chunk_size,
            ignore_flush=True,
            content_type="application/octet-stream",
            checksum="crc32c",
            retry=driver.retry,
            timeout=driver.request_timeout,
        )
        self._size = 0
        self._sha256 = hashlib.sha256()
        self._crc32c = google_crc32c.Checksum()
        self._finalize_attempted = False
        self._state = "open"

    def write(self, data: bytes) -> None:
        if self._state != "open":
            raise RuntimeError(f"write() on a {self._state} upload of {self._key!r}")
        try:
            self._writer.write(data)
        except Exception as error:  # noqa: BLE001 - mapped to a RegionError
            self.abort()
            raise self._driver.map_error(error, self._key, "objects.insert") from error
        self._sha256.update(data)
        self._crc32c.update(data)
        self._size += len(data)

    def commit(self, expected_size: int, expected_sha256: str) -> ObjectInfo:
        if self._state != "open":
            raise RuntimeError(f"commit() on a {self._state} upload of {self._key!r}")
        actual_sha256 = self._sha256.hexdigest()
        if self._size != expected_size or actual_sha256 != expected_sha256:
            self.abort()
            raise local_mismatch_error(
                self._driver.name,
                self._key,
                expected_size=expected_size,
                expected_sha256=expected_sha256,
                actual_size=self._size,
                actual_sha256=actual_sha256,
            )
        self._finalize_attempted = True
        try:
            self._writer.close()
        except media_exceptions.DataCorruption as error:
            # The server finalized an object whose CRC32C differs from ours.
            self._state = "aborted"
            self._delete_generation(_generation_from_response(error.response))
            raise remote_mismatch_error(self._driver.name, self._key, detail=str(error)) from error
        except Exception as error:  # noqa: BLE001 - mapped to a RegionError
            self.abort()
            raise self._driver.map_error(error, self._key, "objects.insert") from error

        try:
            self._blob.reload(retry=self._driver.retry, timeout=self._driver.request_timeout)
        except Exception as error:  # noqa: BLE001 - mapped to a RegionError
            self.abort()
            raise self._driver.map_error(error, self._key, "objects.get") from error
        problems = []
        if self._blob.size != self._size:
            problems.append(f"size {self._blob.size} != {self._size}")
        if self._blob.crc32c != _crc32c_b64(self._crc32c):
            problems.append(f"crc32c {self._blob.crc32c} != {_crc32c_b64(self._crc32c)}")
        if problems:
            self._state = "aborted"
            self._delete_generation(self._blob.generation)
            raise remote_mismatch_error(self._driver.name, self._key, detail="; ".join(problems))
        self._state = "committed"
        logger.info(
            "storage.upload.commit",
            extra={
                "region": self._driver.name,
                "key": self._key,
                "size": self._size,
                "generation": self._blob.generation,
            },
        )
        return ObjectInfo(region=self._driver.name, key=self._key, size=self._size, sha256=expected_sha256)

    def abort(self) -> None:
        """Cancel the upload session and delete an object this upload may have created.

        After a successful commit this does nothing. Failures are logged, not
        raised, because abort runs while another error is being handled.
        """
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        if not self._finalize_attempted:
            try:
                self._writer.terminate()  # DELETE on the session URI, when a session exists
            except Exception as error:  # noqa: BLE001 - an unfinished session is never visible; it expires
                logger.warning(
                    "storage.upload.cancel_failed",
                    extra={"region": self._driver.name, "key": self._key, "error": str(error)},
                )
        else:
            self._delete_if_ours()
        logger.info("storage.upload.abort", extra={"region": self._driver.name, "key": self._key})

    def _delete_if_ours(self) -> None:
        """Delete the object when a finalization whose outcome is unknown did create it.

        The object is recognised by size and CRC32C, so an object written by
        someone else under the same key is normally left alone.
        """
        try:
            existing = self._driver._get_blob(self._key)
        except RegionError as error:
            self._log_abort_failure(error)
            return
        if existing is not None and existing.size == self._size and existing.crc32c == _crc32c_b64(self._crc32c):
            self._delete_generation(existing.generation)

    def _delete_generation(self, generation: int | None) -> None:
        try:
            self._driver.delete(self._key, generation=generation)
        except RegionError as error:
            self._log_abort_failure(error)

    def _log_abort_failure(self, error: Exception) -> None:
        logger.error(
            "storage.upload.abort_failed",
            extra={"region": self._driver.name, "key": self._key, "error": str(error)},
        )


def _generation_from_response(response: Any) -> int | None:
    try:
        return int(response.json()["generation"])
    except Exception:  # noqa: BLE001 - without a generation the delete is unconditional
        return None
