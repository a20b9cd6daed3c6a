"""Failover and planned switchover: make the other node the primary and send clients to it.

A *failover* promotes the configured standby after the primary is lost or
must be abandoned. A *switchover* is the planned reverse move during
failback, which must lose nothing. Both run the same steps, each a plain function that
takes and returns a :class:`FailoverRun`, so the CLI calls them in a row and
the Airflow DAG runs each as its own task:

1. ``preflight``: the new primary-to-be is a reachable standby of the same
   cluster, and its data-loss exposure is within the RPO target (or the
   request accepts data loss). With point-in-time recovery enabled, it must
   archive WAL through ``resguardo wal-push`` (or the request accepts no
   archiving), and the storage regions should hold a base backup and WAL.
   A standby that is already a primary is rejected, unless the old primary
   is unreachable and was neither fenced by an earlier run nor rebuilt as a
   standby.
2. ``fence``: the old primary stops accepting writes (:mod:`drills.fencing`).
3. ``promote``: wait until the standby has received the old primary's last
   WAL (when the old primary was reachable), then ``pg_promote(wait => true)``.
4. ``switch_router``: PgBouncer sends the alias to the new primary.
5. ``write_probe``: a row is written through the router and read back, and the
   server that took it must be the new primary.
6. ``smoke_checks``: :mod:`drills.validation` on the new primary. The
   measured RTO ends here.
7. ``base_backup``: a first base backup on the new timeline, when
   point-in-time recovery is enabled. When it fails the run still switches
   clients but ends as ``completed_with_failed_step``.
8. ``finish``: measured RTO and RPO against the targets, and a signed
   evidence record (kind ``failover``), whatever the outcome.

Terms:

- *RTO* (measured): wall time from the start of the run (the request) to a
  validated new primary that took a write through the router.
- *RPO* (measured): the span of committed transactions the new primary does
  not have. ``rpo_method`` names how it was measured: ``wal_position`` (the new
  primary replayed up to the fenced old primary's last WAL position: 0 s),
  ``commit_timestamps`` (old primary's newest commit minus the newest replayed
  commit; needs ``track_commit_timestamp = on`` on the old primary), or one of
  the preflight estimates of :class:`drills.topology.Exposure`.
"""

from __future__ import annotations

import contextlib
import getpass
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict

from drills import records
from drills.display import format_bytes, format_duration, format_number, format_word
from drills.fencing import fence_node, read_fence_marker, unfence_node
from drills.router import open_router
from drills.storage_status import storage_status
from drills.timeline import Timeline, iso, utc_now
from drills.topology import (
    DR_SCHEMA,
    Topology,
    measure_exposure,
    parse_lsn,
    parse_time,
    probe,
    timeline_of_walfile,
    wait_for,
)
from drills.validation import suite_dir_for, validate_database
from resguardo.config import ResguardoConfig
from resguardo.errors import ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("drills.failover")

CONFIRMATION_WORD = "FAILOVER"
SWITCHOVER_WORD = "SWITCHOVER"
MIN_REASON_LENGTH = 10
KIND_FAILOVER = "failover"
KIND_SWITCHOVER = "switchover"

CATCHUP_TIMEOUT_SECONDS = 30
PROMOTE_TIMEOUT_SECONDS = 120
PROBE_TIMEOUT_SECONDS = 60

# Clients reach the new primary, but its first base backup failed, so it is
# not yet protected by a restorable backup on the new timeline.
OUTCOME_STEP_FAILED = "completed_with_failed_step"


class FailoverRejected(ResguardoError):
    """A failover request or its preflight was rejected; nothing was changed."""

    exit_status = 12


class FailoverFailed(ResguardoError):
    """A failover step failed after the preflight passed."""

    exit_status = 13


@dataclass
class FailoverRun:
    """The state of one failover or switchover, passed from step to step (JSON-ready)."""

    run_id: str
    database: str
    kind: str
    old_primary: str
    new_primary: str
    reason: str
    requested_by: str
    accept_data_loss: bool
    started_at: str
    # Proceed although the new primary-to-be will not archive WAL through Resguardo.
    accept_unarchived: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)
    preflight: dict[str, Any] = field(default_factory=dict)
    fence: dict[str, Any] = field(default_factory=dict)
    promote: dict[str, Any] = field(default_factory=dict)
    router: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)
    base_backup: dict[str, Any] = field(default_factory=dict)
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    rpo_method: str | None = None
    lost_bytes: int | None = None
    findings: list[str] = field(default_factory=list)
    outcome: str | None = None
    evidence: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FailoverRun":
        return cls(**data)

    @property
    def timeline(self) -> Timeline:
        return Timeline.from_list(self.steps)


