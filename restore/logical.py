"""Logical restores: stream a backup's dump into ``pg_restore``.

The dump object is fetched with region fallback (:mod:`restore.fetch`),
decrypted and decompressed on the fly and written to ``pg_restore``'s
standard input. ``pg_restore --single-transaction`` makes a failed attempt
roll back completely, so when a region's copy turns out corrupted halfway,
the next region's copy is restored into the same, still empty, database.

Without a target DSN the restore goes into a new scratch cluster, which the
caller owns and must destroy.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from backup.catalog import CatalogEntry, find_backup
from backup.logical import DUMP_OBJECT, _StderrCollector
from resguardo.config import ResguardoConfig
from resguardo.errors import ExternalToolError, StorageError
from resguardo.i18n import _
from resguardo.keyring import load_identities, load_verify_key
from resguardo.log import get_logger
from resguardo.pgtools import find_program
from restore.fetch import Attempt, FetchResult, StageTimes, fetch_object
from restore.scratch import ScratchCluster
from storage.registry import open_region

log = get_logger("restore.logical")


@dataclass
class RestoreReport:
    """Result of a logical restore, for the CLI and for evidence."""

    database: str
    backup_id: str
    manifest: dict[str, Any]
    dsn: str
    region: str
    attempts: list[Attempt]
    stages: StageTimes
    bytes_read: int
    sha256: str
    timings: dict[str, float] = field(default_factory=dict)
    scratch: ScratchCluster | None = None
    target_database: str = ""
    suppression: dict[str, Any] | None = None


class PgRestoreSink:
    """A ``pg_restore`` process fed through its standard input."""

    def __init__(self, pg_restore: str, dsn: str, *, no_owner: bool, jobs_env: dict[str, str] | None = None):
        args = [pg_restore, "--exit-on-error", "--single-transaction", "--dbname", dsn]
        if no_owner:
            args += ["--no-owner", "--no-acl"]
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=jobs_env)
        self.stderr = _StderrCollector(self.process.stderr)
        self.stderr.start()

    def write(self, data: bytes) -> None:
        try:
            self.process.stdin.write(data)
        except BrokenPipeError:
            self.process.wait()
            self.stderr.join(timeout=5)
            raise ExternalToolError(
                _("pg_restore stopped reading with exit status {status}: {stderr}").format(
                    status=self.process.returncode, stderr=self.stderr.text()[-2000:]
                ),
                _("the target database is left as it was (single transaction); fix the error shown and retry"),
            ) from None

    def close(self) -> int:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        status = self.process.wait()
        self.stderr.join(timeout=5)
        if status != 0:
            raise ExternalToolError(
                _("pg_restore failed with exit status {status}: {stderr}").format(
                    status=status, stderr=self.stderr.text()[-2000:]
                ),
                _("the target database is left as it was (single transaction); fix the error shown and retry"),
            )
        return status

    def abort(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self.process.wait()


def open_reachable_regions(names: list[str], config: ResguardoConfig):
    """Open each region; an unreachable one is reported, not fatal, since another may hold a copy."""
    opened = {}
    unreachable: dict[str, str] = {}
    for name in names:
        try:
            opened[name] = open_region(name, config)
        except StorageError as error:
            log.warning("restore.region_unreachable", extra={"region": name, "error": error.message})
            unreachable[name] = error.message
    if not opened:
        raise StorageError(
            _("no region of this database is reachable: {detail}").format(
                detail="; ".join(f"{k}: {v}" for k, v in unreachable.items())),
            _("check network access, mounts and credentials for these regions"),
        )
    return opened, unreachable


def _require_empty_target(dsn: str) -> None:
    """Raise unless the target database is empty, so a restore never merges into existing data."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=15) as conn:
            count = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
            ).fetchone()[0]
    except psycopg.Error as error:
        raise ExternalToolError(
            _("cannot connect to the restore target: {error}").format(error=str(error).strip()),
            _("check the --target DSN (host, port, dbname, user) and that the database exists"),
        ) from None
    if count:
        raise ExternalToolError(
            _("the restore target is not empty: it has {count} tables, views or sequences").format(count=count),
            _("create a new empty database (createdb) and pass it with --target"),
        )


def _region_order(entry: CatalogEntry, region_names: list[str], prefer: list[str] | None) -> list[str]:
    order = list(prefer or []) + [n for n in region_names if n not in (prefer or [])]
    return [n for n in order if n in entry.manifest["objects"][0]["regions"]]


