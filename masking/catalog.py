"""Read the parts of the PostgreSQL catalog that masking needs.

Terms:

- *policy table*: an ordinary or partitioned table that is not itself a
  partition; the policy has rules for these.
- *leaf*: a relation that stores rows: an ordinary table, or a partition
  without sub-partitions. A policy table's leaves are itself (ordinary table)
  or all its leaf partitions (partitioned table).
- *key constraint*: a PRIMARY KEY, UNIQUE or EXCLUDE constraint, or a unique
  index without a constraint.

Schemas ``pg_catalog``, ``information_schema``, ``pg_toast*``, ``pg_temp*`` and
the masking work schema ``_resguardo_masking`` are never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

WORK_SCHEMA = "_resguardo_masking"
_SKIP_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema', '_resguardo_masking') " \
                "AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'"


@dataclass
class Column:
    name: str
    attnum: int
    type_name: str
    value_kind: str
    is_array: bool
    not_null: bool
    generated: bool
    identity_always: bool
    depends_on: list[str] = field(default_factory=list)


@dataclass
class Table:
    oid: int
    schema: str
    name: str
    kind: str
    columns: dict[str, Column]
    leaves: list[tuple[int, str, str]]
    row_estimate: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.name)


@dataclass
class KeyConstraint:
    """A uniqueness guarantee to drop before masking and recreate after it."""

    name: str
    kind: str
    table_oid: int
    schema: str
    table: str
    columns: list[str]
    definition: str
    index_oid: int
    is_constraint: bool


@dataclass
class ForeignKey:
    name: str
    oid: int
    child_oid: int
    child_schema: str
    child_table: str
    child_columns: list[str]
    parent_oid: int
    parent_schema: str
    parent_table: str
    parent_columns: list[str]
    definition: str
    index_oid: int


@dataclass
class Catalog:
    tables: dict[tuple[str, str], Table]
    by_oid: dict[int, Table]
    key_constraints: list[KeyConstraint]
    foreign_keys: list[ForeignKey]
    always_triggers: list[tuple[str, str, str]]
    materialized_views: list[tuple[str, str]]
    large_objects: int


def _value_kind(type_name: str, category: str) -> str:
    if type_name in ("int2", "int4", "int8"):
        return "integer"
    if category == "N":
        return "numeric"
    if type_name in ("date", "timestamp", "timestamptz"):
        return "date"
    if type_name in ("json", "jsonb"):
        return "json"
    if category == "S":
        return "text"
    return "other"


def read_catalog(conn: psycopg.Connection) -> Catalog:
    """Read tables, columns, constraints, triggers and large objects of the connected database."""
    tables: dict[tuple[str, str], Table] = {}
    by_oid: dict[int, Table] = {}
    with conn.cursor() as cur:
        cur.execute(
            f"""
            SELECT c.oid, n.nspname, c.relname, c.relkind, greatest(c.reltuples, 0)::bigint
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {_SKIP_SCHEMAS}
            ORDER BY n.nspname, c.relname
            """
        )
        for oid, schema, name, kind, estimate in cur.fetchall():
            table = Table(oid, schema, name, kind, {}, [], estimate)
            tables[(schema, name)] = table
            by_oid[oid] = table

        # Leaves: the table itself, or every partition without sub-partitions.
        cur.execute(
            f"""
            SELECT c.oid, n.nspname, c.relname, c.relkind, c.relispartition,
                   CASE WHEN c.relispartition THEN pg_partition_root(c.oid) ELSE c.oid END,
                   greatest(c.reltuples, 0)::bigint
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND {_SKIP_SCHEMAS}
            ORDER BY n.nspname, c.relname
            """
        )
        for oid, schema, name, _kind, is_partition, root, estimate in cur.fetchall():
            table = by_oid.get(root)
            if table is not None:
                table.leaves.append((oid, schema, name))
                if is_partition:
                    table.row_estimate += estimate

        cur.execute(
            """
            SELECT a.attrelid, a.attname, a.attnum, bt.typname, bt.typcategory, et.typname, et.typcategory,
                   a.attnotnull, a.attgenerated <> '', a.attidentity = 'a'
            FROM pg_attribute a
            JOIN pg_type t ON t.oid = a.atttypid
            -- Domains are masked as their base type.
            JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
            LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
            WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attrelid, a.attnum
            """,
            (list(by_oid),),
        )
        for relid, name, attnum, type_name, category, element_name, element_category, not_null, generated, identity in cur:
            is_array = element_name is not None
            kind = _value_kind(element_name, element_category) if is_array else _value_kind(type_name, category)
            by_oid[relid].columns[name] = Column(
                name, attnum, element_name or type_name, kind, is_array, not_null, generated, identity
            )

        # Which columns each generated column reads: PostgreSQL 15 records the
        # dependencies from the generation expression (pg_attrdef) to the columns.
        cur.execute(
            """
            SELECT ad.adrelid, g.attname, r.attname
            FROM pg_depend d
            JOIN pg_attrdef ad ON ad.oid = d.objid
            JOIN pg_attribute g ON g.attrelid = ad.adrelid AND g.attnum = ad.adnum
            JOIN pg_attribute r ON r.attrelid = d.refobjid AND r.attnum = d.refobjsubid
            WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.refobjid = ad.adrelid AND d.refobjsubid > 0 AND g.attgenerated <> ''
              AND ad.adrelid = ANY(%s)
            """,
            (list(by_oid),),
        )
        for relid, generated, source in cur:
            by_oid[relid].columns[generated].depends_on.append(source)

        key_constraints = _read_key_constraints(cur)
        foreign_keys = _read_foreign_keys(cur)

        cur.execute(
            f"""
            SELECT n.nspname, c.relname, t.tgname
            FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE NOT t.tgisinternal AND t.tgenabled = 'A' AND {_SKIP_SCHEMAS}
            """
        )
        always_triggers = [tuple(row) for row in cur.fetchall()]
        cur.execute(
            f"""
            SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'm' AND c.relispopulated AND {_SKIP_SCHEMAS} ORDER BY c.oid
            """
        )
        materialized_views = [tuple(row) for row in cur.fetchall()]
        cur.execute("SELECT count(*) FROM pg_largeobject_metadata")
        large_objects = cur.fetchone()[0]
    return Catalog(tables, by_oid, key_constraints, foreign_keys, always_triggers, materialized_views, large_objects)


def _read_key_constraints(cur: psycopg.Cursor) -> list[KeyConstraint]:
    # Constraints and indexes inherited by partitions are left out: dropping and
    # recreating the parent's one covers every partition.
    cur.execute(
        f"""
        SELECT con.conname, con.contype, con.conrelid, n.nspname, c.relname,
               array(SELECT a.attname FROM unnest(con.conkey) k(attnum)
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
               pg_get_constraintdef(con.oid), con.conindid, true
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE con.contype IN ('p', 'u', 'x') AND con.conparentid = 0 AND {_SKIP_SCHEMAS}
        UNION ALL
        SELECT ic.relname, 'i', i.indrelid, n.nspname, c.relname,
               array(SELECT a.attname FROM pg_depend d JOIN pg_attribute a
                     ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                       AND d.refobjid = i.indrelid AND d.refobjsubid > 0 ORDER BY a.attnum),
               pg_get_indexdef(i.indexrelid), i.indexrelid, false
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.indisunique AND {_SKIP_SCHEMAS}
          AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid AND con.contype IN ('p', 'u', 'x'))
          AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
        """
    )
    return [
        KeyConstraint(name, kind, relid, schema, table, list(columns), definition, index_oid, is_constraint)
        for name, kind, relid, schema, table, columns, definition, index_oid, is_constraint in cur.fetchall()
    ]


def _read_foreign_keys(cur: psycopg.Cursor) -> list[ForeignKey]:
    cur.execute(
        f"""
        SELECT con.conname, con.oid, con.conrelid, n.nspname, c.relname,
               array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.ord),
               con.confrelid, pn.nspname, pc.relname,
               array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.ord),
               pg_get_constraintdef(con.oid), con.conindid
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_class pc ON pc.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
        WHERE con.contype = 'f' AND con.conparentid = 0 AND {_SKIP_SCHEMAS}
        ORDER BY con.oid
        """
    )
    return [ForeignKey(*row[:5], list(row[5]), row[6], row[7], row[8], list(row[9]), row[10], row[11]) for row in cur.fetchall()]
