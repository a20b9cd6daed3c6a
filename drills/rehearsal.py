"""DR rehearsals: rebuild the database in an isolated copy and measure RTO and RPO.

A rehearsal never changes the production topology. It writes one *marker* row
to the primary and builds a throwaway copy in a :class:`restore.scratch.ScratchCluster`
bound to 127.0.0.1. The copy runs with WAL archiving and replication switched
off, so it cannot write into the production archive or connect to a
production server. Two *scenarios*:

``storage`` (loss of the primary region)
    The copy is rebuilt from the storage regions only: the newest base backup
    plus archived WAL, recovered to the end of the archive
    (``restore.pitr.restore_pitr``). The primary is used only to write the
    marker and read its table list; the standby is not used.
``replica`` (the standby path)
    ``pg_basebackup`` copies the streaming standby into the scratch directory.
    The copy starts as a standby, reaches consistency and is promoted, as the
    real standby would be in a failover. The copy step adds time that a real
    promotion does not spend, so this RTO is an upper bound for that path.

Steps measured, in order: ``detect`` (marker written, source checked),
``fetch`` (data copied), ``restore`` (server started and consistent),
``replay`` (WAL replayed and the copy promoted), ``rpo`` (storage scenario
only: the copy's newest commit found), ``validate`` (:mod:`drills.validation`)
and ``open`` (a write committed in the copy).

*Measured RTO*: wall time from the marker commit (the simulated loss of the
primary) to the end of ``open``: a validated database that accepts writes.

*Measured RPO*: how much older the copy's newest commit is than the marker.
The marker is taken without ``pg_switch_wal()``, so the WAL archive holds
only what ordinary archiving (a full segment or ``archive_timeout``) sent.
The copy's newest commit is found, in order of preference, by:

1. ``marker_present``: the marker row is in the copy, so every transaction
   committed before it is too (commit records are replayed in WAL order): 0 s;
2. ``commit_timestamp``: ``pg_last_committed_xact()`` when the copy has
   ``track_commit_timestamp = on``;
3. ``last_replayed_commit``: ``pg_last_xact_replay_timestamp()``, the commit
   time of the last transaction replayed from WAL;
4. ``newest_marker``: the newest marker row of an earlier rehearsal.

The span between that commit and the marker is an upper bound of the data
lost: it includes time in which the primary may have committed nothing.
``lost_bytes`` (WAL position of the marker minus the copy's last replayed
position) is reported next to it.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from drills import records
from drills.display import format_duration, format_word
from drills.timeline import OUTCOME_FAILED, OUTCOME_OK, Step, Timeline, iso, utc_now
from drills.topology import DR_SCHEMA, Node, Topology, load_topology, parse_lsn, parse_time, probe
from drills.validation import reference_structure, suite_dir_for, validate_database
from resguardo.config import ResguardoConfig
from resguardo.errors import ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger
from resguardo.pgtools import find_program, run_checked

log = get_logger("drills.rehearsal")

SCENARIO_STORAGE = "storage"
SCENARIO_REPLICA = "replica"
SCENARIOS = (SCENARIO_STORAGE, SCENARIO_REPLICA)

# Settings of every rehearsal copy: no archiving into the production archive,
# no replication connection to a production server.
ISOLATION_SETTINGS: dict[str, str | int] = {
    "archive_mode": "off",
    "archive_command": "",
    "restore_command": "",
    "primary_conninfo": "",
    "primary_slot_name": "",
    "synchronous_standby_names": "",
    "hot_standby": "on",
    "ssl": "off",
}

class RehearsalError(ResguardoError):
    """A rehearsal could not run (as opposed to running and missing a target)."""

    exit_status = 8


@dataclass
class RehearsalResult:
    """One scenario's measured steps, RTO, RPO, validation and findings."""

    run_id: str
    database: str
    scenario: str
    started_at: str
    rto_target_seconds: int
    rpo_target_seconds: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    marker: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    rpo_method: str | None = None
    lost_bytes: int | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    # Per timeline (as a string), WAL segments missing from the archive
    # (storage scenario only; at most 20 names per timeline).
    archive_gaps: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    evidence: dict[str, Any] | None = None

    @property
    def rto_met(self) -> bool:
        return self.rto_seconds is not None and self.rto_seconds <= self.rto_target_seconds

    @property
    def rpo_met(self) -> bool:
        return self.rpo_seconds is not None and self.rpo_seconds <= self.rpo_target_seconds

    @property
    def passed(self) -> bool:
        steps_ok = bool(self.steps) and all(step["outcome"] == OUTCOME_OK for step in self.steps)
        return (self.error is None and steps_ok and bool(self.validation.get("success"))
                and self.rto_met and self.rpo_met and not self.archive_gaps)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update({"rto_met": self.rto_met, "rpo_met": self.rpo_met, "passed": self.passed})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RehearsalResult":
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in names})


