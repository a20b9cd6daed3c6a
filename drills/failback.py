"""Failback: rebuild the old primary as a standby of the new one, then optionally switch back.

After a failover the old primary's data directory has diverged: it may hold
WAL that the new primary never received, on the old timeline. *Rebuilding*
makes it an exact streaming standby of the new primary again:

- ``rewind``: ``pg_rewind`` copies only the blocks changed since the timelines
  diverged. It needs ``wal_log_hints = on`` or data checksums on the old
  primary, and the old primary's WAL back to the divergence point. When
  point-in-time recovery is enabled, ``--restore-target-wal`` lets it fetch
  WAL that the old primary already recycled from the archive, through a
  temporary ``restore_command`` that runs ``resguardo wal-fetch``.
- ``clone``: a fresh ``pg_basebackup`` of the new primary. The old data
  directory is renamed to ``<dir>.pre-rebuild-<UTC time>`` and kept, because
  it may contain the only copy of transactions lost in the failover. Delete
  it once those transactions are recovered or declared lost.
- ``auto``: ``rewind``, and ``clone`` when the rewind fails.

Both copy the source's configuration files, so the node's own
``postgresql.conf``, ``postgresql.auto.conf``, ``pg_hba.conf`` and
``pg_ident.conf`` are saved first and written back. Then
``default_transaction_read_only`` (a fence) and any old ``primary_conninfo``
are removed from ``postgresql.auto.conf``, the new primary's DSN is set as
``primary_conninfo``, ``standby.signal`` is written and the server is started
with ``pg_ctl`` as the server's OS user. The rebuild ends when the node
streams from the new primary on the new primary's timeline.

A planned *switchover* back (:mod:`drills.failover`, kind ``switchover``)
then moves the primary role back without losing data, and the DR standby is
rebuilt in turn as a standby of the configured primary.

``primary_conninfo`` carries no password: the server's OS user needs a
``~/.pgpass`` entry for the new primary when it uses password authentication.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drills import records
from drills.fencing import FENCE_MARKER, STANDBY_SIGNAL, read_fence_marker
from drills.timeline import Timeline, iso, utc_now
from drills.topology import Node, Topology, probe, wait_for
from resguardo.config import ResguardoConfig
from resguardo.errors import ConfigError, ExternalToolError, ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger
from resguardo.pgtools import demote, find_program, run_checked

log = get_logger("drills.failback")

FAILBACK_WORD = "FAILBACK"
METHODS = ("auto", "rewind", "clone")
NODE_LOCAL_FILES = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")
# Settings that belong to the node's old role and must not survive a rebuild.
ROLE_SETTINGS = ("primary_conninfo", "primary_slot_name", "default_transaction_read_only")
STREAMING_TIMEOUT_SECONDS = 120
TOOL_TIMEOUT_SECONDS = 6 * 3600


class FailbackError(ResguardoError):
    """A rebuild or failback step failed."""

    exit_status = 14


@dataclass
class RebuildReport:
    """The method, steps and outcome of rebuilding one node as a standby."""

    node: str
    source: str
    method: str
    timeline: int | None = None
    moved_aside: str | None = None
    rewind_error: str | None = None
    fence_marker: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def strip_settings(text: str, names: tuple[str, ...] = ROLE_SETTINGS) -> str:
    """Return ``postgresql.auto.conf`` text without the lines that set ``names``.

    >>> strip_settings("port = 5433\\nprimary_conninfo = 'host=a'\\ndefault_transaction_read_only = 'on'\\n")
    'port = 5433\\n'
    """
    pattern = re.compile(r"^\s*(" + "|".join(re.escape(n) for n in names) + r")\s*=", re.IGNORECASE)
    return "".join(line for line in text.splitlines(keepends=True) if not pattern.match(line))


def quote_setting(value: str) -> str:
    """Quote a string for a PostgreSQL configuration file.

    >>> quote_setting("host=a application_name='x'")
    "'host=a application_name=''x'''"
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _owner(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid


def _write_owned(path: Path, data: bytes, owner: tuple[int, int]) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    if os.geteuid() == 0:
        os.chown(path, *owner)


def server_running(data_dir: Path, bindir: Path | None = None) -> bool:
    """Return True when ``pg_ctl status`` finds a server running on ``data_dir``."""
    result = subprocess.run(
        [str(find_program("pg_ctl", bindir)), "-D", str(data_dir), "status"],
        capture_output=True, text=True, timeout=30, preexec_fn=demote(_owner(data_dir) if os.geteuid() == 0 else None),
    )
    return result.returncode == 0


def controldata_state(data_dir: Path, bindir: Path | None = None) -> str:
    """Return the ``Database cluster state`` line of pg_controldata, e.g. ``shut down``."""
    from restore.pitr_server import controldata

    return controldata(find_program("pg_controldata", bindir).parent, data_dir).get("Database cluster state", "unknown")


def _single_user_recovery(data_dir: Path, bindir: Path | None) -> None:
    args = [str(find_program("postgres", bindir)), "--single", "-F", "-D", str(data_dir), "template1"]
    result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=TOOL_TIMEOUT_SECONDS,
                            preexec_fn=demote(_owner(data_dir) if os.geteuid() == 0 else None))
    if result.returncode != 0:
        raise ExternalToolError(
            _("postgres --single failed with exit status {status}: {stderr}").format(
                status=result.returncode, stderr=result.stderr.strip()[-2000:]),
            _("the node's WAL may be damaged; rebuild it with --method clone"),
        )


