"""Running a server through archive recovery and following its progress in the server log.

The server is started directly (``postgres -D ... -c name=value``) as the
server's OS user with its log written to a file. Progress is read from that
log rather than through a connection, because a restored production data
directory keeps its own ``pg_hba.conf``, which may not let this process in.
``lc_messages = 'C'`` is forced so the lines matched here are English.

Log lines matched (PostgreSQL 12 to 17, ``src/backend/access/transam/xlogrecovery.c``):

- ``restored log file "..." from archive``: one WAL file replayed from the archive.
- ``consistent recovery state reached``: the backup is consistent.
- ``recovery stopping ...``: the target was reached; the line names the stop point.
- ``pausing at the end of recovery``: ``recovery_target_action = pause`` took effect.
- ``selected new timeline ID: N`` and ``archive recovery complete``: promotion.
- ``database system is ready to accept connections``: the promoted server is open.
- ``shutdown at recovery target``: ``recovery_target_action = shutdown`` took effect.
- ``FATAL``/``PANIC`` lines: why the startup process stopped.
- Lines starting with ``ERROR:`` (no prefix): an error that ``wal-fetch``
  itself printed, such as a gap in the archive. Its "file not in the
  archive" lines are left out, because PostgreSQL probes for files that
  do not exist on every restore.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from resguardo.errors import ExternalToolError
from resguardo.i18n import _
from resguardo.log import get_logger
from resguardo.pgtools import demote, find_program, run_checked

log = get_logger("restore.pitr_server")

_RESTORED = re.compile(r'restored log file "([0-9A-F]{24}|[0-9A-F]{8}\.history)" from archive')
_NEW_TIMELINE = re.compile(r"selected new timeline ID: (\d+)")
_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_LAST_TRANSACTION = re.compile(r"last completed transaction was at log time (.+)$")
_CONSISTENT = re.compile(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)")


@dataclass
class RecoveryProgress:
    """Recovery progress as read from the server log so far."""

    restored_files: list[str] = field(default_factory=list)
    consistent_at: str | None = None
    stop_line: str | None = None
    redo_done_at: str | None = None
    last_transaction_time: str | None = None
    paused: bool = False
    new_timeline: int | None = None
    promoted: bool = False
    ready: bool = False
    shut_down_at_target: bool = False
    fatal_lines: list[str] = field(default_factory=list)
    command_errors: list[str] = field(default_factory=list)

    def feed(self, line: str) -> None:
        """Update the progress from one log line."""
        match = _RESTORED.search(line)
        if match:
            self.restored_files.append(match.group(1))
            return
        if "FATAL:" in line or "PANIC:" in line:
            self.fatal_lines.append(line.strip())
        # wal-fetch writes its own errors to the server log without PostgreSQL's line prefix.
        not_found = "is not in the archive" in line or "no está en el archivo" in line
        if line.startswith("ERROR: ") and not not_found:
            self.command_errors.append(line.strip())
        for pattern, attribute in ((_CONSISTENT, "consistent_at"), (_REDO_DONE, "redo_done_at"),
                                   (_LAST_TRANSACTION, "last_transaction_time")):
            match = pattern.search(line)
            if match:
                setattr(self, attribute, match.group(1).strip())
        match = _NEW_TIMELINE.search(line)
        if match:
            self.new_timeline = int(match.group(1))
        if "recovery stopping" in line:
            self.stop_line = line.split("recovery stopping", 1)[1].strip()
        if "pausing at the end of recovery" in line:
            self.paused = True
        if "archive recovery complete" in line:
            self.promoted = True
        if "database system is ready to accept connections" in line:
            self.ready = True
        if "shutdown at recovery target" in line:
            self.shut_down_at_target = True


_STOP_FORMS = (
    (re.compile(r"^(before|after) commit of transaction (\d+), time (.+)$"), "commit"),
    (re.compile(r"^(before|after) abort of transaction (\d+), time (.+)$"), "abort"),
    (re.compile(r'^at restore point "(.*)", time (.+)$'), "restore_point"),
    (re.compile(r'^(before|after) WAL location \(LSN\) "([0-9A-F]+/[0-9A-F]+)"$'), "lsn"),
    (re.compile(r"^after reaching consistency$"), "consistency"),
)


def describe_stop_point(text: str) -> str:
    """Translate the rest of PostgreSQL's ``recovery stopping ...`` log line (lc_messages C) for people.

    Forms from ``recoveryStopsBefore``/``recoveryStopsAfter`` in PostgreSQL 15's
    ``xlogrecovery.c``; any other text is returned unchanged.

    >>> describe_stop_point("after reaching consistency") == _("after reaching consistency")
    True
    >>> describe_stop_point("something new")
    'something new'
    """
    for pattern, form in _STOP_FORMS:
        match = pattern.match(text.strip())
        if not match:
            continue
        if form == "consistency":
            return _("after reaching consistency")
        if form == "restore_point":
            return _("at restore point {name} (time {time})").format(name=match.group(1), time=match.group(2))
        before = match.group(1) == "before"
        if form == "lsn":
            return (_("before WAL position {lsn}") if before else _("after WAL position {lsn}")).format(
                lsn=match.group(2))
        if form == "commit":
            text_ = _("before the commit of transaction {xid} (time {time})") if before else \
                _("after the commit of transaction {xid} (time {time})")
        else:
            text_ = _("before the abort of transaction {xid} (time {time})") if before else \
                _("after the abort of transaction {xid} (time {time})")
        return text_.format(xid=match.group(2), time=match.group(3))
    return text


class LogFollower:
    """Reads lines appended to a log file since the last call."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._partial = ""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "r", encoding="utf-8", errors="replace") as handle:
                handle.seek(self.offset)
                text = handle.read()
                self.offset = handle.tell()
        except FileNotFoundError:
            return []
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()
        return lines


