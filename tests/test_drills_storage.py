"""The storage rehearsal end to end: WAL archive and base backup in a region, rebuilt by PITR.

The primary archives through ``wal-push``, which the server runs as the
``postgres`` OS user. So everything lives under one temporary directory that
user can read. ``archive_command`` and ``restore_command`` use a launcher that
runs the system's Python on the venv's packages, because the venv's
interpreter is under /root, which ``postgres`` cannot enter.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from resguardo.launcher import LAUNCHER, SYSTEM_PYTHON, VENV_SITE
from resguardo.pgtools import chown_tree, server_user


pytestmark = pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs the system Python of the venv's version")



def wait_archived(cluster, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver") or "") >= name:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} was not archived within {timeout} s")


@pytest.fixture(scope="module")
def archived():
    """Yield (config, config file, launcher, primary): a primary archiving into fs-a, with one base backup."""
    from backup.basebackup import run_base_backup
    from encryption.keys import generate_keypair
    from resguardo.config import load_config
    from restore.scratch import ScratchCluster

    root = Path(tempfile.mkdtemp(prefix="resguardo-drills-storage-"))
    os.chmod(root, 0o755)
    keys = root / "keys"
    generate_keypair(keys, "recipient", "x25519")
    generate_keypair(keys, "signing", "ed25519")
    for name in ("fs-a", "evidence", "state"):
        (root / name).mkdir()
    # The server's wal-push runs as postgres, the base backup as root: the
    # WAL prefix must exist before root creates the database's directory.
    (root / "fs-a" / "core" / "wal").mkdir(parents=True)
    launcher = root / "resguardo"
    launcher.write_text(LAUNCHER.format(python=SYSTEM_PYTHON, site=VENV_SITE), encoding="utf-8")
    os.chmod(launcher, 0o755)
    config_file = root / "resguardo.yaml"

    # archive_timeout is long on purpose: only the explicit switch below
    # archives WAL, so the rehearsal finds a known gap.
    cluster = ScratchCluster(name="dr-storage-source", settings={
        "wal_level": "replica", "archive_mode": "on", "archive_timeout": 3600, "max_wal_senders": 4})
    document = {
        "language": "es",
        "state_dir": str(root / "state"),
        "encryption": {"recipients": [str(keys / "recipient.pub")], "identity": str(keys / "recipient.key")},
        "signing": {"private_key": str(keys / "signing.key"), "public_key": str(keys / "signing.pub")},
        "evidence": {"region": "evidence"},
        "regions": {"evidence": {"kind": "filesystem", "path": str(root / "evidence")},
                    "fs-a": {"kind": "filesystem", "path": str(root / "fs-a")}},
        "databases": {"core": {"dsn": cluster.dsn("core"), "regions": ["fs-a"], "compression_level": 1,
                               "pitr": {"enabled": True},
                               "dr": {"rto_target_seconds": 600, "rpo_target_seconds": 120}}},
    }
    config_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    chown_tree(root, server_user())
    cluster.write_settings({"archive_command": f"{launcher} wal-push %p --db core --config {config_file}"})
    cluster.start()
    cluster.create_database("core")
    cluster.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance numeric NOT NULL);"
                 " INSERT INTO accounts SELECT g, g FROM generate_series(1, 500) g", dbname="core")
    config = load_config(config_file)
    run_base_backup(config, "core", fast_checkpoint=True)
    yield config, config_file, launcher, cluster
    cluster.destroy()
    shutil.rmtree(root, ignore_errors=True)


def test_storage_rehearsal_measures_archive_gap(archived):
    from drills.rehearsal import rehearse_storage
    from drills.report import render_rehearsal

    config, config_file, launcher, cluster = archived
    # Commits that ordinary archiving shipped, then commits it has not shipped yet.
    cluster.psql("INSERT INTO accounts SELECT g, g FROM generate_series(501, 600) g", dbname="core")
    shipped = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    cluster.psql("SELECT pg_switch_wal()")
    wait_archived(cluster, shipped)
    time.sleep(1.0)
    cluster.psql("INSERT INTO accounts SELECT g, g FROM generate_series(601, 700) g", dbname="core")

    result = rehearse_storage(config, "core", pitr_options={
        "config_file": config_file, "wal_fetch_command": str(launcher), "timeout": 180})
    print(f"\nstorage rehearsal: RTO {result.rto_seconds} s, RPO {result.rpo_seconds} s ({result.rpo_method}), "
          f"lost {result.lost_bytes} bytes, steps {[(s['name'], s['seconds']) for s in result.steps]}")

    assert result.error is None
    assert [s["name"] for s in result.steps] == ["detect", "fetch", "restore", "replay", "rpo", "validate", "open"]
    assert result.rpo_method == "last_replayed_commit"
    assert 1.0 <= result.rpo_seconds < 120
    assert result.lost_bytes > 0
    assert result.validation["success"] is True
    assert result.passed is True
    assert result.source["backup"]
    assert result.source["pitr"]["wal_files_restored"] >= 1

    from evidence import open_store

    stored = [r for r in open_store(config).list(database="core", kind="dr_rehearsal")
              if r["subject"]["run_id"] == result.run_id]
    assert stored[0]["outcome"] == "passed"
    assert stored[0]["body"]["rpo_method"] == "last_replayed_commit"

    report = render_rehearsal([result], fmt="text")
    assert result.run_id in report


def test_failed_storage_rehearsal_lists_findings(archived):
    from drills.rehearsal import rehearse_storage
    from drills.report import render_rehearsal

    config, config_file, launcher, cluster = archived

    # restore_command exits 1 for every file, so restore_pitr's trial fetch fails.
    result = rehearse_storage(config, "core", pitr_options={
        "config_file": config_file, "wal_fetch_command": "/bin/false", "timeout": 60})

    assert result.passed is False
    assert result.error is not None
    assert result.findings, "a failed rehearsal must list at least one finding"
    assert result.error in result.findings[0]
    report = render_rehearsal([result], fmt="text")
    assert result.error in report.split("Hallazgos", 1)[1]


def _delete_archived(root: Path, name: str) -> int:
    removed = 0
    for path in (root / "fs-a" / "core" / "wal").rglob(name + "*"):
        path.unlink()
        removed += 1
    return removed


def test_cli_rehearse_uses_config_and_names_gap(archived, tmp_path, monkeypatch, capsys):
    import json
    import logging

    from resguardo.cli import main

    config, config_file, launcher, cluster = archived
    # Three more archived segments; the middle one is then lost.
    names = []
    for first in (701, 801, 901):
        cluster.psql(f"INSERT INTO accounts SELECT g, g FROM generate_series({first}, {first + 99}) g", dbname="core")
        names.append(cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"))
        cluster.psql("SELECT pg_switch_wal()")
    wait_archived(cluster, names[-1])
    assert _delete_archived(config_file.parent, names[1]) == 2

    # The working directory holds another resguardo.yaml: wal-fetch must not read it.
    (tmp_path / "resguardo.yaml").write_text("not: a valid resguardo config\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    logger = logging.getLogger("resguardo")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        status = main(["--config", str(config_file), "dr", "rehearse", "core", "--scenario", "storage",
                       "--wal-fetch-command", str(launcher), "--format", "json"])
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate

    result = json.loads(capsys.readouterr().out)[0]
    print(f"\nstorage rehearsal with a gap: exit {status}, error {result['error']}, findings {result['findings']}")
    # The configuration is in Spanish ("language: es").
    gap_findings = [f for f in result["findings"] if f"de la línea de tiempo 1: {names[1]};" in f]
    assert len(gap_findings) == 1
    # wal-fetch ran with the --config file: it reached the archive and saw the gap, or restored up to it.
    assert "config" not in (result["error"] or "")
    if result["error"] is None:
        assert result["source"]["pitr"]["wal_files_restored"] >= 1
    else:
        assert names[1] in result["error"]
        assert result["error"] in result["findings"][0]
    assert result["archive_gaps"] == {"1": [names[1]]}
    assert status == 8
