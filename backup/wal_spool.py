"""The spool directory of asynchronous WAL archiving: shipped markers and per-file locks.

Terms:

- *spool directory*: ``pitr.spool_dir``, by default
  ``<state_dir>/spool/<database>``, on the database host. It contains no WAL,
  only the small files below, so acknowledging a file never depends on a local
  copy.
- *shipped marker*: ``shipped/<file name>``, a JSON object with the plaintext
  size and SHA-256 of a WAL file that ``wal-ship`` stored in every WAL region,
  and the file's *identity*: device, inode, size, modification and change
  times (``st_ctime_ns`` changes on every write and cannot be set by
  ``utime``). The marker is written, flushed to disk, only after every region
  confirmed the upload, and only when the identity was the same before and
  after the file was read.
- *heartbeat*: ``shipper.heartbeat``, whose modification time the shipper
  renews while it runs. ``wal-push`` waits for a marker only while the
  heartbeat is fresh, and pushes the file itself otherwise.
- *file lock*: an exclusive ``flock`` on one of ``locks/<n>.lock`` (the file
  name hashed into a fixed set of lock files, so lock files are never
  deleted while someone waits on them). ``wal-push`` and ``wal-ship`` take it
  around checking and uploading one file, so the same file is never uploaded
  twice at once.

``wal-push`` acknowledges a file from its marker only when the file in
``pg_wal`` still has the recorded identity (or, for a marker without one, the
recorded SHA-256), so "acknowledged" keeps meaning "stored in every WAL
region" in asynchronous mode too. Comparing the identity instead of hashing
16 MiB again saves about 20 ms per file.

This module imports only the standard library: ``wal-push`` runs it once per
WAL file before anything else is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import zlib
from pathlib import Path
from typing import Iterator

LOCK_STRIPES = 64
READ_SIZE = 1 << 20
HEARTBEAT_FILE = "shipper.heartbeat"
# The shipper touches the heartbeat at least every poll (0.2 s) and after each upload.
HEARTBEAT_MAX_AGE_SECONDS = 5.0
MARKER_POLL_SECONDS = 0.02


def shipped_dir(spool: Path) -> Path:
    """Return the directory of shipped markers."""
    return Path(spool) / "shipped"


def ensure_spool(spool: Path) -> None:
    """Create the spool layout (mode 0700 directories) when missing."""
    for directory in (Path(spool), shipped_dir(spool), Path(spool) / "locks"):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)


@contextlib.contextmanager
def file_lock(spool: Path, name: str) -> Iterator[None]:
    """Hold the exclusive lock for WAL file ``name`` (blocks until free)."""
    stripe = zlib.crc32(name.encode("ascii")) % LOCK_STRIPES
    path = Path(spool) / "locks" / f"{stripe:02d}.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def file_sha256(path: Path) -> tuple[str, int]:
    """Return (hex SHA-256, size) of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            piece = handle.read(READ_SIZE)
            if not piece:
                break
            digest.update(piece)
            size += len(piece)
    return digest.hexdigest(), size


def file_identity(path: Path) -> list[int]:
    """Return [device, inode, size, mtime_ns, ctime_ns] of the file at ``path``."""
    result = os.stat(path)
    return [result.st_dev, result.st_ino, result.st_size, result.st_mtime_ns, result.st_ctime_ns]


def write_marker(spool: Path, name: str, sha256: str, size: int, identity: list[int] | None = None) -> None:
    """Record durably that WAL file ``name`` with this content is in every WAL region."""
    directory = shipped_dir(spool)
    temporary = directory / f".{name}.tmp"
    with open(temporary, "w", encoding="ascii") as handle:
        json.dump({"sha256": sha256, "size": size, "identity": identity}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, directory / name)
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_marker(spool: Path, name: str) -> dict | None:
    """Return the shipped marker of ``name``, or None when there is none or it is unreadable."""
    try:
        with open(shipped_dir(spool) / name, encoding="ascii") as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("sha256"), str) or not isinstance(marker.get("size"), int):
        return None
    return marker


def remove_marker(spool: Path, name: str) -> None:
    """Delete the shipped marker of ``name``; a missing marker is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(shipped_dir(spool) / name)


def touch_heartbeat(spool: Path) -> None:
    """Record that the shipper is running (the heartbeat file's modification time)."""
    path = Path(spool) / HEARTBEAT_FILE
    try:
        os.utime(path)
    except FileNotFoundError:
        path.touch()


def shipper_alive(spool: Path, max_age: float = HEARTBEAT_MAX_AGE_SECONDS) -> bool:
    """Return whether a shipper touched the heartbeat within ``max_age`` seconds."""
    try:
        return time.time() - os.stat(Path(spool) / HEARTBEAT_FILE).st_mtime < max_age
    except OSError:
        return False


def wait_for_shipper(spool: Path, path: Path, timeout: float) -> bool:
    """Acknowledge ``path`` from its marker, waiting up to ``timeout`` s while a live shipper works on it.

    Returns False when the caller must push the file itself: no shipper is
    running, the wait timed out, or the marker did not match the file.
    """
    deadline = time.monotonic() + timeout
    while True:
        state = check_marker(spool, path)
        if state is not None:
            return state
        if time.monotonic() >= deadline or not shipper_alive(spool):
            return False
        time.sleep(MARKER_POLL_SECONDS)


def acknowledge_from_marker(spool: Path, path: Path) -> bool:
    """Return True, and consume the marker, when ``path`` was shipped with exactly its current content."""
    return check_marker(spool, path) is True


def check_marker(spool: Path, path: Path) -> bool | None:
    """Compare ``path`` with its shipped marker: None when there is no marker, else whether it matches.

    The marker is consumed either way; after a mismatch the caller pushes
    the file itself.
    """
    name = Path(path).name
    marker = read_marker(spool, name)
    if marker is None:
        return None
    if isinstance(marker.get("identity"), list):
        try:
            same = file_identity(path) == marker["identity"]
        except OSError:
            same = False
    else:
        sha256, size = file_sha256(path)
        same = marker["sha256"] == sha256 and marker["size"] == size
    remove_marker(spool, name)
    return same
