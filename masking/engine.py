"""Mask a database in place, inside a scratch PostgreSQL cluster.

Terms:

- *plan*: the policy checked against the catalog, with a built transformer
  for every masked column. :func:`build_plan` raises PolicyError listing
  every problem (deny by default: a column without a rule is a problem).
- *masked column*: a column whose rule is not ``keep``. Generated columns are
  never written; PostgreSQL recomputes stored generated columns from the
  masked inputs.
- *moved map*: ``_resguardo_masking.moved_<leaf oid>(old_tid, new_tid)``,
  one row per updated row, pairing the row's ``ctid`` before and after the
  UPDATE. The proof joins the pre-masking snapshot to the masked rows
  through it. Rows whose masked columns are all NULL are not updated and
  have no entry.

How a leaf is masked, in two phases. Phase one (:mod:`masking.worktables`)
streams ``ctid`` and the masked columns in batches through the transformers
and COPYs the results into the leaf's work table. The table is never held in
memory, and the phase can run in several processes. Phase two runs one
``UPDATE ONLY leaf SET ... FROM work WHERE leaf.ctid = work._tid`` per leaf. Partitioned
tables are masked leaf by leaf with the same rules, so every partition masks
a value the same way.

Constraints: a unique index is checked row by row during an UPDATE, so a
bijection applied in batches would hit transient duplicates (A->B while a
later row still holds B). Key constraints and unique indexes that cover a
masked column, and foreign keys that depend on them or on masked columns, are
dropped before masking and recreated after it. Recreating them validates
uniqueness and referential integrity over the masked data, and a violation
fails the run with the constraint's name.

Triggers: the session runs with ``session_replication_role = replica``, which
skips user triggers (audit and ``updated_at`` triggers would otherwise fire)
and also the foreign-key triggers; referential integrity is re-checked when
the foreign keys are recreated and by the proof. Triggers marked ``ENABLE
ALWAYS`` fire even in replica mode, so they are disabled for the run and
re-enabled as ``ALWAYS`` afterwards.

Phase two and the locks that keep phase one's rows unchanged run in one
transaction: a failure leaves the scratch database as it was, apart from the
work schema, and the work tables are dropped either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from masking.catalog import WORK_SCHEMA, Catalog, Column, read_catalog
from masking.errors import MaskingError, PolicyError
from masking.keys import MaskingKey
from masking.policy import MaskingPolicy, format_table_name
from masking.transformers import KeepRule, NullRule, Transformer, TransformerFactory
from masking.worktables import (
    ConnectionTarget,
    column_masker,
    create_work_tables,
    drop_work_tables,
    run_jobs,
    split_jobs,
    work_table,
)
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("masking.engine")

# Masking runs in the calling process unless masking.yaml sets ``workers``.
DEFAULT_WORKERS = 1


@dataclass
class MaskedColumn:
    column: Column
    rule: Any
    transformer: Transformer


@dataclass
class TablePlan:
    schema: str
    name: str
    oid: int
    leaves: list[tuple[int, str, str]]
    masked: list[MaskedColumn]
    row_estimate: int

    @property
    def label(self) -> str:
        return format_table_name(self.schema, self.name)


@dataclass
class MaskingPlan:
    policy: MaskingPolicy
    key_id: str
    catalog: Catalog
    tables: list[TablePlan]
    factory: TransformerFactory = field(repr=False)

    def masked_columns(self) -> set[tuple[str, str, str]]:
        return {(t.schema, t.name, m.column.name) for t in self.tables for m in t.masked}

    def rule_of(self, schema: str, table: str, column: str) -> Any:
        table_policy = self.policy.table_keys().get((schema, table))
        if table_policy is None:
            return None
        return table_policy.columns.get(column)


def qualified(schema: str, name: str) -> sql.Composed:
    """Return ``"schema"."name"`` quoted for SQL."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def _rule_identity(rule: Any) -> str:
    if rule is None:
        return "-"
    if isinstance(rule, KeepRule):
        return "keep"
    return repr(sorted(rule.describe().items()))


def require_autocommit(conn: psycopg.Connection) -> None:
    """Raise unless ``conn`` is in autocommit mode.

    The engine, proof and suppression open their own transactions with
    ``conn.transaction()``. Inside an outer transaction those would be mere
    savepoints, invisible to the proof's second connection until the caller
    commits.
    """
    if not conn.autocommit:
        raise MaskingError(
            _("the masking connection is not in autocommit mode"),
            _("open it with psycopg.connect(dsn, autocommit=True)"),
        )


