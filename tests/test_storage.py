"""Storage drivers, fan-out and region factory, against real local servers.

S3 runs on moto_server and GCS on fake-gcs-server (see tests/storage_servers.py),
both as subprocesses on 127.0.0.1; filesystem regions live in tmp_path.
What these emulators cannot show: moto does not check the checksums a client
sends, and fake-gcs-server does not check the CRC32C sent with the last chunk
of a resumable upload. The tests that cover the driver's own post-upload
checks therefore make the driver compute a wrong expected value instead.
GCS upload sessions cannot be listed, so for GCS "nothing left" means no object.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from resguardo.config import Credentials, GcsRegion, S3Region, parse_config
from resguardo.errors import ConfigError, NotFoundError, StorageError
from storage.base import AlreadyExists, ObjectInfo, ObjectNotFound, Region, RegionError, Upload, ensure_ascending
from storage.fanout import FanoutError, FanoutWriter
from storage.filesystem import FilesystemDriver
from storage.gcs import GcsDriver
from storage.registry import open_region, open_regions
from storage.s3 import S3Driver, composite_sha256
from storage_servers import FakeGcsServer, MotoServer, free_port

MIB = 1024 * 1024
KEY_ID_ENV = "RESGUARDO_TEST_S3_KEY_ID"
SECRET_ENV = "RESGUARDO_TEST_S3_SECRET"
KINDS = ["filesystem", "s3", "gcs"]


# -- servers and isolation ----------------------------------------------------


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def gcs_server():
    with FakeGcsServer() as server:
        yield server


@pytest.fixture(autouse=True)
def isolated_cloud_environment(monkeypatch, tmp_path):
    """Keep boto3 and google-auth away from real credentials, profiles and metadata servers."""
    for variable in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                     "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv(KEY_ID_ENV, "testing")
    monkeypatch.setenv(SECRET_ENV, "testing")


def unique_bucket() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


def s3_config(endpoint_url: str, bucket: str, **overrides) -> S3Region:
    settings = {
        "kind": "s3",
        "bucket": bucket,
        "region": "us-east-1",
        "endpoint_url": endpoint_url,
        "part_size_mib": 5,
        "max_concurrency": 2,
        "credentials": Credentials(access_key_id_env=KEY_ID_ENV, secret_access_key_env=SECRET_ENV),
    }
    settings.update(overrides)
    return S3Region(**settings)


def gcs_config(endpoint_url: str, bucket: str, **overrides) -> GcsRegion:
    settings = {
        "kind": "gcs",
        "bucket": bucket,
        "project": "test",
        "endpoint_url": endpoint_url,
        "chunk_size_mib": 1,
        "credentials": Credentials(anonymous=True),
    }
    settings.update(overrides)
    return GcsRegion(**settings)


class Regions:
    """Builds fresh regions (own directory or bucket) and lists what each one holds."""

    def __init__(self, moto: MotoServer, gcs_server: FakeGcsServer, tmp_path: Path):
        self.moto = moto
        self.gcs_server = gcs_server
        self.tmp_path = tmp_path
        self._leftover_checks: dict[str, object] = {}

    def filesystem(self, name: str = "fs") -> FilesystemDriver:
        root = self.tmp_path / name
        root.mkdir()
        region = FilesystemDriver(name, root)
        self._leftover_checks[name] = lambda: sorted(
            str(Path(directory, filename).relative_to(root))
            for directory, _dirs, files in os.walk(root)
            for filename in files
        )
        return region

    def s3(self, name: str = "s3", aws_region: str = "us-east-1", moto: MotoServer | None = None, **overrides) -> S3Driver:
        server = moto or self.moto
        bucket = unique_bucket()
        client = server.client(aws_region)
        if aws_region == "us-east-1":
            client.create_bucket(Bucket=bucket)
        else:
            client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": aws_region})
        region = S3Driver(name, s3_config(server.endpoint_url, bucket, region=aws_region, **overrides), max_attempts=2)

        def leftovers() -> list[str]:
            objects = [item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
            uploads = [f"upload:{item['Key']}" for item in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
            return objects + uploads

        self._leftover_checks[name] = leftovers
        return region

    def gcs(self, name: str = "gcs", **overrides) -> GcsDriver:
        bucket = unique_bucket()
        client = self.gcs_server.client()
        client.create_bucket(bucket)
        region = GcsDriver(name, gcs_config(self.gcs_server.endpoint_url, bucket, **overrides), retry_timeout=5)
        self._leftover_checks[name] = lambda: [blob.name for blob in client.list_blobs(bucket)]
        return region

    def new(self, kind: str, name: str | None = None) -> Region:
        return getattr(self, kind)(name or kind)

    def leftovers(self, region: Region | str) -> list[str]:
        """Every object, pending multipart upload or file the region holds, committed or not."""
        name = region if isinstance(region, str) else region.name
        return self._leftover_checks[name]()  # type: ignore[operator]


@pytest.fixture
def regions(moto, gcs_server, tmp_path) -> Regions:
    moto.ensure_healthy()
    gcs_server.ensure_healthy()
    return Regions(moto, gcs_server, tmp_path)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_in_chunks(region: Region, key: str, data: bytes, chunk_size: int = MIB) -> Upload:
    upload = region.begin_upload(key)
    for offset in range(0, len(data), chunk_size):
        upload.write(data[offset : offset + chunk_size])
    return upload


def read_in_chunks(region: Region, key: str, chunk_size: int = 64 * 1024) -> bytes:
    pieces = []
    with region.open_read(key) as handle:
        while True:
            piece = handle.read(chunk_size)
            if not piece:
                break
            pieces.append(piece)
    return b"".join(pieces)


# -- driver contract, for every kind -----------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [0, 1000, 14 * MIB + 123], ids=["empty", "small", "multipart"])
def test_upload_round_trip(regions, kind, size):
    region = regions.new(kind)
    data = random.randbytes(size)
    key = "clientes/logical/20261204T201500Z-3f9a/dump.enc"

    upload = upload_in_chunks(region, key, data)
    info = upload.commit(size, sha256_hex(data))

    assert info.region == region.name
    assert info.key == key
    assert info.size == size
    assert info.sha256 == sha256_hex(data)
    assert read_in_chunks(region, key) == data
    assert region.stat(key).size == size
    assert [item.key for item in region.list("clientes/")] == [key]


@pytest.mark.parametrize("kind", KINDS)
def test_list_byte_order_and_prefix(regions, kind):
    region = regions.new(kind)
    keys = ["a/b", "a.txt", "a-b", "ab", "a/c/d", "Z", "ä/x", "a/b0", "b"]
    for key in keys:
        region.put_bytes(key, key.encode())

    listed = [item.key for item in region.list("")]
    by_prefix = [item.key for item in region.list("a/")]
    partial = [item.key for item in region.list("a")]

    assert listed == sorted(keys, key=lambda key: key.encode("utf-8"))
    assert by_prefix == ["a/b", "a/b0", "a/c/d"]
    assert partial == sorted((key for key in keys if key.startswith("a")), key=lambda key: key.encode("utf-8"))
    assert list(region.list("nothing/")) == []
    assert {item.key: item.size for item in region.list("a/c")} == {"a/c/d": 5}


@pytest.mark.parametrize("kind", KINDS)
def test_missing_object(regions, kind):
    region = regions.new(kind)

    assert region.stat("no/such/key") is None
    with pytest.raises(ObjectNotFound) as raised:
        region.open_read("no/such/key")
    region.delete("no/such/key")

    assert isinstance(raised.value, NotFoundError)
    assert raised.value.region == region.name
    assert raised.value.key == "no/such/key"
    assert "no/such/key" in raised.value.message


@pytest.mark.parametrize("kind", KINDS)
def test_put_bytes_if_absent_conflict(regions, kind):
    region = regions.new(kind)
    first = region.put_bytes("db/lock.json", b"first", if_absent=True)

    with pytest.raises(AlreadyExists) as raised:
        region.put_bytes("db/lock.json", b"second", if_absent=True)

    assert first.sha256 == sha256_hex(b"first")
    assert raised.value.region == region.name
    assert raised.value.key == "db/lock.json"
    assert region.get_bytes("db/lock.json") == b"first"
    region.put_bytes("db/lock.json", b"third")
    assert region.get_bytes("db/lock.json") == b"third"
    assert regions.leftovers(region) == ["db/lock.json"]


@pytest.mark.parametrize("kind", KINDS)
def test_abort_leaves_nothing(regions, kind):
    region = regions.new(kind)
    # 12 MiB starts a multipart upload (S3) and a resumable session (GCS).
    upload = upload_in_chunks(region, "db/aborted.enc", random.randbytes(12 * MIB))

    assert list(region.list("")) == []
    upload.abort()
    upload.abort()

    assert regions.leftovers(region) == []
    assert region.stat("db/aborted.enc") is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [1000, 12 * MIB], ids=["small", "multipart"])
def test_wrong_expected_checksum_leaves_nothing(regions, kind, size):
    region = regions.new(kind)
    data = random.randbytes(size)
    upload = upload_in_chunks(region, "db/dump.enc", data)

    with pytest.raises(RegionError) as raised:
        upload.commit(size, sha256_hex(data + b"x"))

    assert raised.value.region == region.name
    assert raised.value.key == "db/dump.enc"
    assert raised.value.transient is False
    assert regions.leftovers(region) == []


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_expected_size_leaves_nothing(regions, kind):
    region = regions.new(kind)
    data = random.randbytes(2000)
    upload = upload_in_chunks(region, "db/dump.enc", data)

    with pytest.raises(RegionError):
        upload.commit(len(data) + 1, sha256_hex(data))

    assert regions.leftovers(region) == []


INVALID_KEYS = ["", "/etc/passwd", "../outside", "a/../../outside", "a//b", "a/", "a/./b", "a\x00b", "a\nb", "x" * 1025]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", INVALID_KEYS, ids=range(len(INVALID_KEYS)))
def test_invalid_key_rejected(regions, kind, key):
    region = regions.new(kind)

    for operation in (region.begin_upload, region.stat, region.open_read, region.delete,
                      lambda key: region.put_bytes(key, b"x")):
        with pytest.raises(RegionError) as raised:
            operation(key)
        assert raised.value.region == region.name
        assert raised.value.transient is False
    assert regions.leftovers(region) == []


def test_listing_out_of_order_rejected():
    items = [ObjectInfo("s3", "a/2", 1), ObjectInfo("s3", "a/10", 1)]

    with pytest.raises(RegionError) as raised:
        list(ensure_ascending("s3", iter(items)))

    assert raised.value.key == "a/10"
    assert [item.key for item in ensure_ascending("s3", iter(items[::-1]))] == ["a/10", "a/2"]


# -- filesystem specifics ---------------------------------------------------------


def test_filesystem_keys_stay_inside_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    region = FilesystemDriver("fs", root)

    for key in ("../escape", "a/../../escape", "/tmp/escape", ".hidden", "a/.partial"):
        with pytest.raises(RegionError) as raised:
            region.put_bytes(key, b"x")
        assert repr(key) in raised.value.message

    assert sorted(path.name for path in tmp_path.iterdir()) == ["root"]
    assert list(root.iterdir()) == []


def test_filesystem_if_absent_race(tmp_path):
    # Only the filesystem driver implements create-only itself (with link());
    # S3 and GCS enforce it on the server, so a race there would test the emulator.
    region = FilesystemDriver("fs", tmp_path)
    outcomes: list[str] = []

    def attempt(index: int) -> None:
        try:
            region.put_bytes("db/lock.json", f"writer {index}".encode(), if_absent=True)
            outcomes.append(f"writer {index}")
        except AlreadyExists:
            outcomes.append("conflict")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(attempt, range(8)))

    winners = [outcome for outcome in outcomes if outcome != "conflict"]
    assert len(winners) == 1
    assert outcomes.count("conflict") == 7
    assert region.get_bytes("db/lock.json") == winners[0].encode()


def test_filesystem_hides_partial_files(tmp_path):
    region = FilesystemDriver("fs", tmp_path)
    upload = upload_in_chunks(region, "db/dump.enc", b"x" * 5000)
    temp_files = list((tmp_path / "db").iterdir())

    assert len(temp_files) == 1
    assert temp_files[0].name.startswith(".dump.enc.partial-")
    assert list(region.list("")) == []
    assert region.stat("db/dump.enc") is None

    assert region.remove_stale_partials(older_than_seconds=3600) == 0
    assert region.remove_stale_partials(older_than_seconds=-1) == 1
    assert list((tmp_path / "db").iterdir()) == []
    upload.abort()


def test_filesystem_missing_root(tmp_path):
    with pytest.raises(RegionError) as raised:
        FilesystemDriver("fs", tmp_path / "not-mounted")

    assert raised.value.region == "fs"
    assert "not-mounted" in raised.value.message


# -- S3 and GCS specifics ---------------------------------------------------------


def test_s3_multipart_parts_and_composite_checksum(regions):
    region = regions.s3()
    data = random.randbytes(11 * MIB)
    upload = upload_in_chunks(region, "db/dump.enc", data, chunk_size=3 * MIB + 17)

    upload.commit(len(data), sha256_hex(data))
    head = region.client.head_object(Bucket=region.bucket, Key="db/dump.enc", ChecksumMode="ENABLED")
    digests = [hashlib.sha256(data[offset : offset + 5 * MIB]).digest() for offset in range(0, len(data), 5 * MIB)]

    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")
    # moto 5.2 reports the composite checksum without its "-3" suffix.
    assert head["ChecksumSHA256"].split("-")[0] == composite_sha256(digests).split("-")[0]


def test_s3_parts_in_flight_bounded(regions, traced_memory):
    region = regions.s3(max_concurrency=2)
    send_part = region.client.upload_part
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()

    def slow_upload_part(**arguments):
        nonlocal in_flight, max_in_flight
        with lock:
            in_flight += 1
            max_in_flight = max(max_in_flight, in_flight)
        try:
            time.sleep(0.05)
            return send_part(**arguments)
        finally:
            with lock:
                in_flight -= 1

    region.client.upload_part = slow_upload_part
    data = random.randbytes(31 * MIB)
    traced_memory.reset()

    upload = upload_in_chunks(region, "db/dump.enc", data)
    upload.commit(len(data), sha256_hex(data))
    peak_growth = traced_memory.peak_growth()

    assert max_in_flight == 2
    # (max_concurrency + 1) = 3 parts of 5 MiB plus copies made while sending
    # measured 21 MiB with boto3 1.44; max_concurrency=6 measured 36 MiB.
    assert peak_growth < 28 * MIB, f"traced memory grew by {peak_growth / MIB:.1f} MiB"
    assert region.get_bytes("db/dump.enc") == data


def test_s3_reported_checksum_mismatch_deletes_object(regions, monkeypatch):
    # moto computes the composite checksum from the bytes it stored, so a wrong
    # local value simulates corruption in transit.
    import storage.s3

    region = regions.s3()
    data = random.randbytes(7 * MIB)
    upload = upload_in_chunks(region, "db/dump.enc", data)
    monkeypatch.setattr(storage.s3, "composite_sha256", lambda digests: "AAAA-2")

    with pytest.raises(RegionError) as raised:
        upload.commit(len(data), sha256_hex(data))

    assert raised.value.transient is True
    assert regions.leftovers(region) == []


def test_gcs_reported_checksum_mismatch_deletes_object(regions, monkeypatch):
    import storage.gcs

    region = regions.gcs()
    data = random.randbytes(3 * MIB)
    upload = upload_in_chunks(region, "db/dump.enc", data)
    monkeypatch.setattr(storage.gcs, "_crc32c_b64", lambda checksum: "AAAAAA==")

    with pytest.raises(RegionError) as raised:
        upload.commit(len(data), sha256_hex(data))

    assert raised.value.transient is True
    assert regions.leftovers(region) == []


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_region_prefix_is_applied(regions, kind):
    region = regions.new(kind)
    prefixed_config = region.config.model_copy(update={"prefix": "/bank/ec/"})
    prefixed = type(region)("prefixed", prefixed_config)

    prefixed.put_bytes("db/a", b"1")
    region.put_bytes("db/b", b"2")

    assert [item.key for item in prefixed.list("")] == ["db/a"]
    assert [item.key for item in region.list("")] == ["bank/ec/db/a", "db/b"]
    assert prefixed.get_bytes("db/a") == b"1"
    assert prefixed.stat("db/b") is None


def test_s3_missing_bucket_is_not_transient(moto):
    region = S3Driver("s3", s3_config(moto.endpoint_url, unique_bucket()), max_attempts=1)

    with pytest.raises(RegionError) as raised:
        region.put_bytes("db/x", b"x")

    assert raised.value.transient is False
    assert region.bucket in raised.value.hint


def test_s3_unreachable_endpoint_is_transient():
    region = S3Driver("s3", s3_config(f"http://127.0.0.1:{free_port()}", "closed-port"), max_attempts=2)

    with pytest.raises(RegionError) as raised:
        region.put_bytes("db/x", b"x")

    assert raised.value.transient is True
    assert raised.value.region == "s3"
    assert raised.value.key == "db/x"


def test_s3_missing_credentials_variable(moto, monkeypatch):
    monkeypatch.delenv(SECRET_ENV)

    with pytest.raises(RegionError) as raised:
        S3Driver("s3", s3_config(moto.endpoint_url, "some-bucket"))

    assert SECRET_ENV in raised.value.message
    assert raised.value.region == "s3"


def test_gcs_missing_bucket_is_not_transient(gcs_server):
    region = GcsDriver("gcs", gcs_config(gcs_server.endpoint_url, unique_bucket()), retry_timeout=2)

    with pytest.raises(RegionError) as raised:
        list(region.list(""))

    assert raised.value.transient is False
    assert raised.value.region == "gcs"


# -- registry -------------------------------------------------------------------


def make_config(tmp_path: Path, moto: MotoServer, gcs_server: FakeGcsServer, s3_bucket: str, gcs_bucket: str):
    (tmp_path / "backups").mkdir(exist_ok=True)
    data = {
        "language": "es",
        "encryption": {"recipients": ["keys/recipient.pem"]},
        "signing": {"public_key": "keys/signing.pub.pem"},
        "evidence": {"region": "local"},
        "regions": {
            "local": {"kind": "filesystem", "path": "backups"},
            "aws-sp": {
                "kind": "s3",
                "bucket": s3_bucket,
                "region": "us-east-1",
                "endpoint_url": moto.endpoint_url,
                "credentials": {"access_key_id_env": KEY_ID_ENV, "secret_access_key_env": SECRET_ENV},
            },
            "aws-conn": {
                "kind": "s3",
                "bucket": s3_bucket,
                "region": "us-east-1",
                "endpoint_url": moto.endpoint_url,
                "credentials": {"connection_id": "aws_backup"},
            },
            "gcs-us": {
                "kind": "gcs",
                "bucket": gcs_bucket,
                "project": "test",
                "endpoint_url": gcs_server.endpoint_url,
                "credentials": {"anonymous": True},
            },
        },
    }
    return parse_config(data, tmp_path)


def test_registry_builds_each_kind(moto, gcs_server, tmp_path):
    config = make_config(tmp_path, moto, gcs_server, "reg-bucket", "reg-bucket")

    local, aws, gcs = open_regions(["local", "aws-sp", "gcs-us"], config)

    assert isinstance(local, FilesystemDriver)
    assert local.root == tmp_path / "backups"
    assert isinstance(aws, S3Driver)
    assert aws.name == "aws-sp"
    assert aws.location == "us-east-1"
    assert isinstance(gcs, GcsDriver)
    assert gcs.name == "gcs-us"


def test_registry_unknown_region(moto, gcs_server, tmp_path):
    config = make_config(tmp_path, moto, gcs_server, "reg-bucket", "reg-bucket")

    with pytest.raises(ConfigError) as raised:
        open_region("nowhere", config)

    assert "nowhere" in raised.value.message
    assert "aws-sp" in raised.value.hint


def test_registry_error_names_region(moto, gcs_server, tmp_path, monkeypatch):
    config = make_config(tmp_path, moto, gcs_server, "reg-bucket", "reg-bucket")
    monkeypatch.delenv(KEY_ID_ENV)

    with pytest.raises(RegionError) as raised:
        open_region("aws-sp", config)

    assert raised.value.region == "aws-sp"
    assert "aws-sp" in raised.value.message


def test_registry_credentials_provider_gets_connection(moto, gcs_server, tmp_path):
    bucket = unique_bucket()
    moto.client().create_bucket(Bucket=bucket)
    config = make_config(tmp_path, moto, gcs_server, bucket, "reg-bucket")
    requested = []

    def provider(connection_id: str):
        requested.append(connection_id)
        return ("testing", "testing", None)

    region = open_region("aws-conn", config, credentials_provider=provider)
    region.put_bytes("db/x", b"x")
    open_region("local", config, credentials_provider=provider)

    assert requested == ["aws_backup"]
    assert region.get_bytes("db/x") == b"x"


# -- fan-out --------------------------------------------------------------------


def write_random(writer: FanoutWriter, total: int, chunk_size: int = MIB) -> bytes:
    pieces = []
    for offset in range(0, total, chunk_size):
        piece = random.randbytes(min(chunk_size, total - offset))
        pieces.append(piece)
        writer.write(piece)
    return b"".join(pieces)


def test_fanout_four_regions(regions):
    targets = [
        regions.filesystem("fs"),
        regions.s3("s3-us", aws_region="us-east-1"),
        regions.s3("s3-sp", aws_region="sa-east-1"),
        regions.gcs("gcs-us"),
    ]
    key = "clientes/logical/20261204T201500Z-3f9a/dump.enc"

    with FanoutWriter(targets, key) as writer:
        data = write_random(writer, 13 * MIB + 5)
        result = writer.close()

    assert result.failures == {}
    assert result.size == len(data)
    assert result.sha256 == sha256_hex(data)
    assert sorted(result.objects) == ["fs", "gcs-us", "s3-sp", "s3-us"]
    for region in targets:
        assert result.objects[region.name].size == len(data)
        assert sha256_hex(region.get_bytes(key)) == result.sha256


@pytest.fixture
def doomed_moto():
    with MotoServer() as server:
        yield server


def wait_for_stored_part(server: MotoServer, bucket: str, timeout: float = 10.0) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            if client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts"):
                return
        time.sleep(0.02)
    raise AssertionError(f"no multipart part reached bucket {bucket} within {timeout} s")


def fanout_with_dying_region(regions: Regions, doomed_moto: MotoServer, quorum: int | None):
    """Write 32 MiB to fs + S3 + a second S3 server that is killed once it stored a part."""
    doomed = regions.s3("s3-doomed", moto=doomed_moto)
    targets = [regions.filesystem("fs"), regions.s3("s3-main"), doomed]
    writer = FanoutWriter(targets, "db/dump.enc", quorum=quorum)
    with writer:
        data = write_random(writer, 12 * MIB)
        wait_for_stored_part(doomed_moto, doomed.bucket)
        # The multipart upload left on the killed server cannot be checked.
        doomed_moto.kill()
        data += write_random(writer, 20 * MIB)
        writer.close()
    return targets, writer, data


def test_fanout_region_failure_breaks_full_quorum(regions, doomed_moto):
    started = time.monotonic()

    with pytest.raises(FanoutError) as raised:
        fanout_with_dying_region(regions, doomed_moto, quorum=None)

    assert sorted(raised.value.failures) == ["s3-doomed"]
    assert raised.value.transient is True
    assert "s3-doomed" in raised.value.message
    assert regions.leftovers("fs") == []
    assert regions.leftovers("s3-main") == []
    assert time.monotonic() - started < 30


def test_fanout_region_failure_within_quorum(regions, doomed_moto):
    targets, writer, data = fanout_with_dying_region(regions, doomed_moto, quorum=2)
    result = writer.result

    assert sorted(result.objects) == ["fs", "s3-main"]
    assert sorted(result.failures) == ["s3-doomed"]
    assert isinstance(result.failures["s3-doomed"], StorageError)
    assert result.failures["s3-doomed"].transient is True
    assert result.sha256 == sha256_hex(data)
    assert sha256_hex(targets[0].get_bytes("db/dump.enc")) == result.sha256
    assert sha256_hex(targets[1].get_bytes("db/dump.enc")) == result.sha256


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_fanout_producer_exception_aborts(regions, exception):
    targets = [regions.filesystem("fs"), regions.s3("s3"), regions.gcs("gcs")]

    with pytest.raises(exception):
        with FanoutWriter(targets, "db/dump.enc") as writer:
            write_random(writer, 12 * MIB)
            raise exception("pg_dump died")

    for region in targets:
        assert regions.leftovers(region) == [], region.name


def test_fanout_commit_failure_deletes_committed_copies(regions, monkeypatch):
    import storage.s3

    targets = [regions.filesystem("fs"), regions.gcs("gcs"), regions.s3("s3")]
    monkeypatch.setattr(storage.s3, "composite_sha256", lambda digests: "AAAA-2")

    with pytest.raises(FanoutError) as raised:
        with FanoutWriter(targets, "db/dump.enc") as writer:
            write_random(writer, 7 * MIB)

    assert sorted(raised.value.failures) == ["s3"]
    for region in targets:
        assert regions.leftovers(region) == [], region.name


def test_fanout_abort_after_close_deletes(regions):
    targets = [regions.filesystem("fs"), regions.gcs("gcs")]
    writer = FanoutWriter(targets, "db/dump.enc")
    write_random(writer, 2 * MIB)
    writer.close()

    writer.abort()

    for region in targets:
        assert regions.leftovers(region) == [], region.name


def test_fanout_rejects_bad_arguments(tmp_path):
    first = FilesystemDriver("a", tmp_path)
    second = FilesystemDriver("b", tmp_path)

    with pytest.raises(ValueError):
        FanoutWriter([], "k")
    with pytest.raises(ValueError):
        FanoutWriter([first, first], "k")
    with pytest.raises(ValueError):
        FanoutWriter([first, second], "k", quorum=3)
    with pytest.raises(ValueError):
        FanoutWriter([first, second], "k", quorum=0)


class ThrottledRegion(Region):
    """A filesystem region whose uploads sleep before each write, to make the producer wait."""

    def __init__(self, inner: FilesystemDriver, delay: float):
        self.inner = inner
        self.name = inner.name
        self.kind = inner.kind
        self.location = inner.location
        self.delay = delay

    def begin_upload(self, key):
        upload = self.inner.begin_upload(key)
        original_write = upload.write

        def slow_write(data):
            time.sleep(self.delay)
            original_write(data)

        upload.write = slow_write
        return upload

    def open_read(self, key):
        return self.inner.open_read(key)

    def stat(self, key):
        return self.inner.stat(key)

    def list(self, prefix):
        return self.inner.list(prefix)

    def put_bytes(self, key, data, *, if_absent=False):
        return self.inner.put_bytes(key, data, if_absent=if_absent)

    def delete(self, key):
        self.inner.delete(key)


def make_directory(path: Path) -> Path:
    path.mkdir()
    return path


class MemoryTracer:
    """Measures, with tracemalloc, how far traced memory rose above its level at ``reset()``."""

    def reset(self) -> None:
        tracemalloc.reset_peak()
        self._baseline = tracemalloc.get_traced_memory()[0]

    def peak_growth(self) -> int:
        return tracemalloc.get_traced_memory()[1] - self._baseline


@pytest.fixture
def traced_memory():
    """Trace Python allocations from every thread for the test's duration."""
    already_tracing = tracemalloc.is_tracing()
    if not already_tracing:
        tracemalloc.start()
    yield MemoryTracer()
    if not already_tracing:
        tracemalloc.stop()


