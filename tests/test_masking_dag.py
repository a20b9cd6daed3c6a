"""A real ``airflow dags test`` run of the masked refresh DAG on the demo bank database."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
import yaml

pytestmark = pytest.mark.airflow

POLICY_PATH = Path(__file__).resolve().parent.parent / "masking" / "examples" / "banca-policy.yaml"
TARGET_DATABASE = "banca_masked_qa"


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory, keys_dir, source_cluster):
    """A logical backup of ``banca``, a masking.yaml with target ``qa`` and a migrated Airflow home."""
    from backup.logical import run_logical_backup
    from demo.airflow_env import airflow_env, migrate
    from masking.keys import generate_key_file
    from masking.suppression import SuppressionList
    from resguardo.config import load_config
    from tests.conftest import write_config

    directory = tmp_path_factory.mktemp("masking-dag")
    config_path = write_config(
        directory, keys_dir,
        regions={"fs-uio": {"kind": "filesystem", "path": str(directory / "uio")}},
        databases={"banca": {"dsn": source_cluster.dsn("banca"), "regions": ["fs-uio"]}},
    )
    run_logical_backup(load_config(config_path), "banca")

    source_cluster.psql(f"DROP DATABASE IF EXISTS {TARGET_DATABASE}")
    source_cluster.create_database(TARGET_DATABASE)
    with psycopg.connect(source_cluster.dsn("banca")) as conn:
        cedulas = [row[0] for row in conn.execute("SELECT cedula FROM banca.clientes ORDER BY id").fetchall()]
    key = generate_key_file(directory / "masking.key")
    listing = SuppressionList(key)
    listing.add(cedulas[0], reference="caso-dag")
    listing.save(directory / "suppression.yaml")
    masking = {
        "key": {"file": "masking.key"},
        "databases": {"banca": {
            "policy": str(POLICY_PATH),
            "suppression_list": "suppression.yaml",
            # Two workers: masking spawns processes from inside the Airflow task.
            "workers": 2,
            "targets": {"qa": {"dsn": source_cluster.dsn(TARGET_DATABASE), "schedule": None}},
        }},
    }
    (directory / "masking.yaml").write_text(yaml.safe_dump(masking), encoding="utf-8")

    env = airflow_env(directory / "home", config_path)
    env.pop("RESGUARDO_MASKING_CONFIG", None)
    migrate(env)
    yield env, config_path, cedulas
    source_cluster.psql(f"DROP DATABASE IF EXISTS {TARGET_DATABASE}")


def test_masking_dag_loads_masked_copy(airflow_home, source_cluster):
    from demo.airflow_env import dags_test
    from evidence import open_store
    from resguardo.config import load_config

    env, config_path, cedulas = airflow_home
    result = dags_test("resguardo_masking_banca_qa", env, conf=json.dumps({"triggered_by": "pytest"}))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with psycopg.connect(source_cluster.dsn(TARGET_DATABASE)) as conn:
        masked = {row[0] for row in conn.execute("SELECT cedula FROM banca.clientes").fetchall()}
        accounts = conn.execute("SELECT count(*) FROM banca.cuentas").fetchone()[0]
        schemas = {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
    with psycopg.connect(source_cluster.dsn("banca")) as conn:
        source_accounts = conn.execute("SELECT count(*) FROM banca.cuentas").fetchone()[0]
        suppressed_accounts = conn.execute(
            "SELECT count(*) FROM banca.cuentas k JOIN banca.clientes c ON c.id = k.cliente_id WHERE c.cedula = %s",
            (cedulas[0],),
        ).fetchone()[0]
    assert len(masked) == len(cedulas) - 1
    assert not masked & set(cedulas)
    assert accounts == source_accounts - suppressed_accounts
    assert "_resguardo_masking" not in schemas

    records = [r for r in open_store(load_config(config_path)).list() if r["kind"] == "masking"]
    assert records[-1]["outcome"] == "passed"
    assert records[-1]["body"]["triggered_by"].startswith("pytest:")
    assert records[-1]["body"]["proof"]["outcome"] == "passed"
    assert records[-1]["body"]["masking"]["workers"] == 2
    assert records[-1]["body"]["suppression"]["deleted"]["banca.clientes"] == 1
    assert cedulas[0] not in json.dumps(records[-1], ensure_ascii=False)
