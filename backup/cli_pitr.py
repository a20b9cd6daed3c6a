"""Subcommands for point-in-time recovery: base backups, WAL archiving, PITR restores, archive health.

``wal-push`` and ``wal-fetch`` run once per WAL file from PostgreSQL, so
this module imports nothing heavy at the top and their handlers load the
configuration themselves (``needs_config=False``), after the fast paths of
:mod:`backup.wal_main`. ``restore-pitr`` also loads it itself, because the
server's ``restore_command`` needs the config file's path, not only its
content.
"""

from __future__ import annotations

import argparse
import json

from resguardo.i18n import _


def _print(text: str = "") -> None:
    print(text, flush=True)


def _config_path(args: argparse.Namespace) -> str | None:
    return getattr(args, "sub_config", None) or (args.config if isinstance(args.config, str) else None)


# -- handlers ---------------------------------------------------------------------------


def cmd_basebackup(args: argparse.Namespace) -> int:
    from backup.basebackup import run_base_backup

    def progress(event: str, **values) -> None:
        messages = {
            "checkpoint": _("Waiting for an immediate checkpoint before the copy starts...") if values.get("fast")
            else _("Waiting for a spread checkpoint before the copy starts; this can take minutes "
                   "(--fast-checkpoint starts at once, with more I/O)..."),
            "copying": _("Copying: {megabytes} MiB read so far...").format(megabytes=values.get("megabytes")),
            "archive_wait": _("Copy finished; waiting until its WAL is in every WAL region..."),
        }
        _print(messages[event])

    result = run_base_backup(args.config, args.database, triggered_by=args.triggered_by,
                             fast_checkpoint=args.fast_checkpoint, allow_new_system=args.new_system,
                             progress=progress)
    wal = result.manifest["wal"]
    entry = result.manifest["objects"][0]
    _print(_("Base backup {backup_id} of {database} committed in {count} regions: {regions}").format(
        backup_id=result.backup_id, database=args.database, count=len(result.regions), regions=", ".join(result.regions)))
    _print(_("WAL {start} to {stop} on timeline {timeline} of system {system}; {plain} bytes, stored {stored} "
             "bytes").format(start=wal["start_lsn"], stop=wal["stop_lsn"], timeline=wal["timeline"],
                             system=wal["system_identifier"], plain=entry["plaintext_size"], stored=entry["size"]))
    for region, error in result.failed_regions.items():
        _print(_("WARNING: region {region} failed and holds no copy: {error}").format(region=region, error=error))
    return 0


def cmd_wal_push(args: argparse.Namespace) -> int:
    from backup.wal_main import run_push

    return run_push(args)


def cmd_wal_fetch(args: argparse.Namespace) -> int:
    from backup.wal_main import FATAL_EXIT_STATUS, run_fetch

    try:
        return run_fetch(args)
    except BaseException:  # noqa: BLE001 - an unexpected failure must stop recovery, never read as "not found"
        return FATAL_EXIT_STATUS


def cmd_wal_ship(args: argparse.Namespace) -> int:
    import signal

    from backup.wal_ship import WalShipper
    from resguardo.config import load_config

    # Loaded here so that --config is accepted after the subcommand too, as for wal-push.
    config = args.config if not isinstance(args.config, (str, type(None))) else load_config(_config_path(args))
    shipper = WalShipper(config, args.database, parallel=args.parallel)
    signal.signal(signal.SIGTERM, lambda *_: shipper.stop_event.set())
    try:
        stats = shipper.run(once=args.once)
    except KeyboardInterrupt:
        shipper.stop_event.set()
        return 130
    _print(_("Shipped {count} WAL files ({bytes} bytes) in {seconds} s; {failed} failures").format(
        count=stats.shipped, bytes=stats.bytes, seconds=stats.seconds, failed=stats.failed))
    return 0 if not stats.errors or not args.once else 5


