"""Restore checks: the profile suite built from a backup's profile, plus hand-written suites.

Terms:

- *profile suite*: the expectations derived from the source profile (see
  :mod:`expectations.profile`). Per table, the row count equals the source's
  and the column set is the source's. The column set is checked twice: by
  GX's ``expect_table_columns_to_match_set``, which ignores letter case, and
  by a case-exact comparison of column names. The primary-key columns must
  contain no NULL and no duplicate, composite keys included. When the profile
  counts large objects, their number is checked too.
- *expectation spec*: one expectation as a JSON dictionary in GX's own form,
  ``{"type": ..., "kwargs": {...}, "meta": {"resguardo": {...}}}``. Profile
  specs carry ``meta.resguardo.table`` (the table key) and
  ``meta.resguardo.check``, one of :data:`PROFILE_CHECKS`.
- *hand-written suite*: a GX suite JSON file of a DBA, see
  :mod:`expectations.suite_files`.

Primary-key checks are ``unexpected_rows_expectation`` queries with
``GROUP BY ... HAVING count(*) > 1`` rather than
``expect_column_values_to_be_unique``: GX's uniqueness check uses a window
function that ignores the key's index and takes roughly a second per million
rows, and it cannot check a composite key. The queries return one summary row
of counts, never key values, because a key can be a personal datum (a cédula).

>>> build_profile_suite({"tables": {"s.t": {"schema": "s", "table": "t", "columns": ["a"],
...                                         "primary_key": [], "row_count": 3}}})[0]["kwargs"]
{'value': 3}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from expectations.gx_run import APPLICATION_NAME, GxSession, Outcome, PlannedSuite, referenced_columns
from expectations.profile import list_tables, quote_ident, table_key
from expectations.result import BrokenCheck, CheckResult, FailedExpectation, clean_error_message
from expectations.suite_files import SuiteFile, SuiteFileError, load_suite_dir
from resguardo.errors import ConfigError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("expectations.suites")

PROFILE_SOURCE = "profile"
PROFILE_SUITE_PREFIX = "profile:"
PROFILE_CHECKS = (
    "row_count",
    "columns",
    "column_names_exact",
    "primary_key_not_null",
    "primary_key_unique",
    "large_objects",
)
LARGE_OBJECT_SCHEMA = "pg_catalog"
LARGE_OBJECT_TABLE = "pg_largeobject_metadata"

__all__ = [
    "build_profile_suite",
    "connection_targets",
    "run_restore_checks",
    "CheckResult",
    "FailedExpectation",
    "BrokenCheck",
]


# -- building the profile suite -------------------------------------------------------


def _gx_sql(text: str) -> str:
    r"""Escape text for an ``unexpected_rows_query``.

    GX fills ``{batch}`` with ``str.format``, so braces are doubled, and runs
    the query through ``sqlalchemy.text``, where ``:name`` is a bind
    parameter, so colons are escaped.

    >>> _gx_sql('"a{b}:c"')
    '"a{{b}}\\:c"'
    """
    return text.replace("{", "{{").replace("}", "}}").replace(":", "\\:")


def _sql_literal(text: str) -> str:
    """Quote ``text`` as a standard SQL string literal.

    >>> _sql_literal("it's")
    "'it''s'"
    """
    return "'" + text.replace("'", "''") + "'"


def _column_list(columns: list[str]) -> str:
    return ", ".join(_gx_sql(quote_ident(name)) for name in columns)


def _spec(expectation_type: str, kwargs: dict[str, Any], key: str, check: str, columns: list[str]) -> dict[str, Any]:
    return {
        "type": expectation_type,
        "kwargs": kwargs,
        "meta": {"resguardo": {"table": key, "check": check, "columns": list(columns)}},
    }


def row_count_spec(key: str, row_count: int, tolerance: int = 0, check: str = "row_count") -> dict[str, Any]:
    """Return the spec that checks a table's row count, exact or within ``tolerance`` rows."""
    if tolerance:
        return _spec(
            "expect_table_row_count_to_be_between",
            {"min_value": max(0, row_count - tolerance), "max_value": row_count + tolerance},
            key, check, [],
        )
    return _spec("expect_table_row_count_to_equal", {"value": row_count}, key, check, [])