def rewind_restore_command(config: ResguardoConfig, database: str) -> str | None:
    """Return the ``restore_command`` that lets pg_rewind fetch archived WAL, or None without an archive.

    None when point-in-time recovery is disabled, the configuration was not
    loaded from a file (``wal-fetch`` needs its path) or the ``resguardo``
    executable is not found.
    """
    if not config.database(database).pitr.enabled or config.config_file is None:
        return None
    from restore.pitr import resguardo_command, restore_command_for

    try:
        command = resguardo_command()
    except ConfigError as error:
        log.warning("drills.rebuild.no_wal_fetch", extra={"database": database, "error": error.message})
        return None
    return restore_command_for(command, database, Path(config.config_file).resolve())


def _append_auto_conf(data_dir: Path, settings: dict[str, str], owner: tuple[int, int]) -> None:
    auto_conf = data_dir / "postgresql.auto.conf"
    text = auto_conf.read_text(encoding="utf-8") if auto_conf.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    text += "".join(f"{key} = {quote_setting(value)}\n" for key, value in settings.items())
    _write_owned(auto_conf, text.encode("utf-8"), owner)


def _require_local_data_dir(node: Node) -> Path:
    if node.data_dir is None or not (node.data_dir / "PG_VERSION").is_file():
        key = "dr.primary_data_dir" if node.label == "primary" else "dr.standby.data_dir"
        raise ConfigError(
            _("the data directory of node {node} is not available on this host: {path}").format(
                node=node.label, path=node.data_dir or "-"),
            _("run the rebuild on the node's host and set {key}").format(key=key),
        )
    return node.data_dir


