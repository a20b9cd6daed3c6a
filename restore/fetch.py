"""The read path: fetch an object from the first region that returns it intact.

Regions are tried in order (the manifest's order, or the one the caller
gives). For each region the object is streamed through SHA-256, the AEAD
decryptor and zstd decompression into a *sink* that the caller creates anew
for each attempt. A region is skipped, and the attempt recorded, when it is
unreachable, does not have the object, reports another size, or returns bytes
that fail authentication or the manifest's SHA-256. The sink's last bytes are
released only after the whole object authenticated, so a truncated copy is
never taken for a complete one.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, TypeVar

import zstandard
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from encryption.stream import Decryptor
from resguardo.errors import IntegrityError, KeyError_, NotFoundError, ResguardoError, StorageError
from resguardo.i18n import _
from resguardo.log import get_logger
from storage.base import Region

log = get_logger("restore.fetch")

READ_SIZE = 1 << 20
T = TypeVar("T")


class Sink(Protocol[T]):
    """Destination of the plaintext; a new sink is created for every region attempt."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> T: ...

    def abort(self) -> None: ...


@dataclass
class Attempt:
    """One region tried for one object."""

    region: str
    key: str
    outcome: str  # "ok", "missing", "unreachable", "size_mismatch", "corrupted"
    error: str | None = None
    seconds: float = 0.0


@dataclass
class StageTimes:
    """Seconds spent in each stage of one pipelined fetch.

    Each figure is time this process spent waiting on or computing that
    stage. The stages overlap in wall time only through the sink's own
    process, for example pg_restore.
    """

    download: float = 0.0
    decrypt: float = 0.0
    write: float = 0.0


@dataclass
class FetchResult(Generic[T]):
    """The sink's result and the trail of attempts that led to it."""

    value: T
    region: str
    sha256: str
    size: int
    attempts: list[Attempt] = field(default_factory=list)
    seconds: float = 0.0
    stages: StageTimes = field(default_factory=StageTimes)


class _PlaintextWriter:
    """zstd's output side: forwards decompressed bytes to the sink."""

    def __init__(self, sink: Sink[Any], stages: StageTimes):
        self.sink = sink
        self.size = 0
        self.stages = stages

    def write(self, data: bytes) -> int:
        self.size += len(data)
        started = time.monotonic()
        self.sink.write(data)
        self.stages.write += time.monotonic() - started
        return len(data)

    def flush(self) -> None:
        pass


def outcome_label(outcome: str) -> str:
    """Return the translated word for an attempt outcome (``corrupted``, ``missing``, ...)."""
    labels = {
        "ok": _("intact"),
        "missing": _("missing"),
        "unreachable": _("unreachable"),
        "size_mismatch": _("size differs from the manifest"),
        "corrupted": _("corrupted"),
    }
    return labels.get(outcome, outcome)


def _stream_one(region: Region, key: str, entry: dict[str, Any], identities: list[X25519PrivateKey],
                backup_id: str, object_name: str, sink: Sink[Any], stages: StageTimes) -> tuple[str, int]:
    decryptor = Decryptor(identities, expected_backup_id=backup_id, expected_object_name=object_name)
    digest = hashlib.sha256()
    size = 0
    writer = _PlaintextWriter(sink, stages)
    compressed = entry.get("compression", "none") == "zstd"
    if compressed:
        decompressor = zstandard.ZstdDecompressor().stream_writer(writer, closefd=False, write_size=READ_SIZE)
        output = decompressor
    else:
        output = writer
    with region.open_read(key) as handle:
        while True:
            started = time.monotonic()
            piece = handle.read(READ_SIZE)
            stages.download += time.monotonic() - started
            if not piece:
                break
            size += len(piece)
            digest.update(piece)
            if size > entry["size"]:
                raise IntegrityError(
                    _("object {region}:{key} is longer than the {size} bytes in the manifest").format(
                        region=region.name, key=key, size=entry["size"]
                    ),
                    _("the copy was replaced or appended to; it is skipped"),
                )
            started = time.monotonic()
            plain = decryptor.update(piece)
            stages.decrypt += time.monotonic() - started
            if plain:
                # zstd decompression runs inside this call and is counted in no
                # stage; _PlaintextWriter counts the sink's share as "write".
                output.write(plain)
    # Decryptor.finalize raises on truncation before the last plaintext chunk is released.
    plain = decryptor.finalize()
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        raise IntegrityError(
            _("object {region}:{key} does not match the manifest (size {size}, SHA-256 {sha})").format(
                region=region.name, key=key, size=size, sha=digest.hexdigest()[:16]
            ),
            _("this copy is corrupted or was replaced; another region's copy is used when one exists"),
        )
    if plain:
        output.write(plain)
    if compressed:
        decompressor.flush()
    return digest.hexdigest(), size