def column_names_exact_query(schema: str, table: str, columns: list[str]) -> str:
    """Return a query listing each column name that is missing or unexpected, compared case-exactly."""
    regclass = _gx_sql(_sql_literal(f"{quote_ident(schema)}.{quote_ident(table)}"))
    expected = ", ".join(_gx_sql(_sql_literal(name)) for name in columns)
    expected_array = f"ARRAY[{expected}]::text[]" if columns else "ARRAY[]::text[]"
    # This query reads the catalog, not the table, so it has no {batch}.
    return (
        "SELECT coalesce(expected.name, restored.name) AS column_name, "
        "CASE WHEN restored.name IS NULL THEN 'missing' ELSE 'unexpected' END AS problem "
        f"FROM unnest({expected_array}) AS expected(name) "
        "FULL JOIN (SELECT attname\\:\\:text AS name FROM pg_catalog.pg_attribute "
        f"WHERE attrelid = {regclass}\\:\\:regclass AND attnum > 0 AND NOT attisdropped) AS restored "
        "ON expected.name = restored.name "
        "WHERE expected.name IS NULL OR restored.name IS NULL"
    )


def primary_key_not_null_query(primary_key: list[str]) -> str:
    """Return a query with one row, counting rows with a NULL key column, when there are any."""
    condition = " OR ".join(f"{_gx_sql(quote_ident(name))} IS NULL" for name in primary_key)
    return f"SELECT count(*) AS rows_with_null_key FROM {{batch}} WHERE {condition} HAVING count(*) > 0"


def primary_key_unique_query(primary_key: list[str]) -> str:
    """Return a query with one row, counting duplicated keys and surplus rows, when there are any."""
    columns = _column_list(primary_key)
    return (
        "SELECT count(*) AS duplicated_keys, sum(copies) - count(*) AS surplus_rows "
        f"FROM (SELECT count(*) AS copies FROM {{batch}} GROUP BY {columns} HAVING count(*) > 1) AS duplicates "
        "HAVING count(*) > 0"
    )


def table_specs(key: str, entry: dict[str, Any], row_count_tolerance: int = 0) -> list[dict[str, Any]]:
    """Return the profile specs of one table entry of a profile."""
    schema, table, columns = entry["schema"], entry["table"], list(entry["columns"])
    primary_key = list(entry.get("primary_key") or [])
    # The column check is a catalog query, not GX's expect_table_columns_to_match_set:
    # that one ignores case and breaks ("Can't generate DDL for NullType") on any
    # table with a type SQLAlchemy does not know, such as point, inet or ranges.
    specs = [
        row_count_spec(key, int(entry["row_count"]), row_count_tolerance),
        _spec(
            "unexpected_rows_expectation",
            {"unexpected_rows_query": column_names_exact_query(schema, table, columns)},
            key, "column_names_exact", columns,
        ),
    ]
    if primary_key:
        specs.append(
            _spec(
                "unexpected_rows_expectation",
                {"unexpected_rows_query": primary_key_not_null_query(primary_key)},
                key, "primary_key_not_null", primary_key,
            )
        )
        specs.append(
            _spec(
                "unexpected_rows_expectation",
                {"unexpected_rows_query": primary_key_unique_query(primary_key)},
                key, "primary_key_unique", primary_key,
            )
        )
    return specs


def build_profile_suite(profile: dict[str, Any], *, row_count_tolerance: int = 0) -> list[dict[str, Any]]:
    """Return the expectation specs that check a restore against ``profile``.

    ``row_count_tolerance`` (rows, default 0) accepts a row count within that
    distance of the source's; ``restore_test.row_count_tolerance`` in the
    configuration sets it. Specs come table by table in table-key order; the
    large-object check comes last when the profile counts large objects.
    """
    specs: list[dict[str, Any]] = []
    for key in sorted(profile.get("tables", {})):
        specs.extend(table_specs(key, profile["tables"][key], row_count_tolerance))
    if profile.get("large_objects") is not None:
        specs.append(
            row_count_spec(
                table_key(LARGE_OBJECT_SCHEMA, LARGE_OBJECT_TABLE),
                int(profile["large_objects"]),
                check="large_objects",
            )
        )
    return specs