def rebuild_standby(config: ResguardoConfig, topology: Topology, node_label: str, *, method: str = "auto",
                    run_id: str | None = None, log_file: Path | None = None,
                    streaming_timeout: float = STREAMING_TIMEOUT_SECONDS) -> RebuildReport:
    """Rebuild node ``node_label`` as a streaming standby of the other node, which must be the primary.

    ``log_file`` receives the server's output when ``pg_ctl`` starts it
    (default: ``<data dir>.log`` next to the data directory).
    """
    if method not in METHODS:
        raise ConfigError(_("unknown rebuild method {method!r}").format(method=method),
                          _("use one of: {choices}").format(choices=", ".join(METHODS)))
    run_id = run_id or str(uuid.uuid4())
    node = topology.node(node_label)
    source = topology.other(node)
    bindir = config.resolve(config.postgres_bindir)
    timeline = Timeline()
    report = RebuildReport(node=node.label, source=source.label, method=method)
    context = {"run_id": run_id, "node": node.label, "source": source.label}

    try:
        with timeline.step("check", **context) as detail:
            data_dir = _require_local_data_dir(node)
            source_state = probe(source)
            detail["source"] = source_state.to_dict()
            if source_state.role != "primary":
                raise FailbackError(
                    _("node {source} is not a primary ({role}), so {node} cannot follow it").format(
                        source=source.label, role=source_state.role, node=node.label),
                    _("run the failover first, or rebuild the other node"),
                )
            node_state = probe(node)
            detail["node"] = node_state.to_dict()
            if node_state.role == "primary" and not node_state.read_only_default:
                raise FailbackError(
                    _("node {node} is an unfenced primary; rebuilding it would discard its writes").format(
                        node=node.label),
                    _("fence or stop it first (a failover fences the old primary)"),
                )
            report.fence_marker = read_fence_marker(data_dir)

        with timeline.step("stop", **context) as detail:
            detail["was_running"] = server_running(data_dir, bindir)
            if detail["was_running"]:
                run_checked([str(find_program("pg_ctl", bindir)), "-D", str(data_dir), "-m", "fast", "-w",
                             "-t", "120", "stop"], what="pg_ctl stop", as_server_user=True, timeout=180)

        owner = _owner(data_dir)
        state = controldata_state(data_dir, bindir)
        if state == "shut down in recovery":
            with timeline.step("end_recovery", **context) as detail:
                # pg_rewind (PostgreSQL 15) takes a stopped standby's end of
                # WAL from minRecoveryPoint, which can lag the WAL in pg_wal.
                # It then reports "no rewind required" for a node that cannot
                # follow the new timeline. Replaying to the end in single-user
                # mode leaves a shutdown checkpoint at the true end of its WAL.
                for signal in (STANDBY_SIGNAL, "recovery.signal"):
                    (data_dir / signal).unlink(missing_ok=True)
                _single_user_recovery(data_dir, bindir)
                detail["state_before"] = state
                detail["state_after"] = controldata_state(data_dir, bindir)
        saved = {name: (data_dir / name).read_bytes() for name in NODE_LOCAL_FILES if (data_dir / name).is_file()}
        # pg_rewind finishes an unclean shutdown in single-user mode, which
        # refuses to start with a signal file present.
        for signal in (STANDBY_SIGNAL, "recovery.signal"):
            (data_dir / signal).unlink(missing_ok=True)

        used = None
        if method in ("auto", "rewind"):
            try:
                with timeline.step("rewind", **context) as detail:
                    # pg_rewind reads the source's timeline from its control
                    # file, which a fresh promotion updates only at the next
                    # checkpoint. Without one it compares the old timeline and
                    # reports "no rewind required".
                    with source.connect(timeout=10) as conn:
                        conn.execute("CHECKPOINT")
                    arguments = [str(find_program("pg_rewind", bindir)), f"--target-pgdata={data_dir}",
                                 f"--source-server={source.conninfo()}"]
                    restore_command = rewind_restore_command(config, topology.database)
                    if restore_command is not None:
                        # The saved postgresql.auto.conf is written back in the
                        # configure step, which removes this temporary line.
                        _append_auto_conf(data_dir, {"restore_command": restore_command}, owner)
                        arguments.append("--restore-target-wal")
                    detail["restore_target_wal"] = restore_command is not None
                    result = run_checked(
                        arguments,
                        what="pg_rewind", as_server_user=True, timeout=TOOL_TIMEOUT_SECONDS,
                        env=source.subprocess_env(),
                    )
                    detail["output"] = (result.stdout + result.stderr).strip()[-1000:]
                    used = "rewind"
            except ExternalToolError as error:
                report.rewind_error = error.message
                if method == "rewind":
                    raise
                log.warning("drills.rebuild.rewind_failed", extra={**context, "error": error.message})

        if used is None:
            with timeline.step("clone", **context) as detail:
                report.moved_aside = str(_clone(source, data_dir, owner, bindir))
                detail["moved_aside"] = report.moved_aside
                used = "clone"
        report.method = used

        with timeline.step("configure", **context) as detail:
            for name, data in saved.items():
                if name == "postgresql.auto.conf":
                    data = strip_settings(data.decode("utf-8")).encode("utf-8")
                _write_owned(data_dir / name, data, owner)
            conninfo = source.conninfo(application_name=f"resguardo_{node.label}")
            auto_conf = data_dir / "postgresql.auto.conf"
            text = auto_conf.read_text(encoding="utf-8") if auto_conf.exists() else ""
            if text and not text.endswith("\n"):
                text += "\n"
            text += f"primary_conninfo = {quote_setting(conninfo)}\n"
            _write_owned(auto_conf, text.encode("utf-8"), owner)
            _write_owned(data_dir / STANDBY_SIGNAL, b"", owner)
            (data_dir / FENCE_MARKER).unlink(missing_ok=True)
            detail["primary_conninfo"] = conninfo

        with timeline.step("start", **context) as detail:
            target_log = log_file or data_dir.with_name(data_dir.name + ".log")
            if not target_log.exists():
                target_log.touch()
                if os.geteuid() == 0:
                    os.chown(target_log, *owner)
            run_checked([str(find_program("pg_ctl", bindir)), "-D", str(data_dir), "-l", str(target_log), "-w",
                         "-t", "300", "start"], what="pg_ctl start", as_server_user=True, timeout=360)
            detail["log_file"] = str(target_log)

        with timeline.step("wait_streaming", **context) as detail:
            source_timeline = probe(source).timeline

            def streaming() -> bool:
                state = probe(node)
                return (state.role == "standby" and state.receiver_status == "streaming"
                        and state.timeline == source_timeline)

            try:
                detail["seconds_to_stream"] = round(wait_for(streaming, timeout=streaming_timeout,
                                                             what="streaming"), 3)
            except TimeoutError:
                raise FailbackError(
                    _("node {node} does not stream from {source} on timeline {timeline} after {seconds} s").format(
                        node=node.label, source=source.label, timeline=source_timeline, seconds=streaming_timeout),
                    _("read the server log {path}; a rejected replication connection shows there").format(
                        path=target_log),
                ) from None
            report.timeline = source_timeline
            detail["state"] = probe(node).to_dict()
    finally:
        report.steps = timeline.to_list()
    log.info("drills.rebuild.done", extra={**context, "method": report.method, "timeline": report.timeline})
    return report