# -- marker and RPO ------------------------------------------------------------------


def _dbname(node: Node) -> str:
    return conninfo_to_dict(node.dsn).get("dbname") or "postgres"


def insert_marker(node: Node, run_id: str, scenario: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Commit a marker row on the primary; return the marker facts and the reference structure."""
    with node.connect(timeout=10) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {DR_SCHEMA}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {DR_SCHEMA}.marker (id bigserial PRIMARY KEY, run_id text NOT NULL,"
            " scenario text NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        marker_id, created_at = conn.execute(
            f"INSERT INTO {DR_SCHEMA}.marker (run_id, scenario) VALUES (%s, %s) RETURNING id, created_at",
            (run_id, scenario),
        ).fetchone()
        # Read after the autocommit INSERT returned, so the position covers
        # the marker's commit record.
        lsn, walfile, system_id, in_recovery = conn.execute(
            "SELECT pg_current_wal_insert_lsn()::text, pg_walfile_name(pg_current_wal_insert_lsn()),"
            " (SELECT system_identifier::text FROM pg_control_system()), pg_is_in_recovery()"
        ).fetchone()
        structure = reference_structure(conn)
    marker = {
        "id": marker_id,
        "run_id": run_id,
        "created_at": iso(created_at),
        "lsn": lsn,
        "walfile": walfile,
        "system_identifier": system_id,
    }
    log.info("drills.marker.committed", extra={"run_id": run_id, "marker_id": marker_id, "lsn": lsn})
    return marker, structure


def measure_copy_rpo(conn: psycopg.Connection, marker: dict[str, Any]) -> dict[str, Any]:
    """Find the copy's newest commit and compare it with the marker (see the module docstring)."""
    facts: dict[str, Any] = {}
    replay_lsn, replay_at, track_commit = conn.execute(
        "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(),"
        " current_setting('track_commit_timestamp')"
    ).fetchone()
    facts["last_replayed_lsn"] = replay_lsn
    facts["last_replayed_commit_at"] = iso(replay_at) if replay_at else None

    table = conn.execute("SELECT to_regclass(%s)", (f"{DR_SCHEMA}.marker",)).fetchone()[0]
    present = False
    newest_marker = None
    if table is not None:
        present = conn.execute(
            f"SELECT count(*) FROM {DR_SCHEMA}.marker WHERE id = %s AND run_id = %s", (marker["id"], marker["run_id"])
        ).fetchone()[0] == 1
        newest = conn.execute(f"SELECT max(created_at) FROM {DR_SCHEMA}.marker").fetchone()[0]
        newest_marker = iso(newest) if newest else None
    facts["marker_present"] = present
    facts["newest_marker_at"] = newest_marker

    commit_ts = None
    if track_commit == "on":
        row = conn.execute("SELECT timestamp FROM pg_last_committed_xact()").fetchone()
        commit_ts = iso(row[0]) if row and row[0] else None
    facts["last_committed_at"] = commit_ts

    marker_at = parse_time(marker["created_at"])
    marker_lsn = parse_lsn(marker.get("lsn"))
    replayed = parse_lsn(replay_lsn)
    facts["lost_bytes"] = None if replayed is None or marker_lsn is None else max(0, marker_lsn - replayed)

    if present:
        facts.update(rpo_seconds=0.0, rpo_method="marker_present", lost_bytes=0)
        return facts
    candidates = (
        ("commit_timestamp", commit_ts),
        ("last_replayed_commit", facts["last_replayed_commit_at"]),
        ("newest_marker", newest_marker),
    )
    for method, newest_text in candidates:
        if newest_text:
            gap = (marker_at - parse_time(newest_text)).total_seconds()
            facts.update(rpo_seconds=round(max(0.0, gap), 3), rpo_method=method)
            return facts
    facts.update(rpo_seconds=None, rpo_method="unknown")
    return facts


# -- copies ------------------------------------------------------------------------------


def _open_copy(scratch, dbname: str, run_id: str, scenario: str) -> dict[str, Any]:
    """Commit a probe row in the copy; proves it accepts writes."""
    with psycopg.connect(scratch.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {DR_SCHEMA}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {DR_SCHEMA}.probe (id bigserial PRIMARY KEY, run_id text NOT NULL,"
            " kind text NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        probe_id = conn.execute(
            f"INSERT INTO {DR_SCHEMA}.probe (run_id, kind) VALUES (%s, %s) RETURNING id",
            (run_id, f"rehearsal_{scenario}"),
        ).fetchone()[0]
    return {"probe_id": probe_id}


def _prepare_replica_copy(scratch) -> dict[str, str | int]:
    """Make a pg_basebackup copy of the standby start isolated, as a standby; return the settings written."""
    from resguardo.pgtools import chown_tree
    from restore.pitr import SCRATCH_HBA
    from restore.pitr_server import controldata, hot_standby_minimums

    data_dir = scratch.data_dir
    # Debian-style clusters keep postgresql.conf and pg_hba.conf outside the
    # data directory, so the copy may have neither.
    if not (data_dir / "postgresql.conf").exists():
        (data_dir / "postgresql.conf").write_text("# Written by Resguardo for a rehearsal copy.\n", encoding="utf-8")
    if (data_dir / "pg_hba.conf").exists():
        (data_dir / "pg_hba.conf").rename(data_dir / "pg_hba.conf.source")
    (data_dir / "pg_hba.conf").write_text(SCRATCH_HBA, encoding="utf-8")
    if not (data_dir / "pg_ident.conf").exists():
        (data_dir / "pg_ident.conf").write_text("", encoding="utf-8")
    (data_dir / "standby.signal").write_bytes(b"")

    # A hot standby refuses to replay with lower max_connections (and
    # similar) than the primary had, so the copy takes the primary's values.
    # NOTE: other settings of the copied postgresql.conf stay, including
    # shared_preload_libraries; a library missing on this host stops the start.
    settings: dict[str, str | int] = {
        **ISOLATION_SETTINGS,
        "hba_file": str(data_dir / "pg_hba.conf"),
        "ident_file": str(data_dir / "pg_ident.conf"),
        **hot_standby_minimums(controldata(scratch.bindir, data_dir)),
    }
    scratch.write_settings(settings)
    chown_tree(data_dir, scratch.os_user)
    return settings


def _promote_copy(scratch, dbname: str) -> dict[str, Any]:
    with psycopg.connect(scratch.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            if not conn.execute("SELECT pg_promote(wait => true, wait_seconds => 300)").fetchone()[0]:
                raise RehearsalError(
                    _("the rehearsal copy did not finish promotion within 300 s"),
                    _("read the copy's server log {path}").format(path=scratch.log_file),
                )
        walfile, = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    return {"timeline": int(walfile[:8], 16)}


# -- scenarios --------------------------------------------------------------------------


def rehearse_replica(config: ResguardoConfig, database: str, *, topology: Topology | None = None,
                     run_id: str | None = None, keep: bool = False) -> RehearsalResult:
    """Copy the standby, promote the copy and measure; record evidence; never touch the standby itself."""
    topology = topology or load_topology(config, database)
    bindir = config.resolve(config.postgres_bindir)
    result = _new_result(topology, database, SCENARIO_REPLICA, run_id)
    timeline = Timeline()
    scratch = None
    dbname = _dbname(topology.primary)
    context = {"run_id": result.run_id, "database": database, "scenario": SCENARIO_REPLICA}
    try:
        standby = topology.require_standby()
        with timeline.step("detect", **context) as detail:
            result.marker, structure = insert_marker(topology.primary, result.run_id, SCENARIO_REPLICA)
            started = parse_time(result.marker["created_at"])
            state = probe(standby)
            result.source = {"standby": state.to_dict()}
            detail["standby_role"] = state.role
            if state.role != "standby":
                raise RehearsalError(
                    _("the configured standby is {role}, not a streaming standby").format(role=state.role),
                    _("the replica scenario needs a running standby; check dr.standby.dsn"),
                )

        with timeline.step("fetch", **context) as detail:
            from restore.scratch import ScratchCluster

            scratch = ScratchCluster(bindir=bindir, name=f"dr-replica-{database}", initdb=False)
            run_checked(
                [str(find_program("pg_basebackup", bindir)), "-D", str(scratch.data_dir), "-X", "stream",
                 "-c", "fast", "--no-password", "-d", standby.conninfo(application_name="resguardo_rehearsal")],
                what="pg_basebackup", as_server_user=True, timeout=6 * 3600, env=standby.subprocess_env(),
            )
            detail["bytes"] = sum(p.stat().st_size for p in scratch.data_dir.rglob("*") if p.is_file())

        with timeline.step("restore", **context) as detail:
            settings = _prepare_replica_copy(scratch)
            scratch.start(timeout=3600)
            detail["settings"] = sorted(settings)

        with timeline.step("replay", **context) as detail:
            detail.update(_promote_copy(scratch, dbname))
            with psycopg.connect(scratch.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
                rpo = measure_copy_rpo(conn, result.marker)
            detail.update(rpo)

        _validate_and_open(config, database, result, timeline, scratch, dbname, structure, context)
        result.rto_seconds = round((utc_now() - started).total_seconds(), 3)
        result.rpo_seconds = rpo["rpo_seconds"]
        result.rpo_method = rpo["rpo_method"]
        result.lost_bytes = rpo["lost_bytes"]
    except (ResguardoError, psycopg.Error) as error:
        result.error = _error_text(error)
        log.error("drills.rehearsal.failed", extra={**context, "error": result.error})
    finally:
        result.steps = timeline.to_list()
        if scratch is not None and not keep:
            scratch.destroy()
    return _conclude(config, result)


def rehearse_storage(config: ResguardoConfig, database: str, *, topology: Topology | None = None,
                     run_id: str | None = None, keep: bool = False,
                     pitr_options: dict[str, Any] | None = None) -> RehearsalResult:
    """Rebuild from storage only (newest base backup plus archived WAL) and measure; record evidence.

    ``pitr_options`` are passed to ``restore.pitr.restore_pitr`` (for example
    ``config_file`` and ``wal_fetch_command``, which the copy's
    ``restore_command`` runs as the server's OS user).
    """
    topology = topology or load_topology(config, database)
    bindir = config.resolve(config.postgres_bindir)
    result = _new_result(topology, database, SCENARIO_STORAGE, run_id)
    pitr_options = dict(pitr_options or {})
    # wal-fetch in the copy's restore_command must read the configuration
    # this rehearsal was started with, not whatever file the working
    # directory holds.
    if pitr_options.get("config_file") is None and config.config_file is not None:
        pitr_options["config_file"] = Path(config.config_file).resolve()
    timeline = Timeline()
    scratch = None
    dbname = _dbname(topology.primary)
    context = {"run_id": result.run_id, "database": database, "scenario": SCENARIO_STORAGE}
    try:
        from restore.pitr import restore_pitr

        with timeline.step("detect", **context) as detail:
            result.marker, structure = insert_marker(topology.primary, result.run_id, SCENARIO_STORAGE)
            started = parse_time(result.marker["created_at"])
            detail["marker_lsn"] = result.marker["lsn"]

        from restore.scratch import ScratchCluster

        scratch = ScratchCluster(bindir=bindir, name=f"dr-storage-{database}", initdb=False)
        call_started_at = utc_now()
        call_started = time.monotonic()
        try:
            # The rehearsal writes its own evidence record, which contains this report.
            report = restore_pitr(config, database, scratch=scratch, promote=True, record_evidence=False,
                                  **pitr_options)
        except ResguardoError as error:
            timeline.steps.extend(_pitr_steps(call_started_at, time.monotonic() - call_started, {}, error.message))
            raise
        timeline.steps.extend(_pitr_steps(call_started_at, time.monotonic() - call_started, report.timings, None))
        result.source = {"backup": report.backup_id, "pitr": _pitr_facts(report)}

        with timeline.step("rpo", **context) as detail:
            detail.update(_promote_copy(scratch, dbname))
            with psycopg.connect(scratch.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
                rpo = measure_copy_rpo(conn, result.marker)
                archive_mode, = conn.execute("SHOW archive_mode").fetchone()
            detail.update(rpo)
            if archive_mode != "off":
                result.findings.append(_("the rebuilt copy runs with archive_mode = {mode}; it could push WAL "
                                         "into the production archive").format(mode=archive_mode))

        _validate_and_open(config, database, result, timeline, scratch, dbname, structure, context)
        result.rto_seconds = round((utc_now() - started).total_seconds(), 3)
        result.rpo_seconds = rpo["rpo_seconds"]
        result.rpo_method = rpo["rpo_method"]
        result.lost_bytes = rpo["lost_bytes"]
    except ImportError as error:
        result.error = _("the point-in-time recovery engine (restore.pitr) is not installed: {error}").format(
            error=error)
        log.error("drills.rehearsal.failed", extra={**context, "error": result.error})
    except (ResguardoError, psycopg.Error) as error:
        result.error = _error_text(error)
        log.error("drills.rehearsal.failed", extra={**context, "error": result.error})
    finally:
        result.steps = timeline.to_list()
        if scratch is not None and not keep:
            scratch.destroy()
    result.archive_gaps, gap_findings = check_archive_gaps(config, database, topology.primary, context)
    result.findings.extend(gap_findings)
    return _conclude(config, result)


def check_archive_gaps(config: ResguardoConfig, database: str, primary: Node,
                       context: dict[str, Any]) -> tuple[dict[str, list[str]], list[str]]:
    """Return the WAL segments missing from the archive per timeline, and one finding per timeline.

    Recovery from storage stops at the first missing segment, so a gap
    explains a missed RPO target or a copy without recent commits, and a
    rehearsal with a gap does not pass. The check is
    :func:`backup.wal_health.check_archive`; its other problems (lag,
    regions) are left to ``resguardo archive-check``.
    """
    try:
        from backup.wal_health import check_archive

        report = check_archive(config, database, dsn=primary.dsn, password=primary.password)
    except (ImportError, ResguardoError) as error:
        message = getattr(error, "message", str(error))
        log.warning("drills.rehearsal.archive_check_failed", extra={**context, "error": message})
        return {}, [_("the WAL archive could not be checked for missing segments: {error}").format(error=message)]
    gaps = {str(timeline): list(names) for timeline, names in (report.archive or {}).get("gaps", {}).items()}
    findings = []
    for timeline, names in sorted(gaps.items()):
        # check_archive lists at most 20 missing names per timeline.
        findings.append(_("the WAL archive lacks these segments of timeline {timeline}: {names}; recovery from "
                          "storage stops before the first of them").format(timeline=timeline, names=", ".join(names)))
    if gaps:
        log.warning("drills.rehearsal.archive_gaps", extra={**context, "gaps": gaps})
    return gaps, findings


def _pitr_steps(started_at: dt.datetime, wall_seconds: float, timings: dict[str, float],
                error: str | None) -> list[Step]:
    """Split the wall time of one ``restore_pitr`` call into the fetch, restore and replay steps.

    ``restore_pitr`` reports ``fetch_seconds`` (download and unpack),
    ``verify_seconds`` (pg_verifybackup), ``preflight_seconds`` (one
    ``restore_command`` trial) and ``recovery_seconds`` (server start, WAL
    replay, promotion). Time it does not report (catalog listing, settings)
    is added to ``fetch``, so the three steps sum to the call's wall time.
    """
    fetch = timings.get("fetch_seconds", 0.0)
    restore = timings.get("verify_seconds", 0.0) + timings.get("preflight_seconds", 0.0)
    replay = timings.get("recovery_seconds", 0.0)
    fetch += max(0.0, wall_seconds - fetch - restore - replay)
    if error is not None:
        return [Step("fetch", iso(started_at), round(wall_seconds, 3), OUTCOME_FAILED, {}, error)]
    steps = []
    offset = 0.0
    for name, seconds in (("fetch", fetch), ("restore", restore), ("replay", replay)):
        steps.append(Step(name, iso(started_at + dt.timedelta(seconds=offset)), round(seconds, 3), OUTCOME_OK,
                          {"source": "restore_pitr timings"}))
        offset += seconds
    return steps


def _pitr_facts(report: Any) -> dict[str, Any]:
    """Return the JSON-ready facts of a PITR report that go into evidence."""
    return {key: value for key, value in report.to_dict().items()
            if key in ("backup_id", "target", "target_timeline", "outcome", "region", "stop_point",
                       "recovered_lsn", "last_transaction_time", "new_timeline", "wal_files_restored",
                       "fetch_attempts", "timings", "tried_backups")}


def _error_text(error: BaseException) -> str:
    if isinstance(error, ResguardoError):
        return error.message
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _validate_and_open(config: ResguardoConfig, database: str, result: RehearsalResult, timeline: Timeline,
                       scratch, dbname: str, structure: dict[str, Any], context: dict[str, Any]) -> None:
    with timeline.step("validate", **context) as detail:
        validation = validate_database(scratch.dsn(dbname), reference=structure,
                                       suite_dir=suite_dir_for(config, database))
        result.validation = validation.to_dict()
        detail.update({"engine": validation.engine, "success": validation.success})
        if validation.note:
            result.findings.append(validation.note)
        if not validation.success:
            raise RehearsalError(
                _("the rebuilt copy failed validation: {checks}").format(
                    checks=", ".join(c.name for c in validation.checks if not c.success) or "great_expectations"),
                _("read the failed checks in the rehearsal report and the evidence record"),
            )
    with timeline.step("open", **context) as detail:
        detail.update(_open_copy(scratch, dbname, result.run_id, result.scenario))


def _new_result(topology: Topology, database: str, scenario: str, run_id: str | None) -> RehearsalResult:
    return RehearsalResult(
        run_id=run_id or str(uuid.uuid4()),
        database=database,
        scenario=scenario,
        started_at=iso(utc_now()),
        rto_target_seconds=topology.rto_target_seconds,
        rpo_target_seconds=topology.rpo_target_seconds,
    )


def _conclude(config: ResguardoConfig, result: RehearsalResult) -> RehearsalResult:
    if result.error is not None:
        failed = [step["name"] for step in result.steps if step["outcome"] == OUTCOME_FAILED]
        result.findings.insert(0, _("the rehearsal stopped at step {step}: {error}").format(
            step=failed[0] if failed else format_word(None), error=result.error))
    if result.rto_seconds is not None and not result.rto_met:
        result.findings.append(_("RTO target missed: {measured} s measured, target {target} s").format(
            measured=result.rto_seconds, target=result.rto_target_seconds))
    if result.error is None and not result.rpo_met:
        result.findings.append(_("RPO target missed: measured {measured}, target {target} s").format(
            measured=format_duration(result.rpo_seconds), target=result.rpo_target_seconds))
    body = result.to_dict()
    body.pop("evidence", None)
    subject = {"run_id": result.run_id, "scenario": result.scenario,
               "backup_id": (result.source or {}).get("backup")}
    result.evidence = records.append_record(config, records.KIND_REHEARSAL, result.database, subject, result.passed,
                                            body)
    log.info("drills.rehearsal.done",
             extra={"run_id": result.run_id, "database": result.database, "scenario": result.scenario,
                    "passed": result.passed, "rto_seconds": result.rto_seconds, "rpo_seconds": result.rpo_seconds,
                    "rpo_method": result.rpo_method, "sequence": result.evidence["sequence"]})
    return result


def run_rehearsal(config: ResguardoConfig, database: str, *, scenarios: tuple[str, ...] = SCENARIOS,
                  topology: Topology | None = None, keep: bool = False,
                  pitr_options: dict[str, Any] | None = None) -> list[RehearsalResult]:
    """Run the requested scenarios one after the other under one run id; return their results."""
    topology = topology or load_topology(config, database)
    run_id = str(uuid.uuid4())
    results = []
    for scenario in scenarios:
        if scenario == SCENARIO_STORAGE:
            results.append(rehearse_storage(config, database, topology=topology, run_id=run_id, keep=keep,
                                            pitr_options=pitr_options))
        elif scenario == SCENARIO_REPLICA:
            results.append(rehearse_replica(config, database, topology=topology, run_id=run_id, keep=keep))
        else:
            raise RehearsalError(_("unknown rehearsal scenario {name!r}").format(name=scenario),
                                 _("use one of: {choices}").format(choices=", ".join(SCENARIOS)))
    return results
