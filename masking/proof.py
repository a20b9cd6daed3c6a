"""Proof that a masked copy contains no original personal data and is still consistent.

Terms:

- *snapshot*: taken after suppression and before masking. For every leaf
  with masked columns, ``_resguardo_masking.before_<leaf oid>`` stores each
  row's ``ctid`` and, per masked column, SHA-256 of a random per-run *salt*
  followed by the value's text, plus facts the format checks need (was the
  value a valid cédula, how many digits did it have). The salt lives only in
  the proof's memory and in the check queries, and the work schema is dropped
  before the copy leaves the scratch cluster. Comparing salted hashes in SQL
  keeps memory flat for any table size.
- *check*: one SQL query that returns the ids (ctids or row numbers, never
  values) of offending rows; zero rows means the check passed. A *required*
  check fails the proof; an *informational* one is only reported (for
  example "rows whose amount did not change" for the ``amount`` transformer,
  which does not guarantee a change).
- *runner*: ``gx`` runs the checks as a Great Expectations suite of
  ``UnexpectedRowsExpectation`` over a one-row anchor table
  (``_resguardo_masking.anchor``); ``sql`` runs the same queries directly.
  GX reports a query that raises as ``success=false`` with ``exception_info``;
  the proof reports that check's status as ``error``, not ``failed``, so a
  broken check is never mistaken for wrong data, nor for a pass.

Checks: every row kept its count; every masked row can still be found
through the moved map (a row rewritten after masking has a new ``ctid``); no
row of a masked column whose
transformer guarantees a change kept its original value; no row with
masked data was skipped; no masked e-mail or token equals any original value
of the column; cédulas, RUCs and card numbers that were valid stay valid,
e-mails stay e-mails and phone numbers keep their digit count; every
foreign key and unique constraint over masked columns holds; free text
under ``redact`` contains no cédula, RUC, card number, e-mail or phone
number (scanned in Python, streaming); and no JSON document of any table
still holds a personal-looking value that its row held before masking, at a
path the policy names or not (:mod:`masking.json_leaves`).

The result is a JSON-serialisable dict with ``outcome``: ``passed``,
``data_failed`` (a required check found rows) or ``check_broken`` (a check
could not run).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from masking.catalog import WORK_SCHEMA
from masking.engine import MaskingPlan, TablePlan, qualified, require_autocommit
from masking import json_leaves
from masking.identifiers import contains_identifier
from masking.transformers import JsonRule, RedactRule, parse_json_path
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("masking.proof")

SQL_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION _resguardo_masking.cedula_ok(v text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE total int := 0; p int;
BEGIN
    IF v IS NULL OR v !~ '^(0[1-9]|1[0-9]|2[0-4]|30)[0-5][0-9]{7}$' THEN RETURN false; END IF;
    FOR i IN 1..9 LOOP
        p := substr(v, i, 1)::int * CASE WHEN i % 2 = 1 THEN 2 ELSE 1 END;
        IF p > 9 THEN p := p - 9; END IF;
        total := total + p;
    END LOOP;
    RETURN (10 - total % 10) % 10 = substr(v, 10, 1)::int;
END $fn$;

CREATE OR REPLACE FUNCTION _resguardo_masking.mod11_ok(v text, weights int[]) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE total int := 0;
BEGIN
    FOR i IN 1..array_length(weights, 1) LOOP
        total := total + substr(v, i, 1)::int * weights[i];
    END LOOP;
    RETURN (total + substr(v, array_length(weights, 1) + 1, 1)::int) % 11 = 0;
END $fn$;

CREATE OR REPLACE FUNCTION _resguardo_masking.ruc_ok(v text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT v IS NOT NULL AND v ~ '^[0-9]{13}$' AND (
        (_resguardo_masking.cedula_ok(substr(v, 1, 10)) AND substr(v, 11) <> '000')
        OR (v ~ '^(0[1-9]|1[0-9]|2[0-4]|30)6' AND substr(v, 10) <> '0000'
            AND _resguardo_masking.mod11_ok(v, ARRAY[3, 2, 7, 6, 5, 4, 3, 2]))
        OR (v ~ '^(0[1-9]|1[0-9]|2[0-4]|30)9' AND substr(v, 11) <> '000'
            AND _resguardo_masking.mod11_ok(v, ARRAY[4, 3, 2, 7, 6, 5, 4, 3, 2])))
$fn$;

CREATE OR REPLACE FUNCTION _resguardo_masking.luhn_ok(v text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE total int := 0; d int; n int;
BEGIN
    IF v IS NULL OR v !~ '^[0-9]{12,19}$' THEN RETURN false; END IF;
    n := length(v);
    FOR i IN 0..n - 1 LOOP
        d := substr(v, n - i, 1)::int;
        IF i % 2 = 1 THEN d := d * 2; IF d > 9 THEN d := d - 9; END IF; END IF;
        total := total + d;
    END LOOP;
    RETURN total % 10 = 0;
END $fn$;
"""