def _clone(source: Node, data_dir: Path, owner: tuple[int, int], bindir: Path | None) -> Path:
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    aside = data_dir.with_name(f"{data_dir.name}.pre-rebuild-{stamp}")
    os.rename(data_dir, aside)
    data_dir.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(data_dir, *owner)
    try:
        run_checked(
            [str(find_program("pg_basebackup", bindir)), "-D", str(data_dir), "-X", "stream", "-c", "fast",
             "--no-password", "-d", source.conninfo(application_name="resguardo_rebuild")],
            what="pg_basebackup", as_server_user=True, timeout=TOOL_TIMEOUT_SECONDS, env=source.subprocess_env(),
        )
    except ExternalToolError:
        # Put the old directory back so a failed clone leaves the node as it was.
        shutil.rmtree(data_dir, ignore_errors=True)
        os.rename(aside, data_dir)
        raise
    return aside


# -- the failback run -------------------------------------------------------------


@dataclass
class FailbackRun:
    """One failback: the rebuild, the optional switchover and the DR standby's rebuild."""

    run_id: str
    database: str
    reason: str
    requested_by: str
    method: str
    switchover_requested: bool
    started_at: str
    rebuild: dict[str, Any] = field(default_factory=dict)
    switchover: dict[str, Any] | None = None
    rebuild_standby: dict[str, Any] | None = None
    findings: list[str] = field(default_factory=list)
    outcome: str | None = None
    error: str | None = None
    evidence: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FailbackRun":
        return cls(**data)


