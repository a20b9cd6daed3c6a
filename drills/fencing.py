"""Fencing: stop the old primary from accepting writes before the standby is promoted.

Two primaries on diverging timelines (*split brain*) lose data that no backup
can merge, so a failover fences the old primary first. Each *fence method*
below is applied when it can be; :class:`FenceReport` records which ones took
effect. What each guarantees:

``read_only`` (the old primary accepts connections)
    ``ALTER SYSTEM SET default_transaction_read_only = on``, a configuration
    reload, then ``pg_terminate_backend`` for every client session. New
    transactions start read-only, also after a restart, because the setting is
    stored in ``postgresql.auto.conf``. It is *not* a security boundary: a
    session may still run ``SET default_transaction_read_only = off`` or
    ``BEGIN READ WRITE``, and a superuser may reset it. It stops applications
    that write through ordinary transactions. Catalog-level alternatives
    (``ALTER DATABASE ... ALLOW_CONNECTIONS false``, ``ALTER ROLE ... NOLOGIN``)
    are not used because they are written to WAL and would replicate to the
    standby that is about to become the primary.

``standby_signal`` (``dr.primary_data_dir`` exists on this host)
    Writes ``standby.signal`` into the data directory, plus the marker file
    ``resguardo.fenced`` with the run id and reason. The running server is not
    affected; when it starts again it starts in standby mode, where no session
    can write whatever it sets. Someone who deletes the file before a restart
    undoes this fence.

``fence_command`` (``dr.fence_command`` is configured)
    Runs the site's own isolation command (firewall rule, power off through
    the hypervisor, revoke the VIP). Resguardo checks only its exit status.
    Environment: ``RESGUARDO_FENCE_DATABASE``, ``RESGUARDO_FENCE_NODE``,
    ``RESGUARDO_FENCE_HOST``, ``RESGUARDO_FENCE_PORT``, ``RESGUARDO_RUN_ID``.

When the old primary is unreachable, has no local data directory and no fence
command is configured, nothing can be applied. The report then lists no
applied method and the failover records a finding, because only the router
switch keeps clients away from the old primary.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from drills.timeline import iso, utc_now
from drills.topology import Node, NodeUnreachable, format_lsn, parse_lsn, wait_for
from resguardo.errors import ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("drills.fencing")

FENCE_MARKER = "resguardo.fenced"
STANDBY_SIGNAL = "standby.signal"
FENCE_COMMAND_TIMEOUT_SECONDS = 120
READ_ONLY_CHECK_TIMEOUT_SECONDS = 10

APPLIED = "applied"
SKIPPED = "skipped"


class FenceError(ResguardoError):
    """A configured fence method failed, so the old primary may still accept writes."""

    exit_status = 10


@dataclass
class FenceAction:
    """One fence method and its result."""

    method: str
    outcome: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FenceReport:
    """The fence methods tried on one node and the node's last WAL position."""

    node: str
    actions: list[FenceAction] = field(default_factory=list)
    reachable: bool = False
    sessions_terminated: int = 0
    # WAL insert position and newest commit after fencing; the standby must
    # replay up to final_lsn to lose no committed transaction.
    final_lsn: int | None = None
    last_commit_at: str | None = None

    @property
    def fenced(self) -> bool:
        return any(action.outcome == APPLIED for action in self.actions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "fenced": self.fenced,
            "reachable": self.reachable,
            "sessions_terminated": self.sessions_terminated,
            "final_lsn": format_lsn(self.final_lsn),
            "last_commit_at": self.last_commit_at,
            "actions": [action.to_dict() for action in self.actions],
        }


def fence_node(node: Node, *, database: str, run_id: str, reason: str,
               fence_command: tuple[str, ...] | None = None, new_primary: str | None = None) -> FenceReport:
    """Apply every fence method that applies to ``node``; raise FenceError when a configured one fails."""
    report = FenceReport(node=node.label)
    log.info("drills.fence.start", extra={"node": node.label, "run_id": run_id})

    _fence_read_only(node, report)
    _fence_standby_signal(node, report, run_id=run_id, reason=reason, new_primary=new_primary)
    if fence_command:
        _run_fence_command(node, report, fence_command, database=database, run_id=run_id)

    log.info(
        "drills.fence.done",
        extra={"node": node.label, "run_id": run_id, "fenced": report.fenced,
               "methods": [a.method for a in report.actions if a.outcome == APPLIED]},
    )
    return report


def _fence_read_only(node: Node, report: FenceReport) -> None:
    try:
        conn = node.connect()
    except NodeUnreachable as error:
        report.actions.append(FenceAction("read_only", SKIPPED, error.message))
        return
    report.reachable = True

    with conn:
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            report.actions.append(FenceAction("read_only", SKIPPED, _("the node is in recovery and accepts no writes")))
            return
        try:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_reload_conf()")
        except psycopg.Error as error:
            log.error("drills.fence.read_only_failed", extra={"node": node.label, "error": str(error)})
            raise FenceError(
                _("could not make node {node} read-only: {error}").format(node=node.label, error=str(error).strip()),
                _("ALTER SYSTEM needs a superuser; connect as one or fence the server by other means "
                  "(stop it, isolate its network) and run the failover again"),
            ) from None

        def reloaded() -> bool:
            with node.connect() as check:
                return check.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"

        try:
            wait_for(reloaded, timeout=READ_ONLY_CHECK_TIMEOUT_SECONDS, what="read-only reload")
        except TimeoutError:
            raise FenceError(
                _("node {node} did not apply default_transaction_read_only within {seconds} s").format(
                    node=node.label, seconds=READ_ONLY_CHECK_TIMEOUT_SECONDS
                ),
                _("check the server log for configuration reload errors"),
            ) from None

        # Sessions that started before the reload keep writing until their
        # next transaction; ending them closes that window at once.
        report.sessions_terminated = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()[0]
        lsn, = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        report.final_lsn = parse_lsn(lsn)
        if conn.execute("SHOW track_commit_timestamp").fetchone()[0] == "on":
            last = conn.execute("SELECT timestamp FROM pg_last_committed_xact()").fetchone()
            report.last_commit_at = iso(last[0]) if last and last[0] else None

    report.actions.append(FenceAction(
        "read_only", APPLIED,
        _("default_transaction_read_only = on stored and reloaded; {count} sessions terminated").format(
            count=report.sessions_terminated
        ),
    ))