_VALIDATORS = {"cedula": "cedula_ok", "ruc": "ruc_ok", "card": "luhn_ok"}
_SET_CHECKED = {"email", "token"}


@dataclass
class Check:
    """One proof check: a query returning the ids of offending rows."""

    name: str
    kind: str
    table: str
    column: str | None
    query: str
    required: bool = True


@dataclass
class Snapshot:
    """The salt and row counts of one :func:`take_snapshot`; the salt stays in memory only."""

    salt: bytes = field(repr=False)
    leaves: dict[int, str] = field(default_factory=dict)
    row_counts: dict[int, int] = field(default_factory=dict)
    # (leaf oid, column name) -> personal-looking JSON leaves recorded before masking.
    json_leaves: dict[tuple[int, str], int] = field(default_factory=dict)

    @property
    def salt_sql(self) -> str:
        return "'\\x" + self.salt.hex() + "'::bytea"


def _text_of(column_sql: str, value_kind: str, transform: str) -> str:
    # Integer columns lose leading zeros; pad them back so validators see 10 or 13 digits.
    if value_kind == "integer" and transform in ("cedula", "ruc"):
        width = 10 if transform == "cedula" else 13
        return f"lpad({column_sql}::text, {width}, '0')"
    return f"{column_sql}::text"


def _hash(snapshot: Snapshot, expression: str) -> str:
    return f"sha256({snapshot.salt_sql} || convert_to({expression}, 'UTF8'))"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_sql(schema: str, name: str) -> str:
    return f"{_ident(schema)}.{_ident(name)}"


