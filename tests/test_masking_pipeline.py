"""End to end: backup -> restore into scratch -> gate -> suppress -> mask -> proof -> export -> evidence."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
import yaml

from masking.demo import create_demo_schema, fill_demo_data
from masking.errors import PolicyError
from masking.keys import generate_key_file
from masking.pipeline import run_masked_refresh
from masking.suppression import SuppressionList
from restore.scratch import ScratchCluster
from tests.conftest import write_config

POLICY_PATH = Path(__file__).resolve().parent.parent / "masking" / "examples" / "demo-policy.yaml"


@pytest.fixture(autouse=True)
def english_messages(monkeypatch):
    """Assert on the English msgids; the Spanish catalog is checked by tests/test_i18n.py."""
    monkeypatch.setenv("RESGUARDO_LANG", "en")


@pytest.fixture(scope="module")
def demo_cluster():
    with ScratchCluster(name="masking-pipeline") as cluster:
        cluster.create_database("demo")
        with psycopg.connect(cluster.dsn("demo"), autocommit=True) as conn:
            create_demo_schema(conn)
            cedulas = fill_demo_data(conn, 150)
        cluster.cedulas = cedulas
        yield cluster


@pytest.fixture
def setup(tmp_path, keys_dir, demo_cluster):
    from backup.logical import run_logical_backup
    from resguardo.config import load_config

    config_path = write_config(
        tmp_path, keys_dir,
        regions={"fs-a": {"kind": "filesystem", "path": str(tmp_path / "a")},
                 "fs-masked": {"kind": "filesystem", "path": str(tmp_path / "masked")}},
        databases={"demo": {"dsn": demo_cluster.dsn("demo"), "regions": ["fs-a"]}},
    )
    config = load_config(config_path)
    run_logical_backup(config, "demo")
    demo_cluster.psql("DROP DATABASE IF EXISTS qa")
    demo_cluster.create_database("qa")

    key = generate_key_file(tmp_path / "masking.key")
    listing = SuppressionList(key)
    listing.add(demo_cluster.cedulas[0], reference="caso-1")
    listing.save(tmp_path / "suppression.yaml")
    masking = {
        "key": {"file": "masking.key"},
        "databases": {"demo": {
            "policy": str(POLICY_PATH),
            "suppression_list": "suppression.yaml",
            "targets": {
                "qa": {"dsn": demo_cluster.dsn("qa"), "schedule": "0 4 * * 1"},
                "vault": {"encrypted_dump_regions": ["fs-masked"]},
            },
        }},
    }
    (tmp_path / "masking.yaml").write_text(yaml.safe_dump(masking), encoding="utf-8")
    return config, tmp_path


def evidence_records(directory: Path) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((directory / "evidence").rglob("0*.json"))]


def test_refresh_loads_masked_copy_into_target(setup, demo_cluster):
    config, directory = setup
    body = run_masked_refresh(config, "demo", "qa", triggered_by="test")

    assert body["proof"]["outcome"] == "passed"
    assert body["suppression"]["deleted"]["public.clientes"] == 1
    with psycopg.connect(demo_cluster.dsn("qa")) as conn:
        cedulas = {r[0] for r in conn.execute("SELECT cedula FROM public.clientes").fetchall()}
        schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
    assert len(cedulas) == 149
    assert not cedulas & set(demo_cluster.cedulas)
    assert "_resguardo_masking" not in schemas

    records = [r for r in evidence_records(directory) if r["kind"] == "masking"]
    assert records[-1]["outcome"] == "passed"
    text = json.dumps(records[-1], ensure_ascii=False)
    assert demo_cluster.cedulas[0] not in text
    assert records[-1]["body"]["key_id"] == body["key_id"]


def test_second_refresh_replaces_target(setup, demo_cluster):
    config, directory = setup
    first = run_masked_refresh(config, "demo", "qa", triggered_by="test")
    assert first["export"]["kind"] == "database"
    # An object left in the target since the last refresh must not survive the next one.
    demo_cluster.psql("CREATE TABLE public.stale_copy (id int)", "qa")

    second = run_masked_refresh(config, "demo", "qa", triggered_by="test")

    assert second["proof"]["outcome"] == "passed"
    assert second["export"]["schemas_dropped"] >= 2
    with psycopg.connect(demo_cluster.dsn("qa")) as conn:
        count = conn.execute("SELECT count(*) FROM public.clientes").fetchone()[0]
        partitions = conn.execute("SELECT count(*) FROM public.movimientos_2026").fetchone()[0]
        stale = conn.execute("SELECT to_regclass('public.stale_copy')").fetchone()[0]
    assert count == 149
    assert partitions > 0
    assert stale is None


def test_refresh_to_encrypted_dump(setup):
    config, directory = setup
    body = run_masked_refresh(config, "demo", "vault", triggered_by="test")
    assert body["export"]["kind"] == "encrypted_dump"
    assert (directory / "masked" / body["export"]["key"]).exists()


def test_refresh_rejects_uncovered_column_and_records_failure(setup, demo_cluster):
    config, directory = setup
    demo_cluster.psql("ALTER TABLE public.clientes ADD COLUMN IF NOT EXISTS apodo text", "demo")
    from backup.logical import run_logical_backup

    try:
        # Name the backup: two backups taken within one second may sort either way under "latest".
        backup_id = run_logical_backup(config, "demo").backup_id
        with pytest.raises(PolicyError) as caught:
            run_masked_refresh(config, "demo", "qa", backup_id=backup_id, triggered_by="test")
        assert "public.clientes.apodo: no rule" in caught.value.message
        records = [r for r in evidence_records(directory) if r["kind"] == "masking"]
        assert records[-1]["outcome"] == "failed"
        with psycopg.connect(demo_cluster.dsn("qa")) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
    finally:
        demo_cluster.psql("ALTER TABLE public.clientes DROP COLUMN IF EXISTS apodo", "demo")


def test_refresh_rejects_unlisted_json_path(setup, demo_cluster):
    config, directory = setup
    demo_cluster.psql(
        "UPDATE public.clientes SET perfil = perfil || jsonb_build_object('referido', jsonb_build_object("
        "'correo', 'referido' || id || '@correo.ec', 'ci', '1714307103')) WHERE id IN (5, 6, 7)", "demo")
    from backup.logical import run_logical_backup

    try:
        backup_id = run_logical_backup(config, "demo").backup_id
        with pytest.raises(PolicyError) as caught:
            run_masked_refresh(config, "demo", "qa", backup_id=backup_id, triggered_by="test")
        assert "public.clientes.perfil: JSON path $.referido.ci" in caught.value.message
        assert "public.clientes.perfil: JSON path $.referido.correo" in caught.value.message
        records = [r for r in evidence_records(directory) if r["kind"] == "masking"]
        assert records[-1]["outcome"] == "failed"
        assert "1714307103" not in json.dumps(records[-1], ensure_ascii=False)
    finally:
        demo_cluster.psql("UPDATE public.clientes SET perfil = perfil - 'referido'", "demo")


def test_cli_keygen_suppress_and_discover(setup, demo_cluster, capsys, monkeypatch):
    import io

    from resguardo.cli import main

    config, directory = setup
    config_file = str(directory / "resguardo.yaml")
    assert main(["mask", "keygen", str(directory / "other.key")]) == 0
    assert (directory / "other.key").stat().st_mode & 0o777 == 0o600

    monkeypatch.setattr("sys.stdin", io.StringIO("1714307103\n0602910945\n1714307103\n"))
    assert main(["--config", config_file, "mask", "suppress", "add", "demo", "--reference", "caso-2"]) == 0
    listing = (directory / "suppression.yaml").read_text(encoding="utf-8")
    assert "1714307103" not in listing
    assert listing.count("hmac:") == 3

    capsys.readouterr()
    assert main(["--config", config_file, "mask", "discover", "demo", "--dsn", demo_cluster.dsn("demo"),
                 "--sample-rows", "50"]) == 0
    proposal = yaml.safe_load(capsys.readouterr().out)
    assert proposal["tables"]["public.clientes"]["columns"]["cedula"] == "cedula"


def test_dag_registers_one_dag_per_target(setup):
    import os
    import subprocess
    import sys

    config, directory = setup
    root = Path(__file__).resolve().parent.parent
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(root / 'dags')!r})\n"
        "import masking_refresh\n"
        "dag = masking_refresh.resguardo_masking_demo_qa\n"
        "print(sorted(n for n in dir(masking_refresh) if n.startswith('resguardo_masking_')))\n"
        "print(dag.doc_md.splitlines()[0])\n"
    )
    env = {**os.environ, "RESGUARDO_CONFIG": str(directory / "resguardo.yaml"), "RESGUARDO_LANG": "es",
           "AIRFLOW_HOME": str(directory / "airflow")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['resguardo_masking_demo_qa', 'resguardo_masking_demo_vault']" in result.stdout
    assert "Refresco enmascarado" in result.stdout


def test_clear_target_failure_names_database(demo_cluster):
    from masking.config import TargetConfig
    from masking.errors import MaskingError
    from masking.pipeline import clear_target_database

    with pytest.raises(MaskingError) as caught:
        clear_target_database(TargetConfig(dsn=demo_cluster.dsn("no_such_target")))
    assert "emptying the target database before the load failed" in caught.value.message
    assert "no_such_target" in caught.value.message
    assert "was not changed" in caught.value.hint
