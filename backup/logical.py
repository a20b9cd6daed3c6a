"""Logical backups: ``pg_dump -Fc`` streamed through compression, encryption and fan-out.

Steps of one backup:

1. Open a REPEATABLE READ transaction on the source, export its snapshot and
   read the server identity and the table profile (row counts, columns,
   primary keys) in that snapshot.
2. Run ``pg_dump --snapshot`` so the dump sees exactly the profiled data;
   ``-Z0`` leaves compression to zstd in this process, which runs in parallel
   with pg_dump.
3. Stream its output through :func:`backup.pipeline.store_stream` into every
   required region. If pg_dump exits non-zero, every upload is aborted.
4. Sign the manifest and write it to each region that holds the dump. Only
   now does the backup exist.
"""

from __future__ import annotations

import datetime as dt
import platform
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import zstandard

import resguardo
from backup.catalog import commit_manifest
from backup.manifest import build_manifest, isoformat, new_backup_id, object_key, sign_manifest, utc_now
from backup.pipeline import StoredObject, store_stream
from backup.source import Source, server_identity, source_for
from resguardo.config import ResguardoConfig
from resguardo.errors import ExternalToolError, StorageError
from resguardo.i18n import _
from resguardo.keyring import load_recipients, load_signing_key
from resguardo.log import get_logger
from resguardo.pgtools import find_program, program_version
from storage.registry import open_regions

log = get_logger("backup.logical")

DUMP_OBJECT = "dump.enc"


@dataclass
class BackupResult:
    """A committed backup: its id, manifest and the regions holding it."""

    backup_id: str
    manifest: dict[str, Any]
    regions: list[str]
    failed_regions: dict[str, str]


class _StderrCollector(threading.Thread):
    """Drain a child's stderr in a thread, keeping the last 64 KiB.

    Without it, a child that writes much to stderr fills the pipe and stops.
    """

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


def _profile(conn: psycopg.Connection) -> dict[str, Any]:
    from expectations.profile import collect_profile

    return collect_profile(conn)