# -- the request ----------------------------------------------------------------


def require_manual_run(run_type: str) -> None:
    """Raise FailoverRejected unless the run was started by a person (``manual``).

    >>> require_manual_run("manual")
    >>> require_manual_run("scheduled")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    drills.failover.FailoverRejected: ...
    """
    if str(run_type).lower() != "manual":
        raise FailoverRejected(
            _("a failover or failback runs only when a person starts it, not as a {run_type} run").format(
                run_type=run_type
            ),
            _("trigger the DAG by hand with the form, or run 'resguardo failover' from a terminal"),
        )


def check_request(*, reason: str, confirmation: str, expected_word: str = CONFIRMATION_WORD) -> None:
    """Raise FailoverRejected unless the reason is long enough and the confirmation word matches exactly.

    >>> check_request(reason="primary site lost power", confirmation="FAILOVER")
    >>> check_request(reason="primary site lost power", confirmation="failover")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    drills.failover.FailoverRejected: ...
    """
    if confirmation != expected_word:
        raise FailoverRejected(
            _("the confirmation word is wrong: type {word} exactly, in capitals").format(word=expected_word),
            _("the word confirms that you know this changes which server takes writes"),
        )
    if len((reason or "").strip()) < MIN_REASON_LENGTH:
        raise FailoverRejected(
            _("the reason must have at least {count} characters").format(count=MIN_REASON_LENGTH),
            _("describe why, e.g. 'primary site lost power, incident INC-1234'; it goes into the evidence record"),
        )


def begin(config: ResguardoConfig, database: str, *, reason: str, confirmation: str, accept_data_loss: bool = False,
          requested_by: str | None = None, run_type: str = "manual", kind: str = KIND_FAILOVER,
          accept_unarchived: bool = False) -> FailoverRun:
    """Check the request and return a new run; nothing on any server changes."""
    config.database(database)
    require_manual_run(run_type)
    check_request(reason=reason, confirmation=confirmation,
                  expected_word=SWITCHOVER_WORD if kind == KIND_SWITCHOVER else CONFIRMATION_WORD)
    old, new = ("primary", "standby") if kind == KIND_FAILOVER else ("standby", "primary")
    run = FailoverRun(
        run_id=str(uuid.uuid4()),
        database=database,
        kind=kind,
        old_primary=old,
        new_primary=new,
        reason=reason.strip(),
        requested_by=requested_by or getpass.getuser(),
        # A switchover is planned: it never accepts losing data.
        accept_data_loss=bool(accept_data_loss) and kind == KIND_FAILOVER,
        started_at=iso(utc_now()),
        accept_unarchived=bool(accept_unarchived),
    )
    log.info("drills.failover.begin",
             extra={"run_id": run.run_id, "database": database, "kind": kind, "requested_by": run.requested_by,
                    "accept_data_loss": run.accept_data_loss, "accept_unarchived": run.accept_unarchived})
    return run


@contextlib.contextmanager
def _step(run: FailoverRun, name: str) -> Iterator[dict[str, Any]]:
    """Measure one step and store it in ``run.steps``, on success and on failure."""
    timeline = Timeline()
    try:
        with timeline.step(name, run_id=run.run_id, database=run.database) as detail:
            yield detail
    finally:
        run.steps.extend(step.to_dict() for step in timeline.steps)


def _skip(run: FailoverRun, name: str, reason: str) -> None:
    timeline = Timeline()
    timeline.skip(name, reason)
    run.steps.extend(step.to_dict() for step in timeline.steps)


# -- steps ---------------------------------------------------------------------------