def restore_logical(
    config: ResguardoConfig,
    database: str,
    *,
    backup_id: str | None = "latest",
    target_dsn: str | None = None,
    scratch: ScratchCluster | None = None,
    prefer_regions: list[str] | None = None,
    identity_file: str | None = None,
    keep_owners: bool | None = None,
    apply_suppression: bool | None = None,
) -> RestoreReport:
    """Restore one logical backup into ``target_dsn`` or a scratch cluster.

    ``target_dsn`` must name an existing, empty database. Without it, a
    scratch cluster is started (or ``scratch`` used) and a database named after
    the source is created there. Owners and grants are kept only for a named
    target (``keep_owners`` overrides), since a scratch cluster has no roles.
    """
    db = config.database(database)
    timings: dict[str, float] = {}
    started = time.monotonic()

    verify_key = load_verify_key(config)
    identities = load_identities(config, identity_file)
    region_names = list(dict.fromkeys(list(prefer_regions or []) + db.regions))
    regions_by_name, unreachable = open_reachable_regions(region_names, config)
    entry = find_backup(list(regions_by_name.values()), verify_key, database, "logical", backup_id)
    manifest = entry.manifest
    dump_entry = next(o for o in manifest["objects"] if o["name"] == DUMP_OBJECT)
    timings["catalog_seconds"] = round(time.monotonic() - started, 3)
    log.info("restore.start", extra={"database": database, "backup_id": entry.backup_id,
                                     "target": "dsn" if target_dsn else "scratch"})

    owns_scratch = False
    target_database = manifest.get("source_database") or database
    if target_dsn is None:
        step = time.monotonic()
        if scratch is None:
            scratch = ScratchCluster(bindir=config.resolve(config.postgres_bindir), name=f"restore-{database}")
            owns_scratch = True
        try:
            if not scratch.running:
                scratch.start()
            scratch.create_database(target_database)
        except BaseException:
            if owns_scratch:
                scratch.destroy()
            raise
        dsn = scratch.dsn(target_database)
        timings["scratch_seconds"] = round(time.monotonic() - step, 3)
        no_owner = True if keep_owners is None else not keep_owners
    else:
        dsn = target_dsn
        no_owner = False if keep_owners is None else not keep_owners

    pg_restore = str(find_program("pg_restore", config.resolve(config.postgres_bindir)))
    if target_dsn is not None:
        _require_empty_target(target_dsn)
    order = [n for n in _region_order(entry, region_names, prefer_regions) if n in regions_by_name]
    step = time.monotonic()
    try:
        result: FetchResult[int] = fetch_object(
            [regions_by_name[n] for n in order],
            dump_entry,
            identities,
            backup_id=entry.backup_id,
            sink_factory=lambda: PgRestoreSink(pg_restore, dsn, no_owner=no_owner),
        )
    except BaseException:
        log.error("restore.failed", extra={"database": database, "backup_id": entry.backup_id}, exc_info=True)
        if owns_scratch and scratch is not None:
            scratch.destroy()
        raise
    timings["restore_seconds"] = round(time.monotonic() - step, 3)

    # LOPDP right to deletion: an old backup must not bring back data subjects
    # who asked to be deleted. None follows masking.yaml's
    # apply_suppression_on_restore; True requires it; False skips it.
    suppression = None
    if apply_suppression is not False:
        from restore.suppression_hook import apply_suppression_after_restore

        step = time.monotonic()
        try:
            suppression = apply_suppression_after_restore(config, database, dsn, required=bool(apply_suppression))
        except BaseException:
            if owns_scratch and scratch is not None:
                scratch.destroy()
            raise
        timings["suppression_seconds"] = round(time.monotonic() - step, 3)
    skipped = [Attempt(name, "-", "unreachable", error) for name, error in unreachable.items()]
    result.attempts[:0] = skipped
    timings["total_seconds"] = round(time.monotonic() - started, 3)
    log.info("restore.done", extra={"database": database, "backup_id": entry.backup_id, "region": result.region,
                                    "attempts": len(result.attempts), "seconds": timings["total_seconds"]})
    return RestoreReport(
        database=database,
        backup_id=entry.backup_id,
        manifest=manifest,
        dsn=dsn,
        region=result.region,
        attempts=result.attempts,
        stages=result.stages,
        bytes_read=result.size,
        sha256=result.sha256,
        timings=timings,
        scratch=scratch,
        target_database=target_database,
        suppression=suppression,
    )
