"""Physical base backups: ``pg_basebackup`` streamed through compression, encryption and fan-out.

A *base backup* is a copy of the whole data directory taken while the server
runs. It is consistent only together with the WAL written from its *start
LSN* (the checkpoint it began at) to its *stop LSN*; replaying WAL further,
from the archive, brings it to any later point in time.

Choices:

- ``pg_basebackup -D - -Ft``: one tar stream on standard output, read by
  :func:`backup.pipeline.store_stream` without touching the local disk. This
  form supports only the default tablespace; ``pg_basebackup`` exits with an
  error on a cluster with other tablespaces, and so does the backup.
- ``-X none``: the tar carries no WAL. The backup relies on the WAL archive,
  which point-in-time recovery needs anyway. ``-X fetch`` would copy the WAL
  into the tar at the end, but fails when the server recycled a needed
  segment during a long backup unless ``wal_keep_size`` is large enough.
  With ``-X none`` the server itself waits at the end until every segment of
  the backup is archived, and this module then checks that those segments
  are in every WAL region before it commits the manifest.
- Metadata comes from the stream: the tar members ``backup_label`` (start
  LSN, checkpoint, start timeline), ``backup_manifest`` (which
  ``pg_basebackup`` appends to a tar written to standard output; its
  ``WAL-Ranges`` give the stop LSN and timeline) and ``global/pg_control``
  (the system identifier) are captured by :class:`TarScanner` as they pass.

The manifest (kind ``base``) is signed and committed last, as for logical
backups; a base backup exists only once its manifest does.
"""

from __future__ import annotations

import json
import platform
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from backup.wal_format import (
    WalFormatError,
    format_lsn,
    lsn_segment,
    parse_control_system_identifier,
    parse_lsn,
    segment_name,
)
from resguardo.errors import ConfigError, ExternalToolError, IntegrityError, StorageError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("backup.basebackup")

BASE_OBJECT = "base.tar.enc"
TAR_BLOCK = 512
# Members whose content the scanner keeps, with the largest size kept. The
# backup manifest has one line per file; 64 MiB covers millions of files.
CAPTURED_MEMBERS = {
    "backup_label": 1 << 20,
    "tablespace_map": 1 << 20,
    "backup_manifest": 64 << 20,
    "global/pg_control": 1 << 16,
}


# -- tar stream scanning --------------------------------------------------------