def preflight(config: ResguardoConfig, topology: Topology, run: FailoverRun) -> FailoverRun:
    """Check that the switch can happen within the RPO target; raise FailoverRejected otherwise."""
    new = topology.node(run.new_primary)
    old = topology.node(run.old_primary)
    with _step(run, "preflight") as detail:
        new_state = probe(new)
        old_state = probe(old)
        run.preflight = {"new_primary": new_state.to_dict(), "old_primary": old_state.to_dict()}
        detail.update(new_primary_role=new_state.role, old_primary_role=old_state.role)

        if not new_state.reachable:
            raise FailoverRejected(
                _("node {node} ({site}) cannot be promoted: {error}").format(
                    node=new.label, site=new.site, error=new_state.error
                ),
                _("restore access to the standby first; no server was changed"),
            )
        if old_state.reachable and old_state.system_identifier != new_state.system_identifier:
            raise FailoverRejected(
                _("nodes {old} and {new} belong to different clusters (system identifiers {a} and {b})").format(
                    old=old.label, new=new.label, a=old_state.system_identifier, b=new_state.system_identifier
                ),
                _("check dsn and dr.standby.dsn of database {database}").format(database=run.database),
            )
        if new_state.role == "primary":
            _check_already_primary(topology, run, new, old, new_state, old_state)
            # The standby was promoted by hand and the old primary is lost:
            # fence it and switch the router, but promote nothing.
            run.findings.append(_("the standby was already promoted before this run; promotion is skipped"))
            run.preflight["already_promoted"] = True
            run.preflight["exposure"] = {"seconds": None, "lag_bytes": None, "method": "already_promoted"}
            return run

        exposure = measure_exposure(old_state, new_state)
        run.preflight["exposure"] = exposure.to_dict()
        detail["exposure"] = exposure.to_dict()
        if new_state.replay_paused:
            run.findings.append(_("WAL replay on the standby is paused (pg_wal_replay_pause)"))
        if new_state.receiver_status not in (None, "streaming"):
            run.findings.append(_("the standby's WAL receiver is {status}, not streaming").format(
                status=new_state.receiver_status))

        too_far = exposure.seconds is None or exposure.seconds > topology.rpo_target_seconds
        if run.kind == KIND_SWITCHOVER and not old_state.reachable:
            raise FailoverRejected(
                _("a switchover needs the current primary {node}, which is unreachable: {error}").format(
                    node=old.label, error=old_state.error
                ),
                _("a switchover must lose nothing; if the primary is lost, run a failover instead"),
            )
        if too_far and run.kind == KIND_FAILOVER and not run.accept_data_loss:
            raise FailoverRejected(
                _("the standby may lack more commits than the RPO target of {target} s allows: "
                  "exposure {exposure}, WAL behind {bytes}, measured by {method}").format(
                    exposure=format_duration(exposure.seconds), bytes=format_bytes(exposure.lag_bytes),
                    method=exposure.method, target=topology.rpo_target_seconds,
                ),
                _("wait for the standby to catch up, or run again accepting data loss "
                  "(--accept-data-loss / accept_data_loss) once the loss is authorised"),
            )
        if too_far and run.kind == KIND_FAILOVER:
            run.findings.append(_("data loss accepted by the request: exposure {exposure}, over the RPO "
                                  "target").format(exposure=format_duration(exposure.seconds)))

        if config.database(run.database).pitr.enabled:
            _check_archiving(run, new, new_state)
            status = storage_status(
                config, run.database,
                system_identifier=new_state.system_identifier, timeline=new_state.timeline, lsn=new_state.lsn,
            )
            run.preflight["storage"] = status
            detail["base_backup"] = (status["base_backup"] or {}).get("backup_id")
            if status["base_backup"] is None:
                run.findings.append(_("no committed base backup found in the storage regions"))
            if status["wal"] is None:
                run.findings.append(_("no archived WAL file of the current timeline found in the storage regions"))

        router = open_router(topology.router, config.resolve)
        if router is not None:
            current = router.current_target()
            run.preflight["router_target"] = str(current)
            if current != new.endpoint and current != old.endpoint:
                run.findings.append(_("the router sends clients to {target}, which is neither node").format(
                    target=current))
    return run


