"""The masking policy: a reviewed YAML file with a rule for every column.

Terms:

- *policy*: one file per database. ``tables`` maps ``schema.table`` to its
  ``columns``, and every column to a rule (see :mod:`masking.transformers`).
  Names are exact, case-sensitive catalog names. ``Banca.Clientes VIP`` and
  ``'"Banca"."Clientes VIP"'`` both name the mixed-case table; quote a schema
  that contains a dot.
- *deny by default*: a column of the database without a rule stops the run,
  including a column added after the policy was written. ``keep`` must be
  written out.
- *partitioned table*: rules are written on the partitioned (parent) table and
  apply to every partition.
- *suppression section*: which columns identify a data subject whose
  deletion was requested (LOPDP Art. 15), and whether matching rows are
  deleted or the column is set to NULL (see :mod:`masking.suppression`).

Example::

    version: 1
    database: core
    tables:
      public.clientes:
        columns:
          id: keep
          cedula: cedula
          nombres: given_name
          email: {transform: email, domain: ejemplo.invalid}
          segmento: {keep: true, reviewed: true, reason: "código de catálogo A-F"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from masking.errors import PolicyError
from masking.transformers import ColumnRule
from resguardo.i18n import _

POLICY_VERSION = 1
_TRANSFORM_TAGS = {
    "cedula", "ruc", "given_name", "surname", "full_name", "email", "phone", "address", "date", "amount",
    "card", "account", "redact", "null", "token", "constant", "json",
}


def parse_table_name(text: str) -> tuple[str, str]:
    """Split ``schema.table`` (optionally double-quoted) into its two catalog names.

    >>> parse_table_name("public.clientes")
    ('public', 'clientes')
    >>> parse_table_name('"Banca"."Clientes VIP"')
    ('Banca', 'Clientes VIP')
    >>> parse_table_name("Banca.Clientes VIP")
    ('Banca', 'Clientes VIP')
    """
    text = text.strip()
    if text.startswith('"'):
        parts: list[str] = []
        position = 0
        while position < len(text):
            if text[position] != '"':
                raise ValueError(f"table name {text!r}: expected '\"' at position {position}")
            end = position + 1
            name = []
            while True:
                quote = text.find('"', end)
                if quote < 0:
                    raise ValueError(f"table name {text!r}: unterminated quote")
                name.append(text[end:quote])
                if text[quote + 1: quote + 2] == '"':
                    name.append('"')
                    end = quote + 2
                    continue
                break
            parts.append("".join(name))
            position = quote + 1
            if position < len(text):
                if text[position] != ".":
                    raise ValueError(f"table name {text!r}: expected '.' after {parts[-1]!r}")
                position += 1
        if len(parts) != 2:
            raise ValueError(f"table name {text!r}: write it as schema.table")
        return parts[0], parts[1]
    schema, dot, table = text.partition(".")
    if not dot or not schema or not table:
        raise ValueError(f"table name {text!r}: write it as schema.table")
    return schema, table


def format_table_name(schema: str, table: str) -> str:
    """Return the policy spelling of a table: plain when unambiguous, else double-quoted.

    >>> format_table_name("public", "clientes"), format_table_name("a.b", "c")
    ('public.clientes', '"a.b"."c"')
    """
    if "." in schema or schema.startswith('"') or table.startswith('"'):
        return '"' + schema.replace('"', '""') + '"."' + table.replace('"', '""') + '"'
    return f"{schema}.{table}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TablePolicy(_Model):
    columns: dict[str, ColumnRule] = Field(min_length=1)
    reason: str | None = Field(None, description="free-text note for reviewers")


class SuppressionTarget(_Model):
    """A column that contains a subject's cédula, and what to do with matching rows."""

    table: str
    column: str
    action: Literal["delete", "nullify"] = "delete"
    match: Literal["cedula", "ruc"] = Field(
        "cedula", description="cedula: the value is a cédula; ruc: the first 10 digits of a natural-person RUC"
    )

    @field_validator("table")
    @classmethod
    def _valid_table(cls, value: str) -> str:
        parse_table_name(value)
        return value


class SuppressionPolicy(_Model):
    targets: list[SuppressionTarget] = Field(min_length=1)