# -- connecting -----------------------------------------------------------------------


def connection_targets(target: str) -> tuple[str, str]:
    """Return (libpq connection string, SQLAlchemy URL) for a DSN, a URI or a SQLAlchemy URL.

    The SQLAlchemy URL always names the psycopg 3 driver.

    >>> connection_targets("host=127.0.0.1 port=5433 user=postgres dbname=demo")
    ('host=127.0.0.1 port=5433 user=postgres dbname=demo', 'postgresql+psycopg://postgres@127.0.0.1:5433/demo')
    >>> connection_targets("postgresql+psycopg://postgres@127.0.0.1:5433/demo")
    ('postgresql://postgres@127.0.0.1:5433/demo', 'postgresql+psycopg://postgres@127.0.0.1:5433/demo')
    """
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL, make_url

    if "://" in target:
        url = make_url(target)
        if not url.drivername.startswith("postgres"):
            raise ConfigError(
                _("connection {scheme}:// is not a PostgreSQL URL").format(scheme=url.drivername),
                _("pass a libpq DSN (host=... dbname=...) or a postgresql:// URL"),
            )
        sqlalchemy_url = url.set(drivername="postgresql+psycopg")
        libpq_url = url.set(drivername="postgresql")
        return (
            libpq_url.render_as_string(hide_password=False),
            sqlalchemy_url.render_as_string(hide_password=False),
        )

    params = conninfo_to_dict(target)
    port = params.pop("port", None)
    sqlalchemy_url = URL.create(
        "postgresql+psycopg",
        username=params.pop("user", None),
        password=params.pop("password", None),
        host=params.pop("host", None),
        port=int(port) if port else None,
        database=params.pop("dbname", None),
        query={name: str(value) for name, value in params.items()},
    )
    return target, sqlalchemy_url.render_as_string(hide_password=False)


# -- turning outcomes into a report ---------------------------------------------------


def _join(names: list[str]) -> str:
    return ", ".join(names) if names else "-"


def _unexpected_row(result: dict[str, Any]) -> dict[str, Any]:
    rows = (result.get("result") or {}).get("details", {}).get("unexpected_rows") or []
    return rows[0] if rows and isinstance(rows[0], dict) else {}


