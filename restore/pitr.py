"""Point-in-time recovery: a base backup plus archived WAL, replayed to a chosen target.

Steps of :func:`restore_pitr`:

1. List the base backups (signed manifests) and the WAL archive's timelines,
   resolve the target timeline and read its history file, and choose the
   base backup (rules in :mod:`restore.pitr_target`).
2. Stream the backup's tar from the first region with an intact copy and
   unpack it as it arrives (:mod:`restore.pitr_tar`). Then check every file
   against PostgreSQL's own backup manifest with ``pg_verifybackup``.
3. Write the recovery settings: ``restore_command`` calling ``resguardo
   wal-fetch`` with the absolute paths of the command and the config file,
   the ``recovery_target*`` settings, ``recovery_target_action`` and
   ``recovery.signal``.
4. Run ``restore_command`` once for the backup's first WAL file as the
   server's OS user. A command that cannot run there (permissions, missing
   key) fails now, with its message, instead of inside the server.
5. Start the server and follow its log until it promotes, pauses at the
   target, or stops (:mod:`restore.pitr_server`).

Two kinds of destination:

- *scratch* (default): a throwaway cluster on 127.0.0.1
  (:class:`restore.scratch.ScratchCluster`). Its ``pg_hba.conf`` is replaced
  by trust on the loopback and its socket directory, archiving is off, and
  the server is left running for inspection.
- *data directory*: an empty directory, e.g. a DR host's data directory.
  Connection settings and ``archive_mode = off`` are passed on the command
  line only, so the files keep the source's settings. The server is stopped
  at the end: promoted (``promote=True``), or, with ``promote=False``, shut
  down at the target with ``recovery.signal`` still present.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup.wal import WalArchive, WalNotFoundError
from backup.wal_catalog import list_archive, read_history
from backup.wal_main import PREFETCH_DIR_NAME
from backup.wal_prefetch import stop_prefetcher
from resguardo.errors import ConfigError, ExternalToolError, NotFoundError, ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger
from restore.pitr_server import RecoveryServer, controldata, hot_standby_minimums
from restore.pitr_target import RecoveryTarget, RecoveryTargetError, build_target, choose_backups

log = get_logger("restore.pitr")

ENDED_BEFORE_TARGET = "recovery ended before configured recovery target was reached"
# Written into a restored data directory's postgresql.auto.conf, so that a copy
# started later with the source's settings cannot archive into the source's
# archive. PostgreSQL logs the failure on every attempt and keeps the WAL.
DISABLED_ARCHIVE_COMMAND = ("echo 'Resguardo: archiving is disabled in this restored copy; set archive_command "
                            "before using it as a primary' >&2; exit 1")
SCRATCH_HBA = """# Written by Resguardo for a scratch restore: loopback and socket only, no password.
local all all trust
host all all 127.0.0.1/32 trust
"""


@dataclass
class PitrReport:
    """Outcome of a point-in-time recovery: the backup used, where replay stopped, timings."""

    database: str
    backup_id: str
    system_identifier: str
    target: dict[str, Any]
    target_timeline: int
    outcome: str  # "promoted", "paused" or "shut_down"
    data_dir: str
    log_file: str
    region: str
    stop_point: str | None = None
    recovered_lsn: str | None = None
    last_transaction_time: str | None = None
    new_timeline: int | None = None
    wal_files_restored: int = 0
    tried_backups: list[str] = field(default_factory=list)
    fetch_attempts: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    dsn: str | None = None
    other_system_identifiers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    scratch: Any = None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data (without the scratch cluster object)."""
        return {k: v for k, v in self.__dict__.items() if k != "scratch"}


def resguardo_command() -> str:
    """Return the absolute path of the ``resguardo`` executable next to this interpreter or on PATH."""
    beside = Path(sys.executable).with_name("resguardo")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("resguardo")
    if found:
        return str(Path(found).resolve())
    raise ConfigError(
        _("the resguardo command was not found next to {python} or on PATH").format(python=sys.executable),
        _("install Resguardo so that 'resguardo' is on PATH for the server's OS user, or pass wal_fetch_command"),
    )


