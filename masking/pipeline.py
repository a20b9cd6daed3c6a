"""The masked refresh: from a verified backup to a proven masked copy in non-production.

Steps, each timed and recorded:

1. restore the chosen backup into a scratch cluster (:func:`restore.logical.restore_logical`);
2. build the plan (deny by default) and run the discovery gate;
3. apply the suppression list (LOPDP Art. 15);
4. snapshot, mask, prove (:mod:`masking.proof`) and drop the work schema;
5. export: drop every schema of the target database, then pipe ``pg_dump
   -Fc`` of the scratch database into ``pg_restore --no-owner`` on the target
   (no temporary file), or into an encrypted, compressed object in storage regions under
   ``<database>/masked/<masked_id>/dump.enc``;
6. append an evidence record (kind ``masking``), whatever the outcome, and
   destroy the scratch cluster.

Nothing is exported unless the proof passed. The evidence contains the masking
key id, the policy's SHA-256, counts and check results; never a key, a
salt or a data value.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from masking.config import MaskingConfig, TargetConfig, load_masking_config, masking_config_path
from masking.discovery import check_gate, discover
from masking.engine import build_plan, mask_database
from masking.errors import MaskingError, ProofFailed
from masking.policy import load_policy
from masking.proof import drop_work_schema, run_proof, take_snapshot
from masking.suppression import SuppressionList, apply_suppression
from resguardo.errors import ExternalToolError, ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger
from resguardo.pgtools import find_program

log = get_logger("masking.pipeline")

EVIDENCE_KIND = "masking"


def load_for(config: Any, explicit_path: str | os.PathLike[str] | None = None) -> MaskingConfig:
    """Load ``masking.yaml`` found beside the main config (or at ``explicit_path``)."""
    return load_masking_config(masking_config_path(explicit_path, getattr(config, "base_dir", None)))


def _libpq_env(password_env: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise MaskingError(
                _("environment variable {name} with the target password is not set").format(name=password_env),
                _("export {name} on the masking host").format(name=password_env),
            )
        env["PGPASSWORD"] = password
    return env


# Schemas that belong to PostgreSQL itself; every other schema of the target is dropped before a load.
_SYSTEM_SCHEMA_FILTER = (
    "nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_toast%' "
    "AND nspname NOT LIKE 'pg\\_temp\\_%'"
)


def clear_target_database(target: TargetConfig) -> dict[str, Any]:
    """Drop every non-system schema of the target database and recreate an empty ``public``.

    A masked copy replaces the target's whole content. ``pg_restore --clean``
    cannot do that on its own: its DROP statements fail on an earlier copy
    with partitioned tables ("cannot drop inherited constraint"), and objects
    that the new dump no longer contains would stay behind. One transaction
    on a maintenance connection to the target drops the schemas with CASCADE,
    so a failure leaves the target as it was. Objects outside schemas (event
    triggers, publications, large objects) are left alone.
    """
    env = _libpq_env(target.password_env)
    password = {"password": env["PGPASSWORD"]} if target.password_env else {}
    try:
        with psycopg.connect(target.dsn, autocommit=True, **password) as conn:
            dbname = conn.info.dbname
            schemas = [row[0] for row in conn.execute(
                f"SELECT nspname FROM pg_namespace WHERE {_SYSTEM_SCHEMA_FILTER} ORDER BY nspname"
            ).fetchall()]
            log.info("masking.export.clear_target", extra={"database": dbname, "schemas": len(schemas)})
            with conn.transaction():
                for schema in schemas:
                    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                # pg_dump of PostgreSQL 15 does not create the public schema, so it must exist before the load.
                conn.execute("CREATE SCHEMA public")
    except psycopg.Error as error:
        log.error("masking.export.clear_target_failed", extra={"sqlstate": error.sqlstate,
                                                               "error_type": type(error).__name__})
        raise MaskingError(
            _("emptying the target database before the load failed: {error}").format(
                error=(error.diag.message_primary if error.diag else None) or str(error)
            ),
            _("the target was not changed; check that the target exists and that the configured user owns "
              "its schemas"),
        ) from error
    return {"database": dbname, "schemas_dropped": len(schemas)}


def export_to_database(source_dsn: str, target: TargetConfig, bindir: Path | None = None) -> dict[str, Any]:
    """Replace the target database's content with the masked database, streaming ``pg_dump -Fc`` into ``pg_restore``.

    The target is emptied first (:func:`clear_target_database`), so every
    refresh, the first and the next ones, loads into an empty database.
    """
    started = time.monotonic()
    cleared = clear_target_database(target)
    pg_dump = find_program("pg_dump", bindir)
    pg_restore = find_program("pg_restore", bindir)
    dump = subprocess.Popen(
        [str(pg_dump), "-Fc", "--no-owner", "--no-privileges", "-d", source_dsn],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    restore = subprocess.Popen(
        [str(pg_restore), "--no-owner", "--no-privileges", "--exit-on-error", "-d", target.dsn],
        stdin=dump.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_libpq_env(target.password_env),
    )
    assert dump.stdout is not None
    dump.stdout.close()
    restore_err = restore.communicate()[1]
    dump_err = dump.communicate()[1]
    if dump.returncode != 0 or restore.returncode != 0:
        failed, status, stderr = (
            ("pg_dump", dump.returncode, dump_err) if dump.returncode != 0 else ("pg_restore", restore.returncode, restore_err)
        )
        log.error("masking.export.failed", extra={"program": failed, "status": status})
        raise ExternalToolError(
            _("{program} failed with exit status {status} while loading the masked copy: {stderr}").format(
                program=failed, status=status, stderr=stderr.decode("utf-8", "replace").strip()[-2000:]
            ),
            _("the target database was emptied before the load; check that the configured user may create "
              "objects in it and read the message above from the program"),
        )
    return {"kind": "database", "schemas_dropped": cleared["schemas_dropped"],
            "seconds": round(time.monotonic() - started, 3)}


def export_to_regions(config: Any, database: str, source_dsn: str, target: TargetConfig,
                      bindir: Path | None = None) -> dict[str, Any]:
    """Store an encrypted, compressed ``pg_dump -Fc`` of the masked database in the target's regions."""
    from backup.manifest import new_backup_id
    from backup.pipeline import store_stream
    from resguardo.keyring import load_recipients
    from storage.registry import open_regions

    started = time.monotonic()
    masked_id = new_backup_id()
    key = f"{database}/masked/{masked_id}/dump.enc"
    regions = open_regions(target.encrypted_dump_regions, config)
    dump = subprocess.Popen(
        [str(find_program("pg_dump", bindir)), "-Fc", "-Z0", "--no-owner", "--no-privileges", "-d", source_dsn],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert dump.stdout is not None

    def check_dump() -> None:
        dump.wait()
        if dump.returncode != 0:
            raise ExternalToolError(
                _("pg_dump of the masked copy failed with exit status {status}: {stderr}").format(
                    status=dump.returncode, stderr=dump.stderr.read().decode("utf-8", "replace").strip()[-2000:]
                ),
                _("read the message above from pg_dump"),
            )

    try:
        stored = store_stream(
            dump.stdout, regions=regions, key=key, object_name="dump.enc", backup_id=masked_id,
            recipients=load_recipients(config), before_commit=check_dump,
        )
    finally:
        if dump.poll() is None:
            dump.kill()
        dump.wait()
    return {"kind": "encrypted_dump", "masked_id": masked_id, "key": key, "regions": list(target.encrypted_dump_regions),
            "size": stored.size, "sha256": stored.sha256, "seconds": round(time.monotonic() - started, 3)}


def run_masked_refresh(config: Any, database: str, target_name: str, *, backup_id: str = "latest", triggered_by: str,
                       masking_config: MaskingConfig | None = None,
                       masking_config_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Restore, gate, suppress, mask, prove and export one masked copy; return the evidence body.

    Raises PolicyError (policy or gate), MaskingError, ProofFailed (the proof
    did not pass; nothing was exported) or the restore's and export's errors.
    An evidence record is appended in every case once the restore has
    started.
    """
    from evidence import open_store
    from restore.logical import restore_logical

    masking_config = masking_config or load_for(config, masking_config_file)
    settings = masking_config.database(database)
    target = masking_config.target(database, target_name)
    key = masking_config.load_key()
    policy_path = masking_config.resolve(settings.policy)
    policy = load_policy(policy_path)
    if policy.database != database:
        raise MaskingError(
            _("policy {path} is for database {found}, not {expected}").format(
                path=policy_path, found=policy.database, expected=database
            ),
            _("point databases.{database}.policy in masking.yaml at the right file").format(database=database),
        )
    suppression_path = masking_config.resolve(settings.suppression_list)
    suppression = SuppressionList.load(suppression_path, key) if suppression_path else SuppressionList(key)

    started = time.monotonic()
    body: dict[str, Any] = {
        "target": target_name,
        "triggered_by": triggered_by,
        "key_id": key.key_id,
        "policy": {"path": str(policy_path), "sha256": hashlib.sha256(policy_path.read_bytes()).hexdigest()},
        "steps": {},
    }
    outcome = "failed"
    log.info("masking.refresh.start", extra={"database": database, "target": target_name, "backup_id": backup_id})
    report = None
    try:
        step = time.monotonic()
        report = restore_logical(config, database, backup_id=backup_id)
        body["backup_id"] = report.backup_id
        body["steps"]["restore"] = round(time.monotonic() - step, 3)
        with psycopg.connect(report.dsn, autocommit=True) as conn:
            step = time.monotonic()
            plan = build_plan(conn, policy, key)
            findings = discover(conn, catalog=plan.catalog)
            body["discovery"] = {"columns": len(findings), "flagged": sum(f.flagged for f in findings)}
            check_gate(policy, findings, plan.catalog)
            body["steps"]["plan_and_gate"] = round(time.monotonic() - step, 3)

            step = time.monotonic()
            body["suppression"] = apply_suppression(conn, policy, suppression)
            body["steps"]["suppression"] = round(time.monotonic() - step, 3)

            step = time.monotonic()
            snapshot = take_snapshot(conn, plan)
            body["masking"] = mask_database(conn, plan, workers=settings.workers)
            body["steps"]["masking"] = round(time.monotonic() - step, 3)

            step = time.monotonic()
            dbname = conn.info.dbname
            body["proof"] = run_proof(conn, report.scratch.uri(dbname) if report.scratch else _uri(report.dsn), plan,
                                      snapshot, runner=settings.proof_runner)
            drop_work_schema(conn)
            body["steps"]["proof"] = round(time.monotonic() - step, 3)
        if body["proof"]["outcome"] != "passed":
            raise ProofFailed(
                _("the proof of the masked copy of {database} did not pass ({outcome}): {checks}").format(
                    database=database, outcome=body["proof"]["outcome"],
                    checks=", ".join(body["proof"]["failed"] + body["proof"]["broken"]),
                ),
                _("nothing was exported; read the checks in the evidence record and fix the policy or the failing check"),
            )

        step = time.monotonic()
        bindir = getattr(config, "postgres_bindir", None)
        if target.dsn:
            body["export"] = export_to_database(report.dsn, target, bindir)
        else:
            body["export"] = export_to_regions(config, database, report.dsn, target, bindir)
        body["steps"]["export"] = round(time.monotonic() - step, 3)
        outcome = "passed"
        return body
    except ResguardoError as error:
        body["error"] = {"type": type(error).__name__, "message": error.message}
        log.error("masking.refresh.failed", extra={"database": database, "target": target_name,
                                                   "error_type": type(error).__name__})
        raise
    finally:
        body["seconds"] = round(time.monotonic() - started, 3)
        if report is not None:
            if report.scratch is not None:
                report.scratch.destroy()
            store = open_store(config, writable=True)
            record = store.append(EVIDENCE_KIND, database, {"backup_id": report.backup_id, "target": target_name},
                                  outcome, body)
            body["evidence_record_id"] = record["record_id"]
        log.info("masking.refresh.stop", extra={"database": database, "target": target_name, "outcome": outcome,
                                                "seconds": body["seconds"]})


def _uri(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    return (f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
            f"{params.get('port', 5432)}/{params.get('dbname', 'postgres')}")