def _profile_failure(outcome: Outcome) -> FailedExpectation:
    """Describe a failed profile expectation: what was checked, expected and observed."""
    meta = (outcome.spec.get("meta") or {}).get("resguardo", {})
    check = meta.get("check")
    table = meta.get("table", outcome.suite.table)
    columns = list(meta.get("columns") or [])
    kwargs = outcome.spec.get("kwargs", {})
    result = outcome.result.get("result") or {}
    observed_value = result.get("observed_value")

    if check in ("row_count", "large_objects"):
        expected: Any = kwargs.get("value", {"min": kwargs.get("min_value"), "max": kwargs.get("max_value")})
        observed: Any = observed_value
        if check == "large_objects":
            message = _("{observed} large objects restored, {expected} expected").format(
                observed=observed, expected=expected
            )
        else:
            message = _("table {table}: {observed} rows restored, {expected} expected").format(
                table=table, observed=observed, expected=expected
            )
    elif check == "columns":
        mismatched = (result.get("details") or {}).get("mismatched") or {}
        expected = kwargs.get("column_set")
        observed = observed_value
        message = _("table {table}: columns differ from the source; missing: {missing}; unexpected: {unexpected}").format(
            table=table, missing=_join(mismatched.get("missing") or []), unexpected=_join(mismatched.get("unexpected") or [])
        )
    elif check == "column_names_exact":
        rows = (result.get("details") or {}).get("unexpected_rows") or []
        expected = columns
        observed = rows
        missing = [row.get("column_name") for row in rows if row.get("problem") == "missing"]
        unexpected = [row.get("column_name") for row in rows if row.get("problem") == "unexpected"]
        message = _("table {table}: column names differ from the source in spelling or letter case; "
                    "missing: {missing}; unexpected: {unexpected}").format(
            table=table, missing=_join(missing), unexpected=_join(unexpected)
        )
    elif check == "primary_key_not_null":
        expected = 0
        observed = _unexpected_row(outcome.result).get("rows_with_null_key", observed_value)
        message = _("table {table}: {observed} rows have NULL in the primary key ({columns})").format(
            table=table, observed=observed, columns=_join(columns)
        )
    elif check == "primary_key_unique":
        summary = _unexpected_row(outcome.result)
        expected = 0
        observed = summary or observed_value
        message = _("table {table}: {keys} primary-key values ({columns}) occur more than once, "
                    "{surplus} surplus rows").format(
            table=table, keys=summary.get("duplicated_keys", "?"), columns=_join(columns),
            surplus=summary.get("surplus_rows", "?"),
        )
    else:
        expected, observed = kwargs, observed_value
        message = _("table {table}: expectation {type} failed").format(table=table, type=outcome.expectation_type)

    return FailedExpectation(
        suite=outcome.suite.name,
        table=table,
        expectation_type=outcome.expectation_type or "",
        check=check,
        columns=columns,
        expected=expected,
        observed=observed,
        message=message,
    )


def _hand_written_failure(outcome: Outcome) -> FailedExpectation:
    """Describe a failed hand-written expectation, with the DBA's note when the spec has one."""
    kwargs = {key: value for key, value in outcome.spec.get("kwargs", {}).items() if key != "batch_id"}
    result = outcome.result.get("result") or {}
    columns = referenced_columns(kwargs)
    severity = str(outcome.spec.get("severity") or "critical")
    notes = outcome.spec.get("notes") or outcome.spec.get("description") or None
    if isinstance(notes, list):
        notes = " ".join(str(line) for line in notes)
    elif notes is not None:
        notes = str(notes)

    if outcome.expectation_type == "unexpected_rows_expectation":
        # The query is the rule; it is kept in suite_results, so the report states counts only.
        expected: Any = 0
        observed: Any = result.get("observed_value")
        message = _("table {table}: the query of suite {suite} returned {observed} unexpected rows, 0 expected").format(
            table=outcome.suite.table, suite=outcome.suite.name, observed=observed
        )
    else:
        expected = kwargs
        observed = {
            key: result[key]
            for key in ("observed_value", "element_count", "unexpected_count", "unexpected_percent", "missing_count")
            if key in result
        }
        message = _("table {table}: expectation {type} of suite {suite} failed on {columns}: expected {expected}, "
                    "observed {observed}").format(
            table=outcome.suite.table,
            type=outcome.expectation_type,
            suite=outcome.suite.name,
            columns=_join(columns),
            expected=kwargs,
            observed=observed or "-",
        )
    if notes:
        message = f"{message} ({notes})"

    return FailedExpectation(
        suite=outcome.suite.name,
        table=outcome.suite.table,
        expectation_type=outcome.expectation_type or "",
        check=None,
        columns=columns,
        expected=expected,
        observed=observed,
        severity=severity,
        message=message,
        notes=notes,
    )


def _broken(outcome: Outcome) -> BrokenCheck:
    error = outcome.error or _("unknown error")
    if outcome.expectation_type:
        message = _("table {table}: expectation {type} of suite {suite} could not run: {error}").format(
            table=outcome.suite.table, type=outcome.expectation_type, suite=outcome.suite.name, error=error
        )
    else:
        message = _("table {table}: suite {suite} could not run: {error}").format(
            table=outcome.suite.table, suite=outcome.suite.name, error=error
        )
    return BrokenCheck(
        suite=outcome.suite.name,
        table=outcome.suite.table,
        expectation_type=outcome.expectation_type,
        error=error,
        source=outcome.suite.source,
        message=message,
    )