def build_plan(conn: psycopg.Connection, policy: MaskingPolicy, key: MaskingKey) -> MaskingPlan:
    """Check ``policy`` against the connected database and build the transformers.

    Raises PolicyError listing every problem. Problems are tables or columns
    without a rule, rules for objects that do not exist, transformers that do
    not fit the column's type, and non-injective transformers on UNIQUE
    columns. Foreign keys whose two sides have different rules are problems
    too, and so are large objects unless the policy says to drop them.
    """
    catalog = read_catalog(conn)
    factory = TransformerFactory(key)
    policy_tables = policy.table_keys()
    problems: list[str] = []

    for table_key, table in catalog.tables.items():
        label = format_table_name(*table_key)
        if table_key not in policy_tables:
            for column in table.columns:
                problems.append(
                    _("{schema}.{table}.{column}: no rule (the table is not in the policy); add the table with a rule per column").format(
                        schema=table.schema, table=table.name, column=column
                    )
                )
            continue
        rules = policy_tables[table_key].columns
        for column in table.columns:
            if column not in rules:
                problems.append(
                    _("{schema}.{table}.{column}: no rule; add one under tables.{label}.columns (keep or a transformer)").format(
                        schema=table.schema, table=table.name, column=column, label=label
                    )
                )
        for column in rules:
            if column not in table.columns:
                problems.append(
                    _("tables.{label}.columns.{column}: the column does not exist in the database; remove the rule or fix its name").format(
                        label=label, column=column
                    )
                )
    for table_key in policy_tables:
        if table_key not in catalog.tables:
            problems.append(
                _("tables.{label}: no such table (or it is a partition: write its rules on the partitioned table)").format(
                    label=format_table_name(*table_key)
                )
            )

    plans: list[TablePlan] = []
    for table_key, table in catalog.tables.items():
        table_policy = policy_tables.get(table_key)
        if table_policy is None:
            continue
        masked = []
        for name, column in table.columns.items():
            rule = table_policy.columns.get(name)
            if rule is None or isinstance(rule, KeepRule):
                continue
            where = f"{table.schema}.{table.name}.{name}"
            if column.generated:
                problems.append(
                    _("{where}: generated column; use keep, PostgreSQL recomputes it from the masked columns").format(where=where)
                )
                continue
            if column.identity_always:
                problems.append(
                    _("{where}: GENERATED ALWAYS identity column cannot be updated; use keep").format(where=where)
                )
                continue
            transformer = factory.build(rule)
            if column.value_kind not in transformer.value_kinds:
                problems.append(
                    _("{where}: transformer {name} does not accept type {type}; it accepts {kinds}").format(
                        where=where, name=rule.transform, type=column.type_name,
                        kinds=", ".join(sorted(transformer.value_kinds)),
                    )
                )
                continue
            if isinstance(rule, NullRule) and column.not_null:
                problems.append(_("{where}: transformer null on a NOT NULL column; choose another transformer").format(where=where))
                continue
            masked.append(MaskedColumn(column, rule, transformer))
        plans.append(TablePlan(table.schema, table.name, table.oid, table.leaves, masked, table.row_estimate))

    problems.extend(_unique_problems(catalog, plans))
    problems.extend(_foreign_key_problems(catalog, policy))
    if catalog.large_objects and policy.large_objects != "drop":
        problems.append(
            _("the database has {count} large objects, which masking cannot inspect; set large_objects: drop in the policy").format(
                count=catalog.large_objects
            )
        )

    if problems:
        raise PolicyError(
            _("masking policy for database {database} does not fit the database ({count} problems):").format(
                database=policy.database, count=len(problems)
            )
            + "\n  - "
            + "\n  - ".join(problems),
            _("fix each item above in the policy file; 'resguardo mask discover' proposes rules for new columns"),
        )
    return MaskingPlan(policy, key.key_id, catalog, plans, factory)


def _unique_problems(catalog: Catalog, plans: list[TablePlan]) -> list[str]:
    problems = []
    masked_by_oid: dict[int, dict[str, MaskedColumn]] = {}
    for plan in plans:
        columns = {m.column.name: m for m in plan.masked}
        for leaf_oid, _schema, _name in plan.leaves:
            masked_by_oid[leaf_oid] = columns
        masked_by_oid[plan.oid] = columns
    for constraint in catalog.key_constraints:
        columns = masked_by_oid.get(constraint.table_oid, {})
        for name in constraint.columns:
            entry = columns.get(name)
            if entry is not None and (not entry.transformer.injective or entry.column.is_array):
                problems.append(
                    _("{schema}.{table}.{column}: under unique constraint {constraint}, but transformer {transform} can map two values to one; use an injective transformer (cedula, ruc, phone, account, email, token, card with bin_mode: keep)").format(
                        schema=constraint.schema, table=constraint.table, column=name,
                        constraint=constraint.name, transform=entry.rule.transform,
                    )
                )
    return problems


