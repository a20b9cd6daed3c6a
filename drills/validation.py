"""Validation of a rebuilt or promoted database before it is declared open.

Terms:

- *reference structure*: the user tables of the primary with their columns and
  primary keys (:func:`expectations.profile.list_tables`), read when a drill
  starts. A physical copy must have exactly these tables and columns.
- *restore suite*: Great Expectations checks from
  ``expectations.suites.run_restore_checks`` (primary keys unique and not
  null, table set, plus the hand-written suites of the database).
- *minimal checks*: the checks this module runs itself: the server accepts
  writes, every reference table exists with its columns, and every table can
  be read.

Row counts are not compared with the primary, because no snapshot of the
primary matches the point a physical copy was recovered to. The profile given
to the restore suite is read from the copy itself, so its row-count
expectations pass by construction and the other expectations do the checking.
A *live* database (a promoted primary that clients already write to) gets
the hand-written suites only, because its row counts change between reading
a profile and checking it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from drills.topology import DR_SCHEMA
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("drills.validation")

ENGINE_GX = "great_expectations"
ENGINE_MINIMAL = "minimal"


@dataclass
class Check:
    """One named check and what it found."""

    name: str
    success: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationResult:
    """The checks run on one database and whether all of them passed."""

    engine: str
    checks: list[Check] = field(default_factory=list)
    gx: dict[str, Any] | None = None
    note: str | None = None
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        gx_ok = True if self.gx is None else bool(self.gx.get("success"))
        return gx_ok and all(check.success for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "success": self.success,
            "checks": [check.to_dict() for check in self.checks],
            "gx": self.gx,
            "note": self.note,
            "seconds": self.seconds,
        }


EXPECTATIONS_ROOT = Path(__file__).resolve().parent.parent / "expectations"


def suite_dir_for(config: Any, database: str) -> Path | None:
    """Return the hand-written suite directory of ``database``, as restore tests find it.

    ``restore_test.expectations_dir`` when set, else ``expectations/<database>/``
    of this repository when it exists, else None.
    """
    configured = config.database(database).restore_test.expectations_dir
    if configured is not None:
        return config.resolve(configured)
    default = EXPECTATIONS_ROOT / database
    return default if default.is_dir() else None


def reference_structure(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """Return the user tables of the connected database without row counts."""
    from expectations.profile import list_tables

    return list_tables(conn)


def _minimal_checks(conn: psycopg.Connection, reference: dict[str, dict[str, Any]] | None,
                    require_writable: bool) -> tuple[list[Check], dict[str, dict[str, Any]]]:
    from expectations.profile import list_tables

    checks: list[Check] = []
    if require_writable:
        in_recovery, read_only = conn.execute(
            "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')"
        ).fetchone()
        checks.append(Check(
            "writable", not in_recovery and read_only == "off",
            _("in recovery: {recovery}; default_transaction_read_only: {read_only}").format(
                recovery=in_recovery, read_only=read_only
            ),
        ))

    tables = list_tables(conn)
    if reference is not None:
        # Resguardo's own schema may be created by the drill's marker itself,
        # after the newest archived WAL, so it is not compared.
        reference = {key: entry for key, entry in reference.items() if entry["schema"] != DR_SCHEMA}
        missing = sorted(set(reference) - set(tables))
        changed = sorted(
            key for key in set(reference) & set(tables) if reference[key]["columns"] != tables[key]["columns"]
        )
        checks.append(Check(
            "tables_match_primary", not missing and not changed,
            _("{count} tables; missing: {missing}; different columns: {changed}").format(
                count=len(tables), missing=", ".join(missing[:20]) or "-", changed=", ".join(changed[:20]) or "-"
            ),
        ))

    unreadable: list[str] = []
    for key, entry in tables.items():
        query = sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(entry["schema"], entry["table"]))
        try:
            conn.execute(query).fetchall()
        except psycopg.Error as error:
            unreadable.append(key)
            log.warning("drills.validation.unreadable", extra={"table": key, "error": str(error).strip()})
    checks.append(Check(
        "tables_readable", not unreadable,
        _("{count} tables read; unreadable: {tables}").format(
            count=len(tables), tables=", ".join(unreadable[:20]) or "-"
        ),
    ))
    return checks, tables


def validate_database(dsn: str, *, reference: dict[str, dict[str, Any]] | None = None,
                      suite_dir: Path | None = None, require_writable: bool = True, live: bool = False,
                      password: str | None = None) -> ValidationResult:
    """Validate the database at ``dsn``.

    Always runs the minimal checks; runs the restore suite too when the
    ``expectations.suites`` module is installed. ``password`` serves the
    minimal checks only: the restore suite reads passwords as libpq does
    (``PGPASSWORD`` or a password file).
    """
    started = time.monotonic()
    params = {"password": password} if password else {}
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10, **params) as conn:
        checks, tables = _minimal_checks(conn, reference, require_writable)
        try:
            from expectations.suites import run_restore_checks
        except ImportError:
            run_restore_checks = None
        profile = None
        if run_restore_checks is not None and not live:
            from expectations.profile import collect_profile

            profile = collect_profile(conn)

    if run_restore_checks is None:
        result = ValidationResult(
            ENGINE_MINIMAL, checks,
            note=_("Great Expectations suites are not installed (expectations.suites); minimal checks only"),
        )
    else:
        outcome = run_restore_checks(dsn, profile, suite_dir)
        gx = outcome.to_dict() if hasattr(outcome, "to_dict") else {"success": bool(getattr(outcome, "success", False))}
        gx.setdefault("success", bool(getattr(outcome, "success", False)))
        note = _("live database: hand-written suites only, no profile suite") if live else None
        result = ValidationResult(ENGINE_GX, checks, gx=gx, note=note)
    result.seconds = round(time.monotonic() - started, 3)
    log.info("drills.validation.done",
             extra={"engine": result.engine, "success": result.success, "seconds": result.seconds,
                    "tables": len(tables)})
    return result
