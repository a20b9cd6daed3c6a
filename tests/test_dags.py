"""Real ``airflow dags test`` runs of the backup and restore-test DAGs."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory, keys_dir, source_cluster):
    from demo.airflow_env import airflow_env, migrate
    from tests.conftest import write_config

    directory = tmp_path_factory.mktemp("airflow")
    config_path = write_config(
        directory, keys_dir,
        regions={"fs-uio": {"kind": "filesystem", "path": str(directory / "uio")},
                 "fs-gye": {"kind": "filesystem", "path": str(directory / "gye")}},
        databases={"banca": {"dsn": source_cluster.dsn("banca"), "regions": ["fs-uio", "fs-gye"]}},
    )
    env = airflow_env(directory / "home", config_path)
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

    store = open_store(load_config(config_path))
    records = list(store.list())
    assert records[-1]["kind"] == "restore_test"
    assert records[-1]["outcome"] == "passed"
    assert records[-1]["body"]["rto_seconds"] > 0
    assert store.verify_chain().ok


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
