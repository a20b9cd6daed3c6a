"""The ``resguardo mask`` commands: discover, run, suppress add, keygen.

Handlers receive the parsed arguments with ``args.config`` (the loaded
``resguardo.yaml``); the masking settings come from ``--masking-config``,
``RESGUARDO_MASKING_CONFIG`` or ``masking.yaml`` beside the main config.
``mask suppress add`` reads the cédula from the terminal without echo (or
one per line from standard input), so it never appears in the shell history
or in a process listing.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from resguardo.i18n import _


def _add_masking_config_option(parser: argparse.ArgumentParser) -> None:
    """Accept ``--masking-config`` after the action too (``mask run DB --masking-config X``).

    SUPPRESS as the default keeps an absent option from overwriting the value
    given before the action, because argparse copies a subparser's defaults
    onto the shared namespace.
    """
    parser.add_argument("--masking-config", metavar="PATH", default=argparse.SUPPRESS,
                        help=_("masking settings file (default: masking.yaml beside the main config)"))


def register(subparsers: Any) -> None:
    """Add the ``mask`` command and its actions to the ``resguardo`` parser."""
    parser = subparsers.add_parser("mask", help=_("LOPDP masking: masked copies for non-production"))
    parser.add_argument("--masking-config", metavar="PATH",
                        help=_("masking settings file (default: masking.yaml beside the main config)"))
    actions = parser.add_subparsers(dest="mask_command", metavar=_("ACTION"), required=True)

    discover = actions.add_parser(
        "discover", help=_("scan a database for personal data and print a proposed policy (YAML)")
    )
    discover.add_argument("database", help=_("configured database name"))
    discover.add_argument("--dsn", help=_("scan this database instead of a restored copy of the newest backup"))
    discover.add_argument("--sample-rows", type=int, default=1000, help=_("rows sampled per table (default: 1000)"))
    _add_masking_config_option(discover)
    discover.set_defaults(handler=cmd_discover)

    run = actions.add_parser("run", help=_("restore, mask, prove and load a masked copy into a target"))
    run.add_argument("database", help=_("configured database name"))
    run.add_argument("--target", required=True, help=_("target name from masking.yaml"))
    run.add_argument("--backup-id", default="latest", help=_("backup to mask (default: latest)"))
    run.add_argument("--triggered-by", default=getpass.getuser(), help=_("who started the run, for the evidence"))
    run.add_argument("--json", action="store_true", help=_("print the evidence body as JSON"))
    _add_masking_config_option(run)
    run.set_defaults(handler=cmd_run)

    suppress = actions.add_parser("suppress", help=_("manage the suppression list (right to deletion)"))
    suppress_actions = suppress.add_subparsers(dest="suppress_command", metavar=_("ACTION"), required=True)
    add = suppress_actions.add_parser("add", help=_("add data subjects by cédula; only their HMAC is stored"))
    add.add_argument("database", help=_("configured database name"))
    add.add_argument("--reference", help=_("case reference of the deletion request (no personal data)"))
    _add_masking_config_option(add)
    add.set_defaults(handler=cmd_suppress_add)

    keygen = actions.add_parser("keygen", help=_("write a new random masking key file (mode 0600)"))
    keygen.add_argument("path", type=Path, help=_("key file to create; an existing file is never overwritten"))
    keygen.set_defaults(handler=cmd_keygen, needs_config=False)


def _masking_config(args: argparse.Namespace):
    from masking.pipeline import load_for

    return load_for(args.config, args.masking_config)


def cmd_discover(args: argparse.Namespace) -> int:
    import psycopg

    from masking.discovery import discover, propose_policy

    if args.dsn:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            findings = discover(conn, sample_rows=args.sample_rows)
    else:
        from restore.logical import restore_logical

        report = restore_logical(args.config, args.database)
        try:
            with psycopg.connect(report.dsn, autocommit=True) as conn:
                findings = discover(conn, sample_rows=args.sample_rows)
        finally:
            if report.scratch is not None:
                report.scratch.destroy()
    sys.stdout.write(propose_policy(findings, args.database))
    flagged = sum(f.flagged for f in findings)
    print(_("{flagged} of {total} columns look like personal data; review every rule before use").format(
        flagged=flagged, total=len(findings)), file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from masking.pipeline import run_masked_refresh

    body = run_masked_refresh(args.config, args.database, args.target, backup_id=args.backup_id,
                              triggered_by=args.triggered_by, masking_config=_masking_config(args))
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False, default=str))
    else:
        print(_("Masked copy of {database} (backup {backup_id}) loaded into {target}; proof passed, evidence {record}").format(
            database=args.database, backup_id=body.get("backup_id"), target=args.target,
            record=body.get("evidence_record_id")))
    return 0


def cmd_suppress_add(args: argparse.Namespace) -> int:
    from masking.errors import PolicyError
    from masking.suppression import SuppressionList

    masking_config = _masking_config(args)
    settings = masking_config.database(args.database)
    if settings.suppression_list is None:
        raise PolicyError(
            _("database {database} has no suppression_list in masking.yaml").format(database=args.database),
            _("set databases.{database}.suppression_list to a file path").format(database=args.database),
        )
    path = masking_config.resolve(settings.suppression_list)
    listing = SuppressionList.load(path, masking_config.load_key())
    if sys.stdin.isatty():
        values = [getpass.getpass(_("Cédula (not shown): "))]
    else:
        values = [line.strip() for line in sys.stdin if line.strip()]
    added = sum(listing.add(value, reference=args.reference) for value in values)
    listing.save(path)
    print(_("{added} subjects added, {skipped} already listed; the list now has {total}").format(
        added=added, skipped=len(values) - added, total=len(listing.subjects)))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from masking.keys import generate_key_file

    key = generate_key_file(args.path)
    print(_("masking key written to {path} (key id {key_id}); keep it on the masking host only").format(
        path=args.path, key_id=key.key_id))
    return 0
