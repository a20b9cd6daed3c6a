"""The source profile: per-table facts read next to a backup, used to verify its restore.

Terms:

- *user table*: an ordinary (``relkind 'r'``) or partitioned (``relkind 'p'``)
  table outside the system schemas (``pg_catalog``, ``information_schema``,
  ``pg_toast*``, ``pg_temp_*``). Temporary tables and tables that belong to an
  extension are left out: pg_dump does not dump an extension's tables as data
  of their own, so their restored contents come from the extension script.
- *partition*: a table attached to a partitioned table. Partitions get no entry
  of their own. Their parent's entry lists them under ``partitions`` and its
  ``row_count`` includes their rows, because ``SELECT count(*)`` on a
  partitioned table reads every partition. A partition that is lost or
  restored empty therefore shows up as a wrong row count on the parent.
- *table key*: ``schema.table`` as written, e.g. ``banca.clientes`` or
  ``Banca.Clientes Ñ``. A part that contains ``.`` or ``"`` is double-quoted,
  with ``"`` doubled, so two different tables never share a key.
- *profile*: the JSON-serialisable dictionary returned by
  :func:`collect_profile`::

      {"version": 1,
       "tables": {"banca.clientes": {"schema": "banca", "table": "clientes",
                                     "kind": "table", "columns": ["id", ...],
                                     "primary_key": ["id"], "partitions": [],
                                     "row_count": 1000}},
       "large_objects": 0}

``row_count`` counts rows as ``SELECT count(*) FROM table`` does. The rows of
inheritance children are therefore included in their parent's count, and the
restore checks count the same way.

>>> table_key("banca", "clientes")
'banca.clientes'
>>> table_key("Banca", "Clientes Ñ")
'Banca.Clientes Ñ'
>>> table_key("a.b", "c")
'"a.b".c'
>>> quote_ident('a"b')
'"a""b"'
"""

from __future__ import annotations

import time
from typing import Any

from psycopg import sql

from resguardo.log import get_logger

log = get_logger("expectations.profile")

PROFILE_VERSION = 1

# One catalog query lists every user table with its columns (in attnum order),
# its primary-key columns (in key order) and, for a partitioned table, all of
# its descendant partitions.
_CATALOG_QUERY = """
SELECT n.nspname AS schema_name,
       c.relname AS table_name,
       c.relkind::text AS relkind,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum)
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                '{}') AS columns,
       coalesce((SELECT array_agg(a.attname::text ORDER BY k.position)
                   FROM pg_catalog.pg_constraint con
                   CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, position)
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                  WHERE con.conrelid = c.oid AND con.contype = 'p'),
                '{}') AS primary_key,
       coalesce((SELECT array_agg(array[pn.nspname::text, pc.relname::text] ORDER BY pn.nspname, pc.relname)
                   FROM pg_catalog.pg_partition_tree(c.oid) AS tree
                   JOIN pg_catalog.pg_class pc ON pc.oid = tree.relid
                   JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
                  WHERE c.relkind = 'p' AND tree.relid <> c.oid),
                '{}') AS partitions
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND NOT c.relispartition
   AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY n.nspname, c.relname
"""

_KIND_NAMES = {"r": "table", "p": "partitioned"}


def quote_ident(name: str) -> str:
    """Quote ``name`` as a PostgreSQL identifier, always, with ``"`` doubled."""
    return '"' + name.replace('"', '""') + '"'


def _key_part(name: str) -> str:
    return quote_ident(name) if ("." in name or '"' in name) else name


def table_key(schema: str, table: str) -> str:
    """Return the table key of ``schema``.``table`` (see the module docstring)."""
    return f"{_key_part(schema)}.{_key_part(table)}"


def list_tables(conn: Any) -> dict[str, dict[str, Any]]:
    """Return every user table's schema, name, kind, columns, primary key and partitions, by table key.

    Runs one catalog query on the open psycopg connection ``conn`` and counts no rows.
    """
    tables: dict[str, dict[str, Any]] = {}
    for schema, table, relkind, columns, primary_key, partitions in conn.execute(_CATALOG_QUERY).fetchall():
        tables[table_key(schema, table)] = {
            "schema": schema,
            "table": table,
            "kind": _KIND_NAMES[relkind],
            "columns": list(columns),
            "primary_key": list(primary_key),
            "partitions": [table_key(part_schema, part_table) for part_schema, part_table in partitions],
        }
    return tables


def count_large_objects(conn: Any) -> int:
    """Return the number of large objects in the database of ``conn``."""
    return int(conn.execute("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata").fetchone()[0])


def collect_profile(conn: Any) -> dict[str, Any]:
    """Read the profile of the database that ``conn`` is connected to.

    ``conn`` is an open psycopg connection. The caller opens it, normally in a
    REPEATABLE READ transaction that imported the snapshot pg_dump uses, so the
    counts describe exactly the dumped data. This function only runs queries.
    Cost: one catalog query, one ``SELECT count(*)`` per user table (a full
    scan of each table) and one count of large objects.
    """
    started = time.monotonic()
    log.info("expectations.profile.start")

    tables = list_tables(conn)
    for key, entry in tables.items():
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(entry["schema"], entry["table"]))
        table_started = time.monotonic()
        entry["row_count"] = int(conn.execute(query).fetchone()[0])
        log.debug(
            "expectations.profile.table",
            extra={"table": key, "rows": entry["row_count"], "seconds": round(time.monotonic() - table_started, 3)},
        )

    large_objects = count_large_objects(conn)

    log.info(
        "expectations.profile.done",
        extra={
            "tables": len(tables),
            "rows": sum(entry["row_count"] for entry in tables.values()),
            "large_objects": large_objects,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return {"version": PROFILE_VERSION, "tables": tables, "large_objects": large_objects}
