"""``wal-ship``: the asynchronous WAL shipper that uploads ahead of ``archive_command``.

PostgreSQL's archiver calls ``archive_command`` for one file at a time and
waits for it. With ``pitr.async_push`` the shipper runs beside the server,
watches ``<pgdata>/pg_wal/archive_status/*.ready`` (the files PostgreSQL
still has to archive), pushes them to every WAL region with
``pitr.push_parallel`` uploads at once, and writes a shipped marker for each
(see :mod:`backup.wal_spool`). When the archiver then calls ``wal-push`` for
that file, ``wal-push`` only compares the file's identity with the marker and
returns. While the shipper's heartbeat is fresh, ``wal-push`` waits for a
marker that is not there yet. Without a fresh heartbeat, or after 30 s, it
pushes the file itself under the same per-file lock. Nothing is acknowledged before it is in
every region, so the recovery point (RPO) is the same as in synchronous
mode: what is acknowledged is in the regions, what is not is still in
``pg_wal``.

The shipper needs read access to ``pg_wal`` (run it as the server's OS user)
and ``pitr.pgdata`` in the configuration.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backup.wal_format import archive_file_kind
from backup.wal_spool import (
    ensure_spool,
    file_identity,
    file_lock,
    read_marker,
    remove_marker,
    shipped_dir,
    touch_heartbeat,
    write_marker,
)
from resguardo.errors import ConfigError
from resguardo.i18n import _
from resguardo.log import get_logger

if TYPE_CHECKING:
    from resguardo.config import ResguardoConfig

log = get_logger("backup.wal_ship")

POLL_SECONDS = 0.2
RETRY_DELAY_SECONDS = 5.0


def spool_directory(config: "ResguardoConfig", database: str) -> Path:
    """Return the spool directory of ``database``: ``pitr.spool_dir`` or ``<state_dir>/spool/<database>``."""
    db = config.database(database)
    if db.pitr.spool_dir is not None:
        return config.resolve(db.pitr.spool_dir)
    return config.resolve(config.state_dir) / "spool" / database


def ready_files(pgdata: Path) -> list[str]:
    """Return the WAL files PostgreSQL has marked ready for archiving, history files first."""
    status_dir = Path(pgdata) / "pg_wal" / "archive_status"
    names = []
    try:
        entries = list(os.scandir(status_dir))
    except FileNotFoundError:
        # Before initdb finished, or a wrong pitr.pgdata: nothing to ship yet.
        return []
    for entry in entries:
        if entry.name.endswith(".ready"):
            name = entry.name[: -len(".ready")]
            if archive_file_kind(name) is not None:
                names.append(name)
    # PostgreSQL archives timeline history files before segments; doing the same keeps them early in the regions.
    return sorted(names, key=lambda name: (not name.endswith(".history"), name))


@dataclass
class ShipStats:
    """Counters of one shipper run."""

    shipped: int = 0
    already_shipped: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)


class WalShipper:
    """Uploads ready WAL files ahead of the archiver; see the module docstring."""

    def __init__(self, config: "ResguardoConfig", database: str, *, parallel: int | None = None,
                 pgdata: Path | None = None):
        from backup.wal import WalArchive, control_system_identifier

        self.database = database
        db = config.database(database)
        self.pgdata = Path(pgdata) if pgdata else config.resolve(db.pitr.pgdata)
        if self.pgdata is None:
            raise ConfigError(
                _("databases.{db}.pitr.pgdata is not set; wal-ship needs the server's data directory").format(db=database),
                _("set pitr.pgdata to the data directory and run wal-ship on the database host as its OS user"),
            )
        self.spool = spool_directory(config, database)
        ensure_spool(self.spool)
        self.parallel = parallel or db.pitr.push_parallel
        self.archive = WalArchive(config, database)
        self.system_identifier = control_system_identifier(self.pgdata)
        self.stats = ShipStats()
        self._in_flight: dict[str, Future] = {}
        self._retry_after: dict[str, float] = {}
        self._lock = threading.Lock()
        self.stop_event = threading.Event()

    def _ship_one(self, name: str) -> None:
        from backup.wal import describe_error

        path = self.pgdata / "pg_wal" / name
        try:
            with file_lock(self.spool, name):
                if read_marker(self.spool, name) is not None:
                    return
                before = file_identity(path)
                result = self.archive.push(path, control_system_identifier=self.system_identifier)
                # A file that changed while it was read gets a marker without identity,
                # so wal-push compares the SHA-256 of its content instead.
                identity = before if file_identity(path) == before else None
                write_marker(self.spool, name, result.plaintext_sha256, result.plaintext_size, identity)
            with self._lock:
                if result.written:
                    self.stats.shipped += 1
                    self.stats.bytes += result.plaintext_size
                else:
                    self.stats.already_shipped += 1
        except FileNotFoundError:
            # wal-push archived it first and PostgreSQL already recycled the segment.
            return
        except Exception as error:  # noqa: BLE001 - logged and retried; wal-push stays the safety net
            with self._lock:
                self.stats.failed += 1
                self.stats.errors[name] = describe_error(error)
                self._retry_after[name] = time.monotonic() + RETRY_DELAY_SECONDS
            log.warning("wal.ship.failed", extra={"database": self.database, "wal_file": name,
                                                  "error": describe_error(error)})

    def _prune_markers(self, ready: set[str]) -> None:
        """Delete markers of files that are neither ready nor in pg_wal any more."""
        for entry in os.scandir(shipped_dir(self.spool)):
            if entry.name.startswith(".") or entry.name in ready:
                continue
            if not (self.pgdata / "pg_wal" / entry.name).exists():
                remove_marker(self.spool, entry.name)

    def run(self, *, once: bool = False, poll_seconds: float = POLL_SECONDS) -> ShipStats:
        """Ship until :attr:`stop_event` is set, or, with ``once``, until nothing is left to ship."""
        started = time.monotonic()
        log.info("wal.ship.start", extra={"database": self.database, "pgdata": str(self.pgdata),
                                          "spool": str(self.spool), "parallel": self.parallel})
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="wal-ship") as pool:
            prune_at = 0.0
            while not self.stop_event.is_set():
                ready = ready_files(self.pgdata)
                now = time.monotonic()
                with self._lock:
                    for name, future in list(self._in_flight.items()):
                        if future.done():
                            del self._in_flight[name]
                    pending = [name for name in ready
                               if name not in self._in_flight and self._retry_after.get(name, 0) <= now
                               and read_marker(self.spool, name) is None]
                    # Keep a few uploads queued per worker; new files are still picked in name order.
                    room = max(0, 4 * self.parallel - len(self._in_flight))
                    for name in pending[:room]:
                        self._in_flight[name] = pool.submit(self._ship_one, name)
                    busy = bool(self._in_flight)
                if now >= prune_at:
                    self._prune_markers(set(ready))
                    prune_at = now + 10
                touch_heartbeat(self.spool)
                if once and not busy and not pending:
                    break
                if busy:
                    # Refill as soon as an upload finishes instead of sleeping a whole poll.
                    wait(list(self._in_flight.values()), timeout=poll_seconds, return_when=FIRST_COMPLETED)
                else:
                    self.stop_event.wait(poll_seconds)
        self.stats.seconds = round(time.monotonic() - started, 3)
        log.info("wal.ship.stop", extra={"database": self.database, "shipped": self.stats.shipped,
                                         "failed": self.stats.failed, "bytes": self.stats.bytes,
                                         "seconds": self.stats.seconds})
        return self.stats
