"""Discovery: find columns that look like personal data and propose policy rules.

Terms:

- *name signal*: the column name, split into words (``fechaNacimiento`` and
  ``fecha_nacimiento`` both give ``fecha``, ``nacimiento``) and compared with
  Spanish and English words for identifiers, names, contact data, dates of
  birth, card and account numbers, amounts and free text.
- *value signal*: the share of sampled non-NULL values that validate as a
  cédula or RUC (python-stdnum), look like an e-mail address or an
  Ecuadorian phone number, or pass the Luhn check with a card's length. Free
  text counts when it contains one of those; JSON documents and arrays are
  walked value by value.
- *JSON path finding*: a path of a JSON document (``$.referido.ci``, with
  ``[*]`` for every array element) where at least one sampled value has a
  value signal. One value is enough, because a document often holds a
  personal datum in a few rows only (a referral's e-mail in 3 of 120).
- *sample*: ``TABLESAMPLE SYSTEM`` on large tables, else the first rows,
  at most ``sample_rows`` per table. Findings hold counts and shares only,
  never a sampled value.
- *gate*: before masking, :func:`check_gate` rejects the run when a column
  with a signal is kept without ``reviewed: true`` and a reason, or when a
  ``json`` rule names no rule for a JSON path finding. A generated column
  that reads a masked column is exempt: PostgreSQL recomputes it from the
  masked values.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import psycopg
import yaml
from psycopg import sql

from masking.catalog import Catalog, Table, read_catalog
from masking.errors import PolicyError
from masking.identifiers import classify_digits, contains_identifier, looks_like_email, looks_like_phone
from masking.policy import MaskingPolicy, format_table_name
from masking.transformers import JsonRule, KeepRule, parse_json_path
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("masking.discovery")

VALUE_SHARE = 0.3
FREE_TEXT_SHARE = 0.05

# Word -> suggested transformer. Words are compared without accents, in lower case.
NAME_WORDS: dict[str, str] = {
    **dict.fromkeys(["cedula", "ci", "dni", "identificacion", "nui", "documento", "pasaporte", "passport"], "cedula"),
    "ruc": "ruc",
    **dict.fromkeys(["nombre", "nombres", "name", "names", "firstname", "given", "primer"], "given_name"),
    **dict.fromkeys(["apellido", "apellidos", "surname", "lastname", "surnames"], "surname"),
    **dict.fromkeys(["titular", "beneficiario", "ejecutivo", "fullname", "razon", "contacto"], "full_name"),
    **dict.fromkeys(["correo", "email", "mail", "emails", "correos"], "email"),
    **dict.fromkeys(["telefono", "telefonos", "celular", "celulares", "movil", "phone", "phones", "mobile", "fono",
                     "tel", "whatsapp", "fax"], "phone"),
    **dict.fromkeys(["direccion", "direcciones", "domicilio", "address", "calle", "addr", "residencia"], "address"),
    **dict.fromkeys(["nacimiento", "birth", "birthdate", "dob", "nac"], "date"),
    **dict.fromkeys(["tarjeta", "tarjetas", "card", "pan"], "card"),
    **dict.fromkeys(["cuenta", "cuentas", "account", "iban", "acct"], "account"),
    **dict.fromkeys(["saldo", "monto", "amount", "salario", "sueldo", "ingreso", "ingresos", "balance", "patrimonio"],
                    "amount"),
    **dict.fromkeys(["nota", "notas", "observacion", "observaciones", "comentario", "comentarios", "notes", "note",
                     "comment", "comments", "descripcion", "detalle", "remarks", "memo"], "redact"),
}
_FULL_NAME_PAIRS = ({"nombre", "completo"}, {"full", "name"}, {"razon", "social"})


def name_words(column: str) -> list[str]:
    """Split a column name into lower-case words without accents.

    >>> name_words("fechaNacimiento"), name_words("Cédula_Titular")
    (['fecha', 'nacimiento'], ['cedula', 'titular'])
    """
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", column)
    plain = "".join(c for c in unicodedata.normalize("NFD", spaced) if unicodedata.category(c) != "Mn")
    return [word for word in re.split(r"[^a-z0-9]+", plain.lower()) if word]


def name_signal(column: str) -> str | None:
    """Return the transformer a column name suggests, or None.

    >>> name_signal("nombre_completo"), name_signal("cliente_cedula"), name_signal("id")
    ('full_name', 'cedula', None)
    """
    words = name_words(column)
    if any(pair <= set(words) for pair in _FULL_NAME_PAIRS):
        return "full_name"
    for word in words:
        if word in NAME_WORDS:
            return NAME_WORDS[word]
    return None


@dataclass
class Finding:
    """Name and value signals of one column; no sampled value is kept."""

    schema: str
    table: str
    column: str
    type_name: str
    name_suggestion: str | None = None
    value_counts: dict[str, int] = field(default_factory=dict)
    sampled: int = 0
    json_paths: dict[str, str] = field(default_factory=dict)
    generated: bool = False
    unique: bool = False

    @property
    def value_suggestion(self) -> str | None:
        if not self.sampled:
            return None
        best = max(self.value_counts.items(), key=lambda item: item[1], default=(None, 0))
        kind, count = best
        if kind == "free_text":
            return "redact" if count / self.sampled >= FREE_TEXT_SHARE else None
        if kind is not None and count / self.sampled >= VALUE_SHARE:
            return kind
        return None

    @property
    def flagged(self) -> bool:
        return bool(self.name_suggestion or self.value_suggestion or self.json_paths)

    def reasons(self) -> list[str]:
        reasons = []
        if self.name_suggestion:
            reasons.append(_("name suggests {kind}").format(kind=self.name_suggestion))
        for kind, count in sorted(self.value_counts.items()):
            if count:
                reasons.append(_("{count}/{sampled} sampled values look like {kind}").format(
                    count=count, sampled=self.sampled, kind=kind))
        for path, kind in sorted(self.json_paths.items()):
            reasons.append(_("JSON path {path} holds {kind}").format(path=path, kind=kind))
        return reasons

    def suggested_rule(self) -> Any:
        if self.generated:
            return "keep"
        if self.json_paths:
            return {"transform": "json", "paths": dict(sorted(self.json_paths.items()))}
        suggestion = self.value_suggestion or self.name_suggestion
        if suggestion is None:
            return "keep"
        if suggestion == "card" and self.unique:
            return {"transform": "card", "bin_mode": "keep"}
        if suggestion == "date" and self.type_name not in ("date", "timestamp", "timestamptz", "text", "varchar"):
            return "keep"
        return suggestion


def _classify_value(value: Any, counts: dict[str, int]) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        digits = str(value)
        kind = classify_digits(digits.zfill(10)) if len(digits) in (9, 10) else classify_digits(digits)
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
        return
    if not isinstance(value, str):
        return
    text = value.strip()
    digits = re.sub(r"[\s\-.]", "", text)
    kind = None
    if digits.isdigit():
        kind = classify_digits(digits)
    if kind is None and looks_like_email(text):
        kind = "email"
    if kind is None and looks_like_phone(text):
        kind = "phone"
    if kind is None and " " in text and contains_identifier(text):
        kind = "free_text"
    if kind:
        counts[kind] = counts.get(kind, 0) + 1


def _walk_json(node: Any, path: str, found: dict[str, dict[str, int]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            step = f".{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", key) else "['" + key.replace("'", "\\'") + "']"
            _walk_json(value, path + step, found)
    elif isinstance(node, list):
        for item in node:
            _walk_json(item, path + "[*]", found)
    else:
        counts: dict[str, int] = {}
        _classify_value(node, counts)
        for kind, count in counts.items():
            found.setdefault(path, {}).setdefault(kind, 0)
            found[path][kind] += count


def _sample(conn: psycopg.Connection, table: Table, columns: list[str], sample_rows: int) -> list[tuple]:
    target = sql.SQL("{}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.name))
    column_list = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    if table.row_estimate > 10 * sample_rows:
        percent = min(100.0, 100.0 * 5 * sample_rows / table.row_estimate)
        query = sql.SQL("SELECT {} FROM {} TABLESAMPLE SYSTEM ({}) LIMIT {}").format(
            column_list, target, sql.Literal(percent), sql.Literal(sample_rows)
        )
    else:
        query = sql.SQL("SELECT {} FROM {} LIMIT {}").format(column_list, target, sql.Literal(sample_rows))
    return conn.execute(query).fetchall()


def discover(conn: psycopg.Connection, *, sample_rows: int = 1000, catalog: Catalog | None = None) -> list[Finding]:
    """Return one finding per column of every table, with name and value signals."""
    catalog = catalog or read_catalog(conn)
    unique_columns = {
        (c.table_oid, c.columns[0]) for c in catalog.key_constraints if len(c.columns) == 1 and c.kind in ("p", "u", "i")
    }
    findings: list[Finding] = []
    for table in catalog.tables.values():
        columns = list(table.columns.values())
        by_name: dict[str, Finding] = {}
        for column in columns:
            finding = Finding(
                table.schema, table.name, column.name, column.type_name + ("[]" if column.is_array else ""),
                name_suggestion=name_signal(column.name), generated=column.generated,
                unique=(table.oid, column.name) in unique_columns,
            )
            by_name[column.name] = finding
            findings.append(finding)
        sampled_columns = [c.name for c in columns if c.value_kind in ("text", "integer", "json")]
        if not sampled_columns:
            continue
        rows = _sample(conn, table, sampled_columns, sample_rows)
        for position, name in enumerate(sampled_columns):
            finding = by_name[name]
            json_found: dict[str, dict[str, int]] = {}
            for row in rows:
                value = row[position]
                if value is None:
                    continue
                finding.sampled += 1
                if isinstance(value, (dict, list)) and table.columns[name].value_kind == "json":
                    _walk_json(value, "$", json_found)
                elif isinstance(value, list):
                    for item in value:
                        _classify_value(item, finding.value_counts)
                else:
                    _classify_value(value, finding.value_counts)
            for path, counts in json_found.items():
                kind, _count = max(counts.items(), key=lambda item: item[1])
                finding.json_paths[path] = "redact" if kind == "free_text" else kind
        log.info("discovery.table", extra={"table": format_table_name(table.schema, table.name), "rows": len(rows),
                                           "flagged": sum(by_name[c].flagged for c in by_name)})
    return findings


def _yaml_inline(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).strip()
    # A bare scalar is dumped as a document with an explicit end marker.
    return text[:-3].strip() if text.endswith("\n...") else text


def propose_policy(findings: list[Finding], database: str) -> str:
    """Return a policy YAML with a rule for every column and the reasons as comments."""
    lines = [
        "# " + _("Proposed by 'resguardo mask discover'. Review every rule before use:"),
        "# " + _("a rule decides what personal data reaches non-production copies."),
        "version: 1",
        f"database: {database}",
        "tables:",
    ]
    current = None
    for finding in findings:
        table = format_table_name(finding.schema, finding.table)
        if table != current:
            lines.append(f"  {_yaml_inline(table)}:")
            lines.append("    columns:")
            current = table
        rule = finding.suggested_rule()
        rendered = _yaml_inline(rule)
        comment = "; ".join(finding.reasons())
        if finding.generated:
            comment = (_("generated column") + "; " + comment).rstrip("; ")
        key = _yaml_inline(finding.column)
        lines.append(f"      {key}: {rendered}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines) + "\n"


def _json_steps(path: str) -> tuple | None:
    try:
        return tuple(parse_json_path(path))
    except ValueError:
        return None


def _uncovered_json_paths(finding: Finding, rule: JsonRule) -> list[str]:
    """Return a gate problem for each JSON path finding that the column's json rule does not name.

    A rule covers a finding only at the same path: transformers apply to the
    values at their exact path, never below it. ``[*]`` in a finding stands
    for every array element, so a rule for ``[0]`` does not cover it.
    """
    covered = {_json_steps(path) for path in rule.paths}
    problems = []
    for path, kind in sorted(finding.json_paths.items()):
        steps = _json_steps(path)
        if steps is not None and steps in covered:
            continue
        problems.append(
            _("{schema}.{table}.{column}: JSON path {path} holds values that look like {kind}, but the json rule "
              "names no rule for it; add {path} under paths").format(
                schema=finding.schema, table=finding.table, column=finding.column, path=path, kind=kind
            )
        )
    return problems


def check_gate(policy: MaskingPolicy, findings: list[Finding], catalog: Catalog) -> None:
    """Raise PolicyError when a flagged column is kept without a reviewed reason or a JSON path finding has no rule."""
    tables = policy.table_keys()
    problems = []
    for finding in findings:
        if not finding.flagged:
            continue
        table_policy = tables.get((finding.schema, finding.table))
        rule = table_policy.columns.get(finding.column) if table_policy else None
        if isinstance(rule, JsonRule):
            problems.extend(_uncovered_json_paths(finding, rule))
            continue
        if rule is None or not isinstance(rule, KeepRule) or rule.reviewed:
            continue
        if finding.generated:
            column = catalog.tables[(finding.schema, finding.table)].columns[finding.column]
            if any(not isinstance(table_policy.columns.get(source), KeepRule) for source in column.depends_on):
                continue
        problems.append(
            _("{schema}.{table}.{column}: kept, but it looks personal ({reasons}); mask it or write keep with reviewed: true and a reason").format(
                schema=finding.schema, table=finding.table, column=finding.column, reasons="; ".join(finding.reasons())
            )
        )
    if problems:
        log.warning("discovery.gate.rejected", extra={"database": policy.database, "columns": len(problems)})
        raise PolicyError(
            _("discovery found {count} kept columns or JSON paths that look like personal data:").format(
                count=len(problems))
            + "\n  - "
            + "\n  - ".join(problems),
            _("review each column; 'resguardo mask discover' shows the proposed rule"),
        )