def controldata(bindir: Path, data_dir: Path) -> dict[str, str]:
    """Return ``pg_controldata``'s fields as a dict (English labels)."""
    env = dict(os.environ, LC_ALL="C", LANG="C")
    result = run_checked([str(find_program("pg_controldata", bindir)), "-D", str(data_dir)],
                         what="pg_controldata", env=env, timeout=60)
    fields = {}
    for line in result.stdout.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields[key.strip()] = value.strip()
    return fields


def hot_standby_minimums(fields: dict[str, str]) -> dict[str, int]:
    """Return the settings a hot standby must have at least, from the backup's pg_control.

    PostgreSQL refuses to replay as a hot standby with a lower
    ``max_connections`` (and the others) than the primary had.
    """
    names = {
        "max_connections setting": "max_connections",
        "max_worker_processes setting": "max_worker_processes",
        "max_wal_senders setting": "max_wal_senders",
        "max_prepared_xacts setting": "max_prepared_transactions",
        "max_locks_per_xact setting": "max_locks_per_transaction",
    }
    minimums = {}
    for label, setting in names.items():
        value = fields.get(label, "")
        if value.isdigit():
            minimums[setting] = int(value)
    return minimums


class RecoveryServer:
    """A postmaster started on a restored data directory, with its log followed."""

    def __init__(self, bindir: Path, data_dir: Path, log_file: Path, os_user: tuple[int, int] | None):
        self.bindir = Path(bindir)
        self.data_dir = Path(data_dir)
        self.log_file = Path(log_file)
        self.os_user = os_user
        self.process: subprocess.Popen | None = None
        self.progress = RecoveryProgress()
        self.follower = LogFollower(self.log_file)

    def start(self, options: dict[str, str | int]) -> None:
        """Start ``postgres`` with ``-c`` options; it runs in the background."""
        args = [str(find_program("postgres", self.bindir)), "-D", str(self.data_dir)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log_handle:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log_handle, stderr=subprocess.STDOUT,
                preexec_fn=demote(self.os_user), cwd=str(self.data_dir), start_new_session=True,
            )
        log.info("pitr.server.start", extra={"data_dir": str(self.data_dir), "pid": self.process.pid,
                                             "log_file": str(self.log_file)})

    def poll(self) -> bool:
        """Read new log lines; return whether the postmaster is still running."""
        for line in self.follower.new_lines():
            self.progress.feed(line)
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, mode: str = "fast", timeout: float = 120) -> None:
        """Stop the postmaster with ``pg_ctl stop``; no-op when it is not running."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            run_checked([str(find_program("pg_ctl", self.bindir)), "-D", str(self.data_dir), "-m", mode, "-w",
                         "-t", str(int(timeout)), "stop"], what="pg_ctl stop", as_server_user=True,
                        timeout=timeout + 30)
        except ExternalToolError:
            log.warning("pitr.server.stop_failed", extra={"data_dir": str(self.data_dir)}, exc_info=True)
            self.process.kill()
        self.process.wait(timeout=30)
        log.info("pitr.server.stop", extra={"data_dir": str(self.data_dir), "mode": mode})

    def wait_for(self, done, *, timeout: float, poll_seconds: float = 0.3) -> bool:
        """Poll until ``done(progress)`` is true (True) or the postmaster exits (False); raise on timeout."""
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        while True:
            running = self.poll()
            if done(self.progress):
                return True
            if not running:
                # Read what the postmaster wrote while it shut down.
                self.poll()
                return done(self.progress)
            if time.monotonic() >= deadline:
                raise ExternalToolError(
                    _("recovery did not reach its target within {seconds} s ({count} WAL files restored)").format(
                        seconds=int(timeout), count=len(self.progress.restored_files)),
                    _("raise the timeout for large archives, or read the server log {log}").format(log=self.log_file),
                )
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                log.info("pitr.server.progress", extra={"restored_files": len(self.progress.restored_files),
                                                        "consistent_at": self.progress.consistent_at})
            time.sleep(poll_seconds)
