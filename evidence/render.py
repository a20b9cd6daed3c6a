"""Human-readable renderings of an evidence record for compliance officers.

:func:`render_text` (plain text for terminals and task logs) and
:func:`render_markdown` (for reports) show the same facts in the active
language (Spanish by default, English with ``RESGUARDO_LANG=en``).

The record's ``body`` is free-form, but these members, when present with
these shapes, get their own sections (``docs/evidence.md`` has an example):

- ``triggered_by``: who or what started the run (user name, Airflow run id).
- ``regions``: list of objects with ``region``, ``location``, ``action``
  (``read`` or ``checked``), ``key``, ``size``, ``sha256``, ``ok``, ``error``
  and ``seconds``.
- ``steps``: list of objects with ``name``, ``seconds`` and ``ok``.
- ``rto_seconds`` and ``rto_target_seconds``: measured recovery time and
  target, in seconds.
- ``expectations``: object with ``suite``, ``success``, ``evaluated`` and
  ``failed`` (a list of objects with ``expectation``, ``table``, ``column``, ``detail``).
- ``host`` (a host name, or an object of host facts) and ``tools`` (an
  object mapping tool names to versions), see :mod:`evidence.facts`.

Any other member, or a member of another shape, is listed as JSON under
"Other details". Inside the rows of ``regions``, ``steps`` and
``expectations.failed`` only the members named above are shown; the JSON
output of ``resguardo evidence show --format json`` has everything.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from babel.numbers import format_decimal
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from encryption.signing import public_key_id
from evidence.record import (
    SIGNATURE_INVALID,
    SIGNATURE_MISSING,
    SIGNATURE_OTHER_KEY,
    SIGNATURE_VALID,
    record_hash,
    signature_status,
    signing_key_id,
)
from resguardo.i18n import _, current_language

DEFAULT_TIMEZONE = "America/Guayaquil"

# Body members that get their own section; everything else goes to "Other details".
_STRUCTURED_BODY_MEMBERS = (
    "triggered_by", "regions", "steps", "rto_seconds", "rto_target_seconds", "expectations", "host", "tools",
)
_BABEL_LOCALES = {"es": "es_EC", "en": "en_US"}


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class _Section:
    title: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    tables: list[_Table] = field(default_factory=list)


# -- value formatting --------------------------------------------------------------


def format_number(value: float, decimals: int = 1, language: str | None = None) -> str:
    """Format a number with the separators of ``language`` (default: the active language).

    >>> format_number(3723.45, 2, language="es")
    '3.723,45'
    >>> format_number(3723.45, 2, language="en")
    '3,723.45'
    """
    pattern = "#,##0" + ("." + "0" * decimals if decimals else "")
    return format_decimal(value, format=pattern, locale=_BABEL_LOCALES[language or current_language()])


def format_duration(seconds: float, language: str | None = None) -> str:
    """Format a duration in seconds as hours, minutes and seconds, with the total in seconds.

    >>> format_duration(42.25, language="en")
    '42.2 s'
    >>> format_duration(3723.4, language="es")
    '1 h 02 min 03 s (3.723,4 s)'
    """
    if seconds < 60:
        return f"{format_number(seconds, language=language)} s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"
    return f"{parts} ({format_number(seconds, language=language)} s)"


def format_time(timestamp: str, timezone: str = DEFAULT_TIMEZONE) -> str:
    """Format an ISO 8601 UTC time as local time with the UTC time after it.

    >>> format_time("2026-12-04T20:15:00.000000Z")
    '2026-12-04 15:15:00 (America/Guayaquil), 2026-12-04 20:15:00 UTC'
    """
    try:
        moment = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return str(timestamp)
    if moment.tzinfo is None:
        return str(timestamp)
    local = moment.astimezone(zoneinfo.ZoneInfo(timezone))
    utc = moment.astimezone(dt.timezone.utc)
    return f"{local:%Y-%m-%d %H:%M:%S} ({timezone}), {utc:%Y-%m-%d %H:%M:%S} UTC"


def _as_json(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "-"
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _yes_no(value: Any) -> str:
    if value is True:
        return _("yes")
    if value is False:
        return _("no")
    return _as_json(value)


def _ok_label(value: Any) -> str:
    if value is True:
        return _("ok")
    if value is False:
        return _("failed")
    return _as_json(value)


def _size(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return format_number(value, 0)
    return _as_json(value)


def _seconds(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_duration(float(value))
    return _as_json(value)


def kind_label(kind: str) -> str:
    """Return the translated name of a record kind; unknown kinds are shown as stored."""
    labels = {
        "restore_test": _("Restore test"),
        "masking": _("Masking of a non-production copy"),
        "dr_rehearsal": _("Disaster-recovery rehearsal"),
        "failover": _("Failover"),
    }
    return labels.get(kind, kind)


def outcome_label(outcome: str) -> str:
    """Return the translated outcome in capitals."""
    labels = {"passed": _("PASSED"), "failed": _("FAILED")}
    return labels.get(outcome, outcome)


def signature_label(record: dict[str, Any], public_key: Ed25519PublicKey | None) -> str:
    """Describe the record's signature status against ``public_key`` (None: not checked)."""
    kid = signing_key_id(record)
    if public_key is None:
        if kid is None:
            return _("NOT VALID: the record has no signature")
        return _("not checked (signed by key {kid})").format(kid=kid)
    status = signature_status(record, public_key)
    if status == SIGNATURE_VALID:
        return _("VALID: signed by the configured key {kid}").format(kid=kid)
    if status == SIGNATURE_OTHER_KEY:
        return _("NOT VALID: signed by key {kid}, not by the configured key {expected}").format(
            kid=kid, expected=public_key_id(public_key)
        )
    if status == SIGNATURE_MISSING:
        return _("NOT VALID: the record has no signature")
    assert status == SIGNATURE_INVALID
    return _("NOT VALID: the record was changed after it was signed")


