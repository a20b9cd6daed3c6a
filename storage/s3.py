"""S3 region (AWS or an S3-compatible endpoint) with boto3.

Uploads smaller than the part size go out as one ``PutObject`` on commit.
Larger ones become a multipart upload: each full part is sent by a thread pool
of ``max_concurrency`` threads while the producer keeps writing, and
``write()`` blocks once that many parts are in flight. Memory per upload is
therefore at most ``(max_concurrency + 1) × part_size`` plus one ``write()``
argument.

Every part and every single-request object carries ``ChecksumSHA256``, which
S3 checks on receipt. On commit the driver compares the size and checksum that
S3 reports (``HeadObject`` with ``ChecksumMode=ENABLED``) with the local
values. For a multipart object S3 reports the composite checksum: the SHA-256
of the concatenated part digests, followed by ``-<part count>``.

Credentials, first match wins: a ``credentials_provider`` callable (inside
Airflow, built from ``credentials.connection_id``), ``anonymous``, the
variables named by ``access_key_id_env``/``secret_access_key_env``,
``profile``, else the default boto3 chain (environment, shared files, instance
role).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, BinaryIO, Callable, Iterator

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config as BotocoreConfig

from resguardo.config import S3Region
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

logger = get_logger("storage.s3")

MIB = 1024 * 1024
MAX_PARTS = 10_000  # S3 limit on parts per multipart upload
READ_BUFFER_SIZE = 1 * MIB

#: Returns ``(access_key_id, secret_access_key, session_token or None)``.
S3CredentialsProvider = Callable[[], "tuple[str, str, str | None]"]

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_ACCESS_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "BadDigest",
    "InvalidDigest",
    "XAmzContentSHA256Mismatch",
    "ConditionalRequestConflict",
}


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def composite_sha256(part_digests: list[bytes]) -> str:
    """Return the S3 composite checksum of a multipart object from its raw part SHA-256 digests."""
    return f"{_b64(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


def _checksums_equal(reported: str, expected: str) -> bool:
    # Some servers (moto 5.2) report a composite checksum without the "-N" suffix.
    reported_base, _sep, reported_parts = reported.partition("-")
    expected_base, _sep, expected_parts = expected.partition("-")
    if reported_base != expected_base:
        return False
    return not reported_parts or reported_parts == expected_parts


class S3Driver(Region):
    """A region in one S3 bucket, under an optional key prefix."""

    kind = "s3"

    def __init__(
        self,
        name: str,
        config: S3Region,
        *,
        credentials_provider: S3CredentialsProvider | None = None,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
    ):
        """Build the boto3 client; raise RegionError naming the region if credentials cannot be resolved.

        ``max_attempts`` counts the first try, as botocore's standard retry
        mode does; timeouts are in seconds per request attempt.
        """
        self.name = name
        self.config = config
        self.location = config.region
        self.bucket = config.bucket
        self.prefix = config.prefix.strip("/")
        self.part_size = config.part_size_mib * MIB
        self.max_concurrency = config.max_concurrency
        client_config = BotocoreConfig(
            region_name=config.region,
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=config.max_concurrency + 2,
            s3={"addressing_style": "path"} if config.endpoint_url else None,
            signature_version=UNSIGNED if config.credentials.anonymous and credentials_provider is None else None,
        )
        session = self._session(credentials_provider)
        self.client = session.client("s3", endpoint_url=config.endpoint_url, config=client_config)

    def __repr__(self) -> str:
        return f"S3Driver(name={self.name!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _session(self, credentials_provider: S3CredentialsProvider | None) -> boto3.session.Session:
        credentials = self.config.credentials
        region_name = self.config.region
        if credentials_provider is not None:
            # NOTE: called once per driver; temporary credentials are not refreshed
            # and an upload that outlives them fails with ExpiredToken.
            access_key_id, secret_access_key, session_token = credentials_provider()
            return boto3.session.Session(
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                aws_session_token=session_token,
                region_name=region_name,
            )
        if credentials.connection_id:
            logger.info(
                "storage.s3.connection_unavailable",
                extra={"region": self.name, "connection_id": credentials.connection_id},
            )
        if credentials.anonymous:
            return boto3.session.Session(region_name=region_name)
        if credentials.access_key_id_env or credentials.secret_access_key_env:
            return boto3.session.Session(
                aws_access_key_id=self._read_env(credentials.access_key_id_env, "access_key_id_env"),
                aws_secret_access_key=self._read_env(credentials.secret_access_key_env, "secret_access_key_env"),
                aws_session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
                region_name=region_name,
            )
        if credentials.profile:
            try:
                return boto3.session.Session(profile_name=credentials.profile, region_name=region_name)
            except botocore.exceptions.ProfileNotFound:
                raise RegionError(
                    _("region {region!r}: AWS profile {profile!r} is not defined").format(
                        region=self.name, profile=credentials.profile
                    ),
                    _("add the profile to ~/.aws/config or fix regions.{region}.credentials.profile").format(
                        region=self.name
                    ),
                    region=self.name,
                ) from None
        return boto3.session.Session(region_name=region_name)

    def _read_env(self, variable: str | None, field: str) -> str:
        if not variable:
            raise RegionError(
                _("region {region!r}: credentials.{field} is not set, but the other *_env field is").format(
                    region=self.name, field=field
                ),
                _("set both access_key_id_env and secret_access_key_env under regions.{region}.credentials").format(
                    region=self.name
                ),
                region=self.name,
            )
        value = os.environ.get(variable)
        if not value:
            raise RegionError(
                _("region {region!r}: environment variable {variable} is not set or empty").format(
                    region=self.name, variable=variable
                ),
                _("export {variable} before running, or fix regions.{region}.credentials.{field}").format(
                    variable=variable, region=self.name, field=field
                ),
                region=self.name,
            )
        return value

    # -- errors -------------------------------------------------------------

    def map_error(
        self, error: Exception, key: str | None, operation: str, *, not_found_is_object: bool = False
    ) -> Exception:
        """Translate a boto3 exception into ObjectNotFound or RegionError with a hint.

        ``not_found_is_object`` means that a 404 names the object (reads and
        deletes). HeadObject reports a missing bucket with the same bare 404.
        """
        if isinstance(error, (RegionError, ObjectNotFound)):
            return error
        if isinstance(error, botocore.exceptions.ClientError):
            details = error.response.get("Error", {})
            code = str(details.get("Code", ""))
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            reason = f"{code} {details.get('Message', '')}".strip() or str(error)
            if not_found_is_object and key is not None and code in _NOT_FOUND_CODES:
                return ObjectNotFound(self.name, key)
            if code == "NoSuchUpload":
                return self._region_error(
                    operation,
                    key,
                    reason,
                    _("the multipart upload was aborted or expired, often by a bucket lifecycle rule; run the upload again"),
                    transient=False,
                )
            if code == "NoSuchBucket":
                return self._region_error(
                    operation,
                    key,
                    reason,
                    _("bucket {bucket!r} does not exist; create it or fix regions.{region}.bucket").format(
                        bucket=self.bucket, region=self.name
                    ),
                    transient=False,
                )
            if code in _ACCESS_CODES or status == 403:
                return self._region_error(operation, key, reason, self._access_hint(), transient=False)
            transient = code in _TRANSIENT_CODES or status >= 500 or status == 429
            hint = self._transient_hint() if transient else self._default_hint()
            return self._region_error(operation, key, reason, hint, transient=transient)
        if isinstance(error, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
            return self._region_error(operation, key, str(error), self._access_hint(), transient=False)
        if isinstance(
            error,
            (
                botocore.exceptions.ConnectionError,
                botocore.exceptions.HTTPClientError,
                botocore.exceptions.ResponseStreamingError,
            ),
        ):
            return self._region_error(operation, key, str(error), self._transient_hint(), transient=True)
        if isinstance(error, botocore.exceptions.FlexibleChecksumError):
            return self._region_error(operation, key, str(error), self._transient_hint(), transient=True)
        return self._region_error(operation, key, f"{type(error).__name__}: {error}", self._default_hint(), False)

    def _region_error(self, operation: str, key: str | None, reason: str, hint: str, transient: bool) -> RegionError:
        return RegionError(
            _("S3 request {operation} failed on region {region!r} (bucket {bucket!r}), key {key!r}: {reason}").format(
                operation=operation, region=self.name, bucket=self.bucket, key=key or "", reason=reason
            ),
            hint,
            region=self.name,
            key=key,
            transient=transient,
        )

    def _access_hint(self) -> str:
        return _(
            "check the credentials referenced under regions.{region}.credentials and that the bucket "
            "policy allows this request"
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
        """Return the S3 object key of ``key`` under the region's prefix."""
        return join_prefix(self.prefix, validate_key(self.name, key))

    def begin_upload(self, key: str) -> Upload:
        return _S3Upload(self, key, self.object_name(key))

    def open_read(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_name(key), ChecksumMode="ENABLED")
        except Exception as error:  # noqa: BLE001 - mapped to a RegionError or ObjectNotFound
            raise self.map_error(error, key, "GetObject", not_found_is_object=True) from error
        body = response["Body"]
        raw = ErrorMappingReader(
            body.read,
            lambda error: self.map_error(error, key, "GetObject"),
            close_source=body.close,
        )
        return io.BufferedReader(raw, buffer_size=READ_BUFFER_SIZE)  # type: ignore[return-value]

    def head(self, key: str) -> dict[str, Any] | None:
        """Return the ``HeadObject`` response for ``key``, or None when it does not exist."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.object_name(key), ChecksumMode="ENABLED")
        except Exception as error:  # noqa: BLE001 - mapped below
            mapped = self.map_error(error, key, "HeadObject", not_found_is_object=True)
            if isinstance(mapped, ObjectNotFound):
                return None
            raise mapped from error

    def stat(self, key: str) -> ObjectInfo | None:
        response = self.head(key)
        if response is None:
            return None
        checksum = response.get("ChecksumSHA256")
        sha256 = None
        # Only a full-object checksum is the SHA-256 of the content; a composite
        # one (multipart) is not, and servers that omit ChecksumType are not trusted.
        if checksum and "-" not in checksum and response.get("ChecksumType") == "FULL_OBJECT":
            sha256 = base64.b64decode(checksum).hex()
        return ObjectInfo(region=self.name, key=key, size=int(response["ContentLength"]), sha256=sha256)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        validate_prefix(self.name, prefix)
        full_prefix = join_prefix(self.prefix, prefix) if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")

        def objects() -> Iterator[ObjectInfo]:
            try:
                for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                    for item in page.get("Contents", []):
                        yield ObjectInfo(region=self.name, key=item["Key"][strip:], size=int(item["Size"]))
            except Exception as error:  # noqa: BLE001 - mapped to a RegionError
                raise self.map_error(error, None, "ListObjectsV2") from error

        # AWS lists general purpose buckets in key order; ensure_ascending
        # rejects an S3-compatible server that does not.
        yield from ensure_ascending(self.name, objects())

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo:
        object_name = self.object_name(key)
        digest = hashlib.sha256(data).digest()
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": object_name,
            "Body": data,
            "ChecksumSHA256": _b64(digest),
        }
        if self.config.storage_class:
            arguments["StorageClass"] = self.config.storage_class
        if if_absent:
            arguments["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**arguments)
        except botocore.exceptions.ClientError as error:
            if if_absent and error.response.get("Error", {}).get("Code") == "PreconditionFailed":
                # A retried request whose first attempt succeeded also ends here:
                # the object is ours when S3 reports our checksum for it.
                existing = self.head(key)
                if existing is None or existing.get("ChecksumSHA256") != _b64(digest):
                    raise AlreadyExists(self.name, key) from None
            else:
                raise self.map_error(error, key, "PutObject") from error
        except Exception as error:  # noqa: BLE001 - mapped to a RegionError
            raise self.map_error(error, key, "PutObject") from error
        return ObjectInfo(region=self.name, key=key, size=len(data), sha256=digest.hex())

    def cleanup_incomplete(self, older_than_seconds: float) -> int:
        """Abort multipart uploads under this region's prefix started more than ``older_than_seconds`` ago.

        A producer killed with SIGKILL cannot abort its own upload, and S3
        keeps (and bills) the parts until someone does. A bucket lifecycle rule
        (AbortIncompleteMultipartUpload) does the same on the server side.
        """
        import datetime as dt

        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=older_than_seconds)
        aborted = 0
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + "/" if self.prefix else "")
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] > cutoff:
                        continue
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    aborted += 1
                    logger.info("storage.s3.stale_upload_aborted",
                                extra={"region": self.name, "key": upload["Key"], "upload_id": upload["UploadId"]})
        except Exception as error:  # noqa: BLE001 - mapped to a RegionError below
            raise self.map_error(error, None, "list_multipart_uploads") from error
        return aborted

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_name(key))
        except Exception as error:  # noqa: BLE001 - mapped below
            mapped = self.map_error(error, key, "DeleteObject", not_found_is_object=True)
            if isinstance(mapped, ObjectNotFound):
                return
            raise mapped from error


class _S3Upload(Upload):
    """One object written with a single PutObject or a multipart upload; see the module docstring."""

    def __init__(self, driver: S3Driver, key: str, object_name: str):
        self._driver = driver
        self._client = driver.client
        self._key = key
        self._object_name = object_name
        self._buffer = bytearray()
        self._size = 0
        self._sha256 = hashlib.sha256()
        self._upload_id: str | None = None
        self._part_count = 0
        self._part_results: dict[int, tuple[str, bytes]] = {}  # part number -> (ETag, raw SHA-256)
        self._futures: list[Future[None]] = []
        self._slots = threading.BoundedSemaphore(driver.max_concurrency)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._part_error: Exception | None = None
        self._completion_attempted = False
        self._state = "open"

    # -- writing ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._state != "open":
            raise RuntimeError(f"write() on a {self._state} upload of {self._key!r}")
        self._raise_part_error()
        self._buffer += data
        self._sha256.update(data)
        self._size += len(data)
        part_size = self._driver.part_size
        while len(self._buffer) >= part_size:
            with memoryview(self._buffer) as view:
                part = bytes(view[:part_size])
            del self._buffer[:part_size]
            self._send_part(part)

    def _raise_part_error(self) -> None:
        if self._part_error is not None:
            error = self._part_error
            self.abort()
            raise error

    def _send_part(self, part: bytes) -> None:
        if self._upload_id is None:
            arguments: dict[str, Any] = {
                "Bucket": self._driver.bucket,
                "Key": self._object_name,
                "ChecksumAlgorithm": "SHA256",
            }
            if self._driver.config.storage_class:
                arguments["StorageClass"] = self._driver.config.storage_class
            try:
                self._upload_id = self._client.create_multipart_upload(**arguments)["UploadId"]
            except Exception as error:  # noqa: BLE001 - mapped to a RegionError
                self.abort()
                raise self._driver.map_error(error, self._key, "CreateMultipartUpload") from error
            self._executor = ThreadPoolExecutor(
                max_workers=self._driver.max_concurrency, thread_name_prefix=f"s3-{self._driver.name}"
            )
            logger.info(
                "storage.upload.multipart_start",
                extra={"region": self._driver.name, "key": self._key, "part_size": self._driver.part_size},
            )
        if self._part_count >= MAX_PARTS:
            self.abort()
            raise RegionError(
                _("upload of {key!r} to region {region!r} needs more than {max_parts} parts of {part_mib} MiB").format(
                    key=self._key, region=self._driver.name, max_parts=MAX_PARTS, part_mib=self._driver.part_size // MIB
                ),
                _("raise regions.{region}.part_size_mib so that the object fits in {max_parts} parts").format(
                    region=self._driver.name, max_parts=MAX_PARTS
                ),
                region=self._driver.name,
                key=self._key,
            )
        self._part_count += 1
        part_number = self._part_count
        # Wait for a free slot, but stop waiting when a part in flight failed.
        while not self._slots.acquire(timeout=0.2):
            self._raise_part_error()
        self._raise_part_error()
        assert self._executor is not None
        self._futures.append(self._executor.submit(self._upload_part, part_number, part))

    def _upload_part(self, part_number: int, part: bytes) -> None:
        try:
            if self._state == "aborted":
                return
            digest = hashlib.sha256(part).digest()
            response = self._client.upload_part(
                Bucket=self._driver.bucket,
                Key=self._object_name,
                UploadId=self._upload_id,
                PartNumber=part_number,
                Body=part,
                ChecksumSHA256=_b64(digest),
            )
            with self._lock:
                self._part_results[part_number] = (response["ETag"], digest)
        except Exception as error:  # noqa: BLE001 - stored, then raised by the producer's next call
            mapped = self._driver.map_error(error, self._key, "UploadPart")
            logger.warning(
                "storage.upload.part_failed",
                extra={"region": self._driver.name, "key": self._key, "part": part_number, "error": str(mapped)},
            )
            with self._lock:
                if self._part_error is None:
                    self._part_error = mapped  # type: ignore[assignment]
        finally:
            self._slots.release()

    # -- commit -------------------------------------------------------------

    def commit(self, expected_size: int, expected_sha256: str) -> ObjectInfo:
        if self._state != "open":
            raise RuntimeError(f"commit() on a {self._state} upload of {self._key!r}")
        self._raise_part_error()
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
        if self._upload_id is None:
            expected_checksum = self._put_single()
        else:
            expected_checksum = self._complete_multipart()
        self._verify(expected_checksum)
        self._state = "committed"
        logger.info(
            "storage.upload.commit",
            extra={"region": self._driver.name, "key": self._key, "size": self._size, "parts": self._part_count},
        )
        return ObjectInfo(region=self._driver.name, key=self._key, size=self._size, sha256=expected_sha256)

    def _put_single(self) -> str:
        body = bytes(self._buffer)
        self._buffer = bytearray()
        checksum = _b64(self._sha256.digest())
        arguments: dict[str, Any] = {
            "Bucket": self._driver.bucket,
            "Key": self._object_name,
            "Body": body,
            "ChecksumSHA256": checksum,
        }
        if self._driver.config.storage_class:
            arguments["StorageClass"] = self._driver.config.storage_class
        self._completion_attempted = True
        try:
            self._client.put_object(**arguments)
        except Exception as error:  # noqa: BLE001 - mapped to a RegionError
            self.abort()
            raise self._driver.map_error(error, self._key, "PutObject") from error
        return checksum

    def _complete_multipart(self) -> str:
        if self._buffer:
            last_part = bytes(self._buffer)
            self._buffer = bytearray()
            self._send_part(last_part)
        wait_futures(self._futures)
        self._raise_part_error()
        assert self._executor is not None
        self._executor.shutdown(wait=False)
        part_numbers = sorted(self._part_results)
        parts = [
            {"PartNumber": number, "ETag": self._part_results[number][0], "ChecksumSHA256": _b64(self._part_results[number][1])}
            for number in part_numbers
        ]
        checksum = composite_sha256([self._part_results[number][1] for number in part_numbers])
        self._completion_attempted = True
        try:
            self._client.complete_multipart_upload(
                Bucket=self._driver.bucket,
                Key=self._object_name,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except Exception as error:  # noqa: BLE001 - mapped to a RegionError
            self.abort()
            raise self._driver.map_error(error, self._key, "CompleteMultipartUpload") from error
        return checksum

    def _verify(self, expected_checksum: str) -> None:
        try:
            response = self._driver.head(self._key)
        except RegionError:
            self.abort()
            raise
        problems = []
        if response is None:
            problems.append("object missing after upload")
        else:
            if int(response["ContentLength"]) != self._size:
                problems.append(f"size {response['ContentLength']} != {self._size}")
            reported = response.get("ChecksumSHA256")
            if reported is None:
                # NOTE: AWS returns the checksum of any object uploaded with one
                # (S3 API reference, "Checksum"). moto 5.2 omits it for
                # single-request objects, so against moto only the size is compared.
                logger.info("storage.upload.checksum_not_reported", extra={"region": self._driver.name, "key": self._key})
            elif not _checksums_equal(reported, expected_checksum):
                problems.append(f"ChecksumSHA256 {reported} != {expected_checksum}")
        if problems:
            self._state = "aborted"
            self._delete_object()
            raise remote_mismatch_error(self._driver.name, self._key, detail="; ".join(problems))

    # -- abort --------------------------------------------------------------

    def abort(self) -> None:
        """Stop part uploads, abort the multipart upload and delete an object this upload may have created.

        After a successful commit this does nothing. Failures are logged, not
        raised, because abort runs while another error is being handled.
        """
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        self._buffer = bytearray()
        for future in self._futures:
            future.cancel()
        # Parts still in flight would otherwise land after AbortMultipartUpload
        # and keep storage allocated.
        wait_futures(self._futures)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._upload_id is not None:
            try:
                self._client.abort_multipart_upload(
                    Bucket=self._driver.bucket, Key=self._object_name, UploadId=self._upload_id
                )
            except botocore.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    self._log_abort_failure(error)
            except Exception as error:  # noqa: BLE001 - logged; abort must not mask the original error
                self._log_abort_failure(error)
        if self._completion_attempted:
            self._delete_if_ours()
        logger.info("storage.upload.abort", extra={"region": self._driver.name, "key": self._key})

    def _log_abort_failure(self, error: Exception) -> None:
        logger.error(
            "storage.upload.abort_failed",
            extra={
                "region": self._driver.name,
                "key": self._key,
                "upload_id": self._upload_id,
                "error": str(self._driver.map_error(error, self._key, "AbortMultipartUpload")),
            },
        )

    def _delete_if_ours(self) -> None:
        """Delete the object when a completion whose outcome is unknown did create it.

        The object is recognised by the checksum this upload sent, so an object
        written by someone else under the same key is left alone.
        """
        try:
            response = self._driver.head(self._key)
        except RegionError as error:
            self._log_abort_failure(error)
            return
        if response is None:
            return
        if self._upload_id is None:
            ours = _b64(self._sha256.digest())
        else:
            ours = composite_sha256([digest for _etag, digest in (self._part_results[n] for n in sorted(self._part_results))])
        reported = response.get("ChecksumSHA256")
        if reported is not None and _checksums_equal(reported, ours) and int(response["ContentLength"]) == self._size:
            self._delete_object()

    def _delete_object(self) -> None:
        try:
            self._driver.delete(self._key)
        except RegionError as error:
            self._log_abort_failure(error)