def _suite_file_broken(error: SuiteFileError, source: str) -> BrokenCheck:
    return BrokenCheck(
        suite=source,
        table=None,
        expectation_type=None,
        error=error.message,
        source=source,
        message=error.message,
    )


# -- planning and running -------------------------------------------------------------


def _plan(
    profile: dict[str, Any],
    restored: dict[str, dict[str, Any]],
    hand_written: list[SuiteFile],
    row_count_tolerance: int,
    report: CheckResult,
) -> dict[str, list[PlannedSuite]]:
    """Group the suites by restored table; record missing and unexpected tables in ``report``."""
    plan: dict[str, list[PlannedSuite]] = {}
    profile_tables = profile.get("tables", {})

    for key in sorted(profile_tables):
        if key not in restored:
            report.failed.append(
                FailedExpectation(
                    suite=PROFILE_SUITE_PREFIX + key, table=key, expectation_type="", check="table_exists",
                    columns=[], expected="present", observed="missing",
                    message=_("table {table} is missing in the restored database").format(table=key),
                )
            )
            continue
        specs = table_specs(key, profile_tables[key], row_count_tolerance)
        plan.setdefault(key, []).append(
            PlannedSuite(PROFILE_SUITE_PREFIX + key, PROFILE_SOURCE, key, specs, from_profile=True)
        )

    if profile_tables:
        for key in sorted(set(restored) - set(profile_tables)):
            # An extra table loses no source data, so it is reported without failing the gate.
            report.failed.append(
                FailedExpectation(
                    suite=PROFILE_SUITE_PREFIX + key, table=key, expectation_type="", check="table_unexpected",
                    columns=[], expected="absent", observed="present", severity="warning",
                    message=_("table {table} exists in the restored database but not in the source profile").format(
                        table=key
                    ),
                )
            )

    for suite in hand_written:
        source = str(suite.path) if suite.path else suite.name
        if suite.table in restored:
            plan.setdefault(suite.table, []).append(PlannedSuite(suite.name, source, suite.table, suite.expectations))
        elif suite.table in profile_tables:
            # Already reported as a missing table; running the suite would add nothing.
            log.info("expectations.suite.skipped", extra={"suite": suite.name, "table": suite.table})
        else:
            message = _("suite {suite} ({source}) names table {table}, which neither the source profile "
                        "nor the restored database contains").format(suite=suite.name, source=source, table=suite.table)
            similar = [key for key in restored if key.casefold() == suite.table.casefold()]
            if similar:
                message += ". " + _("Did you mean {keys}? Table keys are case-sensitive.").format(keys=_join(similar))
            report.broken.append(
                BrokenCheck(
                    suite=suite.name, table=suite.table, expectation_type=None,
                    error=_("table not found"), source=source, message=message,
                )
            )
    return plan