def test_fanout_memory_stays_bounded(tmp_path, traced_memory):
    # tracemalloc counts every Python allocation, chunk buffers included, from
    # every thread; RSS would hide growth behind memory freed by earlier tests.
    fast = FilesystemDriver("fast", make_directory(tmp_path / "fast"))
    slow = ThrottledRegion(FilesystemDriver("slow", make_directory(tmp_path / "slow")), delay=0.002)
    total = 200 * MIB
    seed = random.randbytes(MIB)
    digest = hashlib.sha256()
    traced_memory.reset()

    with FanoutWriter([fast, slow], "db/dump.enc", queue_chunks=4) as writer:
        for index in range(total // MIB):
            # A new bytes object per chunk, as a real producer makes.
            chunk = index.to_bytes(8, "big") + seed[8:]
            digest.update(chunk)
            writer.write(chunk)
        result = writer.close()
    peak_growth = traced_memory.peak_growth()

    # At most queue_chunks + 2 = 6 chunks of 1 MiB are alive, plus the 1 MiB
    # slice the producer builds each chunk from; an unbounded queue in front of
    # the throttled region would hold tens of MiB here.
    assert peak_growth < 12 * MIB, f"traced memory grew by {peak_growth / MIB:.1f} MiB"
    assert result.size == total
    assert result.sha256 == digest.hexdigest()
    assert os.path.getsize(tmp_path / "fast" / "db" / "dump.enc") == total
    assert os.path.getsize(tmp_path / "slow" / "db" / "dump.enc") == total
