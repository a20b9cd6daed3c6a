"""The DR DAG objects: schedules, run types, trigger forms, task order and the failure alert.

The DAG files are imported as Airflow's DAG processor imports them (``dags/``
on ``sys.path``, ``RESGUARDO_CONFIG`` naming a config file); no DAG runs.
The alert goes to a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import copy
import http.server
import importlib
import json
import sys
import threading
import types
from pathlib import Path

import pytest
import yaml

pytest.importorskip("airflow.sdk")

from airflow.sdk import CronTriggerTimetable  # noqa: E402
from airflow.sdk.api.datamodels._generated import DagRunType  # noqa: E402
from airflow.sdk.definitions.param import ParamValidationError  # noqa: E402

DAGS_DIR = Path(__file__).resolve().parent.parent / "dags"


def resolve(params, name: str, value):
    """Validate ``value`` against a copy of Param ``name``; resolve() stores the value it accepts."""
    return copy.deepcopy(params.get_param(name)).resolve(value)


@pytest.fixture(scope="module")
def dag_modules(tmp_path_factory):
    """Import the three DR DAG files against a config with one database that has a standby."""
    from encryption.keys import generate_keypair

    base = tmp_path_factory.mktemp("dr-dags")
    generate_keypair(base, "recipient", "x25519")
    generate_keypair(base, "signing", "ed25519")
    for name in ("fs", "evidence"):
        (base / name).mkdir()
    config_file = base / "resguardo.yaml"
    config_file.write_text(yaml.safe_dump({
        "encryption": {"recipients": [str(base / "recipient.pub")]},
        "signing": {"public_key": str(base / "signing.pub")},
        "evidence": {"region": "evidence"},
        "regions": {"fs": {"kind": "filesystem", "path": str(base / "fs")},
                    "evidence": {"kind": "filesystem", "path": str(base / "evidence")}},
        "databases": {
            "core": {"dsn": "host=127.0.0.1 port=1 dbname=core", "regions": ["fs"], "pitr": {"enabled": True},
                     "dr": {"standby": {"dsn": "host=127.0.0.1 port=2 dbname=core"}}},
            "reports": {"dsn": "host=127.0.0.1 port=3 dbname=reports", "regions": ["fs"]},
        },
    }), encoding="utf-8")

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("RESGUARDO_CONFIG", str(config_file))
    monkeypatch.syspath_prepend(str(DAGS_DIR))
    common = importlib.import_module("_common")
    common.load_config.cache_clear()
    modules = {}
    for name in ("dr_rehearsal", "dr_failover", "dr_failback"):
        sys.modules.pop(name, None)
        modules[name] = importlib.import_module(name)
    yield modules
    common.load_config.cache_clear()
    for name in modules:
        sys.modules.pop(name, None)
    monkeypatch.undo()


# -- rehearsal ------------------------------------------------------------------------


def test_rehearsal_dag_quarterly_schedule(dag_modules):
    module = dag_modules["dr_rehearsal"]
    dag = module.resguardo_dr_rehearsal_core

    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.expression == "0 6 1 1,4,7,10 *"
    assert str(dag.timetable.timezone) == "America/Guayaquil"
    # Scheduled and manual runs are both allowed.
    assert dag.allowed_run_types is None
    assert not hasattr(module, "resguardo_dr_rehearsal_reports")


def test_rehearsal_dag_tasks_and_params(dag_modules):
    dag = dag_modules["dr_rehearsal"].resguardo_dr_rehearsal_core

    assert set(dag.task_ids) == {"rehearse_storage", "rehearse_replica", "verdict"}
    assert dag.get_task("rehearse_replica").upstream_task_ids == {"rehearse_storage"}
    assert dag.get_task("verdict").trigger_rule == "all_done"
    assert dag.params["scenarios"] == ["storage", "replica"]
    with pytest.raises(ParamValidationError):
        resolve(dag.params, "scenarios", ["nowhere"])
    with pytest.raises(ParamValidationError):
        resolve(dag.params, "scenarios", [])


# -- failover ------------------------------------------------------------------------


def test_failover_dag_manual_only(dag_modules):
    dag = dag_modules["dr_failover"].resguardo_dr_failover

    assert dag.allowed_run_types == frozenset({DagRunType.MANUAL})
    assert DagRunType.SCHEDULED not in dag.allowed_run_types
    assert not dag.timetable.can_be_scheduled
    assert all(dag.get_task(t).retries == 0 for t in dag.task_ids)


def test_failover_dag_task_order(dag_modules):
    dag = dag_modules["dr_failover"].resguardo_dr_failover
    order = ["check_request", "preflight", "fence", "promote", "switch_router", "write_probe", "smoke_checks",
             "base_backup", "record_evidence"]

    for before, after in zip(order, order[1:]):
        assert dag.get_task(after).upstream_task_ids == {before}


def test_failover_form_rejects_wrong_confirmation(dag_modules):
    params = dag_modules["dr_failover"].resguardo_dr_failover.params

    assert resolve(params, "confirmation", "FAILOVER") == "FAILOVER"
    for wrong in ("failover", "FAILOVER ", "yes", ""):
        with pytest.raises(ParamValidationError):
            resolve(params, "confirmation", wrong)


def test_failover_form_fields(dag_modules):
    params = dag_modules["dr_failover"].resguardo_dr_failover.params

    assert params.get_param("database").schema["enum"] == ["core"]
    with pytest.raises(ParamValidationError):
        resolve(params, "database", "reports")
    with pytest.raises(ParamValidationError):
        resolve(params, "reason", "too short")
    assert resolve(params, "reason", "primary site lost power") == "primary site lost power"
    assert params["accept_data_loss"] is False
    with pytest.raises(ParamValidationError):
        params.validate()  # reason and confirmation have no default: the form must fill them


def test_failover_task_rejects_scheduled_run(dag_modules):
    from airflow.sdk.exceptions import AirflowFailException

    task = dag_modules["dr_failover"].resguardo_dr_failover.get_task("check_request")
    params = {"database": "core", "reason": "primary site lost power", "confirmation": "FAILOVER",
              "accept_data_loss": False}
    for run_type in (DagRunType.SCHEDULED, DagRunType.BACKFILL, DagRunType.ASSET_TRIGGERED):
        dag_run = types.SimpleNamespace(run_type=run_type, run_id="r1", triggering_user_name=None)
        with pytest.raises(AirflowFailException):
            task.python_callable(params=params, dag_run=dag_run)

    dag_run = types.SimpleNamespace(run_type=DagRunType.MANUAL, run_id="r2", triggering_user_name="coordinador")
    run = task.python_callable(params=params, dag_run=dag_run)
    assert run["requested_by"] == "airflow:coordinador"


# -- failback ------------------------------------------------------------------------


def test_failback_dag_manual_only_with_form(dag_modules):
    dag = dag_modules["dr_failback"].resguardo_dr_failback

    assert dag.allowed_run_types == frozenset({DagRunType.MANUAL})
    assert dag.params["method"] == "auto"
    assert dag.params["switchover"] is False
    with pytest.raises(ParamValidationError):
        resolve(dag.params, "confirmation", "FAILOVER")
    assert dag.get_task("record_evidence").upstream_task_ids == {"switch_back"}


# -- alerts --------------------------------------------------------------------------


class _Webhook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook():
    _Webhook.received = []
    _Webhook.status = 200
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Webhook
    server.shutdown()
    server.server_close()


def _failure_context(dag, error: Exception) -> dict:
    return {
        "dag": dag,
        "dag_run": types.SimpleNamespace(run_id="scheduled__2026-04-01T11:00:00+00:00"),
        "task_instance": types.SimpleNamespace(task_id="verdict", log_url="http://127.0.0.1/log"),
        "exception": error,
    }


def test_notifier_posts_failed_rehearsal(dag_modules, webhook):
    from resguardo.errors import VerificationError

    url, handler = webhook
    notifier = dag_modules["dr_rehearsal"].DrAlertNotifier(webhook_url=url)

    error = VerificationError("RTO target missed: 4000 s measured, target 3600 s", "see the report")
    notifier(_failure_context(dag_modules["dr_rehearsal"].resguardo_dr_rehearsal_core, error))

    assert len(handler.received) == 1
    text = handler.received[0]["text"]
    assert "resguardo_dr_rehearsal_core" in text
    assert "RTO target missed" in text
    assert "verdict" in text


def test_notifier_reads_webhook_from_environment(dag_modules, webhook, monkeypatch):
    url, handler = webhook
    monkeypatch.setenv("RESGUARDO_DR_WEBHOOK_URL", url)

    module = dag_modules["dr_rehearsal"]
    module.DrAlertNotifier().notify(_failure_context(module.resguardo_dr_rehearsal_core, RuntimeError("boom")))

    assert "boom" in handler.received[0]["text"]


def test_alert_rejected_by_webhook_is_logged_not_raised(dag_modules, webhook):
    from drills.alerting import AlertError, alert_task_failure, post_alert

    url, handler = webhook
    handler.status = 500

    with pytest.raises(AlertError):
        post_alert("x", url=url)
    context = _failure_context(dag_modules["dr_failover"].resguardo_dr_failover, RuntimeError("boom"))
    assert alert_task_failure(context, title="DR", url=url) is False


def test_dag_docs_in_spanish(dag_modules):
    assert dag_modules["dr_rehearsal"].resguardo_dr_rehearsal_core.doc_md.startswith("### Ensayo de DR de `core`")
    assert dag_modules["dr_failover"].resguardo_dr_failover.doc_md.startswith("### Conmutación por error")
    assert dag_modules["dr_failback"].resguardo_dr_failback.doc_md.startswith("### Retorno después")


def test_dags_serialize_with_run_types(dag_modules):
    from airflow.serialization.serialized_objects import DagSerialization

    dags = [dag_modules["dr_rehearsal"].resguardo_dr_rehearsal_core, dag_modules["dr_failover"].resguardo_dr_failover,
            dag_modules["dr_failback"].resguardo_dr_failback]
    for dag in dags:
        restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert restored.allowed_run_types == dag.allowed_run_types
        assert set(restored.task_ids) == set(dag.task_ids)
