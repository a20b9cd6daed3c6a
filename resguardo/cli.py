"""The ``resguardo`` command: every operation without Airflow.

Subcommands come from modules that each expose ``register(subparsers)``;
the core ones (keys, backup, list, restore, verify, decrypt, inspect) live
here. A handler receives the parsed arguments, with ``args.config`` holding
the loaded configuration unless the subcommand sets ``needs_config=False``,
and returns the exit status. A :class:`ResguardoError` is printed as
``ERROR``/``HINT`` lines (Spanish by default) and its ``exit_status`` returned.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import json
import sys
from pathlib import Path

from resguardo.errors import ResguardoError
from resguardo.i18n import _, set_language

# Modules contributing subcommands. One that fails to import is skipped with a
# warning in the log, so the core commands (restore above all) keep working.
COMMAND_MODULES = (
    "evidence.cli",
    "backup.cli_pitr",
    "masking.cli",
    "drills.cli",
)


def _print(text: str = "") -> None:
    print(text, flush=True)


# -- core commands ---------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from encryption.keys import generate_keypair

    directory = Path(args.directory)
    directory.mkdir(parents=True, exist_ok=True)
    private, public = generate_keypair(directory, args.name, args.kind)
    _print(_("Private key: {path} (keep it off backup hosts; mode 0600)").format(path=private))
    _print(_("Public key: {path}").format(path=public))
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    from encryption.keys import load_x25519_private
    from encryption.stream import decrypt_stream

    identity = load_x25519_private(Path(args.identity))
    source = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    if args.output == "-":
        with source:
            decrypt_stream(source, sys.stdout.buffer, [identity])
        return 0
    # Decrypt into a temporary file beside the output and rename it only on
    # success, so a failed decryption never replaces an existing file.
    output = Path(args.output)
    partial = output.with_name(f".{output.name}.partial")
    try:
        with source, open(partial, "wb") as sink:
            decrypt_stream(source, sink, [identity])
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    _print(_("Decrypted to {path}. Backups are zstd-compressed: use 'zstd -d' before pg_restore.").format(path=output))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from encryption.stream import read_header

    with open(args.input, "rb") as handle:
        header = read_header(handle.read(1 << 20))
    _print(json.dumps(header, indent=2, ensure_ascii=False, default=str))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from backup.logical import run_logical_backup

    result = run_logical_backup(args.config, args.database, triggered_by=args.triggered_by)
    entry = result.manifest["objects"][0]
    _print(_("Backup {backup_id} of {database} committed in {count} regions: {regions}").format(
        backup_id=result.backup_id, database=args.database, count=len(result.regions), regions=", ".join(result.regions)))
    _print(_("Dump: {plain} bytes, stored {stored} bytes, SHA-256 {sha}").format(
        plain=entry["plaintext_size"], stored=entry["size"], sha=entry["sha256"]))
    for region, error in result.failed_regions.items():
        _print(_("WARNING: region {region} failed and holds no copy: {error}").format(region=region, error=error))
    return 0


def _system_identifier(manifest: dict) -> str:
    """Return the cluster's system identifier recorded in a manifest (logical or base)."""
    for section in ("server", "wal"):
        value = (manifest.get(section) or {}).get("system_identifier")
        if value:
            return str(value)
    return "-"


def cmd_list(args: argparse.Namespace) -> int:
    from backup.catalog import list_backups
    from resguardo.keyring import load_verify_key
    db = args.config.database(args.database)
    from restore.logical import open_reachable_regions

    opened, unreachable = open_reachable_regions(db.regions, args.config)
    for name, error in unreachable.items():
        print(_("WARNING: region {region} is unreachable: {error}").format(region=name, error=error), file=sys.stderr)
    every = list_backups(list(opened.values()), load_verify_key(args.config), args.database, args.kind,
                         include_invalid=True)
    entries = [e for e in every if e.manifest]
    for rejected in (e for e in every if not e.manifest):
        print(_("WARNING: backup {backup_id} is hidden: no manifest copy passed verification ({regions})").format(
            backup_id=rejected.backup_id, regions=", ".join(rejected.invalid_copies)), file=sys.stderr)
    if args.json:
        _print(json.dumps([{"backup_id": e.backup_id, "regions": e.regions, "invalid_copies": e.invalid_copies,
                            "started_at": e.manifest.get("started_at"),
                            "system_identifier": _system_identifier(e.manifest),
                            "size": sum(o["size"] for o in e.manifest.get("objects", []))} for e in entries],
                          indent=2, ensure_ascii=False))
        return 0
    if not entries:
        _print(_("No committed backups of {database}.").format(database=args.database))
        return 0
    _print(_("{backup_id:<24} {started:<28} {system:<20} {size:>14}  {regions}").format(
        backup_id=_("BACKUP"), started=_("STARTED (UTC)"), system=_("SYSTEM ID"), size=_("BYTES"),
        regions=_("REGIONS")))
    for e in entries:
        size = sum(o["size"] for o in e.manifest.get("objects", []))
        regions_text = ", ".join(e.regions)
        quorum = e.manifest.get("quorum") or len(e.regions)
        if len(e.regions) < quorum:
            regions_text += "  " + _("(below quorum: {count} of {quorum} regions hold a valid manifest)").format(
                count=len(e.regions), quorum=quorum)
        if e.invalid_copies:
            regions_text += "  " + _("(invalid copy in: {regions})").format(regions=", ".join(e.invalid_copies))
        _print(f"{e.backup_id:<24} {e.manifest.get('started_at', ''):<28} {_system_identifier(e.manifest):<20} "
               f"{size:>14}  {regions_text}")
    return 0