def cmd_archive_check(args: argparse.Namespace) -> int:
    from backup.wal_health import check_archive

    report = check_archive(args.config, args.database)
    if args.json:
        _print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str))
        return 0 if report.ok else 8
    _print(_("WAL archive of {database} (system {system}): {state}").format(
        database=args.database, system=report.system_identifier or "-",
        state=_("healthy") if report.ok else _("PROBLEMS FOUND")))
    if report.lag_seconds is not None:
        _print(_("Archive lag: {lag} s (limit {rpo} s); segments behind: {behind}").format(
            lag=report.lag_seconds, rpo=report.rpo_seconds,
            behind=report.segments_behind if report.segments_behind is not None else "-"))
    if report.archive:
        _print(_("Archived segments: {count}, newest {newest}; timelines with history: {timelines}").format(
            count=report.archive.get("segments"), newest=report.archive.get("newest_segment") or "-",
            timelines=", ".join(map(str, report.archive.get("timelines") or [])) or "-"))
    if report.pg_wal_bytes is not None:
        growth = report.pg_wal_growth_bytes
        _print(_("pg_wal: {bytes} bytes; change since the previous check: {growth}").format(
            bytes=report.pg_wal_bytes, growth=f"{growth:+d}" if growth is not None else "-"))
    for problem in report.problems:
        _print(_("PROBLEM: {text}").format(text=problem))
    for warning in report.warnings:
        _print(_("WARNING: {text}").format(text=warning))
    return 0 if report.ok else 8


def cmd_restore_pitr(args: argparse.Namespace) -> int:
    from resguardo.config import load_config
    from restore.pitr import restore_pitr
    from restore.pitr_target import build_target

    config_file = _config_path(args)
    config = load_config(config_file)
    if not args.timeout > 0:
        from resguardo.errors import ConfigError

        raise ConfigError(
            _("invalid recovery timeout {value} s").format(value=args.timeout),
            _("give a positive number of seconds, e.g. --timeout 3600"),
        )
    target = build_target(time=args.target_time, lsn=args.target_lsn, xid=args.target_xid, name=args.target_name,
                          immediate=args.target_immediate, inclusive=not args.exclusive, timeline=args.target_timeline)
    report = restore_pitr(config, args.database, target=target, data_dir=args.data_dir, backup_id=args.backup_id,
                          promote=not args.no_promote, system_identifier=args.system_identifier,
                          config_file=config_file, identity_file=args.identity, verify_files=not args.no_verify,
                          timeout=args.timeout, wal_fetch_command=args.wal_fetch_command)
    if args.json:
        _print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str))
        return 0
    _print(_("Base backup {backup_id} restored from region {region} and replayed to {target} "
             "({count} WAL files) in {seconds} s.").format(
        backup_id=report.backup_id, region=report.region, target=target.label(), count=report.wal_files_restored,
        seconds=report.timings.get("total_seconds")))
    if report.stop_point:
        from restore.pitr_server import describe_stop_point

        _print(_("Recovery stopped {point}").format(point=describe_stop_point(report.stop_point)))
    if report.other_system_identifiers:
        _print(_("WARNING: {database} also has base backups of other clusters (system identifiers {others}); "
                 "this restore used system {system}. Pass --system-identifier to choose another.").format(
            database=args.database, others=", ".join(report.other_system_identifiers),
            system=report.system_identifier))
    for note in report.notes:
        _print(_("NOTE: {text}").format(text=note))
    outcomes = {
        "promoted": _("The server was promoted to timeline {timeline}.").format(timeline=report.new_timeline or "-"),
        "paused": _("The server is paused at the target, read-only; promote it with SELECT pg_promote()."),
        "shut_down": _("The server stopped at the target; starting it again replays to the same target."),
    }
    _print(outcomes[report.outcome])
    if report.dsn:
        _print(_("Scratch cluster left running for inspection: {dsn}").format(dsn=report.dsn))
    else:
        _print(_("Data directory: {path}").format(path=report.data_dir))
    return 0


# -- parser -----------------------------------------------------------------------------