class MaskingPolicy(_Model):
    version: Literal[1] = 1
    database: str
    tables: dict[str, TablePolicy] = Field(default_factory=dict)
    suppression: SuppressionPolicy | None = None
    large_objects: Literal["reject", "drop"] = Field(
        "reject", description="large objects cannot be inspected per column: reject the run or drop them all"
    )

    @field_validator("tables")
    @classmethod
    def _valid_table_names(cls, value: dict[str, TablePolicy]) -> dict[str, TablePolicy]:
        seen: dict[tuple[str, str], str] = {}
        for name in value:
            key = parse_table_name(name)
            if key in seen:
                raise ValueError(f"{name!r} and {seen[key]!r} name the same table; keep one")
            seen[key] = name
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "MaskingPolicy":
        problems = []
        if self.suppression:
            for index, target in enumerate(self.suppression.targets):
                table = self.table(parse_table_name(target.table))
                if table is None:
                    problems.append(f"suppression.targets[{index}].table: {target.table!r} is not under tables")
                elif target.column not in table.columns:
                    problems.append(
                        f"suppression.targets[{index}].column: {target.column!r} is not a column of {target.table}"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def table(self, key: tuple[str, str]) -> TablePolicy | None:
        """Return the rules of table ``(schema, name)``, or None."""
        for name, table in self.tables.items():
            if parse_table_name(name) == key:
                return table
        return None

    def table_keys(self) -> dict[tuple[str, str], TablePolicy]:
        """Return the tables keyed by ``(schema, name)``."""
        return {parse_table_name(name): table for name, table in self.tables.items()}


def _clean_location(location: tuple[Any, ...]) -> str:
    # Tagged unions add their tag to the location ("columns.email.transform.email.domain");
    # drop those parts so the path matches the YAML.
    parts = [str(part) for part in location if not str(part).startswith("function-")]
    out: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        previous = out[-2] if len(out) >= 2 else None
        if previous in ("columns", "paths") and part in ("keep", "transform"):
            index += 1
            if index < len(parts) and parts[index] in _TRANSFORM_TAGS and part == "transform":
                index += 1
            continue
        if previous == "paths" and part in _TRANSFORM_TAGS:
            index += 1
            continue
        out.append(part)
        index += 1
    return ".".join(out)


def format_validation_errors(error: ValidationError) -> list[str]:
    """Turn pydantic errors into one line per problem: key path, rejected value, fix."""
    lines = []
    for item in error.errors(include_url=False):
        location = _clean_location(item["loc"]) or "(root)"
        value = item.get("input")
        if isinstance(value, dict):
            shown = "{...}"
        elif isinstance(value, list):
            shown = "[...]"
        else:
            shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if item["type"] == "missing":
            lines.append(_("{location}: required key is missing").format(location=location))
        elif item["type"] == "extra_forbidden":
            lines.append(_("{location}: unknown key; check its spelling").format(location=location))
        elif item["type"] == "union_tag_invalid":
            lines.append(
                _("{location}: unknown transformer {value}; use keep or one of: {names}").format(
                    location=location,
                    value=repr((item.get("ctx") or {}).get("tag", shown)),
                    names=", ".join(sorted(_TRANSFORM_TAGS)),
                )
            )
        else:
            lines.append(
                _("{location}: invalid value {value}: {reason}").format(location=location, value=shown, reason=item["msg"])
            )
    return lines


def parse_policy(data: Any, source: str = "<memory>") -> MaskingPolicy:
    """Validate an already-parsed policy document; PolicyError lists every problem."""
    if not isinstance(data, dict):
        raise PolicyError(
            _("masking policy {source} is empty or not a mapping").format(source=source),
            _("start from masking/examples/demo-policy.yaml or run 'resguardo mask discover DB'"),
        )
    try:
        return MaskingPolicy.model_validate(data)
    except ValidationError as error:
        problems = format_validation_errors(error)
    raise PolicyError(
        _("masking policy {source} is invalid ({count} problems):").format(source=source, count=len(problems))
        + "\n  - "
        + "\n  - ".join(problems),
        _("fix each key listed above; docs/masking.md lists every transformer and option"),
    )


def load_policy(path: Path) -> MaskingPolicy:
    """Read and validate a policy file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(
            _("masking policy {path} not found").format(path=path),
            _("write one with 'resguardo mask discover DB > {path}' and review it").format(path=path),
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PolicyError(
            _("masking policy {path} is not valid YAML: {error}").format(path=path, error=error),
            _("fix the YAML syntax at the line shown"),
        ) from None
    return parse_policy(data, str(path))
