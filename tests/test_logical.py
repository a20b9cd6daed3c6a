"""Logical backup and restore end to end, on real clusters and filesystem regions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resguardo.pgtools import find_program

ROUND_TRIP_SQL = r"""
CREATE SCHEMA "Ventas Ñ";
CREATE SCHEMA archivo;
CREATE TYPE archivo.estado AS ENUM ('activo', 'cerrado', 'en mora');
CREATE TABLE "Ventas Ñ"."Pedidos" (
    id bigserial PRIMARY KEY,
    cliente text NOT NULL,
    etiquetas text[] NOT NULL DEFAULT '{}',
    estado archivo.estado NOT NULL,
    subtotal numeric(12,2) NOT NULL,
    iva numeric(12,2) GENERATED ALWAYS AS (round(subtotal * 0.15, 2)) STORED,
    datos jsonb
);
INSERT INTO "Ventas Ñ"."Pedidos" (cliente, etiquetas, estado, subtotal, datos)
SELECT 'Señora Ñusta Quishpe ' || g, ARRAY['crédito', 'año ' || g], 'activo', g * 1.5,
       jsonb_build_object('ciudad', 'Cañar', 'n', g)
FROM generate_series(1, 500) g;
CREATE TABLE archivo.eventos (id int, creado date NOT NULL, detalle text) PARTITION BY RANGE (creado);
CREATE TABLE archivo.eventos_2025 PARTITION OF archivo.eventos FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE archivo.eventos_2026 PARTITION OF archivo.eventos FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO archivo.eventos SELECT g, date '2025-06-01' + g, 'évènement ' || g FROM generate_series(1, 400) g;
CREATE TABLE archivo.documentos (id int PRIMARY KEY, contenido oid);
INSERT INTO archivo.documentos VALUES (1, lo_from_bytea(0, convert_to('contrato firmado — José', 'UTF8')));
INSERT INTO archivo.documentos VALUES (2, lo_from_bytea(0, decode(repeat('00ff', 50000), 'hex')));
"""


def _dump_text(dsn: str) -> str:
    pg_dump = find_program("pg_dump")
    out = subprocess.run([str(pg_dump), "--no-owner", "--no-acl", "-d", dsn], capture_output=True, check=True)
    # pg_dump 15.14 and later write a random \restrict key per run; it is not data.
    lines = out.stdout.decode("utf-8").splitlines()
    return "\n".join(line for line in lines if not line.startswith(("\\restrict", "\\unrestrict")))


@pytest.fixture(scope="module")
def rich_source():
    from restore.scratch import ScratchCluster

    cluster = ScratchCluster(name="rich")
    cluster.start()
    cluster.create_database("tienda")
    cluster.psql(ROUND_TRIP_SQL, "tienda")
    yield cluster
    cluster.destroy()


@pytest.fixture
def rich_config(tmp_path, keys_dir, rich_source):
    from resguardo.config import load_config
    from tests.conftest import write_config

    path = write_config(
        tmp_path, keys_dir,
        regions={"fs-a": {"kind": "filesystem", "path": str(tmp_path / "a")},
                 "fs-b": {"kind": "filesystem", "path": str(tmp_path / "b")}},
        databases={"tienda": {"dsn": rich_source.dsn("tienda"), "regions": ["fs-a", "fs-b"]}},
    )
    return path, load_config(path)


def test_round_trip_identical_dump(rich_config, rich_source):
    from backup.logical import run_logical_backup
    from restore.logical import restore_logical

    _, config = rich_config
    result = run_logical_backup(config, "tienda")
    assert sorted(result.regions) == ["fs-a", "fs-b"]
    report = restore_logical(config, "tienda", backup_id=result.backup_id)
    try:
        assert _dump_text(report.dsn) == _dump_text(rich_source.dsn("tienda"))
        assert report.scratch.psql("SELECT count(*) FROM pg_largeobject_metadata", "tienda") == "2"
    finally:
        report.scratch.destroy()


def test_manifest_records_identity_and_profile(fs_config, source_cluster):
    from backup.logical import run_logical_backup

    _, config = fs_config
    manifest = run_logical_backup(config, "banca").manifest
    assert manifest["server"]["system_identifier"] == source_cluster.psql(
        "SELECT system_identifier FROM pg_control_system()")
    assert manifest["wal"]["start_lsn"]
    assert manifest["profile"]["tables"]["banca.clientes"]["row_count"] == 2000
    entry = manifest["objects"][0]
    assert set(entry["regions"]) == {"fs-uio", "fs-gye"}
    assert all(copy["sha256"] == entry["sha256"] for copy in entry["regions"].values())
    assert manifest["tools"]["pg_dump"].startswith("pg_dump")


def test_region_down_fails_cleanly(tmp_path, keys_dir, source_cluster):
    from backup.catalog import list_backups
    from backup.logical import run_logical_backup
    from resguardo.config import load_config
    from resguardo.errors import ResguardoError
    from resguardo.keyring import load_verify_key
    from storage.registry import open_regions
    from tests.conftest import write_config

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the region's directory should be")
    path = write_config(
        tmp_path, keys_dir,
        regions={"fs-ok": {"kind": "filesystem", "path": str(tmp_path / "ok")},
                 "fs-down": {"kind": "filesystem", "path": str(blocked / "sub")}},
        databases={"banca": {"dsn": source_cluster.dsn("banca"), "regions": ["fs-ok", "fs-down"]}},
    )
    config = load_config(path)
    with pytest.raises(ResguardoError):
        run_logical_backup(config, "banca")
    ok_region = open_regions(["fs-ok"], config)[0]
    assert list_backups([ok_region], load_verify_key(config), "banca", "logical") == []
    assert list(ok_region.list("")) == []


def test_region_down_with_quorum_succeeds(tmp_path, keys_dir, source_cluster):
    from backup.logical import run_logical_backup
    from resguardo.config import load_config
    from tests.conftest import write_config

    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    path = write_config(
        tmp_path, keys_dir,
        regions={"fs-ok": {"kind": "filesystem", "path": str(tmp_path / "ok")},
                 "fs-down": {"kind": "filesystem", "path": str(blocked / "sub")}},
        databases={"banca": {"dsn": source_cluster.dsn("banca"), "regions": ["fs-ok", "fs-down"], "quorum": 1}},
    )
    result = run_logical_backup(load_config(path), "banca")
    assert result.regions == ["fs-ok"]
    assert "fs-down" in result.failed_regions
    assert "fs-down" in result.manifest["failed_regions"]


def test_killed_backup_leaves_nothing_listed(fs_config, tmp_path):
    from backup.catalog import list_backups
    from resguardo.keyring import load_verify_key
    from storage.registry import open_regions

    path, config = fs_config
    env = dict(os.environ, RESGUARDO_CONFIG=str(path))
    # The loop polls for the first temporary file, so the kill lands while
    # uploads are in flight.
    process = subprocess.Popen([sys.executable, "-m", "resguardo.cli", "backup", "banca"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        partial = [p for p in (tmp_path / "uio").rglob("*") if p.is_file()] if (tmp_path / "uio").exists() else []
        if partial:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    regions = open_regions(["fs-uio", "fs-gye"], config)
    assert list_backups(regions, load_verify_key(config), "banca", "logical") == []
    for region in regions:
        assert [info.key for info in region.list("banca/")] == []

    # SIGKILL leaves temporary files no process will finish; cleanup removes them.
    cleanup = subprocess.run([sys.executable, "-m", "resguardo.cli", "cleanup", "--older-than-hours", "0"],
                             env=env, capture_output=True, text=True)
    assert cleanup.returncode == 0, cleanup.stderr
    leftovers = [p for p in (tmp_path / "uio").rglob("*") if p.is_file()] + \
                [p for p in (tmp_path / "gye").rglob("*") if p.is_file()]
    assert leftovers == []


def test_sigterm_backup_cleans_up(fs_config, tmp_path):
    path, _ = fs_config
    env = dict(os.environ, RESGUARDO_CONFIG=str(path))
    process = subprocess.Popen([sys.executable, "-m", "resguardo.cli", "backup", "banca"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (tmp_path / "uio").exists() and any(p.is_file() for p in (tmp_path / "uio").rglob("*")):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    leftovers = [p for p in (tmp_path / "uio").rglob("*") if p.is_file()] + \
                [p for p in (tmp_path / "gye").rglob("*") if p.is_file()]
    if process.returncode == 0:
        pytest.skip("the backup finished before SIGTERM arrived")
    assert leftovers == []


def _corrupt_dump(config, backup_id: str, region_name: str, mode: str) -> Path:
    root = Path(config.regions[region_name].path)
    dump = next(root.rglob(f"{backup_id}/dump.enc"))
    data = bytearray(dump.read_bytes())
    if mode == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) - 100]
    dump.write_bytes(bytes(data))
    return dump


@pytest.mark.parametrize("mode", ["flip", "truncate"])
def test_corrupted_region_falls_back(fs_config, mode):
    from backup.logical import run_logical_backup
    from restore.logical import restore_logical

    _, config = fs_config
    backup_id = run_logical_backup(config, "banca").backup_id
    _corrupt_dump(config, backup_id, "fs-uio", mode)
    report = restore_logical(config, "banca", backup_id=backup_id, prefer_regions=["fs-uio"])
    try:
        assert report.region == "fs-gye"
        assert report.attempts[0].region == "fs-uio"
        assert report.attempts[0].outcome in ("corrupted", "size_mismatch")
        assert report.scratch.psql("SELECT count(*) FROM banca.clientes", "banca") == "2000"
    finally:
        report.scratch.destroy()


def test_all_copies_corrupted_fails(fs_config):
    from backup.logical import run_logical_backup
    from resguardo.errors import IntegrityError
    from restore.logical import restore_logical

    _, config = fs_config
    backup_id = run_logical_backup(config, "banca").backup_id
    _corrupt_dump(config, backup_id, "fs-uio", "flip")
    _corrupt_dump(config, backup_id, "fs-gye", "flip")
    with pytest.raises(IntegrityError) as caught:
        restore_logical(config, "banca", backup_id=backup_id)
    assert "fs-uio" in caught.value.message
    assert "fs-gye" in caught.value.message


def test_wrong_private_key_rejected(fs_config, tmp_path):
    from backup.logical import run_logical_backup
    from encryption.keys import generate_keypair
    from resguardo.errors import KeyError_
    from restore.logical import restore_logical

    _, config = fs_config
    run_logical_backup(config, "banca")
    other, _ = generate_keypair(tmp_path, "other", "x25519")
    with pytest.raises(KeyError_):
        restore_logical(config, "banca", identity_file=str(other))


def test_missing_private_key_rejected(fs_config, tmp_path):
    from backup.logical import run_logical_backup
    from resguardo.errors import KeyError_
    from restore.logical import restore_logical

    _, config = fs_config
    run_logical_backup(config, "banca")
    with pytest.raises(KeyError_) as caught:
        restore_logical(config, "banca", identity_file=str(tmp_path / "missing.key"))
    assert "missing.key" in caught.value.message


def test_tampered_manifest_reported(fs_config):
    import json

    from backup.catalog import list_backups
    from backup.logical import run_logical_backup
    from resguardo.keyring import load_verify_key
    from storage.registry import open_regions

    _, config = fs_config
    backup_id = run_logical_backup(config, "banca").backup_id
    manifest_path = next(Path(config.regions["fs-uio"].path).rglob(f"{backup_id}/manifest.json"))
    document = json.loads(manifest_path.read_text())
    document["objects"][0]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(document))
    entries = list_backups(open_regions(["fs-uio", "fs-gye"], config), load_verify_key(config), "banca", "logical")
    entry = next(e for e in entries if e.backup_id == backup_id)
    assert entry.regions == ["fs-gye"]
    assert "fs-uio" in entry.invalid_copies


def test_cli_restore_spanish_messages(fs_config):
    path, _ = fs_config
    env = dict(os.environ, RESGUARDO_CONFIG=str(path))
    env.pop("RESGUARDO_LANG", None)
    result = subprocess.run([sys.executable, "-m", "resguardo.cli", "restore", "banca", "--backup-id", "nada"],
                            env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "SUGERENCIA" in result.stderr
    english = subprocess.run([sys.executable, "-m", "resguardo.cli", "--lang", "en", "restore", "banca"],
                             env=env, capture_output=True, text=True)
    assert "HINT" in english.stderr