def restore_command_for(command: str, database: str, config_file: Path) -> str:
    """Return the ``restore_command`` text that calls ``wal-fetch`` with absolute paths."""
    return f"{command} wal-fetch %f %p --db {shlex.quote(database)} --config {shlex.quote(str(config_file))}"


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _append_settings(data_dir: Path, settings: dict[str, str | int], title: str) -> None:
    """Append settings to postgresql.auto.conf; later lines win over the source's values."""
    lines = [f"\n# {title}"] + [f"{key} = {_conf_value(value)}" for key, value in settings.items()]
    with open(data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def _prepare_data_dir(data_dir: Path, *, scratch: bool) -> None:
    """Make an unpacked base backup startable: config files, pg_wal layout, modes."""
    for name in ("postmaster.pid", "postmaster.opts"):
        (data_dir / name).unlink(missing_ok=True)
    # Debian-style clusters keep postgresql.conf and pg_hba.conf outside the data directory.
    if not (data_dir / "postgresql.conf").exists():
        (data_dir / "postgresql.conf").write_text("# Written by Resguardo: the source kept its postgresql.conf "
                                                  "outside the data directory.\n", encoding="utf-8")
    if scratch:
        hba = data_dir / "pg_hba.conf"
        if hba.exists():
            hba.rename(data_dir / "pg_hba.conf.source")
        hba.write_text(SCRATCH_HBA, encoding="utf-8")
    elif not (data_dir / "pg_hba.conf").exists():
        (data_dir / "pg_hba.conf").write_text("# Written by Resguardo: no pg_hba.conf was in the backup.\n"
                                              "local all all peer\n", encoding="utf-8")
    if not (data_dir / "pg_ident.conf").exists():
        (data_dir / "pg_ident.conf").write_text("", encoding="utf-8")
    (data_dir / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
    (data_dir / "recovery.signal").write_text("", encoding="utf-8")
    os.chmod(data_dir, 0o700)


def _verify_files(bindir: Path, data_dir: Path) -> float:
    """Check every file against the backup_manifest with pg_verifybackup; return seconds taken."""
    from resguardo.pgtools import find_program, run_checked

    started = time.monotonic()
    run_checked([str(find_program("pg_verifybackup", bindir)), "--no-parse-wal", "--quiet", str(data_dir)],
                what="pg_verifybackup", timeout=3600)
    return round(time.monotonic() - started, 3)


def _preflight(command: str, data_dir: Path, wal_file: str, os_user) -> None:
    """Run the restore_command once for ``wal_file`` as the server's OS user, or raise with its output."""
    from resguardo.pgtools import demote

    destination = Path("pg_wal") / ".resguardo-preflight"
    text = command.replace("%f", wal_file).replace("%p", str(destination))
    result = subprocess.run(["/bin/sh", "-c", text], cwd=str(data_dir), capture_output=True, text=True,
                            preexec_fn=demote(os_user), timeout=600)
    (data_dir / destination).unlink(missing_ok=True)
    if result.returncode != 0:
        raise ExternalToolError(
            _("restore_command failed for the backup's first WAL file {name} with exit status {status}: {stderr}").format(
                name=wal_file, status=result.returncode, stderr=result.stderr.strip()[-2000:]),
            _("the server's OS user must be able to run the command and read the config, the private key and the "
              "regions; fix that before starting recovery"),
        )


def _resolve_config_file(config_file: str | os.PathLike[str] | None) -> Path:
    from resguardo.config import config_path

    path = Path(config_path(config_file)).resolve()
    if not path.is_file():
        raise ConfigError(
            _("configuration file {path} not found; restore_command needs its absolute path").format(path=path),
            _("pass --config with the path of resguardo.yaml"),
        )
    return path


def _target_timeline(target: RecoveryTarget, timelines: list[int], manifests: list[dict[str, Any]]) -> int | None:
    if target.timeline == "latest":
        return max(timelines + [int(m["wal"].get("stop_timeline", m["wal"]["timeline"])) for m in manifests])
    if target.timeline == "current":
        return None
    return int(target.timeline)


def restore_pitr(
    config,
    database: str,
    *,
    target: RecoveryTarget | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    scratch=None,
    backup_id: str | None = None,
    promote: bool = True,
    system_identifier: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    wal_fetch_command: str | None = None,
    identity_file: str | None = None,
    archive_settings: dict[str, str] | None = None,
    verify_files: bool = True,
    timeout: float = 3600,
    record_evidence: bool = True,
) -> PitrReport:
    """Restore ``database`` to ``target`` from a base backup and the WAL archive.

    ``scratch`` is a :class:`ScratchCluster` made with ``initdb=False``; with
    neither ``scratch`` nor ``data_dir`` a new one is created and left
    running. ``wal_fetch_command`` replaces the path of the ``resguardo``
    executable in ``restore_command``; ``config_file`` is the config path the
    server's ``restore_command`` reads (default: ``--config``/
    ``RESGUARDO_CONFIG``/``./resguardo.yaml``). ``archive_settings`` (e.g.
    ``archive_mode``, ``archive_command``) make a promoted scratch copy
    archive its new timeline. By default it does not archive, so restore tests
    never add timelines to the production archive.

    Raises RecoveryTargetError for an invalid target, NotFoundError when no
    base backup fits, and ExternalToolError with the server's FATAL lines when
    recovery stops before the target.
    """
    from backup.catalog import list_backups
    from resguardo.keyring import load_verify_key
    from restore.fetch import fetch_object
    from restore.pitr_tar import TarExtractSink, empty_directory
    from restore.scratch import ScratchCluster
    from storage.registry import open_regions

    started = time.monotonic()
    target = target or build_target()
    if not timeout > 0:
        raise ConfigError(
            _("invalid recovery timeout {value} s").format(value=timeout),
            _("give a positive number of seconds, e.g. --timeout 3600"),
        )
    if not promote and target.kind == "latest":
        raise RecoveryTargetError(
            _("without promotion a recovery target is required"),
            _("give --target-time, --target-lsn, --target-xid, --target-name or --target-immediate"),
        )
    db = config.database(database)
    config_path = _resolve_config_file(config_file)
    command = restore_command_for(wal_fetch_command or resguardo_command(), database, config_path)

    # 1. Choose the backup.
    regions = open_regions(db.regions, config)
    entries = list_backups(regions, load_verify_key(config), database, "base")
    manifests = [e.manifest for e in entries]
    if not manifests:
        raise NotFoundError(
            _("database {database} has no committed base backup").format(database=database),
            _("run 'resguardo basebackup {database}' first").format(database=database),
        )
    system_identifier = str(system_identifier or manifests[-1]["wal"]["system_identifier"])
    other_systems = sorted({str(m["wal"]["system_identifier"]) for m in manifests} - {system_identifier})
    manifests = [m for m in manifests if str(m["wal"]["system_identifier"]) == system_identifier]
    if other_systems:
        log.warning("pitr.other_systems", extra={"database": database, "system_identifier": system_identifier,
                                                 "other_system_identifiers": other_systems})
    if not manifests:
        raise NotFoundError(
            _("no base backup of {database} belongs to system {system}").format(database=database, system=system_identifier),
            _("omit --system-identifier to use the newest cluster's backups"),
        )
    archive = WalArchive(config, database, identity_file=identity_file)
    listing = list_archive(archive.regions, database, system_identifier)
    target_timeline = _target_timeline(target, listing.timelines(), manifests)
    if target_timeline is None:
        current = [m for m in manifests if m["backup_id"] == backup_id] if backup_id not in (None, "latest") else manifests
        target_timeline = int((current or manifests)[-1]["wal"].get("stop_timeline", manifests[-1]["wal"]["timeline"]))
    try:
        history = read_history(archive, system_identifier, target_timeline)
    except WalNotFoundError:
        raise NotFoundError(
            _("the history file of timeline {timeline} is not in the archive").format(timeline=target_timeline),
            _("the timeline does not exist in this cluster's archive; check --target-timeline"),
        ) from None
    try:
        candidates = choose_backups(manifests, target, target_timeline=target_timeline, history=history,
                                    backup_id=backup_id)
    except NotFoundError as error:
        if not other_systems:
            raise
        raise NotFoundError(
            error.message + " " + _("Only base backups of system {system} were considered; base backups of other "
                                    "clusters under the name {database} exist: {others}.").format(
                system=system_identifier, database=database, others=", ".join(other_systems)),
            _("pass --system-identifier with one of {others} to restore from another cluster's backups").format(
                others=", ".join(other_systems)),
        ) from None
    log.info("pitr.start", extra={"database": database, "target": target.describe(), "target_timeline": target_timeline,
                                  "candidates": [m["backup_id"] for m in candidates], "system_identifier": system_identifier})

    # The destination.
    own_scratch = scratch is None and data_dir is None
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept_log_file = config.resolve(config.state_dir) / "restore" / f"{database}-{stamp}.log"
    if own_scratch:
        scratch = ScratchCluster(initdb=False, name=f"pitr-{database}")
    if scratch is not None:
        destination = Path(scratch.data_dir)
        bindir, os_user, log_file = scratch.bindir, scratch.os_user, Path(scratch.log_file)
        if own_scratch:
            # A failed restore deletes its own scratch cluster, so its server log must live elsewhere.
            log_file = kept_log_file
    else:
        from resguardo.pgtools import find_program, server_user

        # PostgreSQL runs with the data directory as its working directory, so a relative path would not resolve.
        destination = Path(data_dir).expanduser().resolve()
        if destination.exists() and any(destination.iterdir()):
            raise ConfigError(
                _("data directory {path} is not empty").format(path=destination),
                _("restore into an empty or new directory; Resguardo never overwrites a cluster"),
            )
        bindir = find_program("postgres", config.resolve(config.postgres_bindir)).parent
        os_user = server_user()
        log_file = kept_log_file
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)

    tried: list[str] = []
    failure: ResguardoError | None = None
    try:
        for manifest in candidates:
            tried.append(manifest["backup_id"])
            try:
                report = _restore_one(
                    config, database, manifest, target, target_timeline, destination, scratch, bindir, os_user,
                    log_file, command, promote, archive_settings, verify_files, timeout, regions, archive,
                    fetch_object, TarExtractSink,
                )
            except _EndedBeforeTarget as error:
                failure = error.error
                log.warning("pitr.backup_too_new", extra={"database": database, "backup_id": manifest["backup_id"]})
                empty_directory(destination)
                continue
            report.tried_backups = tried
            report.other_system_identifiers = other_systems
            report.timings["total_seconds"] = round(time.monotonic() - started, 3)
            if scratch is not None:
                report.scratch = scratch
                report.dsn = scratch.dsn()
            log.info("pitr.done", extra={"database": database, "backup_id": report.backup_id, "outcome": report.outcome,
                                         "wal_files": report.wal_files_restored, "stop_point": report.stop_point,
                                         "seconds": report.timings["total_seconds"]})
            if record_evidence:
                _record_evidence(config, database, report, None)
            return report
        assert failure is not None
        raise failure
    except ResguardoError as error:
        log.error("pitr.failed", extra={"database": database, "target": target.describe(), "error": error.message})
        if record_evidence:
            _record_evidence(config, database, None, error, target=target, tried=tried)
        if own_scratch and scratch is not None:
            scratch.destroy()
        raise
    except BaseException as error:
        # An unexpected error or Ctrl-C: still remove the scratch cluster this call created.
        log.error("pitr.failed", extra={"database": database, "target": target.describe(),
                                        "error": f"{type(error).__name__}: {error}"})
        if own_scratch and scratch is not None:
            scratch.destroy()
        raise


class _EndedBeforeTarget(Exception):
    """Recovery of one candidate backup ran out of WAL before the target; an older backup may work."""

    def __init__(self, error: ResguardoError):
        super().__init__(error.message)
        self.error = error


def _restore_one(config, database, manifest, target, target_timeline, destination, scratch, bindir, os_user,
                 log_file, command, promote, archive_settings, verify_files, timeout, regions, archive,
                 fetch_object, sink_class) -> PitrReport:
    from resguardo.pgtools import chown_tree

    timings: dict[str, float] = {}
    notes: list[str] = []
    backup_id = manifest["backup_id"]
    entry = manifest["objects"][0]
    identities = archive.identities

    # 2. Fetch and unpack, then check the files against PostgreSQL's manifest.
    fetch_started = time.monotonic()
    ordered = sorted(regions, key=lambda r: r.name not in entry["regions"])
    fetched = fetch_object(ordered, entry, identities, backup_id=backup_id, sink_factory=lambda: sink_class(destination))
    timings["fetch_seconds"] = round(time.monotonic() - fetch_started, 3)
    if verify_files:
        timings["verify_seconds"] = _verify_files(bindir, destination)

    # 3. Recovery settings.
    _prepare_data_dir(destination, scratch=scratch is not None)
    minimums = hot_standby_minimums(controldata(bindir, destination))
    # A scratch copy pauses at the target so it can be inspected; a data
    # directory of the caller's shuts down there until someone promotes it.
    if promote:
        action = "promote"
    elif scratch is not None:
        action = "pause"
    else:
        action = "shutdown"
    recovery = {"restore_command": command, **target.settings(), "recovery_target_action": action}
    _append_settings(destination, recovery, f"Resguardo point-in-time recovery from base backup {backup_id}")
    runtime: dict[str, str | int] = {
        "logging_collector": "off", "lc_messages": "C", "log_min_messages": "warning", "hot_standby": "on",
        "archive_mode": "off", **minimums,
    }
    if archive_settings:
        runtime.update(archive_settings)
    if scratch is not None:
        runtime.update({"listen_addresses": "127.0.0.1", "port": scratch.port, "ssl": "off",
                        "unix_socket_directories": str(scratch.socket_dir)})
        _append_settings(destination, runtime, "Resguardo scratch restore: loopback only")
        options: dict[str, str | int] = {}
        socket_dir = None
    else:
        _append_settings(destination, {"archive_command": DISABLED_ARCHIVE_COMMAND},
                         "Resguardo: the source's archive_command must not archive into its archive from this copy")
        notes.append(_("archive_command of the source was replaced in postgresql.auto.conf by a command that fails, "
                       "so this copy cannot archive into the source's WAL archive; set archive_command before using it "
                       "as a primary"))
        socket_dir = Path(tempfile.mkdtemp(prefix="resguardo-pitr-socket-"))
        from restore.scratch import free_port

        options = {**runtime, "listen_addresses": "", "port": free_port(), "unix_socket_directories": str(socket_dir)}

    try:
        chown_tree(destination, os_user)
        if socket_dir is not None:
            chown_tree(socket_dir, os_user)

        # 4. The restore_command must work as the server's OS user before the server relies on it.
        preflight_started = time.monotonic()
        _preflight(command, destination, manifest["wal"]["start_wal_file"], os_user)
        timings["preflight_seconds"] = round(time.monotonic() - preflight_started, 3)

        # 5. Replay.
        server = RecoveryServer(bindir, destination, log_file, os_user)
        recovery_started = time.monotonic()
        server.start(options)
        if scratch is not None:
            scratch.running = True

        def finished(progress) -> bool:
            if action == "promote":
                return progress.promoted and progress.ready
            if action == "pause":
                return progress.paused
            return progress.shut_down_at_target

        try:
            reached = server.wait_for(finished, timeout=timeout)
        except ResguardoError:
            server.stop("immediate")
            raise
        timings["recovery_seconds"] = round(time.monotonic() - recovery_started, 3)
        progress = server.progress
        if not reached:
            server.stop("immediate")
            if scratch is not None:
                scratch.running = False
            fatal = " | ".join(progress.fatal_lines[-3:]) or server.log_tail(10)
            cause = _stop_cause(progress, fatal, manifest)
            error = ExternalToolError(
                _("recovery of {database} from base backup {backup_id} stopped before the target {target}: "
                  "{cause}{fatal}").format(database=database, backup_id=backup_id, target=target.label(),
                                           cause=cause + " " if cause else "", fatal=fatal),
                _recovery_hint(fatal, log_file, target, progress),
            )
            if ENDED_BEFORE_TARGET in fatal and target.kind == "name":
                raise _EndedBeforeTarget(error)
            raise error

        recovered_lsn = progress.redo_done_at
        if scratch is not None and action in ("promote", "pause"):
            recovered_lsn = _replayed_lsn(scratch) or recovered_lsn
        if scratch is None and action == "promote":
            server.stop("fast")
        if action == "shutdown":
            # The log line comes before the postmaster exits; its socket directory is removed below.
            server.process.wait(timeout=120)
        prefetch_dir = destination / "pg_wal" / PREFETCH_DIR_NAME
        if not stop_prefetcher(prefetch_dir):
            log.warning("pitr.prefetcher_still_running", extra={"directory": str(prefetch_dir)})
        shutil.rmtree(prefetch_dir, ignore_errors=True)
    finally:
        # The server of a data directory restore is stopped on every path, so its socket directory can go.
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)

    return PitrReport(
        database=database,
        backup_id=backup_id,
        system_identifier=str(manifest["wal"]["system_identifier"]),
        target=target.to_dict(),
        target_timeline=target_timeline,
        outcome={"promote": "promoted", "pause": "paused", "shutdown": "shut_down"}[action],
        data_dir=str(destination),
        log_file=str(log_file),
        region=fetched.region,
        stop_point=progress.stop_line,
        recovered_lsn=recovered_lsn,
        last_transaction_time=progress.last_transaction_time,
        new_timeline=progress.new_timeline,
        wal_files_restored=len(progress.restored_files),
        fetch_attempts=[{"region": a.region, "outcome": a.outcome, "error": a.error} for a in fetched.attempts],
        timings=timings,
        notes=notes,
    )