def take_snapshot(conn: psycopg.Connection, plan: MaskingPlan) -> Snapshot:
    """Record salted hashes of the masked columns' current values and each leaf's row count."""
    require_autocommit(conn)
    snapshot = Snapshot(salt=secrets.token_bytes(32))
    started = time.monotonic()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(WORK_SCHEMA)))
        cur.execute(SQL_FUNCTIONS)
        cur.execute(json_leaves.SQL_FUNCTION)
        cur.execute(f"CREATE TABLE IF NOT EXISTS {WORK_SCHEMA}.anchor AS SELECT 1 AS one")
        for table in plan.tables:
            if not table.masked:
                continue
            for leaf_oid, schema, name in table.leaves:
                select = ["ctid AS row_tid"]
                for index, masked in enumerate(table.masked):
                    column = masked.column
                    value = _text_of(_ident(column.name), column.value_kind, masked.rule.transform)
                    select.append(f"{_hash(snapshot, value)} AS h{index}")
                    if masked.rule.transform in _VALIDATORS and not column.is_array:
                        select.append(f"{WORK_SCHEMA}.{_VALIDATORS[masked.rule.transform]}({value}) AS valid{index}")
                    if masked.rule.transform == "phone" and not column.is_array:
                        select.append(f"length(regexp_replace({value}, '[^0-9]', '', 'g')) AS digits{index}")
                    if isinstance(masked.rule, JsonRule):
                        for path_index, path in enumerate(masked.rule.paths):
                            selected = f"jsonb_path_query_array({_ident(column.name)}::jsonb, {_literal(path)})"
                            select.append(
                                f"CASE WHEN {selected} = '[]'::jsonb THEN NULL ELSE {_hash(snapshot, selected + '::text')} END"
                                f" AS p{index}_{path_index}"
                            )
                before = _table_sql(WORK_SCHEMA, f"before_{leaf_oid}")
                cur.execute(f"DROP TABLE IF EXISTS {before}")
                cur.execute(f"CREATE TABLE {before} AS SELECT {', '.join(select)} FROM ONLY {_table_sql(schema, name)}")
                snapshot.leaves[leaf_oid] = f"{schema}.{name}"
                snapshot.row_counts[leaf_oid] = cur.rowcount
        for leaf_oid, schema, name, column, statement in json_leaves.snapshot_statements(
            plan, lambda expression: _hash(snapshot, expression)
        ):
            cur.execute(f"DROP TABLE IF EXISTS {json_leaves.snapshot_table(leaf_oid, column)}")
            cur.execute(statement)
            snapshot.json_leaves[(leaf_oid, column.name)] = cur.rowcount
    log.info("proof.snapshot", extra={"leaves": len(snapshot.leaves), "seconds": round(time.monotonic() - started, 3)})
    return snapshot


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def build_checks(plan: MaskingPlan, snapshot: Snapshot) -> list[Check]:
    """Return every check for the masked database described by ``plan``."""
    checks: list[Check] = []
    # GX substitutes {batch} with a subquery and adds its own alias unless the
    # query contains a JOIN; the anchor always joins, so the alias here is the only one.
    anchor = "EXISTS (SELECT 1 FROM {batch} AS anchor_batch JOIN (SELECT 1 AS one) AS anchor_one ON true)"
    for table in plan.tables:
        if not table.masked:
            continue
        for leaf_oid, schema, name in table.leaves:
            checks.extend(_leaf_checks(table, leaf_oid, schema, name, snapshot, anchor))
    checks.extend(_constraint_checks(plan, anchor))
    checks.extend(_json_leaf_checks(plan, snapshot, anchor))
    return checks


def _json_leaf_checks(plan: MaskingPlan, snapshot: Snapshot, anchor: str) -> list[Check]:
    # Every JSON column is checked, named in the policy or not: a path without a rule keeps its values.
    masked_leaves = {leaf_oid for table in plan.tables if table.masked for leaf_oid, _s, _n in table.leaves}
    checks = []
    for table, column in json_leaves.checked_columns(plan):
        for leaf in table.leaves:
            leaf_oid, schema, name = leaf
            if (leaf_oid, column.name) not in snapshot.json_leaves:
                continue
            label = f"{schema}.{name}"
            checks.append(Check(
                f"json_original_leaf:{label}.{column.name}", "json_original_leaf", label, column.name,
                json_leaves.check_query(leaf, column, moved=leaf_oid in masked_leaves,
                                        hash_of=lambda expression: _hash(snapshot, expression), anchor=anchor),
            ))
    return checks