# -- building the sections ---------------------------------------------------------------


def _sections(record: dict[str, Any], public_key: Ed25519PublicKey | None, timezone: str) -> list[_Section]:
    body = record.get("body") if isinstance(record.get("body"), dict) else {}
    subject = record.get("subject") if isinstance(record.get("subject"), dict) else {}
    leftovers: dict[str, Any] = {key: value for key, value in body.items() if key not in _STRUCTURED_BODY_MEMBERS}

    summary = _Section(_("Summary"))
    summary.fields += [
        (_("Outcome"), outcome_label(str(record.get("outcome", "-")))),
        (_("Kind"), kind_label(str(record.get("kind", "-")))),
        (_("Database"), str(record.get("database", "-"))),
        (_("Date"), format_time(str(record.get("created_at", "-")), timezone)),
        (_("Triggered by"), _as_json(body.get("triggered_by", "-"))),
        (_("Sequence number"), str(record.get("sequence", "-"))),
        (_("Record id"), str(record.get("record_id", "-"))),
    ]

    subject_section = _Section(_("Subject"))
    if "backup_id" in subject:
        subject_section.fields.append((_("Backup"), _as_json(subject["backup_id"])))
    for key in sorted(subject):
        if key != "backup_id":
            subject_section.fields.append((key, _as_json(subject[key])))

    sections = [summary, subject_section]
    sections += _regions_section(body, leftovers)
    sections += _steps_section(body, leftovers)
    sections += _expectations_section(body, leftovers)
    sections += _host_section(body, leftovers)

    if leftovers:
        other = _Section(_("Other details"))
        other.fields += [(key, _as_json(leftovers[key])) for key in sorted(leftovers)]
        sections.append(other)

    integrity = _Section(_("Integrity"))
    integrity.fields += [
        (_("Signature"), signature_label(record, public_key)),
        (_("Record hash (SHA-256)"), record_hash(record)),
        (_("Previous record hash"), str(record.get("previous_hash", "-"))),
    ]
    sections.append(integrity)
    return sections


def _list_of_dicts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _regions_section(body: dict[str, Any], leftovers: dict[str, Any]) -> list[_Section]:
    regions = body.get("regions")
    if regions is None:
        return []
    if not _list_of_dicts(regions):
        leftovers["regions"] = regions
        return []
    actions = {"read": _("read"), "checked": _("checked")}
    with_durations = any("seconds" in item for item in regions)
    headers = [_("Region"), _("Location"), _("Action"), _("Result"), _("Object"), _("Bytes"), _("SHA-256")]
    if with_durations:
        headers.append(_("Duration"))
    rows = []
    for item in regions:
        row = [
            _as_json(item.get("region")),
            _as_json(item.get("location")),
            actions.get(item.get("action"), _as_json(item.get("action"))),
            _ok_label(item.get("ok")) + (f" ({_as_json(item['error'])})" if item.get("error") else ""),
            _as_json(item.get("key")),
            _size(item.get("size")),
            _as_json(item.get("sha256")),
        ]
        if with_durations:
            row.append(_seconds(item.get("seconds")))
        rows.append(row)
    return [_Section(_("Regions read and checked"), tables=[_Table(headers, rows)])]


def _steps_section(body: dict[str, Any], leftovers: dict[str, Any]) -> list[_Section]:
    steps = body.get("steps")
    if steps is None and "rto_seconds" not in body and "rto_target_seconds" not in body:
        return []
    section = _Section(_("Steps and timings"))
    if steps is not None:
        if _list_of_dicts(steps):
            section.tables.append(_Table(
                [_("Step"), _("Duration"), _("Result")],
                [[_as_json(step.get("name", "-")), _seconds(step.get("seconds")), _ok_label(step.get("ok"))]
                 for step in steps],
            ))
        else:
            leftovers["steps"] = steps
    measured = body.get("rto_seconds")
    target = body.get("rto_target_seconds")
    if measured is not None:
        section.fields.append((_("Measured RTO"), _seconds(measured)))
    if target is not None:
        section.fields.append((_("RTO target"), _seconds(target)))
    numeric = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in (measured, target))
    if numeric:
        section.fields.append((_("RTO target met"), _yes_no(measured <= target)))
    return [section]


