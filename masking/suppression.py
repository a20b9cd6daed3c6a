"""The suppression list: data subjects whose deletion was requested (LOPDP Art. 15).

Terms:

- *subject*: a natural person identified by cédula. The list stores only
  ``HMAC-SHA256(subject subkey, cédula)`` as hex, so it contains no raw
  cédula; matching recomputes the HMAC of each value in the database.
- *suppression list file*: YAML with the masking key id it was written
  under and one entry per subject (HMAC, date added, a case reference that
  must not be personal data). Loading it with another key is rejected,
  because no HMAC would match.
- *target*: a column the policy's ``suppression`` section names as holding a
  subject's cédula (or, with ``match: ruc``, a natural-person RUC).
  ``delete`` removes the matching rows and, first, every row that references
  them through a foreign key, recursively; ``nullify`` sets the column to
  NULL.

Every masked refresh applies the list before masking, and restores can call
:func:`apply_suppression` so an old backup never brings a deleted subject
back. The report holds counts only.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from stdnum.ec import ci as stdnum_ci

from masking.catalog import Catalog, read_catalog
from masking.engine import qualified, require_autocommit
from masking.errors import MaskingError, PolicyError
from masking.keys import MaskingKey
from masking.policy import MaskingPolicy, parse_table_name
from resguardo.errors import KeyError_
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("masking.suppression")

SUBJECT_PURPOSE = "suppression-subject"
MAX_DEPTH = 16


def subject_mac(key: MaskingKey, cedula: str) -> str:
    """Return the hex HMAC that identifies a subject by cédula (separators ignored)."""
    digits = "".join(c for c in str(cedula) if c.isdigit())
    return key.mac(SUBJECT_PURPOSE, digits).hex()


@dataclass
class Subject:
    mac: str
    added: str
    reference: str | None = None


@dataclass
class SuppressionList:
    """The subjects to suppress, bound to the key that computed their HMACs."""

    key: MaskingKey = field(repr=False)
    subjects: list[Subject] = field(default_factory=list)

    @property
    def macs(self) -> set[str]:
        return {s.mac for s in self.subjects}

    @classmethod
    def load(cls, path: Path, key: MaskingKey) -> "SuppressionList":
        """Read a list file; a missing file is an empty list."""
        path = Path(path)
        if not path.exists():
            return cls(key)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise PolicyError(
                _("suppression list {path} is not valid YAML: {error}").format(path=path, error=error),
                _("restore the file from version control; never edit HMACs by hand"),
            ) from None
        if data.get("key_id") not in (None, key.key_id):
            raise KeyError_(
                _("suppression list {path} was written under masking key {found}, not the configured key {expected}").format(
                    path=path, found=data.get("key_id"), expected=key.key_id
                ),
                _("use the masking key the list was written with; after a key rotation the subjects must be added again"),
            )
        subjects = [Subject(str(s["hmac"]), str(s.get("added", "")), s.get("reference")) for s in data.get("subjects") or []]
        return cls(key, subjects)

    def add(self, cedula: str, reference: str | None = None) -> bool:
        """Add a subject by cédula (validated, then hashed); return False when already listed."""
        digits = "".join(c for c in str(cedula) if c.isdigit())
        if not stdnum_ci.is_valid(digits):
            raise PolicyError(
                _("the value entered is not a valid cédula (10 digits, province code and check digit)"),
                _("check the number on the deletion request and enter it again"),
            )
        mac = subject_mac(self.key, digits)
        if mac in self.macs:
            return False
        self.subjects.append(Subject(mac, dt.date.today().isoformat(), reference))
        return True

    def save(self, path: Path) -> None:
        """Write the list atomically (temporary file, then rename)."""
        path = Path(path)
        document = {
            "version": 1,
            "key_id": self.key.key_id,
            "subjects": [{"hmac": s.mac, "added": s.added, "reference": s.reference} for s in self.subjects],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".suppression-")
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            yaml.safe_dump(document, handle, allow_unicode=True, sort_keys=False)
        os.replace(temporary, path)


def _value_digits(value: Any, match: str) -> str | None:
    digits = "".join(c for c in str(value) if c.isdigit())
    if isinstance(value, int):
        digits = digits.zfill(10 if match == "cedula" else 13)
    if match == "ruc":
        return digits[:10] if len(digits) == 13 else None
    return digits


def _leaves(catalog: Catalog, schema: str, table: str) -> list[tuple[int, str, str]]:
    entry = catalog.tables.get((schema, table))
    if entry is None:
        raise PolicyError(
            _("suppression target {table} does not exist in the database").format(table=f"{schema}.{table}"),
            _("fix suppression.targets in the policy"),
        )
    return entry.leaves


def apply_suppression(conn: psycopg.Connection, policy: MaskingPolicy, suppression_list: SuppressionList) -> dict[str, Any]:
    """Delete or anonymise every row of the listed subjects; return counts per table.

    Runs in one transaction with ``session_replication_role = replica``, so
    user triggers (audit tables) do not fire. PostgreSQL then enforces no
    foreign keys either, so rows that reference deleted rows are deleted
    explicitly, children first.
    """
    require_autocommit(conn)
    report: dict[str, Any] = {"subjects": len(suppression_list.subjects), "key_id": suppression_list.key.key_id,
                              "targets": [], "deleted": {}}
    if not suppression_list.subjects or policy.suppression is None:
        return report
    macs = suppression_list.macs
    catalog = read_catalog(conn)
    log.info("suppression.start", extra={"database": policy.database, "subjects": len(macs)})
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("CREATE TEMP TABLE _suppress (rel oid NOT NULL, tid tid NOT NULL) ON COMMIT DROP")
        conn.execute("CREATE TEMP TABLE _nullify (rel oid NOT NULL, tid tid NOT NULL) ON COMMIT DROP")
        for target in policy.suppression.targets:
            schema, table = parse_table_name(target.table)
            matched = 0
            for leaf_oid, leaf_schema, leaf_name in _leaves(catalog, schema, table):
                matched += _match_leaf(conn, leaf_oid, leaf_schema, leaf_name, target, macs, suppression_list.key,
                                       "_nullify" if target.action == "nullify" else "_suppress")
            if target.action == "nullify":
                column = catalog.tables[(schema, table)].columns[target.column]
                if column.not_null:
                    raise MaskingError(
                        _("suppression target {table}.{column} is NOT NULL and cannot be nullified").format(
                            table=target.table, column=target.column
                        ),
                        _("use action: delete for this target"),
                    )
                for leaf_oid, leaf_schema, leaf_name in _leaves(catalog, schema, table):
                    conn.execute(
                        sql.SQL("UPDATE ONLY {} SET {} = NULL WHERE ctid IN (SELECT tid FROM _nullify WHERE rel = %s)").format(
                            qualified(leaf_schema, leaf_name), sql.Identifier(target.column)
                        ),
                        (leaf_oid,),
                    )
                conn.execute("TRUNCATE _nullify")
            report["targets"].append({"table": target.table, "column": target.column, "action": target.action, "rows": matched})
        report["deleted"] = _delete_with_dependents(conn, catalog)
    log.info("suppression.stop", extra={"database": policy.database, "deleted": sum(report["deleted"].values())})
    return report


def _match_leaf(conn: psycopg.Connection, leaf_oid: int, schema: str, name: str, target: Any, macs: set[str],
                key: MaskingKey, into: str) -> int:
    matched = []
    column = sql.Identifier(target.column)
    with conn.cursor(name=f"suppress_{leaf_oid}") as cur:
        cur.itersize = 5_000
        cur.execute(sql.SQL("SELECT ctid, {} FROM ONLY {} WHERE {} IS NOT NULL").format(column, qualified(schema, name), column))
        for tid, value in cur:
            digits = _value_digits(value, target.match)
            if digits and subject_mac(key, digits) in macs:
                matched.append((leaf_oid, tid))
    if matched:
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} (rel, tid) FROM STDIN").format(sql.Identifier(into))) as copy:
            for row in matched:
                copy.write_row(row)
    return len(matched)


def _delete_with_dependents(conn: psycopg.Connection, catalog: Catalog) -> dict[str, int]:
    """Delete the rows in ``_suppress`` and, children first, every row that references them."""
    leaf_names = {oid: (schema, name) for table in catalog.tables.values() for oid, schema, name in table.leaves}
    leaf_root = {oid: table for table in catalog.tables.values() for oid, _s, _n in table.leaves}
    # Expand level by level: rows of child tables whose foreign key points at a row being deleted.
    frontier = conn.execute("SELECT DISTINCT rel FROM _suppress").fetchall()
    pending = {row[0] for row in frontier}
    discovery_order = sorted(pending)
    for _level in range(MAX_DEPTH):
        if not pending:
            break
        added_rels: set[int] = set()
        for rel in pending:
            parent = leaf_root[rel]
            for fk in catalog.foreign_keys:
                if (fk.parent_schema, fk.parent_table) != (parent.schema, parent.name):
                    continue
                child = catalog.tables.get((fk.child_schema, fk.child_table))
                if child is None:
                    continue
                condition = sql.SQL(" AND ").join(
                    sql.SQL("c.{} = p.{}").format(sql.Identifier(cc), sql.Identifier(pc))
                    for cc, pc in zip(fk.child_columns, fk.parent_columns)
                )
                schema, name = leaf_names[rel]
                for child_oid, child_schema, child_name in child.leaves:
                    result = conn.execute(
                        sql.SQL(
                            "INSERT INTO _suppress SELECT %s, c.ctid FROM ONLY {} c JOIN ONLY {} p ON {} "
                            "WHERE p.ctid IN (SELECT tid FROM _suppress WHERE rel = %s) "
                            "AND NOT EXISTS (SELECT 1 FROM _suppress s WHERE s.rel = %s AND s.tid = c.ctid)"
                        ).format(qualified(child_schema, child_name), qualified(schema, name), condition),
                        (child_oid, rel, child_oid),
                    )
                    if result.rowcount:
                        added_rels.add(child_oid)
        pending = added_rels
        discovery_order.extend(sorted(added_rels))
    else:
        raise MaskingError(
            _("foreign keys reference the suppressed rows more than {depth} levels deep (a cycle?)").format(depth=MAX_DEPTH),
            _("check the foreign keys of the suppression targets; cycles need action: nullify on one side"),
        )
    deleted: dict[str, int] = {}
    counts = dict(conn.execute("SELECT rel, count(*) FROM _suppress GROUP BY rel").fetchall())
    # Children first: a table found deeper in the walk is deleted before its parents.
    order = list(dict.fromkeys(reversed(discovery_order)))
    for rel in order:
        count = counts.get(rel, 0)
        if not count:
            continue
        schema, name = leaf_names[rel]
        conn.execute(
            sql.SQL("DELETE FROM ONLY {} WHERE ctid IN (SELECT tid FROM _suppress WHERE rel = %s)").format(qualified(schema, name)),
            (rel,),
        )
        deleted[f"{schema}.{name}"] = count
    return deleted


def load_configured(masking_config: Any, database: str) -> tuple[MaskingPolicy, SuppressionList] | None:
    """Return the policy and suppression list of ``database`` when restores should apply them, else None."""
    settings = masking_config.databases.get(database)
    if settings is None or not settings.apply_suppression_on_restore or settings.suppression_list is None:
        return None
    return _load_policy_and_list(masking_config, database)


def _load_policy_and_list(masking_config: Any, database: str) -> tuple[MaskingPolicy, SuppressionList]:
    from masking.policy import load_policy

    settings = masking_config.database(database)
    if settings.suppression_list is None:
        raise PolicyError(
            _("database {database} has no suppression_list in masking.yaml").format(database=database),
            _("set databases.{database}.suppression_list to a file path").format(database=database),
        )
    key = masking_config.load_key()
    policy_path = masking_config.resolve(settings.policy)
    policy = load_policy(policy_path)
    if policy.database != database:
        raise PolicyError(
            _("policy {path} is for database {found}, not {expected}").format(
                path=policy_path, found=policy.database, expected=database
            ),
            _("point databases.{database}.policy in masking.yaml at the right file").format(database=database),
        )
    return policy, SuppressionList.load(masking_config.resolve(settings.suppression_list), key)


def apply_configured_suppression(masking_config: Any, database: str, dsn: str, *,
                                 required: bool = False) -> dict[str, Any] | None:
    """Apply the suppression list of ``database`` to the database at ``dsn``; return the counts.

    Without ``required``, nothing happens (and None is returned) unless
    ``masking.yaml`` sets ``apply_suppression_on_restore: true`` for the
    database. With ``required``, the list is applied regardless of that
    setting, and a missing database entry or list raises an error.

    The report adds to :func:`apply_suppression`'s counts the SHA-256 of the
    list file, so evidence names the version of the list that was applied.
    """
    import hashlib
    import time

    if required:
        policy, suppression_list = _load_policy_and_list(masking_config, database)
    else:
        loaded = load_configured(masking_config, database)
        if loaded is None:
            return None
        policy, suppression_list = loaded
    if suppression_list.subjects and (policy.suppression is None or not policy.suppression.targets):
        raise PolicyError(
            _("the suppression list of {database} has {count} subjects, but its policy names no suppression targets").format(
                database=database, count=len(suppression_list.subjects)
            ),
            _("add suppression.targets (table, column, action) to the policy of {database}").format(database=database),
        )

    list_path = masking_config.resolve(masking_config.database(database).suppression_list)
    started = time.monotonic()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            report = apply_suppression(conn, policy, suppression_list)
    except psycopg.errors.InsufficientPrivilege as error:
        log.error("suppression.denied", extra={"database": database, "sqlstate": error.sqlstate})
        raise MaskingError(
            _("applying the suppression list to {database} was denied: {error}").format(
                database=database, error=error.diag.message_primary
            ),
            _("suppression sets session_replication_role so audit triggers do not copy deleted rows; "
              "connect as a superuser"),
        ) from None
    report["list_sha256"] = hashlib.sha256(list_path.read_bytes()).hexdigest() if list_path.exists() else None
    report["seconds"] = round(time.monotonic() - started, 3)
    return report
