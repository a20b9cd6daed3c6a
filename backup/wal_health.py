"""Archive health: is every WAL file archived, in every region, soon enough?

Terms:

- *archive lag*: how long WAL has been waiting to be archived. It is zero
  when PostgreSQL has no file marked ``.ready`` and no failure newer than its
  last success. Otherwise it is the time since the last successful
  ``archive_command`` (``pg_stat_archiver.last_archived_time``). It is the
  current RPO exposure: a disaster now loses at most that much committed
  work, plus what sits in the current, unfinished segment (bounded by
  ``archive_timeout``).
- *segments behind*: completed segments on the current timeline that are not
  in the archive yet.
- *pg_wal growth*: the size of ``pg_wal`` now and its change since the
  previous check, kept in ``<state_dir>/archive-check/<database>.json``. A
  stalled archive makes it grow until the disk fills and the server stops.

:func:`check_archive` returns an :class:`ArchiveReport`; a report with
problems makes ``resguardo archive-check`` exit non-zero and the DAG task
fail (:meth:`ArchiveReport.raise_for_problems`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backup.wal import WalArchive, wal_region_names
from backup.wal_catalog import find_gaps, list_archive, list_system_identifiers, wal_needed_by
from backup.wal_format import SEGMENT_PATTERN, lsn_segment, parse_lsn, parse_segment_name
from resguardo.errors import ResguardoError, VerificationError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("backup.wal_health")

MAX_LISTED = 20
# Sidecars read and verified per timeline and region on every check (the newest ones), plus the history
# files and the start segments of kept base backups. Reading every sidecar of a large archive each time
# would cost one GET per file, so older copies are verified only when wal-fetch reads them.
SIDECARS_CHECKED_PER_TIMELINE = 8


def _drop_invalid_sidecars(archive: WalArchive, listing, system_identifier, needed: set[str],
                           segment_size: int) -> dict[str, dict[str, str]]:
    """Verify a bounded set of sidecars and remove invalid copies from ``listing``; return them by file and region.

    Checked: the :data:`SIDECARS_CHECKED_PER_TIMELINE` newest segments of each
    timeline, every history file, the segments in ``needed``, and the
    segments next to a would-be gap (the last one before and the first one
    after a missing stretch), because those decide whether a gap is reported.
    """
    by_timeline: dict[int, list[str]] = {}
    for name in listing.segments():
        by_timeline.setdefault(parse_segment_name(name, segment_size)[0], []).append(name)
    chosen: set[str] = set(needed) & set(listing.files)
    chosen.update(name for name in listing.files if not SEGMENT_PATTERN.match(name) and name.endswith(".history"))
    for names in by_timeline.values():
        chosen.update(names[-SIDECARS_CHECKED_PER_TIMELINE:])
        numbers = [parse_segment_name(name, segment_size)[1] for name in names]
        for index in range(1, len(names)):
            if numbers[index] != numbers[index - 1] + 1:
                chosen.update((names[index - 1], names[index]))

    regions = {region.name: region for region in archive.regions}
    invalid: dict[str, dict[str, str]] = {}
    for name in sorted(chosen):
        for region_name in sorted(listing.files.get(name, ())):
            try:
                archive.read_sidecar(regions[region_name], system_identifier, name)
            except ResguardoError as error:
                invalid.setdefault(name, {})[region_name] = error.message
                log.warning("archive_check.invalid_sidecar", extra={"wal_file": name, "region": region_name,
                                                                    "error": error.message})
                listing.files[name].discard(region_name)
        if name in listing.files and not listing.files[name]:
            del listing.files[name]
    return invalid


@dataclass
class ArchiveReport:
    """The outcome of one archive health check; ``problems`` are translated sentences."""

    database: str
    checked_at: str
    rpo_seconds: int
    system_identifier: str | None = None
    server: dict[str, Any] = field(default_factory=dict)
    archive: dict[str, Any] = field(default_factory=dict)
    lag_seconds: float | None = None
    segments_behind: int | None = None
    pg_wal_bytes: int | None = None
    pg_wal_growth_bytes: int | None = None
    pg_wal_growth_seconds: float | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def raise_for_problems(self) -> None:
        """Raise VerificationError listing the problems, if any."""
        if self.problems:
            raise VerificationError(
                _("the WAL archive of {database} is not healthy: {problems}").format(
                    database=self.database, problems=" ".join(self.problems)
                ),
                _("fix archive_command or the failing regions; until then point-in-time recovery may lose data"),
            )


_SERVER_SQL = """
SELECT (SELECT system_identifier::text FROM pg_control_system()),
       pg_is_in_recovery(),
       current_setting('archive_mode'),
       current_setting('archive_timeout'),
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       current_setting('archive_command'),
       coalesce(current_setting('archive_library', true), ''),
       a.archived_count, a.last_archived_wal, a.last_archived_time,
       a.failed_count, a.last_failed_wal, a.last_failed_time, a.stats_reset,
       now()