def _leaf_checks(table: TablePlan, leaf_oid: int, schema: str, name: str, snapshot: Snapshot, anchor: str) -> list[Check]:
    label = f"{schema}.{name}"
    leaf = _table_sql(schema, name)
    before = _table_sql(WORK_SCHEMA, f"before_{leaf_oid}")
    moved = _table_sql(WORK_SCHEMA, f"moved_{leaf_oid}")
    joined = f"{before} b JOIN {moved} m ON m.old_tid = b.row_tid JOIN ONLY {leaf} t ON t.ctid = m.new_tid"
    checks = [
        Check(
            f"row_count:{label}", "row_count", label, None,
            f"SELECT 1 AS row_count_differs WHERE {anchor} AND "
            f"(SELECT count(*) FROM ONLY {leaf}) <> {snapshot.row_counts[leaf_oid]}",
        ),
        Check(
            f"rows_not_masked:{label}", "rows_not_masked", label, None,
            f"SELECT b.row_tid::text FROM {before} b LEFT JOIN {moved} m ON m.old_tid = b.row_tid "
            f"WHERE {anchor} AND m.old_tid IS NULL AND ("
            + " OR ".join(f"b.h{i} IS NOT NULL" for i in range(len(table.masked)))
            + ")",
        ),
        # Rows rewritten after masking get new ctids; the per-row checks could
        # then no longer find them, so a lost row identity fails the proof.
        Check(
            f"row_identity_lost:{label}", "row_identity_lost", label, None,
            f"SELECT m.new_tid::text FROM {moved} m LEFT JOIN ONLY {leaf} t ON t.ctid = m.new_tid "
            f"WHERE {anchor} AND t.ctid IS NULL",
        ),
    ]
    for index, masked in enumerate(table.masked):
        column = masked.column
        transform = masked.rule.transform
        current = _text_of(f"t.{_ident(column.name)}", column.value_kind, transform)
        where = f"{label}.{column.name}"
        if isinstance(masked.rule, JsonRule):
            for path_index, (path, inner) in enumerate(masked.rule.paths.items()):
                selected = f"jsonb_path_query_array(t.{_ident(column.name)}::jsonb, {_literal(path)})"
                checks.append(Check(
                    f"unchanged:{where}:{path}", "unchanged", label, f"{column.name} {path}",
                    f"SELECT b.row_tid::text FROM {joined} WHERE {anchor} AND b.p{index}_{path_index} IS NOT NULL "
                    f"AND {_hash(snapshot, selected + '::text')} = b.p{index}_{path_index}",
                    required=_inner_guarantees_change(table, index, path),
                ))
        elif not isinstance(masked.rule, RedactRule):
            checks.append(Check(
                f"unchanged:{where}", "unchanged", label, column.name,
                f"SELECT b.row_tid::text FROM {joined} WHERE {anchor} AND b.h{index} IS NOT NULL "
                f"AND {_hash(snapshot, current)} = b.h{index}",
                required=masked.transformer.guarantees_change,
            ))
        if transform in _SET_CHECKED and not column.is_array:
            originals = " UNION ALL ".join(
                f"SELECT h{index} FROM {_table_sql(WORK_SCHEMA, f'before_{oid}')}" for oid, _s, _n in table.leaves
            )
            checks.append(Check(
                f"original_value_present:{where}", "original_value_present", label, column.name,
                f"SELECT t.ctid::text FROM ONLY {leaf} t WHERE {anchor} AND t.{_ident(column.name)} IS NOT NULL "
                f"AND {_hash(snapshot, current)} IN ({originals})",
            ))
        if column.is_array:
            continue
        if transform in _VALIDATORS:
            function = f"{WORK_SCHEMA}.{_VALIDATORS[transform]}"
            checks.append(Check(
                f"format:{where}", "format", label, column.name,
                f"SELECT b.row_tid::text FROM {joined} WHERE {anchor} AND b.valid{index} AND NOT {function}({current})",
            ))
        elif transform == "email":
            checks.append(Check(
                f"format:{where}", "format", label, column.name,
                f"SELECT b.row_tid::text FROM {joined} WHERE {anchor} AND b.h{index} IS NOT NULL "
                f"AND {current} !~ '^[^@[:space:]]+@[^@[:space:]]+[.][^@[:space:]]+$'",
            ))
        elif transform == "phone":
            checks.append(Check(
                f"format:{where}", "format", label, column.name,
                f"SELECT b.row_tid::text FROM {joined} WHERE {anchor} AND b.digits{index} IS NOT NULL "
                f"AND length(regexp_replace({current}, '[^0-9]', '', 'g')) <> b.digits{index}",
            ))
    return checks


def _inner_guarantees_change(table: TablePlan, index: int, path: str) -> bool:
    masked = table.masked[index]
    inner = masked.rule.paths[path]
    if isinstance(inner, RedactRule):
        return False
    return masked.transformer is not None and bool(
        getattr(masked.transformer, "_paths", None)
        and all(t.guarantees_change for steps, t in masked.transformer._paths if steps == parse_json_path(path))
    )