def run_logical_backup(
    config: ResguardoConfig,
    database: str,
    *,
    triggered_by: str = "cli",
    dsn: str | None = None,
    password: str | None = None,
    regions_override: list[str] | None = None,
) -> BackupResult:
    """Take one logical backup of ``database`` into its required regions.

    ``dsn``/``password`` replace the configured connection (the DAGs pass
    them from an Airflow Connection). Raises, leaving no listed backup and no
    partial object, when pg_dump fails or fewer regions than the quorum
    confirmed their copy.
    """
    db = config.database(database)
    source = source_for(database, db, dsn=dsn, password=password)
    region_names = regions_override or db.regions
    quorum = db.required_quorum if regions_override is None else len(region_names)
    regions, unreachable = _open_reachable(region_names, config, quorum)
    recipients = load_recipients(config)
    signing_key = load_signing_key(config)
    pg_dump = find_program("pg_dump", config.resolve(config.postgres_bindir))

    started_at = utc_now()
    backup_id = new_backup_id(started_at)
    key = object_key(database, "logical", backup_id, DUMP_OBJECT)
    log.info("backup.start", extra={"database": database, "backup_id": backup_id, "regions": region_names,
                                    "quorum": quorum, "triggered_by": triggered_by})

    with source.connect(autocommit=False) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
        identity = server_identity(conn)
        profile_started = time.monotonic()
        profile = _profile(conn)
        profile_seconds = round(time.monotonic() - profile_started, 3)

        args = [str(pg_dump), "--format=custom", "--compress=0", f"--snapshot={snapshot}", "--dbname", source.dsn]
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=source.libpq_env())
        stderr = _StderrCollector(process.stderr)
        stderr.start()

        def check_pg_dump() -> None:
            status = process.wait()
            stderr.join(timeout=5)
            if status != 0:
                raise ExternalToolError(
                    _("pg_dump of database {database} failed with exit status {status}: {stderr}").format(
                        database=database, status=status, stderr=stderr.text()[-2000:]
                    ),
                    _("the backup was discarded in every region; fix the cause shown by pg_dump and run it again"),
                )

        dump_started = time.monotonic()
        try:
            stored: StoredObject = store_stream(
                process.stdout,
                regions=regions,
                key=key,
                object_name=DUMP_OBJECT,
                backup_id=backup_id,
                recipients=recipients,
                quorum=quorum,
                compression_level=db.compression_level,
                chunk_size=config.encryption.chunk_size_kib * 1024,
                before_commit=check_pg_dump,
            )
        except BaseException:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.error("backup.failed", extra={"database": database, "backup_id": backup_id}, exc_info=True)
            raise
        finally:
            process.stdout.close()
        dump_seconds = round(time.monotonic() - dump_started, 3)
        conn.rollback()

    finished_at = utc_now()
    holding = [r for r in regions if r.name in stored.regions]
    manifest = build_manifest(
        kind="logical",
        database=database,
        backup_id=backup_id,
        started_at=isoformat(started_at),
        finished_at=isoformat(finished_at),
        triggered_by=triggered_by,
        server={k: identity[k] for k in ("version", "version_num", "system_identifier", "timeline", "in_recovery")},
        source_database=identity["database"],
        source_database_size=identity["database_size"],
        wal={"start_lsn": identity["lsn"], "timeline": identity["timeline"]},
        snapshot_consistent=True,
        dump={"format": "custom", "tool": "pg_dump"},
        objects=[stored.manifest_entry(recipients)],
        required_regions=region_names,
        quorum=quorum,
        failed_regions={**unreachable, **stored.failed_regions},
        profile=profile,
        timings={"profile_seconds": profile_seconds, "dump_seconds": dump_seconds},
        tools={
            "resguardo": resguardo.__version__,
            "pg_dump": program_version(pg_dump),
            "zstd": zstandard.ZSTD_VERSION and ".".join(map(str, zstandard.ZSTD_VERSION)),
            "python": platform.python_version(),
        },
        host=socket.gethostname(),
    )
    data = sign_manifest(manifest, signing_key)
    try:
        written = commit_manifest(holding, database, "logical", backup_id, data)
    except StorageError:
        log.error("backup.manifest_failed", extra={"database": database, "backup_id": backup_id}, exc_info=True)
        _discard(holding, object_key(database, "logical", backup_id, "manifest.json"))
        _discard(holding, key)
        raise
    log.info("backup.done", extra={"database": database, "backup_id": backup_id, "regions": written,
                                   "bytes": stored.size, "plaintext_bytes": stored.plaintext_size,
                                   "seconds": round((finished_at - started_at).total_seconds(), 3)})
    return BackupResult(backup_id, manifest, written, {**unreachable, **stored.failed_regions})


def _open_reachable(names: list[str], config: ResguardoConfig, quorum: int):
    """Open the regions, tolerating unreachable ones while the quorum can still be met."""
    regions = []
    unreachable: dict[str, str] = {}
    for name in names:
        try:
            regions.extend(open_regions([name], config))
        except StorageError as error:
            log.warning("backup.region_unreachable", extra={"region": name, "error": error.message})
            unreachable[name] = error.message
    if len(regions) < quorum:
        raise StorageError(
            _("only {count} of the required {quorum} regions are reachable; failed: {failed}").format(
                count=len(regions), quorum=quorum, failed="; ".join(f"{k}: {v}" for k, v in unreachable.items())
            ),
            _("restore access to the failed regions, or lower the database's quorum if policy allows"),
        )
    return regions, unreachable


def _discard(regions, key: str) -> None:
    """Delete an object of a backup whose manifest could not be committed everywhere.

    The manifest goes first, so a half-committed backup stops being listed
    before its dump disappears.
    """
    for region in regions:
        try:
            region.delete(key)
        except StorageError:
            log.warning("backup.discard_failed", extra={"region": region.name, "key": key}, exc_info=True)
