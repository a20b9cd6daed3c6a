"""Real ``airflow dags test`` runs of the backup and restore-test DAGs."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def moto_server():
    from tests.storage_servers import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory, keys_dir, source_cluster, moto_server):
    from demo.airflow_env import airflow_env, migrate
    from tests.conftest import write_config

    moto_server.client("sa-east-1").create_bucket(
        Bucket="banca-airflow", CreateBucketConfiguration={"LocationConstraint": "sa-east-1"})
    directory = tmp_path_factory.mktemp("airflow")
    config_path = write_config(
        directory, keys_dir,
        regions={"fs-uio": {"kind": "filesystem", "path": str(directory / "uio")},
                 # Credentials come only from the Airflow Connection below.
                 "s3-uio": {"kind": "s3", "bucket": "banca-airflow", "region": "sa-east-1",
                            "endpoint_url": moto_server.endpoint_url, "part_size_mib": 5,
                            "credentials": {"connection_id": "resguardo_s3_uio"}}},
        databases={"banca": {"dsn": source_cluster.dsn("banca"), "regions": ["fs-uio", "s3-uio"]}},
    )
    env = airflow_env(directory / "home", config_path)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        env.pop(variable, None)
    env["AWS_CONFIG_FILE"] = str(directory / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(directory / "no-aws-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["AIRFLOW_CONN_RESGUARDO_S3_UIO"] = json.dumps(
        {"conn_type": "aws", "login": "airflow-key-id", "password": "airflow-secret"})
    migrate(env)
    return env, config_path


def test_backup_then_restore_test_dags(airflow_home):
    from demo.airflow_env import dags_test
    from evidence import open_store
    from resguardo.config import load_config

    env, config_path = airflow_home
    backup = dags_test("resguardo_backup_banca", env)
    assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr[-3000:]

    restore = dags_test("resguardo_restore_test_banca", env)
    assert restore.returncode == 0, restore.stdout[-3000:] + restore.stderr[-3000:]

    config = load_config(config_path)
    store = open_store(config)
    records = list(store.list())
    assert records[-1]["kind"] == "restore_test"
    assert records[-1]["outcome"] == "passed"
    assert records[-1]["body"]["rto_seconds"] > 0
    assert store.verify_chain().ok
    read = [row for row in records[-1]["body"]["regions"] if row["ok"]]
    assert read[0]["region"] in ("fs-uio", "s3-uio")
    backup_id = records[-1]["subject"]["backup_id"]
    s3_keys = [o["Key"] for o in __import__("boto3").client(
        "s3", endpoint_url=config.regions["s3-uio"].endpoint_url, region_name="sa-east-1",
        aws_access_key_id="x", aws_secret_access_key="y").list_objects_v2(Bucket="banca-airflow")["Contents"]]
    assert f"banca/logical/{backup_id}/manifest.json" in s3_keys

    chain = dags_test("resguardo_evidence_verify", env)
    assert chain.returncode == 0, chain.stdout[-3000:] + chain.stderr[-3000:]


def test_dag_docs_follow_language(airflow_home):
    import subprocess
    import sys

    env, _ = airflow_home
    script = (
        "import os, sys\n"
        "sys.path.insert(0, os.environ['AIRFLOW__CORE__DAGS_FOLDER'])\n"
        "import logical_backup\n"
        "print(logical_backup.resguardo_backup_banca.doc_md)\n"
        "print(logical_backup.resguardo_restore_test_banca.doc_md)\n"
    )
    spanish = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert spanish.returncode == 0, spanish.stderr[-2000:]
    assert "Respaldo lógico de `banca`" in spanish.stdout
    assert "Prueba de restauración de `banca`" in spanish.stdout
    english = subprocess.run([sys.executable, "-c", script], env={**env, "RESGUARDO_LANG": "en"},
                             capture_output=True, text=True, timeout=300)
    assert "Logical backup of `banca`" in english.stdout
