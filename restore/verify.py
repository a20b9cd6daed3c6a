"""Restore tests: prove a backup restores, check it, and record signed evidence.

One restore test:

1. starts a scratch cluster (the isolated target),
2. restores the backup into it, streaming download, decryption and
   ``pg_restore`` together, with region fallback,
3. validates the result with Great Expectations: the suite built from the
   manifest's profile (same tables and columns, row counts equal to the
   source's in the dump's snapshot, primary keys unique and not null) plus the
   hand-written suites stored for the database,
4. appends a signed, hash-chained evidence record, whatever the outcome,
5. destroys the scratch cluster.

The *measured RTO* of the test is the wall time of steps 1 to 3: from asking
for a database to having a validated one that accepts connections.
"""

from __future__ import annotations

import datetime as dt
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import resguardo
from evidence import open_store
from resguardo.config import ResguardoConfig
from resguardo.errors import ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger
from resguardo.pgtools import find_program, program_version
from restore.logical import restore_logical
from restore.scratch import ScratchCluster

log = get_logger("restore.verify")

EXPECTATIONS_ROOT = Path(__file__).resolve().parent.parent / "expectations"


@dataclass
class RestoreTestOutcome:
    """The result of one restore test and the evidence record written for it."""

    passed: bool
    database: str
    backup_id: str | None
    record: dict[str, Any]
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _resolve_backup_id(config: ResguardoConfig, database: str, backup_id: str | None) -> str | None:
    """Return the concrete id ``latest`` stands for, so even a failed test names its backup."""
    from backup.catalog import find_backup
    from resguardo.keyring import load_verify_key
    from restore.logical import open_reachable_regions

    if backup_id not in (None, "latest"):
        return backup_id
    try:
        regions, _unreachable = open_reachable_regions(config.database(database).regions, config)
        return find_backup(list(regions.values()), load_verify_key(config), database, "logical").backup_id
    except ResguardoError:
        return backup_id  # the restore step reports the same problem in full


def _suite_dir(config: ResguardoConfig, database: str) -> Path | None:
    configured = config.database(database).restore_test.expectations_dir
    if configured is not None:
        return config.resolve(configured)
    default = EXPECTATIONS_ROOT / database
    return default if default.is_dir() else None


def run_restore_test(
    config: ResguardoConfig,
    database: str,
    *,
    backup_id: str | None = "latest",
    triggered_by: str = "cli",
    identity_file: str | None = None,
) -> RestoreTestOutcome:
    """Run one restore test and append its evidence record.

    A failed restore or failed checks are recorded and returned with
    ``passed=False``, not raised. Errors opening the evidence store raise,
    because then nothing could be recorded.
    """
    from expectations.suites import run_restore_checks

    store = open_store(config, writable=True)
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.monotonic()
    timings: dict[str, float] = {}
    body: dict[str, Any] = {
        "triggered_by": triggered_by,
        "host": socket.gethostname(),
        "tools": {
            "resguardo": resguardo.__version__,
            "pg_restore": program_version(find_program("pg_restore", config.resolve(config.postgres_bindir))),
            "python": platform.python_version(),
        },
        "started_at": started_at.isoformat(),
    }
    subject: dict[str, Any] = {"backup_id": _resolve_backup_id(config, database, backup_id), "kind": "logical"}
    scratch = ScratchCluster(bindir=config.resolve(config.postgres_bindir), name=f"verify-{database}")
    passed = False
    error_text: str | None = None
    try:
        step = time.monotonic()
        scratch.start()
        timings["scratch_start"] = round(time.monotonic() - step, 3)

        # No suppression here: the test compares row counts with the backup's profile.
        report = restore_logical(config, database, backup_id=backup_id, scratch=scratch,
                                 identity_file=identity_file, apply_suppression=False)
        subject["backup_id"] = report.backup_id
        timings["download"] = report.stages.download
        timings["decrypt"] = report.stages.decrypt
        timings["restore"] = report.timings["restore_seconds"]
        body["backup"] = {
            "backup_id": report.backup_id,
            "started_at": report.manifest.get("started_at"),
            "server": report.manifest.get("server"),
            "object_sha256": report.sha256,
            "object_size": report.bytes_read,
        }
        body["regions"] = _region_rows(config, report)
        step = time.monotonic()
        checks = run_restore_checks(
            scratch.uri(report.target_database),
            report.manifest["profile"],
            _suite_dir(config, database),
            row_count_tolerance=config.database(database).restore_test.row_count_tolerance,
        )
        timings["validate"] = round(time.monotonic() - step, 3)
        passed = bool(checks.success)
        timings["rto"] = round(time.monotonic() - started, 3)
        body["rto_seconds"] = timings["rto"]
        body["rto_target_seconds"] = config.database(database).dr.rto_target_seconds
        body["expectations"] = _expectations_summary(checks)
        body["expectations"]["results_object"] = _store_gx_results(store, report.backup_id, checks.to_dict())
    except ResguardoError as error:
        error_text = error.render()
        log.error("verify.failed", extra={"database": database, "backup_id": subject["backup_id"]}, exc_info=True)
    finally:
        step = time.monotonic()
        scratch.destroy()
        timings["teardown"] = round(time.monotonic() - step, 3)

    timings["total"] = round(time.monotonic() - started, 3)
    body["steps"] = [
        {"name": name, "seconds": timings[name], "ok": passed or name != "validate"}
        for name in ("scratch_start", "download", "decrypt", "restore", "validate", "teardown")
        if name in timings
    ]
    body["timings_seconds"] = timings
    if error_text:
        body["error"] = error_text
    record = store.append(
        kind="restore_test",
        database=database,
        subject=subject,
        outcome="passed" if passed else "failed",
        body=body,
    )
    log.info("verify.done", extra={"database": database, "backup_id": subject["backup_id"], "passed": passed,
                                   "sequence": record.get("sequence"), "rto_seconds": timings.get("rto")})
    return RestoreTestOutcome(passed, database, subject["backup_id"], record, error_text, timings)