PITR_FLAGS = ("target_time", "target_lsn", "target_xid", "target_name", "target_immediate")


def cmd_restore(args: argparse.Namespace) -> int:
    if any(getattr(args, flag) for flag in PITR_FLAGS) or args.data_dir:
        # Point-in-time recovery: a physical base backup plus archived WAL.
        from backup.cli_pitr import cmd_restore_pitr

        args.sub_config = str(args.config.config_file) if args.config.config_file else None
        args.backup_id = None if args.backup_id == "latest" else args.backup_id
        return cmd_restore_pitr(args)

    from restore.logical import restore_logical

    report = restore_logical(args.config, args.database, backup_id=args.backup_id, target_dsn=args.target,
                             prefer_regions=args.prefer_region, identity_file=args.identity,
                             apply_suppression=args.apply_suppression)
    if report.suppression:
        _print(_("LOPDP suppression list applied: {subjects} subjects, rows removed: {rows}").format(
            subjects=report.suppression.get("subjects"), rows=sum((report.suppression.get("deleted") or {}).values())))
    for attempt in report.attempts:
        if attempt.outcome != "ok":
            from restore.fetch import outcome_label

            _print(_("Region {region} skipped ({outcome}): {error}").format(
                region=attempt.region, outcome=outcome_label(attempt.outcome), error=attempt.error))
    _print(_("Backup {backup_id} restored from region {region} in {seconds} s.").format(
        backup_id=report.backup_id, region=report.region, seconds=report.timings["total_seconds"]))
    if report.scratch is not None:
        _print(_("Scratch cluster left running for inspection: {dsn}").format(dsn=report.dsn))
        prefix = "runuser -u postgres -- " if report.scratch.os_user is not None else ""
        _print(_("Stop it with: {prefix}pg_ctl -D {data_dir} stop, then delete {root}").format(
            prefix=prefix, data_dir=report.scratch.data_dir, root=report.scratch.root))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from restore.verify import run_restore_test, summarize

    from resguardo.keyring import load_verify_key

    outcome = run_restore_test(args.config, args.database, backup_id=args.backup_id, triggered_by=args.triggered_by,
                               identity_file=args.identity)
    _print(summarize(outcome, public_key=load_verify_key(args.config)))
    return 0 if outcome.passed else 8


def cmd_cleanup(args: argparse.Namespace) -> int:
    from storage.registry import open_region

    seconds = args.older_than_hours * 3600
    total = 0
    for name in sorted(args.config.regions):
        try:
            region = open_region(name, args.config)
            removed = region.cleanup_incomplete(seconds)
        except ResguardoError as error:
            print(_("WARNING: region {region} was not cleaned: {error}").format(region=name, error=error.message),
                  file=sys.stderr)
            continue
        total += removed
        _print(_("Region {region}: {count} unfinished uploads removed").format(region=name, count=removed))
    _print(_("Total: {count}. Committed backups were not touched.").format(count=total))
    return 0


# -- parser ----------------------------------------------------------------------


# argparse's own texts ("usage:", "options", its error messages) go through
# argparse's module-level gettext functions. Routing them to our catalog makes
# help and usage errors follow the configured language too; their Spanish
# translations sit in core.po under argparse's own msgids.