def _expectations_section(body: dict[str, Any], leftovers: dict[str, Any]) -> list[_Section]:
    expectations = body.get("expectations")
    if expectations is None:
        return []
    if not isinstance(expectations, dict):
        leftovers["expectations"] = expectations
        return []
    section = _Section(_("Data checks (Great Expectations)"))
    section.fields += [
        (_("Suite"), _as_json(expectations.get("suite", "-"))),
        (_("Result"), _ok_label(expectations.get("success"))),
        (_("Expectations evaluated"), _as_json(expectations.get("evaluated", "-"))),
    ]
    failed = expectations.get("failed") or []
    if _list_of_dicts(failed):
        section.fields.append((_("Expectations failed"), str(len(failed))))
        if failed:
            section.tables.append(_Table(
                [_("Expectation"), _("Table"), _("Column"), _("Detail")],
                [[_as_json(item.get(member, "-")) for member in ("expectation", "table", "column", "detail")]
                 for item in failed],
            ))
    else:
        section.fields.append((_("Expectations failed"), _as_json(failed)))
    for key in sorted(set(expectations) - {"suite", "success", "evaluated", "failed"}):
        section.fields.append((key, _as_json(expectations[key])))
    return [section]


def _host_section(body: dict[str, Any], leftovers: dict[str, Any]) -> list[_Section]:
    host = body.get("host")
    tools = body.get("tools")
    if host is None and tools is None:
        return []
    section = _Section(_("Host and tool versions"))
    if isinstance(host, str):
        section.fields.append((_("Host"), host))
    for name, value in (("host", host), ("tools", tools)):
        if value is None or (name == "host" and isinstance(value, str)):
            continue
        if isinstance(value, dict):
            section.fields += [(key, _as_json(value[key])) for key in sorted(value)]
        else:
            leftovers[name] = value
    return [section] if section.fields else []


# -- output formats ---------------------------------------------------------------------


def _title(record: dict[str, Any]) -> str:
    return _("Evidence record {sequence}: {kind}").format(
        sequence=record.get("sequence", "-"), kind=kind_label(str(record.get("kind", "-")))
    )


def render_text(record: dict[str, Any], *, public_key: Ed25519PublicKey | None = None,
                timezone: str = DEFAULT_TIMEZONE) -> str:
    """Render ``record`` as plain text in the active language.

    With ``public_key`` the signature is checked and its status shown;
    without it the status reads "not checked".
    """
    title = _title(record)
    lines = [title, "=" * len(title)]
    for section in _sections(record, public_key, timezone):
        lines += ["", section.title, "-" * len(section.title)]
        if section.fields:
            width = max(len(label) for label, _value in section.fields)
            lines += [f"{label + ':':<{width + 1}} {value}" for label, value in section.fields]
        for table in section.tables:
            if lines[-1]:
                lines.append("")
            lines += _text_table(table)
    return "\n".join(lines) + "\n"


def _text_table(table: _Table) -> list[str]:
    widths = [len(header) for header in table.headers]
    for row in table.rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths)).rstrip()

    return [line(table.headers), line(["-" * width for width in widths])] + [line(row) for row in table.rows]


# Characters with inline meaning in CommonMark and GitHub tables. Values never
# start a line, so the block markers (#, -, +, digits with '.') need no escape.
_MARKDOWN_SPECIAL = set("\\`*_[]<>|~")


def escape_markdown(text: str) -> str:
    r"""Escape ``text`` so Markdown shows it literally, on one line.

    >>> escape_markdown("a|b *c*")
    'a\\|b \\*c\\*'
    """
    escaped = "".join("\\" + char if char in _MARKDOWN_SPECIAL else char for char in text)
    return escaped.replace("\r", " ").replace("\n", " ")


def render_markdown(record: dict[str, Any], *, public_key: Ed25519PublicKey | None = None,
                    timezone: str = DEFAULT_TIMEZONE) -> str:
    """Render ``record`` as Markdown in the active language; see :func:`render_text`."""
    lines = [f"# {escape_markdown(_title(record))}"]
    for section in _sections(record, public_key, timezone):
        lines += ["", f"## {escape_markdown(section.title)}", ""]
        if section.fields:
            lines += [f"- **{escape_markdown(label)}:** {escape_markdown(value)}" for label, value in section.fields]
        for table in section.tables:
            if section.fields:
                lines.append("")
            lines.append("| " + " | ".join(escape_markdown(header) for header in table.headers) + " |")
            lines.append("|" + "---|" * len(table.headers))
            lines += ["| " + " | ".join(escape_markdown(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"