def _constraint_checks(plan: MaskingPlan, anchor: str) -> list[Check]:
    checks = []
    masked = plan.masked_columns()
    for fk in plan.catalog.foreign_keys:
        child_masked = any((fk.child_schema, fk.child_table, c) in masked for c in fk.child_columns)
        parent_masked = any((fk.parent_schema, fk.parent_table, c) in masked for c in fk.parent_columns)
        if not (child_masked or parent_masked):
            continue
        conditions = " AND ".join(f"p.{_ident(pc)} = c.{_ident(cc)}" for cc, pc in zip(fk.child_columns, fk.parent_columns))
        not_null = " AND ".join(f"c.{_ident(cc)} IS NOT NULL" for cc in fk.child_columns)
        child = _table_sql(fk.child_schema, fk.child_table)
        parent = _table_sql(fk.parent_schema, fk.parent_table)
        checks.append(Check(
            f"foreign_key:{fk.name}", "foreign_key", f"{fk.child_schema}.{fk.child_table}", ", ".join(fk.child_columns),
            f"SELECT c.ctid::text FROM {child} c WHERE {anchor} AND {not_null} "
            f"AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {conditions})",
        ))
    for constraint in plan.catalog.key_constraints:
        table = plan.catalog.by_oid.get(constraint.table_oid)
        key = (constraint.schema, constraint.table) if table is None else (table.schema, table.name)
        if not any((key[0], key[1], c) in masked for c in constraint.columns):
            continue
        if constraint.kind not in ("p", "u") or not constraint.columns:
            continue
        columns = ", ".join(_ident(c) for c in constraint.columns)
        not_null = " AND ".join(f"{_ident(c)} IS NOT NULL" for c in constraint.columns)
        checks.append(Check(
            f"unique:{constraint.name}", "unique", f"{constraint.schema}.{constraint.table}", ", ".join(constraint.columns),
            f"SELECT count(*) FROM {_table_sql(constraint.schema, constraint.table)} WHERE {anchor} AND {not_null} "
            f"GROUP BY {columns} HAVING count(*) > 1",
        ))
    return checks


def _run_sql(conn: psycopg.Connection, checks: list[Check]) -> list[dict[str, Any]]:
    results = []
    anchor = f"{WORK_SCHEMA}.anchor"
    for check in checks:
        query = check.query.replace("{batch}", anchor)
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM ({query}) AS unexpected")
                count = cur.fetchone()[0]
            results.append({"unexpected_count": count, "error": None})
        except psycopg.Error as error:
            log.warning("proof.check.error", extra={"check": check.name, "sqlstate": error.sqlstate})
            results.append({"unexpected_count": None, "error": type(error).__name__ + ": " + (error.diag.message_primary or "")})
    return results


def _run_gx(uri: str, checks: list[Check]) -> list[dict[str, Any]]:
    import great_expectations as gx  # imported here: slow to import and only the proof needs it

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_postgres("masked_copy", connection_string=uri)
    asset = source.add_table_asset("anchor", table_name="anchor", schema_name=WORK_SCHEMA)
    batch_definition = asset.add_batch_definition_whole_table("anchor")
    suite = context.suites.add(gx.ExpectationSuite(name="masking_proof"))
    for index, check in enumerate(checks):
        suite.add_expectation(
            gx.expectations.UnexpectedRowsExpectation(
                unexpected_rows_query=check.query,
                description=check.name,
                meta={"check_index": index},
            )
        )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="masking_proof", data=batch_definition, suite=suite)
    )
    outcome = definition.run(result_format="BASIC")
    by_index: dict[int, dict[str, Any]] = {}
    for result in outcome.results:
        index = result.expectation_config.meta["check_index"]
        info = result.exception_info or {}
        raised = info.get("raised_exception") or any(
            isinstance(v, dict) and v.get("raised_exception") for v in info.values()
        )
        if raised:
            message = info.get("exception_message") or next(
                (v.get("exception_message") for v in info.values() if isinstance(v, dict) and v.get("exception_message")), ""
            )
            by_index[index] = {"unexpected_count": None, "error": str(message)[:500]}
        else:
            by_index[index] = {"unexpected_count": int(result.result.get("observed_value") or 0), "error": None}
    return [by_index.get(i, {"unexpected_count": None, "error": "no result from Great Expectations"}) for i in range(len(checks))]