def add_recovery_arguments(parser) -> None:
    """Add the recovery target and server options shared by ``restore-pitr`` and ``restore``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--target-time", help=_("ISO 8601 time with zone, e.g. 2026-12-04T15:15:00-05:00"))
    group.add_argument("--target-lsn", help=_("WAL position, e.g. 0/3000028"))
    group.add_argument("--target-xid", help=_("transaction id whose commit ends recovery"))
    group.add_argument("--target-name", help=_("restore point made with pg_create_restore_point"))
    group.add_argument("--target-immediate", action="store_true", help=_("stop as soon as the backup is consistent"))
    parser.add_argument("--exclusive", action="store_true",
                        help=_("stop just before the target instead of just after it"))
    parser.add_argument("--target-timeline", default="latest", help=_("latest (default), current or a number"))
    parser.add_argument("--data-dir", help=_("empty directory to restore into; default: a scratch cluster"))
    parser.add_argument("--no-promote", action="store_true", help=_("stay in recovery at the target (read-only)"))
    parser.add_argument("--system-identifier", help=_("cluster to restore when the archive contains several"))
    parser.add_argument("--wal-fetch-command",
                        help=_("command the server runs as restore_command prefix (default: the resguardo executable "
                               "next to this Python)"))
    parser.add_argument("--no-verify", action="store_true", help=_("skip pg_verifybackup of the restored files"))
    parser.add_argument("--timeout", type=float, default=3600, help=_("seconds to wait for recovery (default 3600)"))
    parser.add_argument("--json", action="store_true", help=_("machine-readable output"))


def register(subparsers) -> None:
    """Add the point-in-time recovery subcommands to the ``resguardo`` parser."""
    base = subparsers.add_parser("basebackup", help=_("take an encrypted physical base backup (pg_basebackup)"))
    base.add_argument("database", help=_("database name as configured"))
    base.add_argument("--fast-checkpoint", action="store_true",
                      help=_("start at once with an immediate checkpoint (more I/O) instead of a spread one"))
    base.add_argument("--triggered-by", default="cli", help=_("who or what started it, recorded in the manifest"))
    base.add_argument("--new-system", action="store_true",
                      help=_("accept a server whose system identifier differs from the backups and WAL already "
                             "archived under this database name (the cluster was rebuilt with initdb)"))
    base.set_defaults(handler=cmd_basebackup)

    push = subparsers.add_parser("wal-push", help=_("archive one WAL file (for archive_command = '... wal-push %%p')"))
    push.add_argument("path", help=_("the file PostgreSQL passes as %%p"))
    push.add_argument("--db", dest="database", help=_("database name; needed when several have pitr.enabled"))
    push.add_argument("--config", dest="sub_config", help=_("path of resguardo.yaml"))
    push.add_argument("--spool", help=_("spool directory of wal-ship; acknowledges shipped files without reading the config"))
    push.set_defaults(handler=cmd_wal_push, needs_config=False)

    fetch = subparsers.add_parser("wal-fetch", help=_("restore one WAL file (for restore_command = '... wal-fetch %%f %%p')"))
    fetch.add_argument("name", help=_("the file name PostgreSQL passes as %%f"))
    fetch.add_argument("destination", help=_("the path PostgreSQL passes as %%p"))
    fetch.add_argument("--db", dest="database", help=_("database name; needed when several have pitr.enabled"))
    fetch.add_argument("--config", dest="sub_config", help=_("path of resguardo.yaml"))
    fetch.add_argument("--system-identifier", help=_("cluster whose archive to read; default: from global/pg_control"))
    fetch.add_argument("--identity", help=_("X25519 private key file (overrides the config)"))
    fetch.add_argument("--attempts", type=int, default=4, help=_("tries before stopping recovery (default 4)"))
    fetch.add_argument("--no-prefetch", action="store_true", help=_("do not download the next segments ahead"))
    fetch.set_defaults(handler=cmd_wal_fetch, needs_config=False)

    ship = subparsers.add_parser("wal-ship", help=_("upload ready WAL files ahead of archive_command (asynchronous mode)"))
    ship.add_argument("database")
    ship.add_argument("--parallel", type=int, help=_("parallel uploads (default: pitr.push_parallel)"))
    ship.add_argument("--once", action="store_true", help=_("ship what is ready now, then exit"))
    ship.add_argument("--config", dest="sub_config", help=_("path of resguardo.yaml"))
    ship.set_defaults(handler=cmd_wal_ship, needs_config=False)

    check = subparsers.add_parser("archive-check", help=_("check WAL archive gaps, lag against pitr.rpo_seconds and pg_wal"))
    check.add_argument("database")
    check.add_argument("--json", action="store_true", help=_("machine-readable output"))
    check.set_defaults(handler=cmd_archive_check)

    pitr = subparsers.add_parser("restore-pitr", help=_("point-in-time recovery from a base backup and archived WAL"))
    pitr.add_argument("database")
    pitr.add_argument("--backup-id", help=_("base backup to start from (default: chosen for the target)"))
    pitr.add_argument("--identity", help=_("X25519 private key file (overrides the config)"))
    pitr.add_argument("--config", dest="sub_config", help=_("path of resguardo.yaml"))
    add_recovery_arguments(pitr)
    pitr.set_defaults(handler=cmd_restore_pitr, needs_config=False)
