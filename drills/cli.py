"""The ``resguardo`` commands of DR coordinators: ``dr rehearse``, ``dr status``, ``failover``, ``failback``.

Each handler takes the parsed arguments (``args.config`` is the loaded
configuration) and returns the exit status. It is 0 on success and 8 when a
rehearsal ran but missed a target or failed validation. Errors return their
``exit_status``: 12 for a failover rejected before any change, 13 for a
failed failover step, 14 for a failed failback step. A failover whose clients
reach the new primary but whose base backup on the new timeline failed
returns 15, also when it is the switchover of a failback.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from drills.display import format_bytes, format_duration, format_number, format_word
from resguardo.i18n import _


EXIT_STEP_FAILED = 15


def _print(text: str = "") -> None:
    print(text, flush=True)


def register(subparsers: Any) -> None:
    """Add the DR commands to the ``resguardo`` parser."""
    dr = subparsers.add_parser("dr", help=_("DR rehearsals and the state of the DR topology"))
    actions = dr.add_subparsers(dest="dr_command", metavar=_("ACTION"), required=True)

    rehearse = actions.add_parser(
        "rehearse", help=_("rebuild the database in an isolated copy and measure RTO and RPO (changes no server)"))
    rehearse.add_argument("database", help=_("database name as configured"))
    rehearse.add_argument("--scenario", choices=("storage", "replica", "all"), default="all",
                          help=_("storage: from base backup and WAL; replica: promote a copy of the standby "
                                 "(default: all)"))
    rehearse.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                          help=_("report format (default: text)"))
    rehearse.add_argument("--output", help=_("write the report to this file instead of standard output"))
    rehearse.add_argument("--wal-fetch-command", metavar="COMMAND",
                          help=_("command that the copy's restore_command runs in place of the resguardo executable "
                                 "(storage scenario; default: resguardo next to this Python or on PATH)"))
    rehearse.add_argument("--keep", action="store_true",
                          help=_("leave the rebuilt copy running for inspection; delete it by hand afterwards"))
    rehearse.set_defaults(handler=cmd_rehearse)

    status = actions.add_parser("status", help=_("show both nodes' roles, timelines and the standby's lag"))
    status.add_argument("database", help=_("database name as configured"))
    status.add_argument("--json", action="store_true", help=_("print the state as JSON"))
    status.set_defaults(handler=cmd_status)

    failover = subparsers.add_parser(
        "failover", help=_("promote the DR standby, fence the old primary and switch the router"))
    failover.add_argument("database", help=_("database name as configured"))
    failover.add_argument("--reason", required=True,
                          help=_("why, at least 10 characters; stored in the evidence record"))
    failover.add_argument("--confirm", required=True, metavar="FAILOVER",
                          help=_("type FAILOVER to confirm"))
    failover.add_argument("--accept-data-loss", action="store_true",
                          help=_("proceed even when the standby may lack more commits than the RPO target"))
    failover.add_argument("--accept-unarchived", action="store_true",
                          help=_("proceed even when the standby does not archive WAL through 'resguardo wal-push' "
                                 "(archive_mode off or another archive_command)"))
    failover.set_defaults(handler=cmd_failover)

    failback = subparsers.add_parser(
        "failback", help=_("rebuild the old primary as a standby of the new one; optionally switch back"))
    failback.add_argument("database", help=_("database name as configured"))
    failback.add_argument("--reason", required=True,
                          help=_("why, at least 10 characters; stored in the evidence record"))
    failback.add_argument("--confirm", required=True, metavar="FAILBACK", help=_("type FAILBACK to confirm"))
    failback.add_argument("--method", choices=("auto", "rewind", "clone"), default="auto",
                          help=_("rewind: pg_rewind; clone: new pg_basebackup; auto: rewind, else clone"))
    failback.add_argument("--switchover", action="store_true",
                          help=_("then move the primary role back to the configured primary, losing nothing"))
    failback.add_argument("--node", choices=("primary", "standby"), default="primary",
                          help=_("node to rebuild (default: primary); 'standby' rebuilds the DR standby only"))
    failback.set_defaults(handler=cmd_failback)


def _write(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
        _print(_("Report written to {path}").format(path=output))
    else:
        _print(text)


def cmd_rehearse(args: argparse.Namespace) -> int:
    from drills.rehearsal import SCENARIOS, run_rehearsal
    from drills.report import render_rehearsal

    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    pitr_options = {"wal_fetch_command": args.wal_fetch_command} if args.wal_fetch_command else None
    results = run_rehearsal(args.config, args.database, scenarios=scenarios, keep=args.keep,
                            pitr_options=pitr_options)
    if args.format == "json":
        _write(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False, default=str), args.output)
    else:
        _write(render_rehearsal(results, fmt=args.format, timezone=args.config.timezone), args.output)
    return 0 if all(r.passed for r in results) else 8


def status_warnings(primary, standby) -> list[str]:
    """Return the warnings about two nodes that both claim the primary role."""
    if standby is None or primary.role != "primary" or standby.role != "primary":
        return []
    if primary.accepts_writes and standby.accepts_writes:
        return [_("both nodes are primaries and accept writes (split brain); stop the node clients must not "
                  "use, then reconcile the data by hand")]
    writable = [state.label for state in (primary, standby) if state.accepts_writes]
    if writable:
        fenced = standby.label if writable == [primary.label] else primary.label
        return [_("both nodes are primaries; {fenced} is fenced read-only and only {writable} accepts writes. "
                  "Rebuild {fenced} as a standby with 'resguardo failback'").format(
            fenced=fenced, writable=writable[0])]
    return [_("both nodes are primaries fenced read-only: no node accepts writes")]


def cmd_status(args: argparse.Namespace) -> int:
    from drills.router import open_router
    from drills.topology import load_topology, measure_exposure, probe

    topology = load_topology(args.config, args.database)
    primary = probe(topology.primary)
    standby = probe(topology.standby) if topology.standby else None
    router = open_router(topology.router, args.config.resolve)
    state: dict[str, Any] = {
        "primary": primary.to_dict(),
        "standby": standby.to_dict() if standby else None,
        "exposure": measure_exposure(primary, standby).to_dict() if standby and standby.role == "standby" else None,
        "router_target": str(router.current_target()) if router else None,
        "targets": {"rto_seconds": topology.rto_target_seconds, "rpo_seconds": topology.rpo_target_seconds},
    }
    if args.json:
        _print(json.dumps(state, indent=2, ensure_ascii=False))
        return 0
    for label, node_state in (("primary", primary), ("standby", standby)):
        if node_state is None:
            _print(_("{label}: not configured").format(label=label))
            continue
        role = node_state.role
        if node_state.fenced_primary:
            role = _("primary fenced read-only (default_transaction_read_only = on)")
        _print(_("{label} ({site}): {role}, timeline {timeline}, WAL {lsn}").format(
            label=label, site=node_state.site, role=role, timeline=format_number(node_state.timeline),
            lsn=format_word(node_state.to_dict()["lsn"])))
        if node_state.error:
            _print("  " + node_state.error)
    for warning in status_warnings(primary, standby):
        _print(_("WARNING: {text}").format(text=warning))
    if state["exposure"]:
        exposure = state["exposure"]
        _print(_("Standby exposure: {exposure}; WAL behind: {bytes} (method {method}); RPO target {target} s").format(
            exposure=format_duration(exposure["seconds"]), bytes=format_bytes(exposure["lag_bytes"]),
            method=exposure["method"], target=topology.rpo_target_seconds))
    if state["router_target"]:
        _print(_("Router sends clients to {target}").format(target=state["router_target"]))
    return 0


def _print_failover(run) -> None:
    from drills.failover import kind_label, outcome_label

    _print(_("{kind} {outcome}: new primary {node}, timeline {timeline}").format(
        kind=kind_label(run.kind), outcome=outcome_label(run.outcome), node=run.new_primary,
        timeline=format_number(run.promote.get("timeline"))))
    _print(_("Measured RTO: {rto}. RPO: {rpo} (method {method})").format(
        rto=format_duration(run.rto_seconds), rpo=format_duration(run.rpo_seconds),
        method=format_word(run.rpo_method)))
    for step in run.steps:
        _print(f"  {step['name']:<14} {step['seconds']:>9.3f} s  {step['outcome']}")
    for finding in run.findings:
        _print(_("FINDING: {text}").format(text=finding))
    if run.evidence:
        _print(_("Evidence record {sequence} ({record_id})").format(
            sequence=run.evidence["sequence"], record_id=run.evidence["record_id"]))


def cmd_failover(args: argparse.Namespace) -> int:
    from drills.failover import run_failover

    from drills.failover import OUTCOME_STEP_FAILED

    run = run_failover(args.config, args.database, reason=args.reason, confirmation=args.confirm,
                       accept_data_loss=args.accept_data_loss, accept_unarchived=args.accept_unarchived)
    _print_failover(run)
    return EXIT_STEP_FAILED if run.outcome == OUTCOME_STEP_FAILED else 0


def cmd_failback(args: argparse.Namespace) -> int:
    from drills.failback import run_failback

    run = run_failback(args.config, args.database, reason=args.reason, confirmation=args.confirm,
                       method=args.method, switchover=args.switchover, node=args.node)
    rebuild = run.rebuild
    _print(_("Node {node} rebuilt by {method}; it streams from {source} on timeline {timeline}").format(
        node=rebuild["node"], method=rebuild["method"], source=rebuild["source"], timeline=rebuild["timeline"]))
    if rebuild.get("moved_aside"):
        _print(_("The old data directory was kept at {path}; delete it once nobody needs its data").format(
            path=rebuild["moved_aside"]))
    if run.switchover:
        from drills.failover import outcome_label

        _print(_("Switchover {outcome}: the configured primary takes writes again (RPO {rpo})").format(
            outcome=outcome_label(run.switchover["outcome"]), rpo=format_duration(run.switchover["rpo_seconds"])))
    for finding in run.findings:
        _print(_("FINDING: {text}").format(text=finding))
    if run.evidence:
        _print(_("Evidence record {sequence} ({record_id})").format(
            sequence=run.evidence["sequence"], record_id=run.evidence["record_id"]))
    from drills.failover import OUTCOME_STEP_FAILED

    if run.switchover and run.switchover["outcome"] == OUTCOME_STEP_FAILED:
        return EXIT_STEP_FAILED
    return 0