def _owner(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid


def _write_owned(path: Path, data: bytes, owner: tuple[int, int]) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    if os.geteuid() == 0:
        os.chown(path, *owner)


def _fence_standby_signal(node: Node, report: FenceReport, *, run_id: str, reason: str,
                          new_primary: str | None) -> None:
    data_dir = node.data_dir
    if data_dir is None:
        report.actions.append(FenceAction("standby_signal", SKIPPED, _("no data directory configured for this node")))
        return
    if not (data_dir / "PG_VERSION").is_file():
        report.actions.append(FenceAction(
            "standby_signal", SKIPPED,
            _("data directory {path} is not present on this host").format(path=data_dir),
        ))
        return

    signal = data_dir / STANDBY_SIGNAL
    created = not signal.exists()
    marker = {
        "run_id": run_id,
        "reason": reason,
        "fenced_at": iso(utc_now()),
        "new_primary": new_primary,
        # Unfencing removes standby.signal only when this fence created it.
        "created_standby_signal": created,
    }
    try:
        owner = _owner(data_dir)
        if created:
            _write_owned(signal, b"", owner)
        _write_owned(data_dir / FENCE_MARKER, json.dumps(marker, indent=2).encode("utf-8"), owner)
    except OSError as error:
        log.error("drills.fence.signal_failed", extra={"node": node.label, "path": str(data_dir), "error": str(error)})
        raise FenceError(
            _("could not write {file} into {path}: {error}").format(
                file=STANDBY_SIGNAL, path=data_dir, error=error.strerror),
            _("run Resguardo as root or as the server's OS user on the old primary's host"),
        ) from None
    report.actions.append(FenceAction(
        "standby_signal", APPLIED,
        _("{file} written to {path}: the server starts as a standby if it starts again").format(
            file=STANDBY_SIGNAL, path=data_dir
        ),
    ))


def _run_fence_command(node: Node, report: FenceReport, command: tuple[str, ...], *, database: str,
                       run_id: str) -> None:
    endpoint = node.endpoint
    env = dict(os.environ)
    env.update({
        "RESGUARDO_FENCE_DATABASE": database,
        "RESGUARDO_FENCE_NODE": node.label,
        "RESGUARDO_FENCE_HOST": endpoint.host,
        "RESGUARDO_FENCE_PORT": str(endpoint.port),
        "RESGUARDO_RUN_ID": run_id,
    })
    env.pop("PGPASSWORD", None)
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, env=env,
                                timeout=FENCE_COMMAND_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.error("drills.fence.command_failed", extra={"node": node.label, "command": command[0], "error": str(error)})
        raise FenceError(
            _("the fence command {command} could not run: {error}").format(command=command[0], error=error),
            _("check dr.fence_command; it must finish within {seconds} s").format(
                seconds=FENCE_COMMAND_TIMEOUT_SECONDS),
        ) from None
    if result.returncode != 0:
        log.error("drills.fence.command_failed",
                  extra={"node": node.label, "command": command[0], "status": result.returncode})
        raise FenceError(
            _("the fence command {command} failed with exit status {status}: {stderr}").format(
                command=command[0], status=result.returncode, stderr=result.stderr.strip()[-500:]
            ),
            _("isolate the old primary by hand, then run the failover again"),
        )
    report.actions.append(FenceAction(
        "fence_command", APPLIED, _("{command} exited with status 0").format(command=" ".join(command))
    ))


def read_fence_marker(data_dir: Path | None) -> dict[str, Any] | None:
    """Return the fence marker of a data directory, or None when it has none."""
    if data_dir is None:
        return None
    try:
        return json.loads((data_dir / FENCE_MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("drills.fence.marker_unreadable", extra={"path": str(data_dir), "error": str(error)})
        return {"unreadable": str(error)}


def unfence_node(node: Node) -> list[str]:
    """Undo this module's fences on ``node``; return what was undone.

    Used when a planned switchover stops before promotion, so the node that is
    still the primary accepts writes again. ``standby.signal`` is removed only
    when the fence marker records that the fence created it.
    """
    undone: list[str] = []
    try:
        with node.connect() as conn:
            if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
                conn.execute("SELECT pg_reload_conf()")
                undone.append("read_only")
    except NodeUnreachable as error:
        log.warning("drills.unfence.unreachable", extra={"node": node.label, "error": error.message})

    marker = read_fence_marker(node.data_dir)
    if marker is not None and node.data_dir is not None:
        if marker.get("created_standby_signal"):
            (node.data_dir / STANDBY_SIGNAL).unlink(missing_ok=True)
            undone.append("standby_signal")
        (node.data_dir / FENCE_MARKER).unlink(missing_ok=True)
    log.info("drills.unfence.done", extra={"node": node.label, "undone": undone})
    return undone

