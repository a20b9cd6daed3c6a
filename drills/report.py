"""The rehearsal report for DR coordinators and auditors, in Markdown or plain text.

The report is in the active language (Spanish unless ``RESGUARDO_LANG=en`` or
``language: en``); times are shown in the bank's time zone
(``timezone`` in the config, default America/Guayaquil). For each scenario it
gives the steps with start time and duration, RTO and RPO against their
targets with the RPO method, the validation outcome, the findings and the
evidence record that contains the signed figures.

>>> format_seconds(3725.5)
'3725.5 s (1 h 2 min 5 s)'
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from drills.rehearsal import SCENARIO_REPLICA, SCENARIO_STORAGE, RehearsalResult
from drills.topology import parse_time
from resguardo.i18n import _

FORMAT_MARKDOWN = "markdown"
FORMAT_TEXT = "text"


def _step_label(name: str) -> str:
    labels = {
        "detect": _("Detect (marker written, source checked)"),
        "fetch": _("Fetch (copy the data)"),
        "restore": _("Restore (start until consistent)"),
        "replay": _("Replay WAL and promote"),
        "rpo": _("Measure RPO (newest commit in the copy)"),
        "validate": _("Validate"),
        "open": _("Open for connections (first write)"),
    }
    return labels.get(name, name)


def _scenario_title(scenario: str) -> str:
    return {
        SCENARIO_STORAGE: _("Loss of the primary region: rebuild from storage (base backup + WAL)"),
        SCENARIO_REPLICA: _("Replica path: promote a copy of the DR standby"),
    }.get(scenario, scenario)


def _scenario_description(scenario: str) -> str:
    return {
        SCENARIO_STORAGE: _(
            "The database was rebuilt in an isolated scratch cluster from the storage regions only: the newest "
            "base backup plus the archived WAL, recovered to the end of the archive. Production servers were "
            "not touched except for one marker row written on the primary."
        ),
        SCENARIO_REPLICA: _(
            "A copy of the DR standby was taken with pg_basebackup into an isolated scratch cluster, started "
            "as a standby and promoted. The copy step adds time that a real promotion does not spend, so this "
            "RTO is an upper bound for the standby path."
        ),
    }.get(scenario, "")


def _rpo_method_text(method: str | None) -> str:
    return {
        "marker_present": _("the marker row is present in the copy: no committed transaction was lost"),
        "commit_timestamp": _("newest commit by track_commit_timestamp in the copy, compared with the marker"),
        "last_replayed_commit": _("commit time of the last transaction replayed from WAL, compared with the marker"),
        "newest_marker": _("newest marker row of an earlier rehearsal, compared with this marker"),
        "unknown": _("no commit time could be found in the copy"),
    }.get(method or "unknown", method or _("unknown"))


def format_seconds(value: float | None) -> str:
    """Return seconds with a hours-minutes-seconds reading for long spans."""
    if value is None:
        return _("unknown")
    if value < 60:
        return f"{value:.1f} s"
    whole = int(value)
    hours, rest = divmod(whole, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = ([f"{hours} h"] if hours else []) + [f"{minutes} min", f"{seconds} s"]
    return f"{value:.1f} s ({' '.join(parts)})"


def _local(text: str | None, zone: ZoneInfo) -> str:
    moment = parse_time(text)
    if moment is None:
        return "-"
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _yes_no(value: bool) -> str:
    return _("yes") if value else _("NO")


def _outcome_label(outcome: str) -> str:
    return {"ok": _("ok"), "failed": _("failed"), "skipped": _("skipped")}.get(outcome, outcome)


def _scenario_lines(result: RehearsalResult, zone: ZoneInfo, markdown: bool) -> list[str]:
    lines: list[str] = []
    heading = "## " if markdown else ""
    sub = "### " if markdown else ""
    verdict = _("PASSED") if result.passed else _("FAILED")
    lines.append(f"{heading}{_('Scenario')}: {_scenario_title(result.scenario)} — {verdict}")
    lines.append("")
    lines.append(_scenario_description(result.scenario))
    lines.append("")
    if result.error:
        lines.append(_("Error: {error}").format(error=result.error))
        lines.append("")

    lines.append(f"{sub}{_('Timeline')}")
    lines.append("")
    if markdown:
        lines.append(f"| {_('Step')} | {_('Start')} | {_('Duration')} | {_('Result')} |")
        lines.append("| --- | --- | ---: | --- |")
        for step in result.steps:
            lines.append(f"| {_step_label(step['name'])} | {_local(step['started_at'], zone)} | "
                         f"{format_seconds(step['seconds'])} | {_outcome_label(step['outcome'])} |")
    else:
        for step in result.steps:
            lines.append(f"  {_local(step['started_at'], zone)}  {format_seconds(step['seconds']):>22}  "
                         f"{_outcome_label(step['outcome']):<8} {_step_label(step['name'])}")
    lines.append("")

    lines.append(f"{sub}{_('RTO and RPO')}")
    lines.append("")
    rto_row = (_("RTO (to a validated, writable database)"), format_seconds(result.rto_seconds),
               format_seconds(result.rto_target_seconds), _yes_no(result.rto_met))
    rpo_row = (_("RPO (committed data not recovered)"), format_seconds(result.rpo_seconds),
               format_seconds(result.rpo_target_seconds), _yes_no(result.rpo_met))
    if markdown:
        lines.append(f"| {_('Measure')} | {_('Measured')} | {_('Target')} | {_('Met')} |")
        lines.append("| --- | ---: | ---: | --- |")
        for row in (rto_row, rpo_row):
            lines.append("| " + " | ".join(row) + " |")
    else:
        for label, measured, target, met in (rto_row, rpo_row):
            lines.append(f"  {label}: {measured} / {_('target')} {target} — {_('met')}: {met}")
    lines.append("")
    lines.append(_("RPO method: {method}.").format(method=_rpo_method_text(result.rpo_method)))
    if result.lost_bytes is not None:
        lines.append(_("WAL between the marker and the copy's last replayed record: {bytes} bytes.").format(
            bytes=result.lost_bytes))
    if result.marker:
        lines.append(_("Marker written on the primary at {time} (WAL position {lsn}).").format(
            time=_local(result.marker.get("created_at"), zone), lsn=result.marker.get("lsn")))
    lines.append("")

    lines.append(f"{sub}{_('Validation')}")
    lines.append("")
    validation = result.validation or {}
    if not validation:
        lines.append(_("Not run."))
    else:
        engine = _("Great Expectations suites") if validation.get("engine") == "great_expectations" else _(
            "minimal checks")
        lines.append(_("Engine: {engine}. Result: {result}.").format(
            engine=engine, result=_("passed") if validation.get("success") else _("failed")))
        for check in validation.get("checks", []):
            mark = "✔" if check["success"] else "✘"
            lines.append(f"- {mark} {check['name']}: {check['detail']}")
        gx = validation.get("gx")
        if gx:
            lines.append(_("- Great Expectations: {result}").format(
                result=_("passed") if gx.get("success") else _("failed")))
    lines.append("")

    lines.append(f"{sub}{_('Findings')}")
    lines.append("")
    if result.findings:
        lines.extend(f"- {finding}" for finding in result.findings)
    else:
        lines.append(_("None."))
    lines.append("")

    if result.evidence:
        lines.append(_("Signed evidence record: sequence {sequence}, id {record_id} in {chain}.").format(
            sequence=result.evidence.get("sequence"), record_id=result.evidence.get("record_id"),
            chain=result.evidence.get("chain", "-")))
        lines.append("")
    return lines


def render_rehearsal(results: Iterable[RehearsalResult | dict[str, Any]], *, fmt: str = FORMAT_MARKDOWN,
                     timezone: str = "America/Guayaquil") -> str:
    """Return the rehearsal report of one run (one or more scenarios) in ``fmt``."""
    items = [r if isinstance(r, RehearsalResult) else RehearsalResult.from_dict(r) for r in results]
    zone = ZoneInfo(timezone)
    markdown = fmt == FORMAT_MARKDOWN
    lines: list[str] = []
    if not items:
        return _("No rehearsal scenario ran.") + "\n"
    first = items[0]
    title = _("DR rehearsal report: database {database}").format(database=first.database)
    lines.append(f"# {title}" if markdown else title)
    if not markdown:
        lines.append("=" * len(title))
    lines.append("")
    passed = all(item.passed for item in items)
    summary = [
        (_("Run"), first.run_id),
        (_("Date"), _local(first.started_at, zone) + f" ({timezone})"),
        (_("Overall result"), _("PASSED") if passed else _("FAILED")),
        (_("Targets"), _("RTO {rto}, RPO {rpo}").format(
            rto=format_seconds(first.rto_target_seconds), rpo=format_seconds(first.rpo_target_seconds))),
    ]
    for label, value in summary:
        lines.append(f"- **{label}:** {value}" if markdown else f"{label}: {value}")
    lines.append("")
    for item in items:
        lines.extend(_scenario_lines(item, zone, markdown))
    lines.append(_("Generated {time} by Resguardo.").format(
        time=dt.datetime.now(zone).strftime("%Y-%m-%d %H:%M:%S %Z")))
    return "\n".join(lines) + "\n"
