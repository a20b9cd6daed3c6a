"""The write path shared by every backup kind: compress, encrypt, hash, fan out.

One producer (``pg_dump``, ``pg_basebackup``, a WAL segment file) is read in
fixed-size pieces. Each piece goes through zstd compression, then the
streaming AEAD of :mod:`encryption.stream`, then :class:`storage.fanout.FanoutWriter`,
which computes size and SHA-256 of the ciphertext once and hands the same
bytes to one upload per region. Nothing is staged on disk, and memory stays
bounded by the read size, one encryption chunk and the fan-out queues.

The producer process runs in parallel with this loop (it is another process),
compression releases the GIL inside zstd, and uploads run in the fan-out's
threads, so on two cores the pipeline mostly rides along with the producer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import zstandard
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from encryption.keys import key_id
from encryption.stream import Encryptor
from resguardo.log import get_logger
from storage.base import ObjectInfo, Region
from storage.fanout import FanoutWriter

log = get_logger("backup.pipeline")

READ_SIZE = 1 << 20
ENCRYPTION_FORMAT = "RSGENC01"


@dataclass
class StoredObject:
    """Description of one stored object, as recorded in a manifest."""

    name: str
    size: int
    sha256: str
    plaintext_size: int
    compression: str
    regions: dict[str, ObjectInfo]
    failed_regions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def manifest_entry(self, recipients: list[X25519PublicKey]) -> dict:
        """Return the manifest's description of this object."""
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "plaintext_size": self.plaintext_size,
            "compression": self.compression,
            "encryption": {"format": ENCRYPTION_FORMAT, "recipients": [key_id(r) for r in recipients]},
            "regions": {
                name: {"key": info.key, "size": info.size, "sha256": info.sha256}
                for name, info in sorted(self.regions.items())
            },
        }


class _EncryptingSink:
    """A write-only file object that encrypts what zstd emits and feeds the fan-out."""

    def __init__(self, encryptor: Encryptor, fanout: FanoutWriter):
        self.encryptor = encryptor
        self.fanout = fanout

    def write(self, data: bytes) -> int:
        out = self.encryptor.update(data)
        if out:
            self.fanout.write(out)
        return len(data)

    def flush(self) -> None:
        pass


def store_stream(
    source: BinaryIO,
    *,
    regions: list[Region],
    key: str,
    object_name: str,
    backup_id: str,
    recipients: list[X25519PublicKey],
    quorum: int | None = None,
    compression_level: int = 3,
    chunk_size: int = 1 << 20,
    read_size: int = READ_SIZE,
    on_progress: Callable[[int], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> StoredObject:
    """Compress, encrypt and store everything ``source`` yields under ``key`` in ``regions``.

    ``source`` is read until EOF. Any exception, from reading ``source`` or
    from ``before_commit``, aborts every upload, so no region keeps a partial
    object. Returns once the quorum of regions confirmed size and SHA-256.

    ``before_commit`` runs after EOF and before any region commits. The caller
    checks the producer's exit status there, so a failed ``pg_dump`` whose
    output merely ended early never becomes a backup.
    """
    started = time.monotonic()
    encryptor = Encryptor(recipients, backup_id=backup_id, object_name=object_name, chunk_size=chunk_size)
    compression = f"zstd-{compression_level}" if compression_level > 0 else "none"
    plaintext_size = 0

    with FanoutWriter(regions, key, quorum=quorum) as fanout:
        sink = _EncryptingSink(encryptor, fanout)
        if compression_level > 0:
            compressor = zstandard.ZstdCompressor(level=compression_level)
            writer = compressor.stream_writer(sink, closefd=False, write_size=chunk_size)
        else:
            writer = sink
        while True:
            piece = source.read(read_size)
            if not piece:
                break
            plaintext_size += len(piece)
            writer.write(piece)
            if on_progress is not None:
                on_progress(plaintext_size)
        if compression_level > 0:
            writer.flush(zstandard.FLUSH_FRAME)
        tail = encryptor.finalize()
        if tail:
            fanout.write(tail)
        if before_commit is not None:
            before_commit()
        result = fanout.close()

    stored = StoredObject(
        name=object_name,
        size=result.size,
        sha256=result.sha256,
        plaintext_size=plaintext_size,
        compression="zstd" if compression_level > 0 else "none",
        regions=dict(result.objects),
        failed_regions={name: str(error) for name, error in result.failures.items()},
        seconds=round(time.monotonic() - started, 3),
    )
    log.info(
        "pipeline.stored",
        extra={
            "key": key,
            "backup_id": backup_id,
            "plaintext_bytes": plaintext_size,
            "stored_bytes": stored.size,
            "regions": sorted(stored.regions),
            "failed_regions": sorted(stored.failed_regions),
            "seconds": stored.seconds,
            "compression": compression,
        },
    )
    return stored