def _translate_argparse() -> None:
    from resguardo.i18n import gettext

    argparse._ = gettext
    argparse.ngettext = lambda singular, plural, count: gettext(singular if count == 1 else plural)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resguardo",
        description=_("Encrypted multi-region PostgreSQL backups and verified restores."),
    )
    parser.add_argument("--config", help=_("path of resguardo.yaml (default: $RESGUARDO_CONFIG or ./resguardo.yaml)"))
    parser.add_argument("--lang", choices=("es", "en"), help=_("language of messages (default: es)"))
    sub = parser.add_subparsers(dest="command", metavar=_("COMMAND"))
    sub.required = True

    keys = sub.add_parser("keys", help=_("manage encryption and signing keys"))
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help=_("generate a key pair"))
    gen.add_argument("--kind", choices=("x25519", "ed25519"), default="x25519",
                     help=_("x25519 encrypts backups; ed25519 signs manifests and evidence"))
    gen.add_argument("--name", required=True, help=_("file name stem: writes NAME.key and NAME.pub"))
    gen.add_argument("--directory", default=".", help=_("directory for the key files"))
    gen.set_defaults(handler=cmd_keys_generate, needs_config=False)

    dec = sub.add_parser("decrypt", help=_("decrypt one object with a private key (no config needed)"))
    dec.add_argument("input", help=_("encrypted object file, or - for standard input"))
    dec.add_argument("--identity", required=True, help=_("X25519 private key file"))
    dec.add_argument("-o", "--output", default="-", help=_("output file (default: standard output)"))
    dec.set_defaults(handler=cmd_decrypt, needs_config=False)

    ins = sub.add_parser("inspect", help=_("show the header of an encrypted object (no key needed)"))
    ins.add_argument("input", help=_("encrypted object file"))
    ins.set_defaults(handler=cmd_inspect, needs_config=False)

    bak = sub.add_parser("backup", help=_("take an encrypted logical backup into every required region"))
    bak.add_argument("database", help=_("database name as configured"))
    bak.add_argument("--triggered-by", default="cli", help=_("who or what started it, recorded in the manifest"))
    bak.set_defaults(handler=cmd_backup)

    lst = sub.add_parser("list", help=_("list committed backups"))
    lst.add_argument("database", help=_("database name as configured"))
    lst.add_argument("--kind", choices=("logical", "base"), default="logical",
                     help=_("logical (pg_dump) or base (physical base backups)"))
    lst.add_argument("--json", action="store_true", help=_("machine-readable output"))
    lst.set_defaults(handler=cmd_list)

    res = sub.add_parser("restore", help=_("restore a logical backup into a database or a scratch cluster"))
    res.add_argument("database", help=_("database name as configured"))
    res.add_argument("--backup-id", default="latest", help=_("backup id (default: latest)"))
    res.add_argument("--target", help=_("DSN of an existing empty database; default: a new scratch cluster"))
    res.add_argument("--prefer-region", action="append", help=_("region to read first (repeatable)"))
    res.add_argument("--identity", help=_("X25519 private key file (overrides the config)"))
    res.add_argument("--apply-suppression", action=argparse.BooleanOptionalAction, default=None,
                     help=_("remove data subjects on the LOPDP suppression list after the restore "
                            "(default: masking.yaml's apply_suppression_on_restore)"))
    from backup.cli_pitr import add_recovery_arguments

    add_recovery_arguments(res.add_argument_group(_("point-in-time recovery (base backup + WAL)")))
    res.set_defaults(handler=cmd_restore)

    ver = sub.add_parser("verify", help=_("restore test: restore into scratch, validate with GX, write evidence"))
    ver.add_argument("database", help=_("database name as configured"))
    ver.add_argument("--backup-id", default="latest", help=_("backup id (default: latest)"))
    ver.add_argument("--triggered-by", default="cli", help=_("who or what started it, recorded in the evidence"))
    ver.add_argument("--identity", help=_("X25519 private key file (overrides the config)"))
    ver.set_defaults(handler=cmd_verify)

    cln = sub.add_parser("cleanup", help=_("remove uploads left unfinished by killed backups"))
    cln.add_argument("--older-than-hours", type=float, default=24.0,
                     help=_("only uploads started this many hours ago or earlier (default: 24)"))
    cln.set_defaults(handler=cmd_cleanup)

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            from resguardo.log import get_logger

            get_logger("cli").warning("cli.module_skipped", extra={"module": module_name, "error": str(error)})
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from resguardo import log

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("wal-push", "wal-fetch"):
        # archive_command and restore_command: a lean entry point that starts
        # fast and never exits 1 (PostgreSQL's "no such WAL file") on an error.
        from backup.wal_main import main as wal_main

        return wal_main(argv)
    log.configure()
    if "--lang" in argv:
        index = argv.index("--lang")
        if index + 1 < len(argv):
            set_language(argv[index + 1] if argv[index + 1] in ("es", "en") else None)
    # Airflow and systemd stop tasks with SIGTERM: turn it into the same
    # unwinding as Ctrl-C, so every upload is aborted and scratch clusters stop.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    _translate_argparse()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lang:
        set_language(args.lang)
    try:
        if getattr(args, "needs_config", True):
            from resguardo.config import load_config

            args.config = load_config(args.config)
            if args.lang:
                set_language(args.lang)
        return args.handler(args)
    except ResguardoError as error:
        print(error.render(), file=sys.stderr, flush=True)
        return error.exit_status
    except KeyboardInterrupt:
        print(_("ERROR: interrupted; nothing partial was committed"), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output (e.g. `| head`) went away; that is not an error.
        sys.stderr.close()
        return 0
    except OSError as error:
        print(_("ERROR: {message}").format(message=f"{error.strerror}: {error.filename}"), file=sys.stderr)
        print(_("HINT: {hint}").format(hint=_("check the path and its permissions")), file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - last line of defence for people at a terminal
        import psycopg

        if isinstance(error, psycopg.Error):
            print(_("ERROR: {message}").format(message=_("the database returned an error: {error}").format(
                error=str(error).strip())), file=sys.stderr)
            print(_("HINT: {hint}").format(hint=_("check the role's privileges and the database named in the config")),
                  file=sys.stderr)
            return 7
        raise


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
