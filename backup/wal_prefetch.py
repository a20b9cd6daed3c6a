"""Prefetching WAL segments ahead of ``restore_command`` during recovery.

Terms:

- *prefetch directory*: ``<data directory>/pg_wal/resguardo_prefetch/``.
  PostgreSQL ignores subdirectories of ``pg_wal`` it does not know, and
  ``pg_basebackup`` copies none of them, so prefetched files never end up in
  a base backup. Files appear there only after their SHA-256 matched the
  sidecar, under their final name by rename; temporary files start with ``.``.
- *window*: ``.window`` in that directory, a JSON object naming the last
  segment PostgreSQL asked for, how many segments to fetch after it, and the
  segment size. Every ``wal-fetch`` call moves it forward.
- *prefetcher*: a background process (``python -m backup.wal_prefetch``)
  started by ``wal-fetch`` when no other prefetcher has locked ``.lock``. It fetches the window's
  segments in parallel, follows the window while it moves, deletes segments
  that recovery has passed, and exits when the window stops moving or
  :func:`stop_prefetcher` creates ``.stop``.

A prefetched file is only an optimisation: when it is missing or the
prefetcher failed, ``wal-fetch`` fetches the file itself with the full
retry and exit-status rules.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backup.wal_format import (
    DEFAULT_SEGMENT_SIZE,
    SEGMENT_PATTERN,
    WalFormatError,
    parse_segment_name,
    read_segment_header,
    segment_name,
)

WINDOW_FILE = ".window"
LOCK_FILE = ".lock"
STOP_FILE = ".stop"
LOG_FILE = ".prefetch.log"
MAX_PARALLEL = 4
IDLE_EXIT_SECONDS = 10.0
POLL_SECONDS = 0.2


def take_prefetched(directory: Path, name: str, destination: Path) -> bool:
    """Move the prefetched ``name`` to ``destination``; return False when it was not prefetched."""
    try:
        os.replace(Path(directory) / name, destination)
    except FileNotFoundError:
        return False
    except OSError:
        # Another filesystem or a permission problem: let the normal fetch handle it.
        return False
    return True


def _read_window(directory: Path) -> dict | None:
    try:
        with open(Path(directory) / WINDOW_FILE, encoding="ascii") as handle:
            window = json.load(handle)
    except (OSError, ValueError):
        return None
    return window if isinstance(window, dict) else None


def request_window(directory: Path, name: str, restored: Path, fetch_argv: list[str], *,
                   count: int | None = None) -> None:
    """Ask for the ``count`` segments after ``name`` to be prefetched, starting a prefetcher if none runs.

    ``restored`` is the file just restored for ``name``; its header gives the
    segment size. Only segment names move the window; history files and the
    like are ignored. ``count`` None keeps the previous window's count, and
    ``fetch_argv`` without ``--system-identifier`` keeps the previous options.
    """
    if not SEGMENT_PATTERN.match(name):
        return
    directory = Path(directory)
    previous = _read_window(directory) or {}
    count = previous.get("count", 0) if count is None else count
    if count <= 0:
        return
    segment_size = previous.get("segment_size", DEFAULT_SEGMENT_SIZE)
    destination_header = None
    with contextlib.suppress(OSError, WalFormatError):
        destination_header = read_segment_header(restored)
    if destination_header is not None:
        segment_size = destination_header.segment_size
    if "--system-identifier" not in fetch_argv and previous.get("argv"):
        fetch_argv = previous["argv"]
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        temporary = directory / f"{WINDOW_FILE}.{os.getpid()}"
        temporary.write_text(json.dumps({"after": name, "count": count, "segment_size": segment_size,
                                         "argv": fetch_argv}), encoding="ascii")
        os.replace(temporary, directory / WINDOW_FILE)
    except OSError:
        return
    if _prefetcher_running(directory):
        return
    env = dict(os.environ)
    # The command may have been started with extra site directories (or an
    # editable install's finder); the child gets the same path plus the project root.
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([project_root] + [path for path in sys.path if path])
    interpreter = [sys.executable, "-S"] if sys.flags.no_site else [sys.executable]
    with open(directory / LOG_FILE, "ab") as log_handle:
        subprocess.Popen(
            interpreter + ["-m", "backup.wal_prefetch", "--dir", str(directory)],
            stdin=subprocess.DEVNULL, stdout=log_handle, stderr=log_handle, env=env, start_new_session=True,
        )


def _prefetcher_running(directory: Path) -> bool:
    descriptor = os.open(Path(directory) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def stop_prefetcher(directory: Path, timeout: float = 30.0) -> bool:
    """Ask a running prefetcher to exit and wait for it; return False when it is still running after ``timeout``."""
    directory = Path(directory)
    if not directory.is_dir():
        return True
    (directory / STOP_FILE).touch()
    deadline = time.monotonic() + timeout
    while _prefetcher_running(directory):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def _window_names(window: dict) -> list[str]:
    segment_size = int(window.get("segment_size", DEFAULT_SEGMENT_SIZE))
    timeline, number = parse_segment_name(window["after"], segment_size)
    return [segment_name(timeline, number + offset, segment_size) for offset in range(1, int(window["count"]) + 1)]


def _remove_passed(directory: Path, window: dict) -> None:
    """Delete prefetched segments at or before the window start on its timeline."""
    segment_size = int(window.get("segment_size", DEFAULT_SEGMENT_SIZE))
    timeline, number = parse_segment_name(window["after"], segment_size)
    for entry in os.scandir(directory):
        if not SEGMENT_PATTERN.match(entry.name):
            continue
        other_timeline, other_number = parse_segment_name(entry.name, segment_size)
        if other_timeline == timeline and other_number <= number:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def run_prefetcher(directory: Path) -> int:
    """Fetch the window's segments until the window stops moving; see the module docstring."""
    directory = Path(directory)
    descriptor = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return 0

    from resguardo import log

    log.configure()
    logger = log.get_logger("backup.wal_prefetch")
    window = _read_window(directory)
    if window is None:
        return 0
    options = _options(window.get("argv", []))
    from backup.wal import WalArchive, WalNotFoundError, control_system_identifier, describe_error, resolve_database
    from resguardo.config import load_config

    config = load_config(options.config)
    database = resolve_database(config, options.database)
    archive = WalArchive(config, database, identity_file=options.identity)
    # The prefetcher inherits wal-fetch's working directory, the data directory being restored.
    system_identifier = options.system_identifier or control_system_identifier(Path.cwd())
    missing: set[str] = set()
    failed: set[str] = set()
    logger.info("wal.prefetch.start", extra={"database": database, "after": window["after"]})

    def fetch_one(name: str) -> None:
        try:
            archive.fetch(name, directory / name, system_identifier=system_identifier, check_gap=False)
        except WalNotFoundError:
            missing.add(name)
        except Exception as error:  # noqa: BLE001 - the foreground wal-fetch retries and reports
            failed.add(name)
            logger.warning("wal.prefetch.failed", extra={"wal_file": name, "error": describe_error(error)})

    idle_since = time.monotonic()
    last_after = None
    with ThreadPoolExecutor(max_workers=MAX_PARALLEL) as pool:
        while not (directory / STOP_FILE).exists():
            window = _read_window(directory) or window
            if window["after"] != last_after:
                last_after = window["after"]
                idle_since = time.monotonic()
                _remove_passed(directory, window)
            todo = [name for name in _window_names(window)
                    if name not in missing and name not in failed and not (directory / name).exists()]
            if todo:
                list(pool.map(fetch_one, todo))
                continue
            if time.monotonic() - idle_since > IDLE_EXIT_SECONDS:
                break
            time.sleep(POLL_SECONDS)
    logger.info("wal.prefetch.stop", extra={"database": database, "after": last_after,
                                            "missing": len(missing), "failed": len(failed)})
    return 0


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--db", dest="database")
    parser.add_argument("--system-identifier")
    parser.add_argument("--identity")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backup.wal_prefetch")
    parser.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    return run_prefetcher(Path(args.dir))


if __name__ == "__main__":
    sys.exit(main())