def _check_archiving(run: FailoverRun, new, new_state) -> None:
    """Reject the switch when the new primary-to-be will not archive WAL through Resguardo.

    Without archiving, no WAL of the new timeline reaches the storage regions,
    so the base backup on the new timeline fails and point-in-time recovery
    stops at the switch. ``accept_unarchived`` turns the rejection into a finding.
    """
    archive_on = new_state.archive_mode in ("on", "always")
    if archive_on and new_state.archive_command_resguardo:
        return
    problem = (_("archive_mode is {mode} on {node}").format(mode=format_word(new_state.archive_mode), node=new.label)
               if not archive_on else
               _("the archive_command of {node} does not run 'resguardo wal-push'").format(node=new.label))
    run.preflight["archiving"] = {"archive_mode": new_state.archive_mode,
                                  "archive_command_resguardo": new_state.archive_command_resguardo}
    if run.accept_unarchived:
        run.findings.append(_("{problem}: WAL of the new timeline will not be archived (accepted by the "
                              "request)").format(problem=problem))
        return
    raise FailoverRejected(
        _("{problem}, so after the switch no WAL of the new timeline would reach the storage regions and "
          "point-in-time recovery would stop at the switch").format(problem=problem),
        _("set archive_mode = on (or always) and archive_command = 'resguardo wal-push %p --db {database} "
          "--config ...' on {node}, restart it, and run again; or run again with --accept-unarchived "
          "(accept_unarchived) once this is authorised").format(database=run.database, node=new.label),
    )


def _check_already_primary(topology: Topology, run: FailoverRun, new, old, new_state, old_state) -> None:
    """Reject a run whose new primary-to-be is already a primary, unless the old primary is lost and unfenced.

    A repeated failover (the switch already happened, the old primary is
    fenced or was rebuilt as a standby) must not fence the old node again,
    and two primaries need a person to decide which one keeps the data.
    """
    marker = read_fence_marker(old.data_dir)
    fenced_by_run = (marker or {}).get("run_id")
    hint_failback = _("to make {old} the primary again, rebuild it with 'resguardo failback {database}' and "
                      "switch back with --switchover; no server was changed").format(
        old=old.label, database=run.database)

    if old_state.role == "standby":
        raise FailoverRejected(
            _("{new} is already the primary (timeline {timeline}) and {old} is in recovery as a standby: "
              "there is nothing to switch, and fencing {old} would stop a standby that was just rebuilt").format(
                new=new.label, old=old.label, timeline=format_number(new_state.timeline)),
            hint_failback,
        )

    if old_state.role == "primary":
        if new_state.accepts_writes and old_state.accepts_writes:
            raise FailoverRejected(
                _("both nodes accept writes (split brain): {old} and {new}").format(old=old.label, new=new.label),
                _("stop the node that clients must not use, then reconcile the data by hand; "
                  "no automatic step is safe now"),
            )
        if new_state.accepts_writes and old_state.fenced_primary:
            raise FailoverRejected(
                _("the switch to {new} already happened: {new} accepts writes and {old} is a primary fenced "
                  "read-only by Resguardo (run {fence_run})").format(
                    new=new.label, old=old.label, fence_run=format_word(fenced_by_run)),
                hint_failback,
            )
        if old_state.accepts_writes and new_state.fenced_primary:
            raise FailoverRejected(
                _("{new} is a primary fenced read-only by Resguardo and {old} accepts writes, so {new} "
                  "holds an old copy of the data and must not take clients").format(new=new.label, old=old.label),
                _("rebuild {new} as a standby with 'resguardo failback {database} --node {new}'; "
                  "no server was changed").format(new=new.label, database=run.database),
            )
        raise FailoverRejected(
            _("both nodes are primaries fenced read-only (default_transaction_read_only = on): {old} and {new}").format(
                old=old.label, new=new.label),
            _("decide which node holds the data clients need, reset default_transaction_read_only on it, "
              "then rebuild the other one with 'resguardo failback'; no server was changed"),
        )

    # The old node is unreachable. A fence marker naming this new primary
    # means an earlier run already switched, and a standby.signal written by
    # someone else (a rebuild) means the node is a standby that is down.
    if marker is not None and marker.get("new_primary") == run.new_primary:
        raise FailoverRejected(
            _("the switch to {new} already happened in run {fence_run}: {new} is the primary and {old} is "
              "fenced and unreachable").format(new=new.label, old=old.label, fence_run=format_word(fenced_by_run)),
            hint_failback,
        )
    if marker is None and old.data_dir is not None and (old.data_dir / "standby.signal").is_file():
        raise FailoverRejected(
            _("{new} is already the primary and {old} is an unreachable standby (standby.signal in {path}): "
              "there is nothing to switch").format(new=new.label, old=old.label, path=old.data_dir),
            hint_failback,
        )


