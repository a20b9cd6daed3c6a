"""Entry point of ``wal-push`` and ``wal-fetch``, the commands PostgreSQL runs per WAL file.

``archive_command`` and ``restore_command`` start one process per WAL file,
so start-up time bounds how many files per second a server can archive or
replay. This module therefore imports only the standard library and
:mod:`backup.wal_format`/:mod:`backup.wal_spool` until real work is
needed. Only then are the configuration, keys and storage drivers loaded. Two fast paths need no configuration at all:

- ``wal-push --spool DIR``: a file that ``wal-ship`` already stored in every
  region is acknowledged from its shipped marker.
- ``wal-fetch``: a file that an earlier call prefetched into
  ``pg_wal/resguardo_prefetch/`` is moved into place.

Exit statuses of ``wal-fetch`` follow what PostgreSQL does with them
(``RestoreArchivedFile`` in ``src/backend/access/transam/xlogarchive.c``):

- 0: the file was restored.
- 1: every WAL region responded that it does not have the file and, for a
  segment, no region contains a later segment of its timeline. PostgreSQL
  takes this as the end of the archive (or tries streaming replication).
  A missing segment with later ones archived is a gap and exits 200.
- 200 (:data:`FATAL_EXIT_STATUS`): anything else, after retries: a region
  failed, a copy was damaged, a key or the configuration could not be read.
  PostgreSQL treats an exit status above 125 as fatal, so the startup process
  stops and recovery does *not* end early at the last file it could read.
  Starting the server again after the cause is fixed resumes recovery.

``wal-push`` returns 0 once the file is in every WAL region and a
:class:`ResguardoError`'s exit status (1 to 8) otherwise; PostgreSQL keeps
the file and retries. It never returns more than 125, which would make the
archiver process exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

FATAL_EXIT_STATUS = 200
NOT_FOUND_EXIT_STATUS = 1
PREFETCH_DIR_NAME = "resguardo_prefetch"
FETCH_ATTEMPTS = 4
# How long wal-push waits for a running shipper to finish a file before pushing it itself.
ASYNC_WAIT_SECONDS = 30.0
FETCH_FIRST_DELAY_SECONDS = 1.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resguardo", add_help=True)
    parser.add_argument("--config", help="path of resguardo.yaml")
    parser.add_argument("--lang", choices=("es", "en"))
    sub = parser.add_subparsers(dest="command", required=True)

    push = sub.add_parser("wal-push")
    push.add_argument("path")
    push.add_argument("--db", dest="database")
    push.add_argument("--config", dest="sub_config")
    push.add_argument("--spool")

    fetch = sub.add_parser("wal-fetch")
    fetch.add_argument("name")
    fetch.add_argument("destination")
    fetch.add_argument("--db", dest="database")
    fetch.add_argument("--config", dest="sub_config")
    fetch.add_argument("--system-identifier")
    fetch.add_argument("--identity")
    fetch.add_argument("--attempts", type=int, default=FETCH_ATTEMPTS)
    fetch.add_argument("--no-prefetch", action="store_true")
    return parser


def _load(args: argparse.Namespace):
    from resguardo.config import load_config
    from resguardo.i18n import set_language

    config = load_config(getattr(args, "sub_config", None) or args.config)
    if args.lang:
        set_language(args.lang)
    return config


def _error(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- wal-push -------------------------------------------------------------------------


def run_push(args: argparse.Namespace) -> int:
    """Archive one WAL file; see the module docstring for exit statuses."""
    path = Path(args.path)

    # Fast path: the shipper stored, or is storing, this exact content.
    if args.spool:
        from backup.wal_spool import wait_for_shipper

        if wait_for_shipper(Path(args.spool), path, ASYNC_WAIT_SECONDS):
            return 0

    from resguardo import log
    from resguardo.errors import ResguardoError

    log.configure()
    logger = log.get_logger("backup.wal_main")
    try:
        config = _load(args)
        from backup.wal import WalArchive, control_system_identifier, resolve_database

        database = resolve_database(config, args.database)
        db = config.database(database)
        pgdata = Path.cwd() if (Path.cwd() / "global" / "pg_control").exists() else config.resolve(db.pitr.pgdata)
        archive = WalArchive(config, database)
        control_id = control_system_identifier(pgdata)

        if db.pitr.async_push:
            from backup.wal_ship import spool_directory
            from backup.wal_spool import acknowledge_from_marker, ensure_spool, file_lock, wait_for_shipper

            spool = spool_directory(config, database)
            ensure_spool(spool)
            if not args.spool and wait_for_shipper(spool, path, ASYNC_WAIT_SECONDS):
                return 0
            with file_lock(spool, path.name):
                if acknowledge_from_marker(spool, path):
                    return 0
                archive.push(path, control_system_identifier=control_id)
            logger.info("wal.push.sync_fallback", extra={"database": database, "wal_file": path.name})
            return 0

        archive.push(path, control_system_identifier=control_id)
        return 0
    except ResguardoError as error:
        logger.error("wal.push.failed", extra={"wal_file": path.name, "error": error.message})
        _error(error.render())
        return min(error.exit_status, 125)
    except OSError as error:
        from resguardo.i18n import _

        logger.error("wal.push.failed", extra={"wal_file": path.name, "error": str(error)})
        _error(_("ERROR: {message}").format(message=error))
        return 1


# -- wal-fetch ------------------------------------------------------------------------


def prefetch_directory() -> Path | None:
    """Return the prefetch directory under the data directory (the current directory), if there is one."""
    wal_dir = Path.cwd() / "pg_wal"
    return wal_dir / PREFETCH_DIR_NAME if wal_dir.is_dir() else None


def run_fetch(args: argparse.Namespace) -> int:
    """Restore one WAL file; see the module docstring for exit statuses."""
    destination = Path(args.destination)
    prefetch_dir = None if args.no_prefetch else prefetch_directory()

    # Fast path: an earlier call's prefetcher already fetched and verified it.
    if prefetch_dir is not None:
        from backup.wal_prefetch import take_prefetched

        if take_prefetched(prefetch_dir, args.name, destination):
            from backup.wal_prefetch import request_window

            request_window(prefetch_dir, args.name, destination, _prefetch_argv(args))
            return 0

    from resguardo import log
    from resguardo.errors import ResguardoError

    log.configure()
    logger = log.get_logger("backup.wal_main")
    attempts = max(1, args.attempts)
    delay = FETCH_FIRST_DELAY_SECONDS
    last_error = ""
    for attempt in range(1, attempts + 1):
        try:
            config = _load(args)
            from backup.wal import WalArchive, WalGapError, WalNotFoundError, control_system_identifier, resolve_database

            database = resolve_database(config, args.database)
            db = config.database(database)
            system_identifier = args.system_identifier or control_system_identifier(Path.cwd()) \
                or control_system_identifier(config.resolve(db.pitr.pgdata))
            if system_identifier is None:
                from resguardo.errors import ConfigError
                from resguardo.i18n import _

                raise ConfigError(
                    _("the system identifier of the cluster being restored is unknown"),
                    _("run wal-fetch from the restored data directory (restore_command does) or pass --system-identifier"),
                )
            archive = WalArchive(config, database, identity_file=args.identity)
            try:
                archive.fetch(args.name, destination, system_identifier=system_identifier)
            except WalNotFoundError as error:
                logger.info("wal.fetch.not_found", extra={"database": database, "wal_file": args.name})
                _error(error.render())
                return NOT_FOUND_EXIT_STATUS
            except WalGapError as error:
                # A gap does not heal by waiting, so it is not retried.
                logger.error("wal.fetch.failed", extra={"wal_file": args.name, "attempts": attempt,
                                                         "exit_status": FATAL_EXIT_STATUS, "error": error.message})
                _error(error.render())
                return FATAL_EXIT_STATUS
            if prefetch_dir is not None and db.pitr.fetch_prefetch > 0:
                from backup.wal_prefetch import request_window

                request_window(prefetch_dir, args.name, destination, _prefetch_argv(args, system_identifier),
                               count=db.pitr.fetch_prefetch)
            return 0
        except ResguardoError as error:
            last_error = error.render()
        except Exception as error:  # noqa: BLE001 - any failure must stop recovery, never look like "not found"
            last_error = f"ERROR: {type(error).__name__}: {error}"
        logger.warning("wal.fetch.retry", extra={"wal_file": args.name, "attempt": attempt, "attempts": attempts,
                                                 "error": last_error})
        if attempt < attempts:
            time.sleep(delay)
            delay *= 2
    logger.error("wal.fetch.failed", extra={"wal_file": args.name, "attempts": attempts,
                                             "exit_status": FATAL_EXIT_STATUS})
    _error(last_error)
    return FATAL_EXIT_STATUS


def _prefetch_argv(args: argparse.Namespace, system_identifier: int | str | None = None) -> list[str]:
    """Return the options a background prefetcher needs to fetch with the same settings."""
    argv = []
    config = getattr(args, "sub_config", None) or args.config
    if config:
        argv += ["--config", str(Path(config).resolve())]
    if args.database:
        argv += ["--db", args.database]
    if system_identifier is not None:
        argv += ["--system-identifier", str(system_identifier)]
    if args.identity:
        argv += ["--identity", args.identity]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Run ``wal-push`` or ``wal-fetch`` with ``argv`` (default: ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        # A usage error in restore_command must not read as "file not found".
        if "wal-fetch" in argv and exit_.code not in (0, None):
            return FATAL_EXIT_STATUS
        raise
    if args.command == "wal-push":
        return run_push(args)
    try:
        return run_fetch(args)
    except BaseException as error:  # noqa: BLE001 - see module docstring: never exit 1 by accident
        _error(f"ERROR: {type(error).__name__}: {error}")
        return FATAL_EXIT_STATUS


if __name__ == "__main__":
    sys.exit(main())
