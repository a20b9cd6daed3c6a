"""Point-in-time recovery end to end: WAL archiving, base backups, PITR restores, faults.

Real PostgreSQL 15 clusters archive through ``wal-push`` run by the server
itself, as the ``postgres`` OS user, into two filesystem regions. Everything
lives under one temporary directory that the ``postgres`` user can read,
because pytest's own temporary directories are private to root.

The venv's interpreter lives under /root, which the ``postgres`` user cannot
enter, so ``archive_command`` and ``restore_command`` use a small launcher
that runs the system's Python 3.11 on the venv's packages.
"""

from __future__ import annotations

import doctest
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from resguardo.launcher import LAUNCHER, SYSTEM_PYTHON, VENV_SITE
from resguardo.pgtools import chown_tree, demote, find_program, server_user


pytestmark = pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs the system Python of the venv's version")



def _as_postgres(args: list[str], *, cwd: Path | None = None, timeout: float = 120, env: dict | None = None):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=demote(server_user()), env=env)


def _wait(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _switch_and_wait(cluster, timeout: float = 60) -> str:
    """Switch to a new segment and wait until the finished one is archived; return its name."""
    name = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    cluster.psql("SELECT pg_switch_wal()")
    try:
        _wait(lambda: (cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver") or "") >= name,
              timeout, f"archiving of {name}")
    except AssertionError as error:
        log_tail = "\n".join(Path(cluster.log_file).read_text(errors="replace").splitlines()[-30:])
        raise AssertionError(f"{error}; server log:\n{log_tail}") from None
    return name


class Env:
    """Paths, config and the source cluster shared by the tests of this module."""

    def __init__(self, root: Path):
        from encryption.keys import generate_keypair

        self.root = root
        self.keys = root / "keys"
        generate_keypair(self.keys, "recipient", "x25519")
        generate_keypair(self.keys, "signing", "ed25519")
        for name in ("fs-a", "fs-b", "evidence", "state", "spool", "work"):
            (root / name).mkdir()
        # The server's OS user writes WAL and this root process writes base backups. Creating the
        # database folders first keeps a root-owned folder from blocking archive_command.
        for region in ("fs-a", "fs-b"):
            for database in ("core", "caja"):
                (root / region / database / "wal").mkdir(parents=True)
        self.launcher = root / "resguardo"
        self.launcher.write_text(LAUNCHER.format(python=SYSTEM_PYTHON, site=VENV_SITE), encoding="utf-8")
        os.chmod(self.launcher, 0o755)
        self.config_file = root / "resguardo.yaml"
        self.cluster = None
        self.async_cluster = None

    def write_config(self, source_dsn: str, async_dsn: str, async_pgdata: Path) -> None:
        document = {
            "language": "es",
            "state_dir": str(self.root / "state"),
            "encryption": {"recipients": [str(self.keys / "recipient.pub")],
                           "identity": str(self.keys / "recipient.key"), "chunk_size_kib": 256},
            "signing": {"private_key": str(self.keys / "signing.key"), "public_key": str(self.keys / "signing.pub")},
            "evidence": {"region": "evidence", "prefix": "evidence"},
            "regions": {
                "evidence": {"kind": "filesystem", "path": str(self.root / "evidence")},
                "fs-a": {"kind": "filesystem", "path": str(self.root / "fs-a"), "location": "Quito"},
                "fs-b": {"kind": "filesystem", "path": str(self.root / "fs-b"), "location": "Guayaquil"},
            },
            "databases": {
                "core": {"dsn": source_dsn, "regions": ["fs-a", "fs-b"], "compression_level": 1,
                         "pitr": {"enabled": True, "rpo_seconds": 3, "fetch_prefetch": 2}},
                "caja": {"dsn": async_dsn, "regions": ["fs-a", "fs-b"], "compression_level": 1,
                         "pitr": {"enabled": True, "async_push": True, "push_parallel": 2,
                                  "spool_dir": str(self.root / "spool"), "pgdata": str(async_pgdata)}},
            },
        }
        self.config_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")

    def config(self):
        from resguardo.config import load_config

        return load_config(self.config_file)

    def archive_command(self, database: str, extra: str = "") -> str:
        return f"{self.launcher} wal-push %p --db {database} --config {self.config_file}{extra}"

    def wal_dir(self, region: str, system_identifier: str) -> Path:
        return self.root / region / "core" / "wal" / system_identifier


@pytest.fixture(scope="module")
def env():
    from restore.scratch import ScratchCluster

    root = Path(tempfile.mkdtemp(prefix="resguardo-pitr-test-"))
    os.chmod(root, 0o755)
    environment = Env(root)
    settings = {"wal_level": "replica", "archive_mode": "on", "archive_timeout": 60, "max_wal_senders": 4}
    environment.cluster = ScratchCluster(name="pitr-source", settings=dict(settings))
    environment.async_cluster = ScratchCluster(name="pitr-async", settings=dict(settings))
    environment.write_config(environment.cluster.dsn(), environment.async_cluster.dsn(),
                             environment.async_cluster.data_dir)
    chown_tree(root, server_user())
    environment.cluster.write_settings({"archive_command": environment.archive_command("core")})
    environment.cluster.start()
    pgbench = find_program("pgbench")
    subprocess.run([str(pgbench), "-i", "-s", "1", "-q", environment.cluster.dsn()], check=True, capture_output=True)
    environment.cluster.psql("CREATE TABLE marks (id int PRIMARY KEY, note text)")
    environment.system_identifier = environment.cluster.psql("SELECT system_identifier FROM pg_control_system()")

    from backup.basebackup import run_base_backup

    environment.first_backup = run_base_backup(environment.config(), "core", fast_checkpoint=True)
    yield environment
    environment.cluster.destroy()
    environment.async_cluster.destroy()
    shutil.rmtree(root, ignore_errors=True)


def _restore(env, **kwargs):
    from restore.pitr import restore_pitr

    return restore_pitr(env.config(), "core", config_file=env.config_file, wal_fetch_command=str(env.launcher),
                        timeout=180, **kwargs)


def _rows(report) -> list[int]:
    text = report.scratch.psql("SELECT id FROM marks ORDER BY id")
    return [int(value) for value in text.split()] if text else []


# -- pure functions ----------------------------------------------------------------------


@pytest.mark.parametrize("module_name", [
    "backup.wal_format", "backup.wal", "backup.wal_catalog", "backup.basebackup", "backup.wal_health",
    "restore.pitr_target", "restore.pitr_server",
])
def test_doctests_pass(module_name):
    import importlib

    result = doctest.testmod(importlib.import_module(module_name))
    assert result.failed == 0


def test_naive_target_time_rejected():
    from restore.pitr_target import RecoveryTargetError, build_target

    with pytest.raises(RecoveryTargetError) as raised:
        build_target(time="2026-12-04 10:00:00")
    assert "zone" in raised.value.message or "zona" in raised.value.message


def test_target_time_out_of_range_rejected():
    from restore.pitr_target import RecoveryTargetError, build_target

    # 23:59:59 at -12:00 on 9999-12-31 is in year 10000 in UTC, which PostgreSQL is given.
    with pytest.raises(RecoveryTargetError):
        build_target(time="9999-12-31T23:59:59-12:00")


@pytest.mark.parametrize("timeline", ["0", "-1", "4294967296", "dos"])
def test_invalid_target_timeline_rejected(timeline):
    from restore.pitr_target import RecoveryTargetError, build_target

    with pytest.raises(RecoveryTargetError):
        build_target(timeline=timeline)


def test_target_label_translated(monkeypatch):
    from resguardo.i18n import set_language
    from restore.pitr_server import describe_stop_point
    from restore.pitr_target import build_target

    set_language("es")
    try:
        label = build_target(name="antes_del_6").label()
        stop = describe_stop_point("before commit of transaction 750, time 2026-12-04 21:00:00.1+00")
    finally:
        set_language(None)
    assert "name" not in label
    assert "antes_del_6" in label
    assert "before" not in stop
    assert "750" in stop


def test_wal_ship_accepts_config_after_subcommand():
    from resguardo.cli import build_parser

    args = build_parser().parse_args(["wal-ship", "core", "--once", "--config", "/etc/resguardo/resguardo.yaml"])
    assert args.sub_config == "/etc/resguardo/resguardo.yaml"
    assert args.needs_config is False


@pytest.mark.parametrize("magic, valid", [(0xD110, True), (0xD1FF, True), (0x1234, False), (0x0000, False)])
def test_segment_header_page_magic(magic, valid):
    import struct

    from backup.wal_format import XLP_LONG_HEADER, WalFormatError, parse_segment_header

    header = struct.pack("<HHIQI", magic, XLP_LONG_HEADER, 1, 0x3000000, 0) + bytes(4)
    header += struct.pack("<QII", 7715544490620757889, 16 << 20, 8192)
    if valid:
        assert parse_segment_header(header).segment_name() == "000000010000000000000003"
        return
    with pytest.raises(WalFormatError) as raised:
        parse_segment_header(header)
    assert f"0x{magic:04X}" in str(raised.value)


def test_two_targets_rejected():
    from restore.pitr_target import RecoveryTargetError, build_target

    with pytest.raises(RecoveryTargetError):
        build_target(lsn="0/3000000", name="x")


def test_target_settings_in_utc():
    from restore.pitr_target import build_target

    settings = build_target(time="2026-12-04T15:15:00-05:00").settings()
    assert settings["recovery_target_time"] == "2026-12-04 20:15:00+00:00"
    assert settings["recovery_target_timeline"] == "latest"


def _tar_bytes(members) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/elsewhere"
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def test_tar_sink_unpacks_in_small_pieces(tmp_path):
    import tarfile

    from restore.pitr_tar import TarExtractSink

    payload = os.urandom(70000)
    stream = _tar_bytes([("base", tarfile.DIRTYPE, None), ("base/1/1259", tarfile.REGTYPE, payload),
                         ("PG_VERSION", tarfile.REGTYPE, b"15\n"), ("empty", tarfile.REGTYPE, b"")])
    sink = TarExtractSink(tmp_path / "data")
    for start in range(0, len(stream), 777):
        sink.write(stream[start:start + 777])
    assert sink.close() == 4
    assert (tmp_path / "data" / "base" / "1" / "1259").read_bytes() == payload
    assert (tmp_path / "data" / "PG_VERSION").read_text() == "15\n"
    assert (tmp_path / "data" / "empty").stat().st_size == 0


@pytest.mark.parametrize("members", [
    [("../escape", "0", b"x")],
    [("/etc/passwd", "0", b"x")],
    [("pg_tblspc/16384", "2", None)],
], ids=["dotdot", "absolute", "symlink"])
def test_tar_sink_rejects_unsafe_members(tmp_path, members):
    import tarfile

    from resguardo.errors import IntegrityError
    from restore.pitr_tar import TarExtractSink

    kinds = {"0": tarfile.REGTYPE, "2": tarfile.SYMTYPE}
    stream = _tar_bytes([(name, kinds[kind], data) for name, kind, data in members])
    sink = TarExtractSink(tmp_path / "data")
    with pytest.raises(IntegrityError):
        sink.write(stream)
    sink.abort()
    assert list((tmp_path / "data").iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_tar_sink_detects_truncation(tmp_path):
    import tarfile

    from resguardo.errors import IntegrityError
    from restore.pitr_tar import TarExtractSink

    stream = _tar_bytes([("PG_VERSION", tarfile.REGTYPE, b"15\n" * 1000)])
    sink = TarExtractSink(tmp_path / "data")
    sink.write(stream[:1500])
    with pytest.raises(IntegrityError):
        sink.close()


# -- base backup ---------------------------------------------------------------------------


def test_base_backup_manifest(env):
    from backup.catalog import list_backups
    from resguardo.keyring import load_verify_key
    from storage.registry import open_regions

    config = env.config()
    manifest = env.first_backup.manifest
    assert manifest["kind"] == "base"
    assert manifest["wal"]["system_identifier"] == env.system_identifier
    assert manifest["wal"]["timeline"] == 1
    assert manifest["wal"]["start_wal_file"].startswith("00000001")
    assert "START WAL LOCATION" in manifest["backup_label"]
    assert manifest["objects"][0]["plaintext_size"] > 20 << 20
    entries = list_backups(open_regions(["fs-a", "fs-b"], config), load_verify_key(config), "core", "base")
    assert [e.backup_id for e in entries] == [env.first_backup.backup_id]
    assert sorted(entries[0].regions) == ["fs-a", "fs-b"]


# -- WAL push and fetch, with faults ---------------------------------------------------------


def _first_segment(env) -> str:
    names = sorted(p.name[:-5] for p in env.wal_dir("fs-a", env.system_identifier).glob("*.json")
                   if len(p.name) == 29)
    return names[0]


def _fetch(env, name: str, destination: Path, *extra: str):
    return _as_postgres([str(env.launcher), "wal-fetch", name, str(destination), "--db", "core",
                         "--config", str(env.config_file), "--system-identifier", env.system_identifier,
                         "--attempts", "1", *extra], cwd=env.root / "work")


def test_wal_fetch_restores_exact_segment(env):
    import json

    name = _first_segment(env)
    destination = env.root / "work" / "segment"
    result = _fetch(env, name, destination)
    assert result.returncode == 0, result.stderr
    sidecar = json.loads((env.wal_dir("fs-a", env.system_identifier) / f"{name}.json").read_text())
    from backup.wal import sha256_file

    assert sha256_file(destination) == (sidecar["plaintext_sha256"], 16 << 20)
    destination.unlink()


def test_wal_fetch_missing_everywhere_exits_1(env):
    result = _fetch(env, "0000000100000000000000FE", env.root / "work" / "absent")
    assert result.returncode == 1, result.stderr


def _hide_everywhere(env, name: str, suffix: str) -> list[tuple[Path, Path]]:
    """Rename the sidecar of ``name`` in both regions; return (hidden, original) pairs for _unhide."""
    moved = []
    for region in ("fs-a", "fs-b"):
        sidecar = env.wal_dir(region, env.system_identifier) / f"{name}.json"
        hidden = sidecar.with_name(f"hidden-{suffix}.json.bak")
        sidecar.rename(hidden)
        moved.append((hidden, sidecar))
    return moved


def _unhide(moved: list[tuple[Path, Path]]) -> None:
    for hidden, sidecar in moved:
        hidden.rename(sidecar)


def test_wal_fetch_gap_exits_200(env):
    """A segment missing everywhere while a later one is archived is a gap, never "end of archive"."""
    name = _first_segment(env)
    moved = _hide_everywhere(env, name, "gap")
    try:
        result = _fetch(env, name, env.root / "work" / "gap")
    finally:
        _unhide(moved)
    assert result.returncode == 200, result.stderr
    assert name in result.stderr
    assert not (env.root / "work" / "gap").exists()


def test_wal_fetch_gap_with_empty_region_exits_200(env):
    """One region empty (an unmounted share) and the other lacking the segment but holding later ones."""
    name = _first_segment(env)
    empty = env.root / "empty-share"
    (empty / "core" / "wal" / env.system_identifier).mkdir(parents=True)
    document = yaml.safe_load(env.config_file.read_text(encoding="utf-8"))
    document["regions"]["fs-a"]["path"] = str(empty)
    config_file = env.root / "resguardo-empty-share.yaml"
    config_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    chown_tree(empty, server_user())
    chown_tree(config_file, server_user())
    sidecar = env.wal_dir("fs-b", env.system_identifier) / f"{name}.json"
    hidden = sidecar.with_name("hidden-empty.json.bak")
    sidecar.rename(hidden)
    try:
        result = _as_postgres([str(env.launcher), "wal-fetch", name, str(env.root / "work" / "gap-empty"),
                               "--db", "core", "--config", str(config_file), "--system-identifier",
                               env.system_identifier, "--attempts", "1"], cwd=env.root / "work")
    finally:
        hidden.rename(sidecar)
        shutil.rmtree(empty)
        config_file.unlink()
    assert result.returncode == 200, result.stderr
    assert name in result.stderr


def test_wal_fetch_into_missing_directory(env):
    result = _fetch(env, _first_segment(env), env.root / "work" / "nodir" / "segment")
    assert result.returncode == 200
    assert "FileNotFoundError" not in result.stderr
    assert "nodir" in result.stderr


def test_wal_push_missing_file(env):
    push = [str(env.launcher), "wal-push", str(env.root / "work" / "000000010000000000000099"), "--db", "core",
            "--config", str(env.config_file)]
    result = _as_postgres(push, cwd=env.root / "work")
    assert result.returncode != 0
    assert "Errno" not in result.stderr
    assert "000000010000000000000099" in result.stderr


def test_wal_fetch_falls_back_to_second_region(env):
    name = _first_segment(env)
    sidecar = env.wal_dir("fs-a", env.system_identifier) / f"{name}.json"
    hidden = sidecar.with_name("hidden.json.bak")
    sidecar.rename(hidden)
    try:
        result = _fetch(env, name, env.root / "work" / "fallback")
        assert result.returncode == 0, result.stderr
    finally:
        hidden.rename(sidecar)
    (env.root / "work" / "fallback").unlink()


def test_wal_fetch_unreadable_region_stops_recovery(env):
    region = env.root / "fs-a"
    os.chmod(region, 0o000)
    try:
        present = _fetch(env, _first_segment(env), env.root / "work" / "other-region")
        absent = _fetch(env, "0000000100000000000000FE", env.root / "work" / "absent")
    finally:
        os.chmod(region, 0o755)
    assert present.returncode == 0, present.stderr
    # "Not found" cannot be concluded while a region is failing: 200 makes PostgreSQL stop, not promote.
    assert absent.returncode == 200, absent.stderr
    (env.root / "work" / "other-region").unlink()


def test_wal_fetch_corrupted_copy(env):
    name = _first_segment(env)
    objects = [env.wal_dir(region, env.system_identifier) / f"{name}.enc" for region in ("fs-a", "fs-b")]
    originals = [path.read_bytes() for path in objects]

    def corrupt(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    try:
        corrupt(objects[0])
        one_bad = _fetch(env, name, env.root / "work" / "corrupt")
        corrupt(objects[1])
        both_bad = _fetch(env, name, env.root / "work" / "corrupt2")
    finally:
        for path, data in zip(objects, originals):
            path.write_bytes(data)
    assert one_bad.returncode == 0, one_bad.stderr
    assert both_bad.returncode == 200, both_bad.stderr
    assert not (env.root / "work" / "corrupt2").exists()
    (env.root / "work" / "corrupt").unlink()


def test_wal_push_same_content_succeeds_different_fails(env):
    name = _first_segment(env)
    copy = env.root / "work" / name
    assert _fetch(env, name, copy).returncode == 0
    sidecar = env.wal_dir("fs-a", env.system_identifier) / f"{name}.json"
    before = sidecar.read_bytes()
    push = [str(env.launcher), "wal-push", str(copy), "--db", "core", "--config", str(env.config_file)]

    again = _as_postgres(push, cwd=env.root / "work")
    assert again.returncode == 0, again.stderr

    data = bytearray(copy.read_bytes())
    data[100000] ^= 0x01
    copy.write_bytes(bytes(data))
    different = _as_postgres(push, cwd=env.root / "work")
    assert different.returncode == 4, different.stderr
    assert name in different.stderr
    assert sidecar.read_bytes() == before
    copy.unlink()


# -- point-in-time recovery -------------------------------------------------------------------


@pytest.fixture(scope="module")
def marks(env):
    """Commits 1..6 with a time mark between 1 and 2, an LSN mark between 3 and 4, a restore point between 5 and 6.

    A second base backup is taken after the restore point, so restoring to it
    must fall back to the first backup.
    """
    cluster = env.cluster
    pgbench = find_program("pgbench")
    cluster.psql("INSERT INTO marks VALUES (1, 'before the time mark')")
    time_mark = cluster.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                             "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')")
    subprocess.run([str(pgbench), "-T", "2", "-c", "2", "-n", cluster.dsn()], check=True, capture_output=True)
    cluster.psql("INSERT INTO marks VALUES (2, 'after the time mark')")
    cluster.psql("INSERT INTO marks VALUES (3, 'before the LSN mark')")
    lsn_mark = cluster.psql("SELECT pg_current_wal_lsn()")
    cluster.psql("INSERT INTO marks VALUES (4, 'after the LSN mark')")
    cluster.psql("INSERT INTO marks VALUES (5, 'before the restore point')")
    cluster.psql("SELECT pg_create_restore_point('antes_del_6')")

    from backup.basebackup import run_base_backup

    second = run_base_backup(env.config(), "core", fast_checkpoint=True)
    cluster.psql("INSERT INTO marks VALUES (6, 'after the restore point')")
    _switch_and_wait(cluster)
    return {"time": time_mark, "lsn": lsn_mark, "second_backup": second.backup_id}


def test_restore_to_time_between_commits(env, marks):
    from restore.pitr_target import build_target

    report = _restore(env, target=build_target(time=marks["time"]))
    try:
        assert _rows(report) == [1]
        assert report.backup_id == env.first_backup.backup_id
        assert report.outcome == "promoted"
        assert report.new_timeline is not None and report.new_timeline >= 2
        assert report.stop_point.startswith("before commit")
        # pgbench ran between the marks; its history table must stop at the same moment.
        assert report.scratch.psql("SELECT count(*) FROM pgbench_history") == "0"
        assert not (Path(report.data_dir) / "pg_wal" / "resguardo_prefetch").exists()
    finally:
        report.scratch.destroy()

    from evidence.store import open_store

    records = open_store(env.config()).list(database="core", kind="pitr_restore")
    assert any(r["subject"]["backup_id"] == report.backup_id and r["outcome"] == "passed" for r in records)


def test_cli_restore_with_target_name(env, marks):
    # The main `resguardo restore` command takes the PITR flags and hands over to restore_pitr.
    # The data directory sits under env.root because the server's OS user must reach it.
    # A relative --data-dir must resolve against the caller's directory, not the server's.
    data_dir = env.root / "cli-pitr-data"
    result = subprocess.run(
        [sys.executable, "-m", "resguardo.cli", "--config", str(env.config_file), "restore", "core",
         "--target-name", "antes_del_6", "--data-dir", "cli-pitr-data", "--wal-fetch-command", str(env.launcher),
         "--no-promote", "--timeout", "180", "--json"],
        capture_output=True, text=True, timeout=400, cwd=env.root,
    )
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout)
        assert report["outcome"] in ("paused", "shut_down")
        assert report["backup_id"] == env.first_backup.backup_id
        assert report["data_dir"] == str(data_dir)
        # The copy keeps the source's settings, but not its way into the source's archive.
        from restore.pitr import DISABLED_ARCHIVE_COMMAND

        auto_conf = (data_dir / "postgresql.auto.conf").read_text()
        assert auto_conf.rstrip().endswith("archive_command = '" + DISABLED_ARCHIVE_COMMAND.replace("'", "''") + "'")
        assert report["notes"]
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(find_program("pg_ctl")), "-D", str(data_dir),
                        "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_restore_to_lsn(env, marks):
    from restore.pitr_target import build_target

    report = _restore(env, target=build_target(lsn=marks["lsn"]))
    try:
        assert _rows(report) == [1, 2, 3]
    finally:
        report.scratch.destroy()


def test_restore_to_restore_point_falls_back(env, marks):
    from restore.pitr_target import build_target

    report = _restore(env, target=build_target(name="antes_del_6"))
    try:
        assert _rows(report) == [1, 2, 3, 4, 5]
        assert report.tried_backups == [marks["second_backup"], env.first_backup.backup_id]
        assert report.wal_files_restored >= 2
    finally:
        report.scratch.destroy()


def test_restore_without_promotion_pauses(env, marks):
    from restore.pitr_target import build_target

    report = _restore(env, target=build_target(immediate=True), promote=False,
                      backup_id=marks["second_backup"])
    try:
        assert report.outcome == "paused"
        assert report.scratch.psql("SELECT pg_is_in_recovery()") == "t"
        assert _rows(report) == [1, 2, 3, 4, 5]
    finally:
        report.scratch.destroy()


def test_restore_stops_when_regions_fail(env, marks):
    """A needed segment readable nowhere must stop recovery (exit 200), never promote early."""
    from resguardo.errors import ExternalToolError
    from restore.pitr_target import build_target

    start = env.first_backup.manifest["wal"]["start_wal_file"]
    from backup.wal_format import next_segment_name

    needed = next_segment_name(start, 16 << 20)
    sidecar = env.wal_dir("fs-b", env.system_identifier) / f"{needed}.json"
    hidden = sidecar.with_name("hidden-needed.json.bak")
    sidecar.rename(hidden)
    os.chmod(env.root / "fs-a", 0o000)
    try:
        with pytest.raises(ExternalToolError) as raised:
            _restore(env, target=build_target(time=marks["time"], timeline="current"),
                     backup_id=env.first_backup.backup_id)
    finally:
        os.chmod(env.root / "fs-a", 0o755)
        hidden.rename(sidecar)
    assert "200" in raised.value.message
    assert "wal-fetch" in (raised.value.hint or "")


def test_restore_stops_at_archive_gap(env, marks):
    """A gap in the archive stops recovery with the missing segment named, instead of promoting at the gap."""
    from resguardo.errors import ExternalToolError
    from restore.pitr_target import build_target
    from backup.wal_format import next_segment_name

    start = env.first_backup.manifest["wal"]["start_wal_file"]
    missing = next_segment_name(next_segment_name(start, 16 << 20), 16 << 20)
    moved = _hide_everywhere(env, missing, "restore-gap")
    try:
        with pytest.raises(ExternalToolError) as raised:
            _restore(env, target=build_target(timeline="current"), backup_id=env.first_backup.backup_id)
    finally:
        _unhide(moved)
    assert missing in raised.value.message
    assert "archive-check" in (raised.value.hint or "")
    # The server log outlives the deleted scratch cluster.
    kept_logs = list((env.root / "state" / "restore").glob("core-*.log"))
    assert kept_logs


def test_restore_rejects_nonpositive_timeout(env):
    from resguardo.errors import ConfigError

    for timeout in (0, -1):
        with pytest.raises(ConfigError):
            _restore_with_timeout(env, timeout)


def _restore_with_timeout(env, timeout: float):
    from restore.pitr import restore_pitr

    return restore_pitr(env.config(), "core", config_file=env.config_file, wal_fetch_command=str(env.launcher),
                        timeout=timeout)


def test_promoted_copy_new_timeline_followed(env, marks):
    """Promote a restored copy, write on its new timeline, archive it, and restore that timeline."""
    from restore.pitr_target import build_target

    branch = _restore(env, target=build_target(name="antes_del_6"),
                      archive_settings={"archive_mode": "on", "archive_command": env.archive_command("core")})
    try:
        timeline = branch.new_timeline
        branch.scratch.psql("INSERT INTO marks VALUES (7, 'on the new timeline')")
        _switch_and_wait(branch.scratch)
        history = env.wal_dir("fs-a", env.system_identifier) / f"{timeline:08X}.history.json"
        assert history.exists()
    finally:
        branch.scratch.destroy()

    report = _restore(env)
    try:
        assert report.target_timeline == timeline
        assert _rows(report) == [1, 2, 3, 4, 5, 7]
        assert report.new_timeline == timeline + 1
    finally:
        report.scratch.destroy()

    original = _restore(env, target=build_target(timeline=1))
    try:
        assert _rows(original) == [1, 2, 3, 4, 5, 6]
    finally:
        original.scratch.destroy()


# -- archive health ---------------------------------------------------------------------------


def test_archive_outage_reported_then_caught_up(env, marks):
    from backup.wal_health import check_archive

    config = env.config()
    cluster = env.cluster
    wal_dir = env.wal_dir("fs-b", env.system_identifier)
    failed_before = int(cluster.psql("SELECT failed_count FROM pg_stat_archiver"))
    os.chmod(wal_dir, 0o555)
    try:
        cluster.psql("INSERT INTO marks VALUES (8, 'during the outage')")
        name = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        cluster.psql("SELECT pg_switch_wal()")
        _wait(lambda: int(cluster.psql("SELECT failed_count FROM pg_stat_archiver")) > failed_before, 30,
              "a failed archive attempt")
        time.sleep(config.database("core").pitr.rpo_seconds + 1)
        during = check_archive(config, "core")
    finally:
        os.chmod(wal_dir, 0o755)
    assert not during.ok
    assert during.lag_seconds > 3
    assert during.server["ready_count"] >= 1
    assert during.pg_wal_bytes > 0
    assert any("rpo" in problem for problem in during.problems)

    # PostgreSQL retries on its own (every 60 s after three failures); a new segment makes it try at once.
    cluster.psql("INSERT INTO marks VALUES (9, 'after the outage')")
    cluster.psql("SELECT pg_switch_wal()")
    _wait(lambda: (cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver") or "") >= name, 90,
          "the archive to catch up")
    after = check_archive(config, "core")
    assert after.ok, after.problems
    assert after.lag_seconds < config.database("core").pitr.rpo_seconds
    assert after.archive["gaps"] == {}


def test_archive_check_reports_missing_copy_and_gap(env, marks):
    from backup.wal_health import check_archive

    config = env.config()
    segments = sorted(p for p in env.wal_dir("fs-b", env.system_identifier).glob("00000001*.json") if len(p.name) == 29)
    victim = segments[-2]
    hidden_b = victim.with_name("hidden-gap-b.json.bak")
    victim.rename(hidden_b)
    try:
        one_region = check_archive(config, "core")
        twin = env.wal_dir("fs-a", env.system_identifier) / victim.name
        hidden_a = twin.with_name("hidden-gap-a.json.bak")
        twin.rename(hidden_a)
        try:
            both = check_archive(config, "core")
        finally:
            hidden_a.rename(twin)
    finally:
        hidden_b.rename(victim)
    assert victim.name[:-5] in one_region.archive["missing_in_regions"]["fs-b"]
    assert not one_region.ok
    assert victim.name[:-5] in both.archive["gaps"]["1"]


def test_archive_check_rejects_invalid_sidecars(env, marks):
    from backup.wal_health import check_archive

    config = env.config()
    segments = sorted(p for p in env.wal_dir("fs-a", env.system_identifier).glob("00000001*.json") if len(p.name) == 29)
    broken, foreign = segments[-1], segments[-2]
    twin = env.wal_dir("fs-b", env.system_identifier) / foreign.name
    originals = {broken: broken.read_bytes(), twin: twin.read_bytes()}
    try:
        broken.write_text("{not json", encoding="utf-8")
        # Another segment's sidecar copied over this one.
        twin.write_bytes((env.wal_dir("fs-b", env.system_identifier) / segments[-3].name).read_bytes())
        report = check_archive(config, "core")
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
    assert not report.ok
    assert broken.name[:-5] in report.archive["missing_in_regions"]["fs-a"]
    assert foreign.name[:-5] in report.archive["missing_in_regions"]["fs-b"]
    assert broken.name[:-5] in report.archive["invalid_sidecars"]


def test_archive_check_rejects_foreign_archive_command(env):
    """A server that archives somewhere else (or not at all) is not a healthy archive."""
    from backup.wal_health import check_archive
    from restore.scratch import ScratchCluster

    other = ScratchCluster(name="pitr-wrong-archiver",
                           settings={"wal_level": "replica", "archive_mode": "on", "archive_command": "/bin/true"})
    try:
        other.start()
        report = check_archive(env.config(), "core", dsn=other.dsn())
    finally:
        other.destroy()
    assert not report.ok
    assert any("wal-push" in problem for problem in report.problems)


def test_archive_check_rejects_standby(env):
    """After a failover and failback the configured DSN may reach a standby, which archives nothing."""
    from backup.wal_health import check_archive
    from resguardo.pgtools import run_checked
    from restore.scratch import ScratchCluster

    standby = ScratchCluster(name="pitr-standby", initdb=False,
                             settings={"wal_level": "replica", "archive_mode": "on", "hot_standby": "on",
                                       "archive_command": env.archive_command("core"),
                                       "primary_conninfo": env.cluster.dsn()})
    try:
        run_checked([str(find_program("pg_basebackup")), "-d", env.cluster.dsn(), "-D", str(standby.data_dir),
                     "-X", "stream", "-c", "fast", "-R"], what="pg_basebackup", as_server_user=True, timeout=300)
        standby.write_settings()
        standby.start()
        report = check_archive(env.config(), "core", dsn=standby.dsn())
    finally:
        standby.destroy()
    assert report.server["in_recovery"] is True
    assert not report.ok
    assert any("primar" in problem for problem in report.problems)


def test_basebackup_rejects_other_system(env):
    from backup.basebackup import run_base_backup
    from resguardo.errors import ConfigError

    foreign = env.root / "fs-b" / "core" / "wal" / "1234567890123456789"
    foreign.mkdir()
    (foreign / "000000010000000000000001.json").write_text("{}", encoding="utf-8")
    try:
        with pytest.raises(ConfigError) as raised:
            run_base_backup(env.config(), "core", fast_checkpoint=True)
    finally:
        shutil.rmtree(foreign)
    assert "1234567890123456789" in raised.value.message
    assert "--new-system" in raised.value.hint


# -- asynchronous archiving ---------------------------------------------------------------------


def test_async_shipper_uploads_ahead(env):
    """Files shipped ahead by wal-ship are acknowledged by wal-push from their markers alone."""
    from backup.wal_spool import shipped_dir

    cluster = env.async_cluster
    spool = env.root / "spool"
    # Archiving fails at first, so the ready files wait for the shipper.
    cluster.write_settings({"archive_command": "/bin/false"})
    cluster.start()
    pgbench = find_program("pgbench")
    subprocess.run([str(pgbench), "-i", "-s", "2", "-q", cluster.dsn()], check=True, capture_output=True)
    cluster.psql("SELECT pg_switch_wal()")

    # A base backup cannot finish while archiving fails; it must give up instead of hanging.
    from backup.basebackup import run_base_backup
    from resguardo.errors import StorageError

    with pytest.raises(StorageError) as raised:
        run_base_backup(env.config(), "caja", fast_checkpoint=True, archive_wait_seconds=5)
    assert "archiv" in raised.value.message
    assert [p for p in (env.root / "fs-a" / "caja").rglob("*") if p.is_file()] == []

    shipper = _as_postgres([str(env.launcher), "--config", str(env.config_file), "wal-ship", "caja", "--once"],
                           env=dict(os.environ, RESGUARDO_LANG="en"), timeout=300)
    assert shipper.returncode == 0, shipper.stderr[-2000:]
    shipped = int(shipper.stdout.split()[1])
    markers = sorted(p.name for p in shipped_dir(spool).iterdir() if not p.name.startswith("."))
    assert shipped >= 3
    assert len(markers) == shipped

    cluster.write_settings({"archive_command": env.archive_command("caja", f" --spool {spool}")})
    cluster.psql("SELECT pg_reload_conf()")
    _wait(lambda: (cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver") or "") >= markers[-1], 60,
          "the archiver to acknowledge the shipped files")
    # Every marker was consumed, and no wal-push call had to load the config and push itself.
    assert [p.name for p in shipped_dir(spool).iterdir() if not p.name.startswith(".")] == []
    assert "wal.push.start" not in cluster.log_file.read_text(encoding="utf-8", errors="replace")


# -- S3 region ---------------------------------------------------------------------------------


def test_s3_region_push_fetch_and_outage(env, tmp_path, monkeypatch):
    """WAL push and fetch through the S3 driver against moto; a stopped server is a failure, not "not found"."""
    from backup.wal import WalArchive, WalNotFoundError
    from resguardo.config import parse_config
    from resguardo.errors import IntegrityError, StorageError
    from tests.storage_servers import MotoServer

    name = _first_segment(env)
    segment = tmp_path / name
    WalArchive(env.config(), "core").fetch(name, segment, system_identifier=env.system_identifier)
    monkeypatch.setenv("PITR_TEST_KEY", "testing")
    monkeypatch.setenv("PITR_TEST_SECRET", "testing")

    with MotoServer() as s3:
        s3.client().create_bucket(Bucket="resguardo-wal")
        document = yaml.safe_load(env.config_file.read_text(encoding="utf-8"))
        document["regions"]["s3-uio"] = {
            "kind": "s3", "bucket": "resguardo-wal", "region": "us-east-1", "endpoint_url": s3.endpoint_url,
            "credentials": {"access_key_id_env": "PITR_TEST_KEY", "secret_access_key_env": "PITR_TEST_SECRET"},
        }
        document["databases"] = {"nube": {"dsn": "host=127.0.0.1", "regions": ["s3-uio"], "pitr": {"enabled": True}}}
        config = parse_config(document, env.root)

        pushed = WalArchive(config, "nube").push(segment)
        again = WalArchive(config, "nube").push(segment)
        fetched = WalArchive(config, "nube").fetch(name, tmp_path / "back", system_identifier=env.system_identifier)
        with pytest.raises(WalNotFoundError):
            WalArchive(config, "nube").fetch("0000000100000000000000FE", tmp_path / "absent",
                                             system_identifier=env.system_identifier)
        original = segment.read_bytes()
        changed = bytearray(original)
        changed[200000] ^= 0x01
        segment.write_bytes(bytes(changed))
        with pytest.raises(IntegrityError):
            WalArchive(config, "nube").push(segment)
        s3.stop()
        with pytest.raises(StorageError):
            WalArchive(config, "nube").fetch(name, tmp_path / "down", system_identifier=env.system_identifier)

    assert pushed.written == ["s3-uio"]
    assert again.written == []
    assert again.already_archived == ["s3-uio"]
    assert fetched.region == "s3-uio"
    assert (tmp_path / "back").read_bytes() == original
    assert not (tmp_path / "down").exists()