def _foreign_key_problems(catalog: Catalog, policy: MaskingPolicy) -> list[str]:
    problems = []
    tables = policy.table_keys()
    for fk in catalog.foreign_keys:
        child = tables.get((fk.child_schema, fk.child_table))
        parent = tables.get((fk.parent_schema, fk.parent_table))
        if child is None or parent is None:
            continue
        for child_column, parent_column in zip(fk.child_columns, fk.parent_columns):
            child_rule = child.columns.get(child_column)
            parent_rule = parent.columns.get(parent_column)
            if _rule_identity(child_rule) != _rule_identity(parent_rule):
                problems.append(
                    _("foreign key {name}: {child} and {parent} have different rules, so masked values would no longer match; give both the same rule").format(
                        name=fk.name,
                        child=f"{fk.child_schema}.{fk.child_table}.{child_column}",
                        parent=f"{fk.parent_schema}.{fk.parent_table}.{parent_column}",
                    )
                )
    return problems


@dataclass
class _DroppedConstraints:
    keys: list[Any] = field(default_factory=list)
    foreign_keys: list[Any] = field(default_factory=list)


def _drop_constraints(cur: psycopg.Cursor, plan: MaskingPlan) -> _DroppedConstraints:
    catalog = plan.catalog
    masked_by_oid: dict[int, set[str]] = {}
    for table in plan.tables:
        names = {m.column.name for m in table.masked}
        masked_by_oid[table.oid] = names
        for leaf_oid, _s, _n in table.leaves:
            masked_by_oid[leaf_oid] = names
    keys = [c for c in catalog.key_constraints if set(c.columns) & masked_by_oid.get(c.table_oid, set())]
    key_indexes = {c.index_oid for c in keys}
    foreign_keys = [
        fk for fk in catalog.foreign_keys
        if fk.index_oid in key_indexes or set(fk.child_columns) & masked_by_oid.get(fk.child_oid, set())
    ]
    for fk in foreign_keys:
        cur.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(qualified(fk.child_schema, fk.child_table), sql.Identifier(fk.name))
        )
    for constraint in keys:
        if constraint.is_constraint:
            cur.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    qualified(constraint.schema, constraint.table), sql.Identifier(constraint.name)
                )
            )
        else:
            cur.execute(sql.SQL("DROP INDEX {}").format(qualified(constraint.schema, constraint.name)))
    log.info("masking.constraints.dropped", extra={"keys": len(keys), "foreign_keys": len(foreign_keys)})
    return _DroppedConstraints(keys, foreign_keys)


def _recreate_constraints(conn: psycopg.Connection, dropped: _DroppedConstraints) -> list[str]:
    recreated = []
    for item in dropped.keys + dropped.foreign_keys:
        if hasattr(item, "is_constraint") and not item.is_constraint:
            statement = sql.SQL(item.definition)
            table = (item.schema, item.table)
        else:
            schema, table_name = (item.schema, item.table) if hasattr(item, "is_constraint") else (item.child_schema, item.child_table)
            statement = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
                qualified(schema, table_name), sql.Identifier(item.name)
            ) + sql.SQL(item.definition)
            table = (schema, table_name)
        try:
            with conn.transaction():
                conn.execute(statement)
        except psycopg.errors.IntegrityError as error:
            log.error("masking.constraint.failed", extra={"constraint": item.name, "table": ".".join(table), "sqlstate": error.sqlstate})
            raise MaskingError(
                _("constraint {name} on {table} no longer holds after masking: {error}").format(
                    name=item.name, table=".".join(table), error=error.diag.message_primary
                ),
                _("a transformer mapped two values to one or the two sides of a foreign key differ; check the rules of the columns in {name}").format(
                    name=item.name
                ),
            ) from None
        recreated.append(item.name)
    return recreated