def fence(config: ResguardoConfig, topology: Topology, run: FailoverRun) -> FailoverRun:
    """Fence the old primary (see :mod:`drills.fencing`)."""
    old = topology.node(run.old_primary)
    with _step(run, "fence") as detail:
        report = fence_node(
            old, database=run.database, run_id=run.run_id, reason=run.reason,
            fence_command=topology.fence_command, new_primary=run.new_primary,
        )
        run.fence = report.to_dict()
        detail.update(run.fence)
        if not report.fenced:
            run.findings.append(_("the old primary could not be fenced (unreachable, no local data directory, "
                                  "no fence command): make sure it cannot come back before clients return"))
    return run


def _received_position(new) -> int | None:
    state = probe(new)
    if state.role != "standby":
        return None
    return max(state.received_lsn or 0, state.lsn or 0)


def promote(config: ResguardoConfig, topology: Topology, run: FailoverRun, *,
            catchup_timeout: float = CATCHUP_TIMEOUT_SECONDS) -> FailoverRun:
    """Wait for the standby to receive the fenced primary's last WAL, then promote it."""
    new = topology.node(run.new_primary)
    if run.preflight.get("already_promoted"):
        _skip(run, "promote", "already promoted")
        run.promote = {"timeline": (run.preflight.get("new_primary") or {}).get("timeline"), "caught_up": None}
        return run

    with _step(run, "promote") as detail:
        final_lsn = parse_lsn(run.fence.get("final_lsn"))
        caught_up = None
        if final_lsn is not None:
            # Promotion replays every WAL record the standby has received, so
            # the received position (not the replayed one) decides data loss.
            try:
                waited = wait_for(lambda: (_received_position(new) or 0) >= final_lsn,
                                  timeout=catchup_timeout, what="standby catch-up")
                caught_up = True
                detail["catchup_seconds"] = round(waited, 3)
            except TimeoutError:
                caught_up = False
                detail["catchup_seconds"] = catchup_timeout
            detail["caught_up"] = caught_up

        if caught_up is False and run.kind == KIND_SWITCHOVER:
            undone = unfence_node(topology.node(run.old_primary))
            raise FailoverFailed(
                _("the switchover target did not receive the primary's last WAL within {seconds} s; "
                  "the primary was unfenced ({undone}) and keeps its role").format(
                    seconds=catchup_timeout, undone=", ".join(undone) or "-"
                ),
                _("check replication between the nodes (pg_stat_replication) and run the switchover again"),
            )

        with new.connect(timeout=10) as conn:
            promoted = conn.execute(
                "SELECT pg_promote(wait => true, wait_seconds => %s)", (PROMOTE_TIMEOUT_SECONDS,)
            ).fetchone()[0]
            if not promoted:
                raise FailoverFailed(
                    _("node {node} did not finish promotion within {seconds} s").format(
                        node=new.label, seconds=PROMOTE_TIMEOUT_SECONDS),
                    _("read the server log of {node}; promotion continues in the background and "
                      "this step can be run again").format(node=new.label),
                )
            row = conn.execute(
                "SELECT pg_is_in_recovery(), pg_walfile_name(pg_current_wal_lsn()),"
                " pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(),"
                " current_setting('default_transaction_read_only')"
            ).fetchone()
            in_recovery, walfile, replay_lsn, replay_at, read_only = row
            if in_recovery:
                raise FailoverFailed(
                    _("node {node} is still in recovery after pg_promote").format(node=new.label),
                    _("read the server log of {node}").format(node=new.label),
                )
            # A node that was fenced in an earlier run still carries the
            # read-only default in postgresql.auto.conf.
            if read_only == "on":
                conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
                conn.execute("SELECT pg_reload_conf()")
                detail["read_only_reset"] = True

        run.promote = {
            "timeline": timeline_of_walfile(walfile),
            "end_of_recovery_lsn": replay_lsn,
            "last_replayed_commit_at": iso(replay_at) if replay_at else None,
            "caught_up": caught_up,
            "promoted_at": iso(utc_now()),
        }
        detail.update(run.promote)
        _measure_rpo(run)
    return run