FROM pg_stat_archiver a
"""

_PG_WAL_SQL = """
SELECT coalesce(sum(size), 0)::bigint, count(*) FROM pg_ls_waldir()
"""

_READY_SQL = """
SELECT count(*), min(modification) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'
"""


def _server_state(source) -> dict[str, Any]:
    with source.connect(autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(_SERVER_SQL)
            row = cur.fetchone()
            state = {
                "system_identifier": row[0], "in_recovery": row[1], "archive_mode": row[2],
                "archive_timeout": row[3], "wal_segment_size": int(row[4]), "current_wal_file": row[5],
                "current_lsn": row[6], "archive_command": row[7], "archive_library": row[8],
                "archived_count": row[9], "last_archived_wal": row[10], "last_archived_time": row[11],
                "failed_count": row[12], "last_failed_wal": row[13], "last_failed_time": row[14],
                "stats_reset": row[15], "now": row[16],
            }
            # pg_ls_waldir and pg_ls_archive_statusdir need superuser or pg_monitor.
            try:
                cur.execute(_PG_WAL_SQL)
                state["pg_wal_bytes"], state["pg_wal_files"] = cur.fetchone()
                cur.execute(_READY_SQL)
                state["ready_count"], state["oldest_ready_time"] = cur.fetchone()
            except Exception as error:  # noqa: BLE001 - reported as a warning; the rest of the check goes on
                log.warning("archive_check.pg_wal_unreadable", extra={"error": str(error).strip()})
                state["pg_wal_error"] = str(error).strip()
    return state


def _lag_seconds(state: dict[str, Any]) -> float:
    waiting = (state.get("ready_count") or 0) > 0
    last_ok = state["last_archived_time"]
    last_failed = state["last_failed_time"]
    if last_failed is not None and (last_ok is None or last_failed > last_ok):
        waiting = True
    if not waiting:
        return 0.0
    since = last_ok or state.get("oldest_ready_time") or state["stats_reset"] or state["now"]
    return max(0.0, (state["now"] - since).total_seconds())


def _record_pg_wal(config, database: str, report: ArchiveReport) -> None:
    """Compare pg_wal's size with the previous check and store the new measurement."""
    state_file = config.resolve(config.state_dir) / "archive-check" / f"{database}.json"
    now = dt.datetime.now(dt.timezone.utc)
    try:
        previous = json.loads(state_file.read_text(encoding="utf-8"))
        report.pg_wal_growth_bytes = report.pg_wal_bytes - int(previous["pg_wal_bytes"])
        report.pg_wal_growth_seconds = round((now - dt.datetime.fromisoformat(previous["at"])).total_seconds(), 1)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"pg_wal_bytes": report.pg_wal_bytes, "at": now.isoformat()}), encoding="utf-8")
        os.replace(temporary, state_file)
    except OSError as error:
        log.warning("archive_check.state_not_saved", extra={"path": str(state_file), "error": error.strerror})


def _base_manifests(config, database: str, system_identifier: str) -> list[dict[str, Any]]:
    from backup.catalog import list_backups
    from resguardo.keyring import load_verify_key
    from storage.registry import open_regions

    db = config.database(database)
    entries = list_backups(open_regions(db.regions, config), load_verify_key(config), database, "base")
    return [e.manifest for e in entries if str(e.manifest.get("wal", {}).get("system_identifier")) == system_identifier]


def _newest_backup_system(config, database: str) -> str | None:
    from backup.catalog import list_backups
    from resguardo.keyring import load_verify_key
    from storage.registry import open_regions

    db = config.database(database)
    try:
        entries = list_backups(open_regions(db.regions, config), load_verify_key(config), database, "base")
    except ResguardoError:
        return None
    return str(entries[-1].manifest["wal"]["system_identifier"]) if entries else None