def _replayed_lsn(scratch) -> str | None:
    try:
        return scratch.psql("SELECT pg_last_wal_replay_lsn()") or None
    except ResguardoError:
        return None


def _next_missing_segment(progress, manifest: dict[str, Any]) -> str | None:
    """Return the segment after the last one restored from the archive: the one recovery could not get."""
    from backup.wal_format import SEGMENT_PATTERN, WalFormatError, next_segment_name

    restored = [name for name in progress.restored_files if SEGMENT_PATTERN.match(name)]
    if not restored:
        return None
    try:
        return next_segment_name(restored[-1], int(manifest["wal"].get("wal_segment_size") or 16 << 20))
    except (WalFormatError, ValueError):
        return None


def _stop_cause(progress, fatal: str, manifest: dict[str, Any]) -> str:
    """Return a sentence naming the WAL segment recovery stopped at, or "" when the log does not show it."""
    if progress.command_errors:
        return _("wal-fetch reported: {error}").format(error=progress.command_errors[-1].removeprefix("ERROR: "))
    missing = _next_missing_segment(progress, manifest)
    if ENDED_BEFORE_TARGET in fatal and missing:
        return _("the archive ends at segment {missing}, which no WAL region holds ({count} WAL files were "
                 "replayed).").format(missing=missing, count=len(progress.restored_files))
    return ""


