"""The point-in-time recovery DAG file parses and builds one DAG pair per database with pitr.enabled.

Airflow is imported in a child process with its own ``AIRFLOW_HOME``, so
this test leaves no Airflow state behind and does not slow other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
sys.path.insert(0, {dags!r})
import pitr
dags = {{name: value for name, value in vars(pitr).items() if name.startswith("resguardo_")}}
print(json.dumps({{name: {{"dag_id": dag.dag_id, "tasks": [t.task_id for t in dag.tasks],
                          "schedule": getattr(dag.timetable, "_expression", None) or str(dag.timetable),
                          "doc": dag.doc_md}} for name, dag in dags.items()}}))
"""


def test_pitr_dags_parse(tmp_path):
    for name in ("a", "b", "evidence"):
        (tmp_path / name).mkdir()
    config = {
        "language": "es",
        "encryption": {"recipients": [str(tmp_path / "r.pub")]},
        "signing": {"public_key": str(tmp_path / "s.pub")},
        "evidence": {"region": "evidence"},
        "regions": {name: {"kind": "filesystem", "path": str(tmp_path / name)} for name in ("a", "b", "evidence")},
        "databases": {
            "core": {"dsn": "host=127.0.0.1 dbname=core", "regions": ["a", "b"],
                     "pitr": {"enabled": True, "base_backup_schedule": "0 3 * * *", "rpo_seconds": 120}},
            "reportes": {"dsn": "host=127.0.0.1 dbname=reportes", "regions": ["a"]},
        },
    }
    config_file = tmp_path / "resguardo.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = dict(os.environ, RESGUARDO_CONFIG=str(config_file), AIRFLOW_HOME=str(tmp_path / "airflow"),
               PYTHONPATH=str(ROOT))
    env.pop("RESGUARDO_LANG", None)
    result = subprocess.run([sys.executable, "-c", PROBE.format(dags=str(ROOT / "dags"))], capture_output=True,
                            text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dags = json.loads(result.stdout.strip().splitlines()[-1])

    assert sorted(dags) == ["resguardo_archive_check_core", "resguardo_basebackup_core"]
    assert dags["resguardo_basebackup_core"]["tasks"] == ["base_backup"]
    assert "0 3 * * *" in dags["resguardo_basebackup_core"]["schedule"]
    assert dags["resguardo_archive_check_core"]["tasks"] == ["archive_check"]
    assert "*/5 * * * *" in dags["resguardo_archive_check_core"]["schedule"]
    assert "Verificación del archivo WAL" in dags["resguardo_archive_check_core"]["doc"]
    assert "120 s" in dags["resguardo_archive_check_core"]["doc"]
    assert "Respaldo base de `core`" in dags["resguardo_basebackup_core"]["doc"]