def check_archive(config, database: str, *, dsn: str | None = None, password: str | None = None,
                  archive: WalArchive | None = None) -> ArchiveReport:
    """Check the WAL archive of ``database`` against the server and ``pitr.rpo_seconds``.

    Findings are reported as problems or warnings in the report, not raised.
    ConfigError is raised for an unknown database, and errors of the
    configured regions may propagate when a region cannot be opened.
    """
    from backup.source import source_for

    db = config.database(database)
    rpo = db.pitr.rpo_seconds
    report = ArchiveReport(database=database, rpo_seconds=rpo,
                           checked_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    archive = archive or WalArchive(config, database)
    log.info("archive_check.start", extra={"database": database})

    # 1. The server's view: archiver statistics and pg_wal.
    state: dict[str, Any] | None = None
    try:
        state = _server_state(source_for(database, db, dsn=dsn, password=password))
    except ResguardoError as error:
        report.problems.append(_("the server could not be queried, so the archive lag is unknown: {error}").format(
            error=error.message))
    except Exception as error:  # noqa: BLE001 - a database error is a finding of the check
        report.problems.append(_("the server could not be queried, so the archive lag is unknown: {error}").format(
            error=str(error).strip()))
    segment_size = 16 << 20
    if state is not None:
        segment_size = state["wal_segment_size"]
        report.system_identifier = state["system_identifier"]
        report.server = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in state.items() if k != "now"}
        if state["in_recovery"]:
            report.problems.append(
                _("the configured server of {database} is in recovery (a standby), so this check cannot see "
                  "whether the primary archives its WAL; point the database's DSN at the current primary "
                  "(after a failover or failback it may have changed)").format(database=database))
        if state["archive_mode"] not in ("on", "always"):
            report.problems.append(_("archive_mode is {mode}: no WAL is archived").format(mode=state["archive_mode"]))
        elif state["archive_library"]:
            report.problems.append(
                _("archive_library is {library}, so archive_command is ignored and WAL does not go through "
                  "resguardo wal-push").format(library=state["archive_library"]))
        elif "wal-push" not in (state["archive_command"] or ""):
            report.problems.append(
                _("archive_command does not call resguardo wal-push, so WAL does not reach the Resguardo "
                  "archive: {command}").format(command=state["archive_command"] or "-"))
        report.lag_seconds = round(_lag_seconds(state), 1)
        if report.lag_seconds > rpo:
            report.problems.append(
                _("archive lag is {lag} s, more than pitr.rpo_seconds = {rpo} s (last archived {wal} at {time}; "
                  "{failed} failures, last failed {failed_wal})").format(
                    lag=int(report.lag_seconds), rpo=rpo, wal=state["last_archived_wal"] or "-",
                    time=state["last_archived_time"] or "-", failed=state["failed_count"],
                    failed_wal=state["last_failed_wal"] or "-"))
        timeout = _seconds_setting(state["archive_timeout"])
        if timeout == 0 or timeout > rpo:
            report.warnings.append(
                _("archive_timeout is {timeout}: a quiet server can keep committed work unarchived longer than "
                  "pitr.rpo_seconds = {rpo} s; set archive_timeout to at most {rpo}s").format(
                    timeout=state["archive_timeout"], rpo=rpo))
        if "pg_wal_bytes" in state:
            report.pg_wal_bytes = int(state["pg_wal_bytes"])
            _record_pg_wal(config, database, report)
        else:
            report.warnings.append(_("pg_wal size is unknown: {error}; grant pg_monitor to the checking role").format(
                error=state.get("pg_wal_error", "")))

    # 2. The archive's view: which files each region holds.
    system_identifier = report.system_identifier
    if system_identifier is None:
        # Without the server, the newest base backup identifies the current cluster.
        known = list_system_identifiers(archive.regions, database)
        system_identifier = _newest_backup_system(config, database) if len(known) > 1 else None
        if system_identifier is None and len(known) == 1:
            system_identifier = known[0]
        report.system_identifier = system_identifier
        if system_identifier is None and known:
            report.problems.append(
                _("WAL archives of {count} clusters exist for {database} ({systems}) and none can be chosen "
                  "without the server or a base backup").format(
                    count=len(known), database=database, systems=", ".join(known)))
            return _finish(report)
    if system_identifier is None:
        report.problems.append(_("no WAL archive was found for {database}").format(database=database))
        return _finish(report)
    try:
        listing = list_archive(archive.regions, database, system_identifier)
    except ResguardoError as error:
        report.problems.append(error.message)
        return _finish(report)
    for region, error in listing.failed_regions.items():
        report.problems.append(_("region {region} could not be listed: {error}").format(region=region, error=error))

    needed: dict[int, str] = {}
    try:
        needed = wal_needed_by(_base_manifests(config, database, str(system_identifier)))
    except ResguardoError as error:
        report.warnings.append(_("base backups could not be listed: {error}").format(error=error.message))
    invalid = _drop_invalid_sidecars(archive, listing, system_identifier, set(needed.values()), segment_size)
    for name, regions in sorted(invalid.items()):
        for region, error in sorted(regions.items()):
            report.problems.append(
                _("the sidecar of {name} in region {region} is invalid, so that copy is not counted as "
                  "archived: {error}").format(name=name, region=region, error=error))
    segments = listing.segments()
    gaps = find_gaps(segments, segment_size, since=needed)
    region_names = [r.name for r in archive.regions if r.name not in listing.failed_regions]
    first_needed = min(needed.values()) if needed else None
    missing_in: dict[str, list[str]] = {}
    for name in sorted(listing.files):
        if first_needed and SEGMENT_PATTERN.match(name) and name < first_needed:
            continue
        for region in region_names:
            if region not in listing.files[name]:
                missing_in.setdefault(region, []).append(name)
    report.archive = {
        "regions": wal_region_names(db),
        "files": len(listing.files),
        "segments": len(segments),
        "newest_segment": segments[-1] if segments else None,
        "oldest_segment": segments[0] if segments else None,
        "timelines": listing.timelines(),
        "needed_from": {str(k): v for k, v in needed.items()},
        "gaps": {str(k): v[:MAX_LISTED] for k, v in gaps.items()},
        "missing_in_regions": {k: v[:MAX_LISTED] for k, v in missing_in.items()},
        "sidecars_checked": SIDECARS_CHECKED_PER_TIMELINE,
        "invalid_sidecars": {name: regions for name, regions in list(sorted(invalid.items()))[:MAX_LISTED]},
    }
    for timeline, names in gaps.items():
        report.problems.append(
            _("timeline {timeline} has {count} missing segments in the archive, first {first}: recovery cannot "
              "pass them").format(timeline=timeline, count=len(names), first=names[0]))
    for region, names in missing_in.items():
        report.problems.append(
            _("region {region} lacks {count} archived files held by other regions, first {first}").format(
                region=region, count=len(names), first=names[0]))

    # 3. Both views together: the server's last archived file must be in the archive.
    if state is not None:
        last = state["last_archived_wal"]
        if last and last not in listing.files and not last.endswith(".partial"):
            report.problems.append(
                _("the server reports {name} as archived, but no WAL region holds it; archive_command may "
                  "point elsewhere").format(name=last))
        current = state["current_wal_file"]
        if current and state.get("current_lsn") and segments:
            # pg_walfile_name() of an LSN on a segment boundary (right after pg_switch_wal) names the
            # finished segment, so the segment being written is computed from the LSN itself.
            timeline = parse_segment_name(current, segment_size)[0]
            number = lsn_segment(parse_lsn(state["current_lsn"]), segment_size)
            on_timeline = [parse_segment_name(n, segment_size)[1] for n in segments
                           if parse_segment_name(n, segment_size)[0] == timeline]
            newest = max(on_timeline) if on_timeline else None
            # Completed segments are those before the one being written; the newest archived one counts as done.
            report.segments_behind = max(0, number - 1 - newest) if newest is not None else None
    return _finish(report)


def _finish(report: ArchiveReport) -> ArchiveReport:
    log.info("archive_check.done", extra={"database": report.database, "ok": report.ok,
                                          "problems": len(report.problems), "lag_seconds": report.lag_seconds,
                                          "segments_behind": report.segments_behind,
                                          "pg_wal_bytes": report.pg_wal_bytes})
    return report


def _seconds_setting(text: str) -> int:
    """Convert a time setting as ``current_setting`` shows it (``60s``, ``5min``, ``0``) to seconds.

    >>> _seconds_setting("5min"), _seconds_setting("60s"), _seconds_setting("0"), _seconds_setting("1h")
    (300, 60, 0, 3600)
    """
    units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}
    text = text.strip()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].strip().isdigit():
            return int(int(text[: -len(unit)]) * units[unit])
    return int(text) if text.isdigit() else 0