def scan_redacted_text(conn: psycopg.Connection, plan: MaskingPlan, batch_rows: int = 5_000) -> list[dict[str, Any]]:
    """Stream every ``redact`` column and count rows still containing a detectable identifier."""
    results = []
    for table in plan.tables:
        for masked in table.masked:
            if not isinstance(masked.rule, RedactRule) or masked.rule.mode == "replace":
                continue
            for leaf_oid, schema, name in table.leaves:
                column = sql.Identifier(masked.column.name)
                count = 0
                with conn.transaction(), conn.cursor(name=f"proof_scan_{leaf_oid}") as cur:
                    cur.itersize = batch_rows
                    cur.execute(sql.SQL("SELECT {}::text FROM ONLY {} WHERE {} IS NOT NULL").format(
                        column, qualified(schema, name), column))
                    for (text,) in cur:
                        if contains_identifier(text):
                            count += 1
                results.append({
                    "name": f"free_text:{schema}.{name}.{masked.column.name}", "kind": "free_text",
                    "table": f"{schema}.{name}", "column": masked.column.name, "required": True,
                    "unexpected_count": count, "error": None,
                })
    return results


def run_proof(conn: psycopg.Connection, uri: str, plan: MaskingPlan, snapshot: Snapshot, *,
              runner: str = "gx", expected_row_counts: dict[int, int] | None = None) -> dict[str, Any]:
    """Run every check on the masked database and return the JSON-serialisable proof."""
    started = time.monotonic()
    checks = build_checks(plan, snapshot)
    log.info("proof.start", extra={"checks": len(checks), "runner": runner})
    if runner == "gx":
        outcomes = _run_gx(uri, checks)
    elif runner == "sql":
        outcomes = _run_sql(conn, checks)
    else:
        raise ValueError(f"unknown proof runner {runner!r}; use 'gx' or 'sql'")
    entries = []
    for check, outcome in zip(checks, outcomes):
        entries.append({
            "name": check.name, "kind": check.kind, "table": check.table, "column": check.column,
            "required": check.required, **outcome,
        })
    entries.extend(scan_redacted_text(conn, plan))
    for entry in entries:
        if entry["error"] is not None:
            entry["status"] = "error"
        elif entry["unexpected_count"] == 0:
            entry["status"] = "passed"
        else:
            entry["status"] = "failed" if entry["required"] else "info"
    broken = [e["name"] for e in entries if e["status"] == "error"]
    failed = [e["name"] for e in entries if e["status"] == "failed"]
    if broken:
        outcome = "check_broken"
    elif failed:
        outcome = "data_failed"
    else:
        outcome = "passed"
    proof = {
        "outcome": outcome,
        "runner": runner,
        "key_id": plan.key_id,
        "checks_total": len(entries),
        "failed": failed,
        "broken": broken,
        "row_counts": {snapshot.leaves[oid]: count for oid, count in snapshot.row_counts.items()},
        "checks": entries,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("proof.stop", extra={"outcome": outcome, "failed": len(failed), "broken": len(broken), "seconds": proof["seconds"]})
    return proof


def drop_work_schema(conn: psycopg.Connection) -> None:
    """Drop ``_resguardo_masking`` (snapshot, moved maps, functions) so it cannot leave the scratch cluster."""
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(WORK_SCHEMA)))
    remaining = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (WORK_SCHEMA,)).fetchone()[0]
    if remaining:
        raise RuntimeError("the masking work schema is still present after DROP SCHEMA")