class TarScanner:
    """A read-through wrapper that parses a ustar stream and keeps chosen members.

    ``read(n)`` returns exactly what the wrapped stream returns; the headers
    and the data of :data:`CAPTURED_MEMBERS` are parsed on the side. After
    EOF, :attr:`members` maps captured names to their bytes, :attr:`count`
    is the number of members and :attr:`complete` is True once the two zero
    blocks that end a tar were seen.
    """

    PROGRESS_BYTES = 256 << 20

    def __init__(self, source: BinaryIO, captured: dict[str, int] | None = None, on_progress=None):
        self.source = source
        self.on_progress = on_progress
        self._next_progress = self.PROGRESS_BYTES
        self.captured = CAPTURED_MEMBERS if captured is None else captured
        self.members: dict[str, bytes] = {}
        self.count = 0
        self.complete = False
        self._header = bytearray()
        self._remaining = 0  # data bytes left in the current member
        self._padding = 0  # padding bytes after them
        self._capture: bytearray | None = None
        self._capture_name = ""
        self._zero_blocks = 0
        self.bytes_read = 0
        self.last_data_at = time.monotonic()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        if data:
            self.bytes_read += len(data)
            self.last_data_at = time.monotonic()
            self._feed(memoryview(data))
            if self.on_progress is not None and self.bytes_read >= self._next_progress:
                self._next_progress += self.PROGRESS_BYTES
                self.on_progress(self.bytes_read)
        return data

    def _feed(self, view: memoryview) -> None:
        while view:
            if self._remaining:
                take = min(self._remaining, len(view))
                if self._capture is not None:
                    self._capture += view[:take]
                self._remaining -= take
                view = view[take:]
                if not self._remaining and self._capture is not None:
                    self.members[self._capture_name] = bytes(self._capture)
                    self._capture = None
                continue
            if self._padding:
                take = min(self._padding, len(view))
                self._padding -= take
                view = view[take:]
                continue
            take = min(TAR_BLOCK - len(self._header), len(view))
            self._header += view[:take]
            view = view[take:]
            if len(self._header) == TAR_BLOCK:
                self._parse_header(bytes(self._header))
                self._header.clear()

    def _parse_header(self, block: bytes) -> None:
        if block == bytes(TAR_BLOCK):
            self._zero_blocks += 1
            if self._zero_blocks >= 2:
                self.complete = True
            return
        self._zero_blocks = 0
        name = block[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if block[257:262] == b"ustar" else ""
        if prefix:
            name = f"{prefix}/{name}"
        size = _tar_number(block[124:136])
        self.count += 1
        self._remaining = size
        self._padding = (-size) % TAR_BLOCK
        limit = self.captured.get(name)
        if limit is not None and size <= limit:
            self._capture = bytearray()
            self._capture_name = name
            if size == 0:
                self.members[name] = b""
                self._capture = None


def _tar_number(field_bytes: bytes) -> int:
    """Decode a tar numeric field: octal text, or base-256 when the high bit is set."""
    if field_bytes[0] & 0x80:
        return int.from_bytes(field_bytes[1:], "big")
    text = field_bytes.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


# -- metadata parsing -----------------------------------------------------------


def parse_backup_label(text: str) -> dict[str, Any]:
    """Parse the ``backup_label`` file that PostgreSQL writes into every base backup.

    >>> label = parse_backup_label(
    ...     "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\\n"
    ...     "CHECKPOINT LOCATION: 0/3000060\\nBACKUP METHOD: streamed\\nBACKUP FROM: primary\\n"
    ...     "START TIME: 2026-12-04 20:13:10 UTC\\nLABEL: x\\nSTART TIMELINE: 1\\n")
    >>> label["start_lsn"], label["start_wal_file"], label["start_timeline"], label["backup_from"]
    ('0/3000028', '000000010000000000000003', 1, 'primary')
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, separator, value = line.partition(": ")
        if separator:
            fields[key.strip()] = value.strip()
    match = re.match(r"^([0-9A-Fa-f]+/[0-9A-Fa-f]+) \(file ([0-9A-F]{24})\)$", fields.get("START WAL LOCATION", ""))
    if not match:
        raise IntegrityError(
            _("backup_label has no valid START WAL LOCATION line"),
            _("the base backup stream is damaged or was not produced by pg_basebackup"),
        )
    return {
        "start_lsn": match.group(1),
        "start_wal_file": match.group(2),
        "checkpoint_lsn": fields.get("CHECKPOINT LOCATION"),
        "backup_method": fields.get("BACKUP METHOD"),
        "backup_from": fields.get("BACKUP FROM"),
        "start_time": fields.get("START TIME"),
        "label": fields.get("LABEL"),
        "start_timeline": int(fields.get("START TIMELINE", "0") or 0),
    }


def parse_wal_ranges(manifest_bytes: bytes) -> list[dict[str, Any]]:
    """Return the ``WAL-Ranges`` of a ``backup_manifest`` as dicts with integer LSNs."""
    try:
        document = json.loads(manifest_bytes)
        ranges = [
            {"timeline": int(item["Timeline"]), "start_lsn": parse_lsn(item["Start-LSN"]),
             "end_lsn": parse_lsn(item["End-LSN"])}
            for item in document["WAL-Ranges"]
        ]
    except (ValueError, KeyError, TypeError, WalFormatError) as error:
        raise IntegrityError(
            _("backup_manifest has no valid WAL-Ranges: {error}").format(error=error),
            _("the base backup stream is damaged or pg_basebackup is older than PostgreSQL 13"),
        ) from None
    if not ranges:
        raise IntegrityError(_("backup_manifest lists no WAL range"), _("the base backup stream is damaged"))
    return ranges


def required_wal_files(ranges: list[dict[str, Any]], segment_size: int) -> list[str]:
    """Return the names of every segment the WAL ranges touch, in replay order.

    >>> required_wal_files([{"timeline": 1, "start_lsn": 0x3000028, "end_lsn": 0x4000100}], 16 << 20)
    ['000000010000000000000003', '000000010000000000000004']
    """
    names = []
    for item in ranges:
        first = lsn_segment(item["start_lsn"], segment_size)
        last = lsn_segment(item["end_lsn"], segment_size)
        names.extend(segment_name(item["timeline"], number, segment_size) for number in range(first, last + 1))
    return names


# -- the backup -----------------------------------------------------------------


@dataclass
class BaseBackupResult:
    """A committed base backup."""

    backup_id: str
    manifest: dict[str, Any]
    regions: list[str]
    failed_regions: dict[str, str] = field(default_factory=dict)


class _StderrCollector(threading.Thread):
    """Reads pg_basebackup's stderr in a thread, so a full pipe cannot block it; keeps the last 64 KiB."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.data = bytearray()

    def run(self) -> None:
        for line in iter(self.stream.readline, b""):
            self.data += line
            if len(self.data) > 65536:
                del self.data[: len(self.data) - 65536]

    def text(self) -> str:
        return self.data.decode("utf-8", "replace").strip()


class _StallWatchdog(threading.Thread):
    """Kills pg_basebackup when its stream stops for ``stall_seconds`` after data began to flow.

    With ``-X none`` the server sends the last tar bytes only after every WAL
    segment of the backup is archived, and waits for that without a time
    limit. A broken ``archive_command`` would hang the backup forever. Before
    the first byte nothing is checked, because a spread checkpoint may take
    minutes.
    """

    def __init__(self, process: subprocess.Popen, scanner: "TarScanner", stall_seconds: float):
        super().__init__(daemon=True, name="basebackup-watchdog")
        self.process = process
        self.scanner = scanner
        self.stall_seconds = stall_seconds
        self.fired = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(1.0):
            if self.process.poll() is not None:
                return
            idle = time.monotonic() - self.scanner.last_data_at
            if self.scanner.bytes_read and idle > self.stall_seconds:
                self.fired = True
                log.error("basebackup.stalled", extra={"idle_seconds": round(idle), "bytes": self.scanner.bytes_read})
                self.process.kill()
                return

    def stop(self) -> None:
        self._stop_event.set()


def _server_facts(conn) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT current_setting('server_version'),
                   current_setting('server_version_num')::int,
                   (SELECT system_identifier::text FROM pg_control_system()),
                   (SELECT timeline_id FROM pg_control_checkpoint()),
                   pg_is_in_recovery(),
                   current_setting('archive_mode'),
                   current_setting('wal_level'),
                   (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
                   (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))
            """
        )
        row = cur.fetchone()
    return {
        "version": row[0], "version_num": row[1], "system_identifier": row[2], "timeline": row[3],
        "in_recovery": row[4], "archive_mode": row[5], "wal_level": row[6], "wal_segment_size": int(row[7]),
        "extra_tablespaces": int(row[8]),
    }


def _after_stop(conn) -> dict[str, Any]:
    """Read the server clock and the oldest running transaction right after the backup stopped.

    Both bound what the backup can reach: a recovery target time before
    ``stopped_by`` or a transaction id below ``xmin_after_stop`` may lie
    before the backup became consistent.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT now(), pg_snapshot_xmin(pg_current_snapshot())::text")
        row = cur.fetchone()
    from backup.manifest import isoformat

    return {"stopped_by": isoformat(row[0]), "xmin_after_stop": row[1]}


def _check_source(database: str, facts: dict[str, Any]) -> None:
    if facts["archive_mode"] not in ("on", "always") or (facts["in_recovery"] and facts["archive_mode"] != "always"):
        raise ConfigError(
            _("WAL archiving is not enabled on database {database} (archive_mode = {mode})").format(
                database=database, mode=facts["archive_mode"]
            ),
            _("a base backup without archived WAL cannot be restored: set archive_mode = on (always on a standby) "
              "and archive_command = 'resguardo wal-push %p --db {database}', then restart the server").format(
                database=database
            ),
        )
    if facts["wal_level"] == "minimal":
        raise ConfigError(
            _("wal_level is minimal on database {database}").format(database=database),
            _("set wal_level = replica and restart the server"),
        )
    if facts["extra_tablespaces"]:
        raise ConfigError(
            _("database {database} has {count} tablespaces besides pg_default and pg_global").format(
                database=database, count=facts["extra_tablespaces"]
            ),
            _("pg_basebackup writes only one tablespace to a stream; move the tables to pg_default "
              "or back up this cluster with another tool"),
        )


def wait_for_archived(archive, system_identifier: str, names: list[str], *, timeout: float) -> None:
    """Wait until every WAL file in ``names`` is archived in every WAL region, or raise StorageError."""
    deadline = time.monotonic() + timeout
    pending = list(names)
    delay = 0.5
    while True:
        still = []
        for name in pending:
            for region in archive.regions:
                if archive.read_sidecar(region, system_identifier, name) is None:
                    still.append(name)
                    break
        pending = still
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise StorageError(
                _("WAL files of the base backup are not in every WAL region after {seconds} s: {names}").format(
                    seconds=int(timeout), names=", ".join(pending[:5])
                ),
                _("check archive_command and 'resguardo archive-check'; the backup was not committed"),
            )
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def check_same_system(config, database: str, system_identifier: str, regions, wal_regions) -> None:
    """Raise ConfigError when ``database`` already has base backups or WAL of another cluster.

    The system identifier is fixed by ``initdb``, so a different one means the
    configured DSN now reaches another cluster (a misconfiguration, or a
    cluster rebuilt from scratch). Mixing both under one name would make
    "latest" restores silently switch clusters. A region that cannot be
    listed is skipped: this check guards against a mistake, it does not
    prove the archive's content.
    """
    from backup.catalog import list_backups
    from backup.wal_catalog import list_system_identifiers
    from resguardo.keyring import load_verify_key

    others: set[str] = set()
    try:
        for entry in list_backups(regions, load_verify_key(config), database, "base"):
            found = str((entry.manifest.get("wal") or {}).get("system_identifier", ""))
            if found and found != system_identifier:
                others.add(found)
    except StorageError as error:
        log.warning("basebackup.catalog_unlisted", extra={"database": database, "error": error.message})
    others.update(name for name in list_system_identifiers(wal_regions, database) if name != system_identifier)
    if others:
        raise ConfigError(
            _("the server of {database} has system identifier {system}, but backups or WAL of other clusters "
              "are already archived under that name: {others}").format(
                database=database, system=system_identifier, others=", ".join(sorted(others))),
            _("check that the configured DSN reaches the right cluster; if the cluster was rebuilt with initdb, "
              "run 'resguardo basebackup {database} --new-system' (restores of the old cluster then need "
              "--system-identifier)").format(database=database),
        )


def _discard(regions, key: str) -> None:
    """Delete an object of a backup that will not be committed; failures are logged, not raised."""
    for region in regions:
        try:
            region.delete(key)
        except StorageError:
            log.warning("basebackup.discard_failed", extra={"region": region.name, "key": key}, exc_info=True)


def run_base_backup(
    config,
    database: str,
    *,
    triggered_by: str = "cli",
    dsn: str | None = None,
    password: str | None = None,
    fast_checkpoint: bool = False,
    archive_wait_seconds: float = 300.0,
    allow_new_system: bool = False,
    progress=None,
) -> BaseBackupResult:
    """Take one base backup of ``database`` into its regions and commit its manifest.

    ``dsn``/``password`` replace the configured connection (the DAGs pass
    them from an Airflow Connection). ``fast_checkpoint`` starts at once with
    an immediate checkpoint instead of waiting for a spread one. Raises,
    leaving no listed backup and no object, when pg_basebackup fails, the
    stream is incomplete, fewer regions than the quorum stored it, or its WAL
    does not reach every WAL region within ``archive_wait_seconds`` (which
    also bounds how long the stream may stall while the server waits for
    archiving). Raises ConfigError when the database's archive already holds
    base backups or WAL of another system identifier, unless
    ``allow_new_system`` (the cluster was rebuilt). ``progress``, when given,
    is called as ``progress(event, **values)`` with ``checkpoint``,
    ``copying`` (every 256 MiB, ``megabytes=``) and ``archive_wait``.
    """
    import zstandard

    import resguardo
    from backup.catalog import commit_manifest
    from backup.manifest import build_manifest, isoformat, new_backup_id, object_key, sign_manifest, utc_now
    from backup.pipeline import store_stream
    from backup.source import source_for
    from backup.wal import WalArchive, wal_region_names
    from resguardo.keyring import load_recipients, load_signing_key
    from resguardo.pgtools import find_program, program_version
    from storage.registry import open_regions

    db = config.database(database)
    if not db.pitr.enabled:
        raise ConfigError(
            _("point-in-time recovery is not enabled for database {database}").format(database=database),
            _("set databases.{database}.pitr.enabled: true and configure archive_command first").format(
                database=database
            ),
        )
    source = source_for(database, db, dsn=dsn, password=password)
    regions = open_regions(db.regions, config)
    quorum = min(db.required_quorum, len(regions))
    recipients = load_recipients(config)
    signing_key = load_signing_key(config)
    pg_basebackup = find_program("pg_basebackup", config.resolve(config.postgres_bindir))
    archive = WalArchive(config, database)

    with source.connect(autocommit=True) as conn:
        facts = _server_facts(conn)
    _check_source(database, facts)
    if not allow_new_system:
        check_same_system(config, database, facts["system_identifier"], regions, archive.regions)
    report = progress or (lambda event, **values: None)
    report("checkpoint", fast=fast_checkpoint)

    started_at = utc_now()
    backup_id = new_backup_id(started_at)
    key = object_key(database, "base", backup_id, BASE_OBJECT)
    log.info("basebackup.start", extra={"database": database, "backup_id": backup_id, "regions": db.regions,
                                        "quorum": quorum, "system_identifier": facts["system_identifier"],
                                        "triggered_by": triggered_by})

    args = [str(pg_basebackup), "--dbname", source.dsn, "--pgdata", "-", "--format", "tar", "--wal-method", "none",
            "--checkpoint", "fast" if fast_checkpoint else "spread", "--label", f"resguardo {backup_id}",
            "--verbose"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=source.libpq_env())
    stderr = _StderrCollector(process.stderr)
    stderr.start()
    scanner = TarScanner(process.stdout, on_progress=lambda read: report("copying", megabytes=read >> 20))
    watchdog = _StallWatchdog(process, scanner, archive_wait_seconds)
    watchdog.start()

    def check_pg_basebackup() -> None:
        status = process.wait()
        stderr.join(timeout=5)
        if watchdog.fired:
            raise StorageError(
                _("pg_basebackup of database {database} sent nothing for {seconds} s after the copy began; "
                  "the server is most likely waiting for WAL archiving").format(
                    database=database, seconds=int(archive_wait_seconds)),
                _("check archive_command and 'resguardo archive-check {database}'; the backup was discarded").format(
                    database=database),
            )
        if status != 0:
            raise ExternalToolError(
                _("pg_basebackup of database {database} failed with exit status {status}: {stderr}").format(
                    database=database, status=status, stderr=stderr.text()[-2000:]
                ),
                _("the backup was discarded in every region; fix the cause shown by pg_basebackup and run it again"),
            )
        missing = [name for name in ("backup_label", "backup_manifest", "global/pg_control") if name not in scanner.members]
        if not scanner.complete or missing:
            raise IntegrityError(
                _("the pg_basebackup stream of {database} ended without {missing}").format(
                    database=database, missing=", ".join(missing) or _("the end-of-archive blocks")
                ),
                _("the backup was discarded; run it again and check pg_basebackup's version"),
            )

    copy_started = time.monotonic()
    try:
        stored = store_stream(
            scanner,
            regions=regions,
            key=key,
            object_name=BASE_OBJECT,
            backup_id=backup_id,
            recipients=recipients,
            quorum=quorum,
            compression_level=db.compression_level,
            chunk_size=config.encryption.chunk_size_kib * 1024,
            before_commit=check_pg_basebackup,
        )
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.error("basebackup.failed", extra={"database": database, "backup_id": backup_id}, exc_info=True)
        raise
    finally:
        watchdog.stop()
        process.stdout.close()
    copy_seconds = round(time.monotonic() - copy_started, 3)
    report("archive_wait")
    holding = [region for region in regions if region.name in stored.regions]

    try:
        label = parse_backup_label(scanner.members["backup_label"].decode("utf-8"))
        ranges = parse_wal_ranges(scanner.members["backup_manifest"])
        system_identifier = str(parse_control_system_identifier(scanner.members["global/pg_control"]))
        if system_identifier != facts["system_identifier"]:
            raise IntegrityError(
                _("pg_control in the backup has system identifier {found}, the server reported {expected}").format(
                    found=system_identifier, expected=facts["system_identifier"]
                ),
                _("the DSN reached another cluster during the backup (a failover?); run the backup again"),
            )
        with source.connect(autocommit=True) as conn:
            after = _after_stop(conn)

        # The server waited for these to be archived; check they reached every WAL region.
        wal_files = required_wal_files(ranges, facts["wal_segment_size"])
        archive_started = time.monotonic()
        wait_for_archived(archive, system_identifier, wal_files, timeout=archive_wait_seconds)
        archive_seconds = round(time.monotonic() - archive_started, 3)
    except BaseException:
        log.error("basebackup.failed", extra={"database": database, "backup_id": backup_id}, exc_info=True)
        _discard(holding, key)
        raise

    finished_at = utc_now()
    stop = ranges[-1]
    manifest = build_manifest(
        kind="base",
        database=database,
        backup_id=backup_id,
        started_at=isoformat(started_at),
        finished_at=isoformat(finished_at),
        triggered_by=triggered_by,
        server={k: facts[k] for k in ("version", "version_num", "system_identifier", "in_recovery")}
        | {"timeline": label["start_timeline"]},
        wal={
            "system_identifier": system_identifier,
            "timeline": label["start_timeline"],
            "start_lsn": label["start_lsn"],
            "checkpoint_lsn": label["checkpoint_lsn"],
            "start_wal_file": label["start_wal_file"],
            "stop_timeline": stop["timeline"],
            "stop_lsn": format_lsn(stop["end_lsn"]),
            "stop_wal_file": wal_files[-1],
            "wal_segment_size": facts["wal_segment_size"],
            "ranges": [{"timeline": r["timeline"], "start_lsn": format_lsn(r["start_lsn"]),
                        "end_lsn": format_lsn(r["end_lsn"])} for r in ranges],
            "stopped_by": after["stopped_by"],
            "xmin_after_stop": after["xmin_after_stop"],
            "regions": wal_region_names(db),
        },
        backup_label=scanner.members["backup_label"].decode("utf-8"),
        base={"format": "tar", "tool": "pg_basebackup", "wal_method": "none",
              "checkpoint": "fast" if fast_checkpoint else "spread", "tablespaces": "pg_default only",
              "tar_members": scanner.count,
              "pg_backup_manifest_bytes": len(scanner.members["backup_manifest"])},
        objects=[stored.manifest_entry(recipients)],
        required_regions=db.regions,
        quorum=quorum,
        failed_regions=stored.failed_regions,
        timings={"copy_seconds": copy_seconds, "archive_wait_seconds": archive_seconds},
        tools={
            "resguardo": resguardo.__version__,
            "pg_basebackup": program_version(pg_basebackup),
            "zstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
            "python": platform.python_version(),
        },
        host=socket.gethostname(),
    )
    data = sign_manifest(manifest, signing_key)
    try:
        written = commit_manifest(holding, database, "base", backup_id, data)
    except StorageError:
        log.error("basebackup.manifest_failed", extra={"database": database, "backup_id": backup_id}, exc_info=True)
        _discard(holding, object_key(database, "base", backup_id, "manifest.json"))
        _discard(holding, key)
        raise
    log.info("basebackup.done", extra={"database": database, "backup_id": backup_id, "regions": written,
                                       "bytes": stored.size, "plaintext_bytes": stored.plaintext_size,
                                       "start_lsn": label["start_lsn"], "stop_lsn": format_lsn(stop["end_lsn"]),
                                       "seconds": round((finished_at - started_at).total_seconds(), 3)})
    return BaseBackupResult(backup_id, manifest, written, stored.failed_regions)