def _measure_rpo(run: FailoverRun) -> None:
    final_lsn = parse_lsn(run.fence.get("final_lsn"))
    end_lsn = parse_lsn(run.promote.get("end_of_recovery_lsn"))
    exposure = run.preflight.get("exposure") or {}
    if final_lsn is not None and end_lsn is not None:
        run.lost_bytes = max(0, final_lsn - end_lsn)
        if run.lost_bytes == 0 or run.promote.get("caught_up"):
            run.lost_bytes = 0
            run.rpo_seconds, run.rpo_method = 0.0, "wal_position"
            return
        last_commit = parse_time(run.fence.get("last_commit_at"))
        replayed = parse_time(run.promote.get("last_replayed_commit_at"))
        if last_commit is not None and replayed is not None:
            run.rpo_seconds = round(max(0.0, (last_commit - replayed).total_seconds()), 3)
            run.rpo_method = "commit_timestamps"
            return
    run.rpo_seconds = exposure.get("seconds")
    run.rpo_method = exposure.get("method")
    run.lost_bytes = exposure.get("lag_bytes") if run.lost_bytes is None else run.lost_bytes


def switch_router(config: ResguardoConfig, topology: Topology, run: FailoverRun) -> FailoverRun:
    """Point the router at the new primary."""
    new = topology.node(run.new_primary)
    router = open_router(topology.router, config.resolve)
    if router is None:
        _skip(run, "switch_router", "no router configured")
        run.findings.append(_("no router is configured: clients must be pointed at the new primary by other means"))
        return run
    with _step(run, "switch_router") as detail:
        result = router.switch(new.endpoint)
        run.router = result.to_dict()
        detail.update(run.router)
        if result.drain == "kill":
            run.findings.append(_("PgBouncer did not drain within the timeout; client connections were dropped (KILL)"))
    return run


def client_dsn(config: ResguardoConfig, topology: Topology, run: FailoverRun) -> str:
    """Return the DSN clients use now: through the router, else the new primary directly."""
    router = open_router(topology.router, config.resolve)
    if router is None:
        return topology.node(run.new_primary).conninfo()
    return router.client_dsn(conninfo_to_dict(topology.primary.dsn).get("user"))


def write_probe(config: ResguardoConfig, topology: Topology, run: FailoverRun, *,
                timeout: float = PROBE_TIMEOUT_SECONDS) -> FailoverRun:
    """Commit a row through the router, read it back and check that the new primary took it."""
    new = topology.node(run.new_primary)
    dsn = client_dsn(config, topology, run)
    password = new.password
    with _step(run, "write_probe") as detail:
        attempts = 0
        last_error = ""
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            attempts += 1
            try:
                row = _insert_probe(dsn, password, run)
                break
            except psycopg.Error as error:
                last_error = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                log.info("drills.probe.retry", extra={"run_id": run.run_id, "attempt": attempts, "error": last_error})
                time.sleep(0.5)
        if row is None:
            raise FailoverFailed(
                _("no write through {dsn} succeeded within {seconds} s: {error}").format(
                    dsn=dsn, seconds=timeout, error=last_error),
                _("check the router and the new primary's pg_hba.conf and max_connections"),
            )
        probe_id, server_port, system_id = row
        if server_port != new.endpoint.port:
            raise FailoverFailed(
                _("the probe row was written by the server on port {port}, "
                  "not by the new primary {node} ({endpoint})").format(
                    port=server_port, node=new.label, endpoint=new.endpoint),
                _("the router still sends clients elsewhere; check its configuration"),
            )
        finished = utc_now()
        run.probe = {"probe_id": probe_id, "server_port": server_port, "attempts": attempts,
                     "system_identifier": system_id, "via": "router" if topology.router else "direct",
                     "committed_at": iso(finished)}
        detail.update(run.probe)
    return run


def _insert_probe(dsn: str, password: str | None, run: FailoverRun) -> tuple[int, int, str]:
    params: dict[str, Any] = {"connect_timeout": 5, "prepare_threshold": None, "application_name": "resguardo-probe"}
    if password:
        params["password"] = password
    with psycopg.connect(dsn, autocommit=True, **params) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {DR_SCHEMA}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {DR_SCHEMA}.probe (id bigserial PRIMARY KEY, run_id text NOT NULL,"
            " kind text NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        probe_id = conn.execute(
            f"INSERT INTO {DR_SCHEMA}.probe (run_id, kind) VALUES (%s, %s) RETURNING id", (run.run_id, run.kind)
        ).fetchone()[0]
        port, system_id, found = conn.execute(
            f"SELECT inet_server_port(), (SELECT system_identifier::text FROM pg_control_system()),"
            f" (SELECT count(*) FROM {DR_SCHEMA}.probe WHERE id = %s)", (probe_id,)
        ).fetchone()
        if found != 1:
            raise psycopg.DataError(f"probe row {probe_id} not found after commit")
        return probe_id, port, system_id