def _region_rows(config: ResguardoConfig, report) -> list[dict[str, Any]]:
    """Build one row per region attempt, in the shape the evidence report renders."""
    entry = report.manifest["objects"][0]
    rows = []
    for attempt in report.attempts:
        region_config = config.regions.get(attempt.region)
        rows.append({
            "region": attempt.region,
            "location": getattr(region_config, "location", None),
            "action": "read" if attempt.outcome == "ok" else "checked",
            "ok": attempt.outcome == "ok",
            "error": None if attempt.outcome == "ok" else f"{attempt.outcome}: {attempt.error}",
            "key": attempt.key,
            "size": entry["size"],
            "sha256": report.sha256 if attempt.outcome == "ok" else entry["sha256"],
            "seconds": attempt.seconds,
        })
    return rows


def _expectations_summary(checks) -> dict[str, Any]:
    failed = [
        {
            "expectation": item.expectation_type,
            "table": item.table,
            "column": ", ".join(item.columns) or "-",
            "detail": item.message or f"expected {item.expected!r}, observed {item.observed!r}",
        }
        for item in checks.failed
    ]
    broken = [{"suite": item.suite, "table": item.table, "error": item.error} for item in checks.broken]
    return {
        "suite": ", ".join(sorted(checks.suite_results)) or "-",
        "success": checks.success,
        "evaluated": checks.expectations_evaluated,
        "failed": failed,
        "broken_checks": broken,
        "tables_checked": f"{checks.tables_checked}/{checks.tables_expected}",
        "gx_version": checks.gx_version,
    }


def _store_gx_results(store, backup_id: str, results: dict[str, Any]) -> dict[str, Any]:
    """Keep the full GX JSON as a chain attachment; the record carries its key and hash."""
    import json

    data = json.dumps(results, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return store.put_attachment(f"gx-results/{backup_id}-{stamp}.json", data)


def summarize(outcome: RestoreTestOutcome, public_key=None) -> str:
    """Return the Spanish (default) summary the CLI and the DAG log print."""
    from evidence import render_text

    lines = [
        _("Restore test of {database}: {result}").format(
            database=outcome.database, result=_("PASSED") if outcome.passed else _("FAILED")
        ),
    ]
    if outcome.error:
        lines.append(outcome.error)
    lines.append(render_text(outcome.record, public_key=public_key))
    return "\n".join(lines)