def fetch_object(
    regions: list[Region],
    entry: dict[str, Any],
    identities: list[X25519PrivateKey],
    *,
    backup_id: str,
    sink_factory: Callable[[], Sink[T]],
) -> FetchResult[T]:
    """Stream one manifest object into a sink, falling back across regions.

    ``regions`` lists the regions to try, in order; those without a copy in
    the manifest entry are skipped. Raises IntegrityError or StorageError with
    every attempt listed when no region returns an intact copy. A wrong
    private key raises KeyError_ at once, because no other region can help.
    """
    started = time.monotonic()
    attempts: list[Attempt] = []
    object_name = entry["name"]
    for region in regions:
        copy = entry["regions"].get(region.name)
        if copy is None:
            continue
        key = copy["key"]
        attempt_started = time.monotonic()
        try:
            info = region.stat(key)
            if info is None:
                raise NotFoundError(_("object {region}:{key} not found").format(region=region.name, key=key))
            if info.size != entry["size"]:
                attempts.append(Attempt(region.name, key, "size_mismatch",
                                        _("stored size {stored}, manifest size {expected}").format(
                                            stored=info.size, expected=entry["size"])))
                log.warning("fetch.size_mismatch", extra={"region": region.name, "key": key,
                                                          "stored": info.size, "expected": entry["size"]})
                continue
            sink = sink_factory()
            stages = StageTimes()
            try:
                sha, size = _stream_one(region, key, entry, identities, backup_id, object_name, sink, stages)
            except BaseException:
                sink.abort()
                raise
            started_close = time.monotonic()
            value = sink.close()
            stages.write += time.monotonic() - started_close
        except KeyError_:
            raise
        except NotFoundError as error:
            attempts.append(Attempt(region.name, key, "missing", error.message, time.monotonic() - attempt_started))
            log.warning("fetch.missing", extra={"region": region.name, "key": key})
            continue
        except IntegrityError as error:
            attempts.append(Attempt(region.name, key, "corrupted", error.message, time.monotonic() - attempt_started))
            log.warning("fetch.corrupted", extra={"region": region.name, "key": key, "error": error.message})
            continue
        except StorageError as error:
            attempts.append(Attempt(region.name, key, "unreachable", error.message, time.monotonic() - attempt_started))
            log.warning("fetch.region_failed", extra={"region": region.name, "key": key, "error": error.message})
            continue
        attempts.append(Attempt(region.name, key, "ok", None, round(time.monotonic() - attempt_started, 3)))
        log.info("fetch.ok", extra={"region": region.name, "key": key, "bytes": size,
                                    "attempts": len(attempts)})
        stages = StageTimes(round(stages.download, 3), round(stages.decrypt, 3), round(stages.write, 3))
        return FetchResult(value, region.name, sha, size, attempts, round(time.monotonic() - started, 3), stages)

    detail = "; ".join(f"{a.region}: {outcome_label(a.outcome)} ({a.error})" for a in attempts) or _(
        "no region holds a copy")
    error_type: type[ResguardoError] = IntegrityError if any(a.outcome == "corrupted" for a in attempts) else StorageError
    raise error_type(
        _("no region returned an intact copy of {name} of backup {backup_id}: {detail}").format(
            name=object_name, backup_id=backup_id, detail=detail
        ),
        _("check the regions listed; if every copy is damaged, restore an older backup"),
    )