def _record(report: CheckResult, outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        if outcome.status == "passed":
            report.expectations_passed += 1
            report.expectations_evaluated += 1
        elif outcome.status == "failed":
            report.expectations_evaluated += 1
            report.failed.append(
                _profile_failure(outcome) if outcome.suite.from_profile else _hand_written_failure(outcome)
            )
        else:
            report.broken.append(_broken(outcome))
            log.warning(
                "expectations.check.broken",
                extra={
                    "table": outcome.suite.table,
                    "suite": outcome.suite.name,
                    "expectation": outcome.expectation_type,
                    "error": outcome.error,
                },
            )


def run_restore_checks(
    dsn_or_sqlalchemy_url: str,
    profile: dict[str, Any] | None,
    extra_suite_dir: Path | None = None,
    *,
    row_count_tolerance: int = 0,
) -> CheckResult:
    """Check a restored database against the source profile and the hand-written suites.

    ``dsn_or_sqlalchemy_url`` points at the restored database (a libpq DSN, a
    ``postgresql://`` URI or a SQLAlchemy URL; a password, when needed, comes
    from ``PGPASSWORD`` or a password file, as libpq reads them).
    ``profile`` is what :func:`expectations.profile.collect_profile` returned
    for the source, or None to run only hand-written suites.
    ``extra_suite_dir`` contains hand-written suite files; None runs none.

    Missing tables and wrong data become failed expectations, and checks that
    cannot run (including an unreachable database) become broken checks. Call
    :meth:`CheckResult.raise_for_failure` to turn the result into an
    exception. This function raises only for an argument that is not a
    PostgreSQL connection (ConfigError) or when GX cannot be imported.
    """
    import psycopg

    started = time.monotonic()
    profile = profile or {}
    report = CheckResult(
        success=False,
        tables_expected=len(profile.get("tables", {})),
        tables_checked=0,
        expectations_evaluated=0,
        expectations_passed=0,
    )
    log.info(
        "expectations.run.start",
        extra={"tables": report.tables_expected, "suite_dir": str(extra_suite_dir) if extra_suite_dir else None},
    )

    hand_written: list[SuiteFile] = []
    if extra_suite_dir is not None:
        try:
            hand_written, file_errors = load_suite_dir(extra_suite_dir)
        except SuiteFileError as error:
            file_errors = [error]
        for error in file_errors:
            report.broken.append(_suite_file_broken(error, str(extra_suite_dir)))

    conninfo, sqlalchemy_url = connection_targets(dsn_or_sqlalchemy_url)
    try:
        with psycopg.connect(conninfo, application_name=APPLICATION_NAME) as conn:
            restored = list_tables(conn)
    except psycopg.Error as error:
        log.warning(
            "expectations.run.connect_failed",
            extra={"error_type": type(error).__name__, "error": clean_error_message(str(error))},
        )
        report.broken.append(
            BrokenCheck(
                suite="-", table=None, expectation_type=None, error=clean_error_message(str(error)), source="-",
                message=_("the restored database could not be read: {error}").format(error=clean_error_message(str(error))),
            )
        )
        return _finish(report, started)

    plan = _plan(profile, restored, hand_written, row_count_tolerance, report)
    report.tables_expected = len(set(profile.get("tables", {})) | set(plan))
    large_objects = profile.get("large_objects")

    if plan or large_objects is not None:
        session = GxSession(sqlalchemy_url)
        report.gx_version = session.version
        for key in sorted(plan):
            entry = restored[key]
            table_run = session.run_table(entry["schema"], entry["table"], plan[key], entry["columns"])
            report.tables_checked += 1
            _record(report, table_run.outcomes)
            report.suite_results.update(table_run.suite_results)
        if large_objects is not None:
            key = table_key(LARGE_OBJECT_SCHEMA, LARGE_OBJECT_TABLE)
            spec = row_count_spec(key, int(large_objects), check="large_objects")
            suite = PlannedSuite(PROFILE_SUITE_PREFIX + "large_objects", PROFILE_SOURCE, key, [spec], from_profile=True)
            table_run = session.run_table(LARGE_OBJECT_SCHEMA, LARGE_OBJECT_TABLE, [suite], [])
            _record(report, table_run.outcomes)
            report.suite_results.update(table_run.suite_results)

    # Missing and unexpected tables were judged without GX; count them as evaluated.
    report.expectations_evaluated += sum(item.check in ("table_exists", "table_unexpected") for item in report.failed)
    return _finish(report, started)


def _finish(report: CheckResult, started: float) -> CheckResult:
    report.duration_seconds = round(time.monotonic() - started, 3)
    report.success = report.data_ok and report.checks_ok
    log.info(
        "expectations.run.done",
        extra={
            "success": report.success,
            "tables_checked": report.tables_checked,
            "evaluated": report.expectations_evaluated,
            "passed": report.expectations_passed,
            "failed": len(report.failed),
            "broken": len(report.broken),
            "seconds": report.duration_seconds,
        },
    )
    return report