def smoke_checks(config: ResguardoConfig, topology: Topology, run: FailoverRun) -> FailoverRun:
    """Validate the new primary (:func:`drills.validation.validate_database`); end the measured RTO."""
    new = topology.node(run.new_primary)
    with _step(run, "smoke_checks") as detail:
        result = validate_database(new.dsn, suite_dir=suite_dir_for(config, run.database), live=True,
                                   password=new.password)
        run.smoke = result.to_dict()
        detail.update({"success": result.success, "engine": result.engine})
        if result.engine != "great_expectations" and result.note:
            run.findings.append(result.note)
        if not result.success:
            raise FailoverFailed(
                _("the new primary failed its smoke checks: {failed}").format(
                    failed=", ".join(c.name for c in result.checks if not c.success) or "great_expectations"),
                _("clients already reach the new primary; inspect the failed checks in the evidence record"),
            )
        run.rto_seconds = round((utc_now() - parse_time(run.started_at)).total_seconds(), 3)
    return run


def base_backup(config: ResguardoConfig, topology: Topology, run: FailoverRun) -> FailoverRun:
    """Take a base backup of the new primary on its new timeline; a failure becomes a finding.

    Clients already reach the new primary when this runs, so a failed backup
    does not raise: it is recorded (step ``failed``, a finding) and
    :func:`finish` sets the outcome ``completed_with_failed_step``.
    """
    new = topology.node(run.new_primary)
    if not config.database(run.database).pitr.enabled:
        _skip(run, "base_backup", "pitr.enabled is false")
        run.findings.append(_("point-in-time recovery is not enabled for this database; no base backup was taken"))
        return run
    from backup.basebackup import run_base_backup

    try:
        with _step(run, "base_backup") as detail:
            result = run_base_backup(config, run.database, dsn=new.dsn, password=new.password,
                                     triggered_by=f"{run.kind}:{run.run_id}", fast_checkpoint=True)
            run.base_backup = {"backup_id": result.backup_id}
            detail.update(run.base_backup)
    except ResguardoError as error:
        run.base_backup = {"error": error.message}
        run.findings.append(_("the base backup on the new timeline failed: {error}").format(error=error.message))
    return run


def finish(config: ResguardoConfig, topology: Topology, run: FailoverRun, *, error: str | None = None) -> FailoverRun:
    """Compare RTO and RPO with the targets and append the signed evidence record."""
    completed = error is None and run.rto_seconds is not None
    rto_met = run.rto_seconds is not None and run.rto_seconds <= topology.rto_target_seconds
    rpo_met = run.rpo_seconds is not None and run.rpo_seconds <= topology.rpo_target_seconds

    if completed and not rto_met:
        run.findings.append(_("RTO target missed: {measured} s measured, target {target} s").format(
            measured=run.rto_seconds, target=topology.rto_target_seconds))
    if completed and not rpo_met:
        run.findings.append(_("RPO target missed: measured {measured}, target {target} s").format(
            measured=format_duration(run.rpo_seconds), target=topology.rpo_target_seconds))

    # Only the preflight runs before the first change to a server.
    if completed and run.base_backup.get("error"):
        run.outcome = OUTCOME_STEP_FAILED
    elif completed:
        run.outcome = "completed"
    elif {step["name"] for step in run.steps} <= {"preflight"}:
        run.outcome = "rejected"
    else:
        run.outcome = "failed"

    body = {
        "run": run.to_dict() | {"evidence": None},
        "targets": {"rto_seconds": topology.rto_target_seconds, "rpo_seconds": topology.rpo_target_seconds,
                    "rto_met": rto_met, "rpo_met": rpo_met},
        "error": error,
    }
    subject = {"run_id": run.run_id, "kind": run.kind, "old_primary": run.old_primary,
               "new_primary": run.new_primary, "timeline": run.promote.get("timeline")}
    kind = records.KIND_FAILOVER if run.kind == KIND_FAILOVER else records.KIND_FAILBACK

    passed = run.outcome == "completed" and rto_met and rpo_met
    run.evidence = records.append_record(config, kind, run.database, subject, passed, body)
    log.info("drills.failover.finish",
             extra={"run_id": run.run_id, "outcome": run.outcome, "rto_seconds": run.rto_seconds,
                    "rpo_seconds": run.rpo_seconds, "rpo_method": run.rpo_method,
                    "sequence": run.evidence["sequence"]})
    return run


