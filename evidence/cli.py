"""The ``resguardo evidence`` commands: verify, list and show evidence records.

Each handler receives the parsed arguments with ``args.config`` (the loaded
configuration), prints in the active language and returns the exit status:
0 when everything verified, :attr:`IntegrityError.exit_status` when the chain
or a record failed verification.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from evidence.record import SIGNATURE_VALID, signature_status
from evidence.render import outcome_label, render_markdown, render_text
from evidence.store import open_store
from resguardo.errors import IntegrityError
from resguardo.i18n import _


def register(subparsers: Any) -> None:
    """Add the ``evidence`` command and its actions to the ``resguardo`` parser."""
    parser = subparsers.add_parser(
        "evidence", help=_("verify, list and show the signed evidence of restore tests and drills")
    )
    actions = parser.add_subparsers(dest="evidence_command", metavar=_("ACTION"), required=True)

    verify = actions.add_parser(
        "verify", help=_("check the whole evidence chain: signatures, links, sequence numbers and head checkpoint")
    )
    verify.add_argument("--json", action="store_true", help=_("print the report as JSON"))
    verify.add_argument("--allow-empty", action="store_true",
                        help=_("accept a chain with no records (a new installation)"))
    verify.set_defaults(handler=cmd_verify)

    listing = actions.add_parser("list", help=_("list evidence records, oldest first"))
    listing.add_argument("--database", help=_("show only records of this database"))
    listing.add_argument("--kind", help=_("show only records of this kind, e.g. restore_test"))
    listing.add_argument("--last", type=int, metavar="N", help=_("show only the newest N records"))
    listing.add_argument("--json", action="store_true", help=_("print the records as JSON"))
    listing.set_defaults(handler=cmd_list)

    show = actions.add_parser("show", help=_("show one evidence record"))
    show.add_argument("reference", metavar="ID", help=_("sequence number or record id"))
    show.add_argument(
        "--format", choices=("text", "markdown", "json"), default="text",
        help=_("output format (default: text)"),
    )
    show.set_defaults(handler=cmd_show)


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify the configured chain and print the report."""
    store = open_store(args.config)
    report = store.verify_chain()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), flush=True)
    else:
        print(report.summary(), flush=True)
    if report.ok and report.records == 0 and not args.allow_empty:
        # An empty chain is what a wiped bucket or a wrong mount looks like too.
        print(IntegrityError(
            _("the evidence chain {where} has no records").format(where=report.where),
            _("check evidence.region and evidence.prefix and that the volume is mounted; "
              "on a new installation pass --allow-empty"),
        ).render(), file=sys.stderr, flush=True)
        return IntegrityError.exit_status
    return 0 if report.ok else IntegrityError.exit_status


def cmd_list(args: argparse.Namespace) -> int:
    """List records with their signature status."""
    store = open_store(args.config)
    records = store.list(database=args.database, kind=args.kind)
    if args.last is not None:
        records = records[-args.last:] if args.last > 0 else []
    statuses = [signature_status(record, store.public_key) for record in records]

    if args.json:
        print(json.dumps(
            [{**record, "signature_status": status} for record, status in zip(records, statuses)],
            indent=2, ensure_ascii=False,
        ), flush=True)
    elif not records:
        print(_("No evidence records in {chain}.").format(chain=store.where), flush=True)
    else:
        headers = [_("SEQ"), _("CREATED (UTC)"), _("KIND"), _("DATABASE"), _("OUTCOME"), _("SIGNATURE"), _("RECORD ID")]
        rows = [
            [
                str(record["sequence"]),
                record["created_at"][:19].replace("T", " "),
                record["kind"],
                record["database"],
                outcome_label(record["outcome"]),
                _("valid") if status == SIGNATURE_VALID else _("NOT VALID"),
                record["record_id"],
            ]
            for record, status in zip(records, statuses)
        ]
        widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers))]
        for row in [headers, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), flush=True)

    return 0 if all(status == SIGNATURE_VALID for status in statuses) else IntegrityError.exit_status


def cmd_show(args: argparse.Namespace) -> int:
    """Print one record, even one whose signature fails; the exit status is 4 in that case."""
    store = open_store(args.config)
    record = store.get(args.reference, verify=False)
    if args.format == "json":
        print(json.dumps(record, indent=2, ensure_ascii=False, sort_keys=True), flush=True)
    elif args.format == "markdown":
        print(render_markdown(record, public_key=store.public_key, timezone=args.config.timezone), end="", flush=True)
    else:
        print(render_text(record, public_key=store.public_key, timezone=args.config.timezone), end="", flush=True)
    valid = signature_status(record, store.public_key) == SIGNATURE_VALID
    return 0 if valid else IntegrityError.exit_status
