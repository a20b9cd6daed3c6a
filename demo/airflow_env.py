"""Running Resguardo's DAGs with ``airflow dags test`` in a private AIRFLOW_HOME.

``airflow dags test`` runs every task of one DAG run in-process, with no
scheduler, against a SQLite metadata database that must be migrated first.
The demo and the tests use this to run the real DAG files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def airflow_env(home: Path, config_path: Path) -> dict[str, str]:
    """Return the environment for Airflow commands using ``home`` and ``config_path``."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "RESGUARDO_CONFIG": str(config_path),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
        }
    )
    return env


def airflow_bin() -> str:
    """Return the ``airflow`` executable beside the running Python."""
    return str(Path(sys.executable).with_name("airflow"))


def migrate(env: dict[str, str]) -> None:
    """Create the metadata database (SQLite under AIRFLOW_HOME)."""
    subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)


def dags_test(dag_id: str, env: dict[str, str], *, conf: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``airflow dags test DAG_ID`` and return the finished process (not checked)."""
    args = [airflow_bin(), "dags", "test", dag_id]
    if conf:
        args += ["--conf", conf]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=1200)