def outcome_label(outcome: str | None) -> str:
    """Return the translated name of a run outcome (``completed``, ``completed_with_failed_step``, ``failed``,
    ``rejected``)."""
    labels = {"completed": _("completed"), "failed": _("did not complete"), "rejected": _("rejected"),
              OUTCOME_STEP_FAILED: _("completed with a failed step (base backup on the new timeline)")}
    return labels.get(outcome or "", format_word(outcome))


def kind_label(kind: str) -> str:
    """Return the translated name of a run kind."""
    return _("Failover") if kind == KIND_FAILOVER else _("Switchover")


def alert_text(run: FailoverRun, topology: Topology) -> str:
    """Return the chat message that reports a finished or failed run."""
    from drills.alerting import format_alert

    title = _("{kind} of {database}: {outcome}").format(
        kind=kind_label(run.kind), database=run.database, outcome=outcome_label(run.outcome))
    facts = {
        _("run"): run.run_id,
        _("new primary"): run.new_primary,
        _("RTO"): _("{measured} (target {target} s)").format(
            measured=format_duration(run.rto_seconds), target=topology.rto_target_seconds),
        _("RPO"): _("{measured} by {method} (target {target} s)").format(
            measured=format_duration(run.rpo_seconds), method=format_word(run.rpo_method),
            target=topology.rpo_target_seconds),
    }
    if run.evidence:
        facts[_("evidence")] = str(run.evidence.get("sequence"))
    return format_alert(title, run.findings, facts)


STEPS: tuple[tuple[str, Callable[..., FailoverRun]], ...] = (
    ("preflight", preflight),
    ("fence", fence),
    ("promote", promote),
    ("switch_router", switch_router),
    ("write_probe", write_probe),
    ("smoke_checks", smoke_checks),
    ("base_backup", base_backup),
)


def run_step(config: ResguardoConfig, topology: Topology, run: FailoverRun, name: str) -> FailoverRun:
    """Run step ``name``; when it raises, append the failure's evidence record first."""
    step = dict(STEPS)[name]
    try:
        return step(config, topology, run)
    except ResguardoError as error:
        finish(config, topology, run, error=error.message)
        raise


def run_failover(config: ResguardoConfig, database: str, *, reason: str, confirmation: str,
                 accept_data_loss: bool = False, accept_unarchived: bool = False, requested_by: str | None = None,
                 kind: str = KIND_FAILOVER, topology: Topology | None = None,
                 notify: bool = True) -> FailoverRun:
    """Run every step in order, record evidence whatever happens, and alert the DR channel.

    An invalid request (confirmation word, reason, run type) raises
    FailoverRejected before anything is recorded. A step that fails raises
    after its evidence record is written: FailoverRejected from the
    preflight (no server changed), FailoverFailed or another ResguardoError
    from a later step.
    """
    run = begin(config, database, reason=reason, confirmation=confirmation, accept_data_loss=accept_data_loss,
                requested_by=requested_by, kind=kind, accept_unarchived=accept_unarchived)
    topology = topology or _load_topology(config, database)
    try:
        for name, _function in STEPS:
            run = run_step(config, topology, run, name)
    except ResguardoError:
        _notify(run, topology, notify)
        raise
    finish(config, topology, run)
    _notify(run, topology, notify)
    return run


def _load_topology(config: ResguardoConfig, database: str) -> Topology:
    from drills.topology import load_topology

    return load_topology(config, database)


def _notify(run: FailoverRun, topology: Topology, enabled: bool) -> None:
    if not enabled:
        return
    from drills.alerting import AlertError, post_alert

    try:
        post_alert(alert_text(run, topology))
    except AlertError as error:
        # The failover result is already in the evidence record; a lost chat
        # message must not turn a completed failover into a failed command.
        log.error("drills.failover.alert_failed", extra={"run_id": run.run_id, "error": error.message})

