"""Personal-looking values in JSON documents, for the proof.

Terms:

- *leaf*: a string or number inside a ``json`` or ``jsonb`` value, at any
  depth, found with ``jsonb_path_query(doc, 'strict $.**')``.
- *personal-looking leaf*: a leaf that, once normalised, is a valid cédula or
  RUC, a Luhn-valid number of 13 to 19 digits (a card), an Ecuadorian phone
  number or an e-mail address. Normalising lower-cases e-mails, removes
  spaces, dots, dashes and brackets from digit strings, writes ``+593`` and
  ``593`` phone prefixes as ``0``, and restores the leading zero of a
  9-digit JSON number (a cédula or mobile number stored as a number).
- *leaf snapshot*: ``_resguardo_masking.jleaves_<leaf oid>_<attnum>(row_tid,
  h)``, taken with the proof's snapshot: the salted SHA-256 of each
  personal-looking leaf of each row, before masking.

The check built here fails a row when a personal-looking leaf of the masked
document equals one that the same row held before masking, wherever it sits
in the document. So a JSON path that the policy does not name, and that
therefore kept a cédula or e-mail address, fails the proof even though no
rule's own check looked at it. Every ``json`` and ``jsonb`` column of every
table is checked, whether its rule is ``json``, another transformer or
``keep``. Columns kept with ``reviewed: true`` are exempt, because a reviewer
stated that they hold no personal data.

The snapshot of a row is compared with the same row after masking (through
the engine's moved map), not with every original value of the database.
Format-preserving maskers map into the real number space, so a masked
cédula can equal another person's real cédula. Comparing within one row
avoids those false alarms.
"""

from __future__ import annotations

from typing import Any, Iterator

from masking.catalog import WORK_SCHEMA, Column, Table
from masking.transformers import KeepRule

# Created after the validators of masking.proof.SQL_FUNCTIONS, which it calls.
SQL_FUNCTION = r"""
CREATE OR REPLACE FUNCTION _resguardo_masking.personal_leaf(leaf jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE t text; d text; kind text := jsonb_typeof(leaf);
BEGIN
    IF kind = 'string' THEN
        t := btrim(leaf #>> '{}');
        IF t ~* '^[a-z0-9._%+-]+@[a-z0-9-]+([.][a-z0-9-]+)+$' THEN RETURN lower(t); END IF;
        d := regexp_replace(t, '[[:space:].()-]', '', 'g');
        IF d ~ '^[+]593[0-9]{8,9}$' THEN d := substr(d, 2); END IF;
    ELSIF kind = 'number' THEN
        d := leaf::text;
        IF length(d) = 9 THEN d := '0' || d; END IF;
    ELSE
        RETURN NULL;
    END IF;
    IF d !~ '^[0-9]{7,19}$' THEN RETURN NULL; END IF;
    IF d ~ '^593([2-7][0-9]{7}|9[0-9]{8})$' THEN d := '0' || substr(d, 4); END IF;
    IF _resguardo_masking.cedula_ok(d) OR _resguardo_masking.ruc_ok(d)
       OR (length(d) BETWEEN 13 AND 19 AND _resguardo_masking.luhn_ok(d))
       OR d ~ '^0([2-7][0-9]{7}|9[0-9]{8})$' THEN
        RETURN d;
    END IF;
    RETURN NULL;
END $fn$;
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_sql(schema: str, name: str) -> str:
    return f"{_ident(schema)}.{_ident(name)}"


def checked_columns(plan: Any) -> Iterator[tuple[Table, Column]]:
    """Yield every JSON column whose leaves the proof checks: all but arrays and reviewed ``keep`` columns."""
    for table in plan.catalog.tables.values():
        for column in table.columns.values():
            if column.value_kind != "json" or column.is_array:
                continue
            rule = plan.rule_of(table.schema, table.name, column.name)
            if isinstance(rule, KeepRule) and rule.reviewed:
                continue
            yield table, column


def snapshot_table(leaf_oid: int, column: Column) -> str:
    """Return the quoted name of a leaf snapshot table."""
    return _table_sql(WORK_SCHEMA, f"jleaves_{leaf_oid}_{column.attnum}")


def _leaves_of(column_sql: str) -> str:
    return (f"jsonb_path_query({column_sql}::jsonb, 'strict $.**') AS leaf(value) "
            f"WHERE {WORK_SCHEMA}.personal_leaf(leaf.value) IS NOT NULL")


def snapshot_statements(plan: Any, hash_of: Any) -> Iterator[tuple[int, str, str, Column, str]]:
    """Yield ``(leaf oid, schema, name, column, CREATE TABLE statement)`` for every leaf snapshot.

    ``hash_of(expression)`` returns the SQL of the salted hash of a text
    expression, the same function the proof's checks use.
    """
    for table, column in checked_columns(plan):
        for leaf_oid, schema, name in table.leaves:
            value = f"{WORK_SCHEMA}.personal_leaf(leaf.value)"
            yield leaf_oid, schema, name, column, (
                f"CREATE TABLE {snapshot_table(leaf_oid, column)} AS "
                f"SELECT t.ctid AS row_tid, {hash_of(value)} AS h "
                f"FROM ONLY {_table_sql(schema, name)} t, {_leaves_of('t.' + _ident(column.name))}"
            )


def check_query(leaf: tuple[int, str, str], column: Column, *, moved: bool, hash_of: Any, anchor: str) -> str:
    """Return the query for the rows whose masked document still contains one of their original personal leaves.

    ``moved`` says whether the engine wrote a moved map for this leaf (its
    table has masked columns). Rows of other leaves were never updated, so
    they keep their ``ctid``.
    """
    leaf_oid, schema, name = leaf
    before = snapshot_table(leaf_oid, column)
    if moved:
        moved_map = _table_sql(WORK_SCHEMA, f"moved_{leaf_oid}")
        rows = (f"{before} b LEFT JOIN {moved_map} m ON m.old_tid = b.row_tid "
                f"JOIN ONLY {_table_sql(schema, name)} t ON t.ctid = COALESCE(m.new_tid, b.row_tid)")
    else:
        rows = f"{before} b JOIN ONLY {_table_sql(schema, name)} t ON t.ctid = b.row_tid"
    value = f"{WORK_SCHEMA}.personal_leaf(leaf.value)"
    return (
        f"SELECT DISTINCT b.row_tid::text FROM {rows} WHERE {anchor} AND EXISTS ("
        f"SELECT 1 FROM {_leaves_of('t.' + _ident(column.name))} AND {hash_of(value)} = b.h)"
    )
