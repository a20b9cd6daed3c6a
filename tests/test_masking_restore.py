"""Suppression on restore: a restored backup loses the subjects of the suppression list.

A backup of the masking demo database is taken once; each test restores it
into a scratch cluster and applies the hook as ``resguardo restore
--apply-suppression`` would.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import yaml

from masking.demo import create_demo_schema, fill_demo_data
from masking.errors import PolicyError
from masking.keys import generate_key_file
from masking.suppression import SuppressionList
from resguardo.errors import ConfigError
from restore.scratch import ScratchCluster
from restore.suppression_hook import apply_suppression_after_restore
from tests.conftest import write_config

POLICY_PATH = Path(__file__).resolve().parent.parent / "masking" / "examples" / "demo-policy.yaml"


@pytest.fixture(autouse=True)
def english_messages(monkeypatch):
    """Assert on the English msgids; the Spanish catalog is checked by tests/test_i18n.py."""
    monkeypatch.setenv("RESGUARDO_LANG", "en")
    monkeypatch.delenv("RESGUARDO_MASKING_CONFIG", raising=False)


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory, keys_dir):
    """The demo database, one logical backup of it, and the config that finds it."""
    from backup.logical import run_logical_backup
    from resguardo.config import load_config

    directory = tmp_path_factory.mktemp("suppression-restore")
    with ScratchCluster(name="suppression-source") as cluster:
        cluster.create_database("demo")
        with psycopg.connect(cluster.dsn("demo"), autocommit=True) as conn:
            create_demo_schema(conn)
            cedulas = fill_demo_data(conn, 120)
        config_path = write_config(
            directory, keys_dir,
            regions={"fs-a": {"kind": "filesystem", "path": str(directory / "a")}},
            databases={"demo": {"dsn": cluster.dsn("demo"), "regions": ["fs-a"]}},
        )
        config = load_config(config_path)
        run_logical_backup(config, "demo")
    key = generate_key_file(directory / "masking.key")
    listing = SuppressionList(key)
    listing.add(cedulas[0], reference="caso-1")
    listing.add(cedulas[1], reference="caso-2")
    listing.save(directory / "suppression.yaml")
    return config, directory, cedulas


def write_masking_config(directory: Path, **settings) -> None:
    database = {"policy": str(POLICY_PATH), "suppression_list": "suppression.yaml", **settings}
    document = {"key": {"file": "masking.key"}, "databases": {"demo": database}}
    (directory / "masking.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")


@pytest.fixture
def restored(backed_up):
    """A scratch cluster holding a fresh restore of the backup; yields (config, directory, cedulas, dsn)."""
    from restore.logical import restore_logical

    config, directory, cedulas = backed_up
    report = restore_logical(config, "demo")
    try:
        yield config, directory, cedulas, report.dsn
    finally:
        report.scratch.destroy()
        (directory / "masking.yaml").unlink(missing_ok=True)


def count_subjects(dsn: str, cedulas: list[str]) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            "clientes": conn.execute("SELECT count(*) FROM public.clientes WHERE cedula = ANY(%s)", (cedulas,)).fetchone()[0],
            "cuentas": conn.execute("SELECT count(*) FROM public.cuentas WHERE cliente_cedula = ANY(%s)",
                                    (cedulas,)).fetchone()[0],
            "total_clientes": conn.execute("SELECT count(*) FROM public.clientes").fetchone()[0],
        }


def test_restore_hook_removes_listed_subjects(restored):
    config, directory, cedulas, dsn = restored
    write_masking_config(directory, apply_suppression_on_restore=True)
    before = count_subjects(dsn, cedulas[:2])
    assert before["clientes"] == 2

    report = apply_suppression_after_restore(config, "demo", dsn)

    after = count_subjects(dsn, cedulas[:2])
    assert after["clientes"] == 0
    assert after["cuentas"] == 0
    assert after["total_clientes"] == before["total_clientes"] - 2
    assert report["subjects"] == 2
    assert report["deleted"]["public.clientes"] == 2
    assert report["deleted"]["public.cuentas"] == before["cuentas"]
    assert len(report["list_sha256"]) == 64
    assert cedulas[0] not in repr(report)


def test_restore_hook_skips_when_not_enabled(restored):
    config, directory, cedulas, dsn = restored
    assert apply_suppression_after_restore(config, "demo", dsn) is None
    write_masking_config(directory, apply_suppression_on_restore=False)
    assert apply_suppression_after_restore(config, "demo", dsn) is None
    assert count_subjects(dsn, cedulas[:2])["clientes"] == 2


def test_restore_hook_required_applies_even_when_not_enabled(restored):
    config, directory, cedulas, dsn = restored
    write_masking_config(directory, apply_suppression_on_restore=False)
    report = apply_suppression_after_restore(config, "demo", dsn, required=True)
    assert report["deleted"]["public.clientes"] == 2
    assert count_subjects(dsn, cedulas[:2])["clientes"] == 0


def test_restore_hook_required_without_config_fails(restored):
    config, directory, cedulas, dsn = restored
    with pytest.raises(ConfigError) as caught:
        apply_suppression_after_restore(config, "demo", dsn, required=True)
    assert "masking configuration" in caught.value.message
    assert count_subjects(dsn, cedulas[:2])["clientes"] == 2


def test_restore_hook_rejects_list_without_targets(restored, tmp_path):
    config, directory, cedulas, dsn = restored
    policy = yaml.safe_load(POLICY_PATH.read_text(encoding="utf-8"))
    del policy["suppression"]
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")
    write_masking_config(directory, apply_suppression_on_restore=True, policy=str(policy_path))
    with pytest.raises(PolicyError) as caught:
        apply_suppression_after_restore(config, "demo", dsn)
    assert "names no suppression targets" in caught.value.message
    assert count_subjects(dsn, cedulas[:2])["clientes"] == 2