def mask_database(conn: psycopg.Connection, plan: MaskingPlan, *, workers: int = DEFAULT_WORKERS) -> dict[str, Any]:
    """Mask every masked column of ``plan`` in the connected (scratch) database.

    Phase one computes the masked values of every leaf into work tables
    (:mod:`masking.worktables`), in ``workers`` processes. Phase two, in one
    transaction with phase one's locks, drops the constraints, updates each
    leaf from its work table and recreates the constraints. Commits on
    success. Returns a JSON-serialisable report: rows updated and seconds per
    table, constraints recreated, materialized views refreshed.
    """
    require_autocommit(conn)
    started = time.monotonic()
    report: dict[str, Any] = {"key_id": plan.key_id, "tables": {}, "constraints_recreated": [], "materialized_views": [],
                              "workers": workers}
    log.info("masking.start", extra={"database": plan.policy.database, "tables": len(plan.tables), "key_id": plan.key_id,
                                     "workers": workers})
    masked_tables = [(index, table) for index, table in enumerate(plan.tables) if table.masked]
    leaves = [(leaf, table) for _index, table in masked_tables for leaf in table.leaves]
    create_work_tables(conn, [(oid, schema, name, [m.column.name for m in table.masked])
                              for (oid, schema, name), table in leaves])
    try:
        with conn.transaction():
            with conn.cursor() as cur:
                cur.execute("SET LOCAL session_replication_role = replica")
                # SHARE blocks every other writer but not the jobs' readers, so the
                # rows the jobs read are still there, unchanged, for the UPDATE.
                for (oid, schema, name), _table in leaves:
                    cur.execute(sql.SQL("LOCK TABLE ONLY {} IN SHARE MODE").format(qualified(schema, name)))

            phase_started = time.monotonic()
            written = run_jobs(
                ConnectionTarget.of(conn),
                [job for index, table in masked_tables for job in split_jobs(conn, index, table.leaves, workers)],
                columns={index: [m.column.name for m in table.masked] for index, table in masked_tables},
                maskers={index: [column_masker(m.transformer, m.column) for m in table.masked] for index, table in masked_tables},
                rules={index: [(m.column, m.rule) for m in table.masked] for index, table in masked_tables},
                key=plan.factory.key,
                workers=workers,
            )
            report["compute_seconds"] = round(time.monotonic() - phase_started, 3)

            with conn.cursor() as cur:
                for schema, table, trigger in plan.catalog.always_triggers:
                    cur.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(qualified(schema, table), sql.Identifier(trigger)))
                if plan.catalog.large_objects:
                    cur.execute("SELECT count(lo_unlink(oid)) FROM pg_largeobject_metadata")
                    report["large_objects_dropped"] = cur.fetchone()[0]
                dropped = _drop_constraints(cur, plan)

            for _index, table in masked_tables:
                table_started = time.monotonic()
                rows = sum(_update_leaf(conn, table, leaf, written[leaf[0]]) for leaf in table.leaves)
                report["tables"][table.label] = {
                    "rows_updated": rows,
                    "columns": {m.column.name: m.rule.transform for m in table.masked},
                    "seconds": round(time.monotonic() - table_started, 3),
                }

            report["constraints_recreated"] = _recreate_constraints(conn, dropped)
            with conn.cursor() as cur:
                for schema, table, trigger in plan.catalog.always_triggers:
                    cur.execute(sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}").format(qualified(schema, table), sql.Identifier(trigger)))
                # Materialized views hold copies of the original rows until refreshed.
                for schema, view in plan.catalog.materialized_views:
                    cur.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(qualified(schema, view)))
                    report["materialized_views"].append(f"{schema}.{view}")
    finally:
        drop_work_tables(conn, [oid for (oid, _schema, _name), _table in leaves])
    # Statistics (most common values, histograms) still describe the original
    # data until ANALYZE replaces them.
    conn.execute("ANALYZE")
    report["seconds"] = round(time.monotonic() - started, 3)
    log.info("masking.stop", extra={"database": plan.policy.database, "seconds": report["seconds"]})
    return report


def _update_leaf(conn: psycopg.Connection, table: TablePlan, leaf: tuple[int, str, str], written: int) -> int:
    """Copy the masked values from the leaf's work table into the leaf and record the moved map."""
    leaf_oid, schema, name = leaf
    columns = [m.column.name for m in table.masked]
    work = work_table(leaf_oid)
    moved_table = qualified(WORK_SCHEMA, f"moved_{leaf_oid}")
    started = time.monotonic()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} (old_tid tid NOT NULL, new_tid tid NOT NULL)").format(moved_table))
        # Statistics let the planner choose a hash join over the work table.
        cur.execute(sql.SQL("ANALYZE {}").format(work))
        cur.execute(
            sql.SQL(
                "WITH moved AS (UPDATE ONLY {target} AS t SET {assignments} FROM {work} AS w WHERE t.ctid = w._tid "
                "RETURNING w._tid, t.ctid) INSERT INTO {moved} SELECT * FROM moved"
            ).format(
                target=qualified(schema, name),
                assignments=sql.SQL(", ").join(sql.SQL("{0} = w.{0}").format(sql.Identifier(c)) for c in columns),
                work=work,
                moved=moved_table,
            )
        )
        rows = cur.rowcount
    if rows != written:
        log.error("masking.leaf.count_mismatch", extra={"table": f"{schema}.{name}", "written": written, "updated": rows})
        raise MaskingError(
            _("masking table {table} updated {updated} rows but computed {written}; the table changed during masking").format(
                table=f"{schema}.{name}", updated=rows, written=written
            ),
            _("make sure nothing else writes to the scratch database while it is masked, then run again"),
        )
    log.info("masking.leaf.stop", extra={"table": f"{schema}.{name}", "rows": rows, "seconds": round(time.monotonic() - started, 3)})
    return rows