def begin_failback(config: ResguardoConfig, database: str, *, reason: str, confirmation: str, method: str = "auto",
                   switchover: bool = False, requested_by: str | None = None,
                   run_type: str = "manual") -> FailbackRun:
    """Check the request and return a new failback run; nothing changes yet."""
    import getpass

    from drills.failover import check_request, require_manual_run

    config.database(database)
    require_manual_run(run_type)
    check_request(reason=reason, confirmation=confirmation, expected_word=FAILBACK_WORD)
    if method not in METHODS:
        raise ConfigError(_("unknown rebuild method {method!r}").format(method=method),
                          _("use one of: {choices}").format(choices=", ".join(METHODS)))
    return FailbackRun(
        run_id=str(uuid.uuid4()), database=database, reason=reason.strip(),
        requested_by=requested_by or getpass.getuser(), method=method, switchover_requested=switchover,
        started_at=iso(utc_now()),
    )


def switch_back(config: ResguardoConfig, topology: Topology, run: FailbackRun) -> FailbackRun:
    """Planned switchover to the configured primary, then rebuild the DR standby as its standby."""
    from drills.failover import KIND_SWITCHOVER, SWITCHOVER_WORD, run_failover

    switched = run_failover(
        config, run.database, reason=run.reason, confirmation=SWITCHOVER_WORD, kind=KIND_SWITCHOVER,
        requested_by=run.requested_by, topology=topology, notify=False,
    )
    run.switchover = switched.to_dict()
    run.findings.extend(switched.findings)

    standby = topology.require_standby()
    if standby.data_dir is None or not (standby.data_dir / "PG_VERSION").is_file():
        run.findings.append(_("the DR standby's data directory is not on this host; rebuild it there with "
                              "'resguardo failback {database} --node standby'").format(database=run.database))
        return run
    report = rebuild_standby(config, topology, "standby", method=run.method, run_id=run.run_id)
    run.rebuild_standby = report.to_dict()
    return run


def finish_failback(config: ResguardoConfig, run: FailbackRun, *, error: str | None = None) -> FailbackRun:
    """Append the signed evidence record (kind ``failback``) whatever the outcome."""
    run.error = error
    run.outcome = "failed" if error else "completed"
    subject = {"run_id": run.run_id, "kind": "rebuild", "method": run.rebuild.get("method"),
               "switchover": run.switchover_requested}
    run.evidence = records.append_record(config, records.KIND_FAILBACK, run.database, subject, error is None,
                                         {"run": run.to_dict() | {"evidence": None}})
    return run


def run_failback(config: ResguardoConfig, database: str, *, reason: str, confirmation: str, method: str = "auto",
                 switchover: bool = False, requested_by: str | None = None, node: str = "primary",
                 topology: Topology | None = None) -> FailbackRun:
    """Rebuild ``node`` as a standby of the other node, optionally switch back to it; record evidence.

    ``node`` is ``primary`` (the configured primary, after a failover) or
    ``standby`` (the DR standby, e.g. when its host was unavailable during
    the switchover). A switchover is possible only after rebuilding the
    configured primary.
    """
    from drills.topology import load_topology

    run = begin_failback(config, database, reason=reason, confirmation=confirmation, method=method,
                         switchover=switchover, requested_by=requested_by)
    if switchover and node != "primary":
        raise ConfigError(_("a switchover back is possible only after rebuilding the configured primary"),
                          _("run without --switchover, or rebuild node 'primary'"))
    topology = topology or load_topology(config, database)
    try:
        run.rebuild = rebuild_standby(config, topology, node, method=method, run_id=run.run_id).to_dict()
        if run.rebuild.get("rewind_error"):
            run.findings.append(_("pg_rewind failed, the node was cloned instead: {error}").format(
                error=run.rebuild["rewind_error"]))
        if switchover:
            switch_back(config, topology, run)
    except ResguardoError as error:
        finish_failback(config, run, error=error.message)
        raise
    return finish_failback(config, run)