def _recovery_hint(fatal: str, log_file: Path, target: RecoveryTarget | None = None, progress=None) -> str:
    if progress is not None and progress.command_errors:
        return _("wal-fetch stopped recovery on purpose; fix the archive as the error says (see 'resguardo "
                 "archive-check') and restore again")
    if ENDED_BEFORE_TARGET in fatal:
        if target is not None and target.kind == "name":
            return _("the archive ends before the target: the target is later than the newest archived WAL, or a "
                     "restore point of that name does not exist after this backup")
        return _("the target is later than the newest archived WAL: wait until the segment named is archived "
                 "('resguardo archive-check' shows the lag), or choose an earlier target")
    if "exit code 200" in fatal or "could not restore file" in fatal:
        return _("wal-fetch could not read a WAL file from any region and stopped recovery on purpose; fix the "
                 "regions (see 'resguardo archive-check') and restore again")
    if "before consistent recovery point" in fatal:
        return _("the target lies inside the base backup's own copy window; choose an older base backup")
    if "not a child of this server's history" in fatal:
        return _("the base backup is not on the target timeline's history; pass --target-timeline current")
    return _("read the server log {log} for the cause").format(log=log_file)


def _record_evidence(config, database: str, report: PitrReport | None, error: ResguardoError | None, *,
                     target: RecoveryTarget | None = None, tried: list[str] | None = None) -> None:
    """Append a ``pitr_restore`` evidence record; a failure to record is logged, not raised."""
    try:
        from evidence.store import open_store

        store = open_store(config, writable=True)
        if report is not None:
            subject = {"backup_id": report.backup_id, "target": report.target,
                       "system_identifier": report.system_identifier}
            body = {k: v for k, v in report.to_dict().items() if k not in ("dsn",)}
            store.append("pitr_restore", database, subject, "passed", body)
        else:
            subject = {"backup_id": (tried or ["-"])[-1], "target": target.to_dict() if target else None}
            store.append("pitr_restore", database, subject, "failed",
                         {"error": error.message if error else "", "hint": error.hint if error else "",
                          "tried_backups": tried or []})
    except Exception as record_error:  # noqa: BLE001 - evidence must not hide the restore's own outcome
        log.warning("pitr.evidence_failed", extra={"database": database, "error": str(record_error)})
