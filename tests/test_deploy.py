"""Tests of the deployment files: roles, OpenID Connect login, the evidence viewer, metrics and manifests.

Real components throughout. FAB's own authorization code decides who may
trigger what, and Authlib builds the login redirects. The evidence viewer
reads a real filesystem evidence chain, and metrics travel over UDP to a
socket on 127.0.0.1. When promtool is installed, it runs the alert rule
unit tests.
Compose and Helm files cannot run here (no container engine), so they are
checked structurally. Tests marked ``airflow`` migrate a SQLite metadata
database and take about 20 s.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import runpy
import shutil
import socket
import string
import subprocess
import sys
import threading
import types
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "plugins"
WEBSERVER_CONFIG = ROOT / "deploy" / "airflow" / "webserver_config.py"
RULES = ROOT / "deploy" / "monitoring" / "prometheus-rules.yaml"
STATSD_MAPPING = ROOT / "deploy" / "monitoring" / "statsd-mapping.yaml"
HELM_VALUES = ROOT / "deploy" / "helm" / "values-production.yaml"
COMPOSE = ROOT / "docker-compose.yml"

if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy.airflow import roles as roles_module  # noqa: E402
from deploy.airflow.roles import (  # noqa: E402
    DR_KINDS,
    EVIDENCE_RESOURCE,
    ROLE_AUTOMATION,
    ROLE_COMPLIANCE,
    ROLE_DBA,
    ROLE_DR_COORDINATOR,
    build_roles,
    can_trigger,
    dag_ids_by_kind,
    trigger_matrix,
)

DATABASES = {"core": None, "cartera": None}


def _pitr(enabled: bool):
    return types.SimpleNamespace(pitr=types.SimpleNamespace(enabled=enabled))


@pytest.fixture
def planned_roles():
    ids = dag_ids_by_kind({"core": _pitr(True), "cartera": _pitr(True)}, {"core": ["qa", "dev"]})
    return ids, build_roles(ids)


# -- roles ----------------------------------------------------------------------------------


def test_dag_kinds_match_dag_files():
    # Every dag_id written in dags/*.py must be one of the known templates,
    # so a renamed DAG cannot escape the role rules.
    templates = {re.sub(r"\{[^}]*\}", "{}", kind.template) for kind in roles_module.DAG_KINDS}
    found = set()
    for path in (ROOT / "dags").glob("*.py"):
        for match in re.finditer(r'dag_id=f?"(resguardo_[^"]+)"', path.read_text(encoding="utf-8")):
            found.add(re.sub(r"\{[^}]*\}", "{}", match.group(1)))
    assert found, "no dag_id found in dags/*.py"
    assert found <= templates, f"DAG ids without a role rule: {sorted(found - templates)}"
    assert templates <= found, f"role rules for DAGs that no file defines: {sorted(templates - found)}"


def test_only_dr_coordinator_triggers_dr_dags(planned_roles):
    ids, roles = planned_roles
    dr_ids = [dag_id for kind in DR_KINDS for dag_id in ids[kind]]
    assert dr_ids == ["resguardo_dr_rehearsal_cartera", "resguardo_dr_rehearsal_core",
                      "resguardo_dr_failover", "resguardo_dr_failback"]
    for dag_id, allowed in trigger_matrix(roles, dr_ids).items():
        assert allowed == [ROLE_DR_COORDINATOR], dag_id


def test_dba_and_automation_trigger_operations(planned_roles):
    ids, roles = planned_roles
    for kind in ("backup", "restore_test", "basebackup", "archive_check"):
        for dag_id in ids[kind]:
            assert can_trigger(roles[ROLE_DBA], dag_id), dag_id
            assert can_trigger(roles[ROLE_AUTOMATION], dag_id), dag_id
            assert not can_trigger(roles[ROLE_DR_COORDINATOR], dag_id), dag_id
            assert not can_trigger(roles[ROLE_COMPLIANCE], dag_id), dag_id
    assert ids["masking"] == ["resguardo_masking_core_dev", "resguardo_masking_core_qa"]
    for dag_id in ids["masking"]:
        assert trigger_matrix(roles, [dag_id])[dag_id] == [ROLE_DBA]


def test_compliance_role_is_read_only(planned_roles):
    _ids, roles = planned_roles
    actions = {action for action, _resource in roles[ROLE_COMPLIANCE]}
    assert actions == {"can_read", "menu_access"}
    assert ("can_read", EVIDENCE_RESOURCE) in roles[ROLE_COMPLIANCE]
    assert ("can_read", "Task Logs") in roles[ROLE_COMPLIANCE]
    assert ("can_read", "DAG Runs") in roles[ROLE_COMPLIANCE]


def test_no_role_has_global_write(planned_roles):
    _ids, roles = planned_roles
    for role, permissions in roles.items():
        for action, resource in permissions:
            if action in ("can_edit", "can_create", "can_delete"):
                assert resource.startswith(("DAG:", "DAG Run:")), (role, action, resource)
    assert ("can_read", EVIDENCE_RESOURCE) not in roles[ROLE_AUTOMATION]


def test_pitr_disabled_has_no_basebackup_dags():
    ids = dag_ids_by_kind({"core": _pitr(False)}, {})
    assert ids["basebackup"] == []
    assert ids["archive_check"] == []
    assert ids["backup"] == ["resguardo_backup_core"]
    assert ids["failover"] == ["resguardo_dr_failover"]
    assert ids["dr_rehearsal"] == ["resguardo_dr_rehearsal_core"]


def test_can_trigger_agrees_with_fab(planned_roles):
    pytest.importorskip("airflow.providers.fab")
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager

    manager = FabAuthManager()
    ids, roles = planned_roles
    all_ids = [dag_id for kind_ids in ids.values() for dag_id in kind_ids]
    for role, permissions in roles.items():
        user = types.SimpleNamespace(perms=set(permissions))
        for dag_id in all_ids:
            fab_says = manager.is_authorized_dag(
                method="POST", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
            )
            assert fab_says == can_trigger(permissions, dag_id), (role, dag_id)
            # Reading runs is open to every Resguardo role.
            assert manager.is_authorized_dag(
                method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
            ), (role, dag_id)


def test_custom_roles_json_parsed_by_fab(planned_roles, monkeypatch):
    pytest.importorskip("airflow.providers.fab")
    from airflow.providers.fab.auth_manager.security_manager.override import FabAirflowSecurityManagerOverride

    _ids, roles = planned_roles
    monkeypatch.setenv("AIRFLOW__FAB__CUSTOM_ROLES", roles_module.custom_roles_json(roles))
    parsed = FabAirflowSecurityManagerOverride._get_custom_roles_config(None)
    assert {role: set(permissions) for role, permissions in parsed.items()} == roles


# -- OpenID Connect login ----------------------------------------------------------------------


OIDC_ENV = ("RESGUARDO_OIDC_PROVIDER", "RESGUARDO_OIDC_CLIENT_ID", "RESGUARDO_OIDC_CLIENT_SECRET",
            "RESGUARDO_OIDC_CLIENT_SECRET_FILE", "RESGUARDO_OIDC_AZURE_TENANT_ID", "RESGUARDO_OIDC_AZURE_ROLE_CLAIM",
            "RESGUARDO_OIDC_AUTH0_DOMAIN", "RESGUARDO_SESSION_MINUTES",
            "RESGUARDO_OIDC_GROUP_DBA", "RESGUARDO_OIDC_GROUP_COMPLIANCE", "RESGUARDO_OIDC_GROUP_DR",
            "RESGUARDO_OIDC_GROUP_AUTOMATION", "RESGUARDO_OIDC_GROUP_ADMIN")
TENANT = "3f2b8c1e-6d4a-4e0b-9c7a-1b2c3d4e5f60"


@pytest.fixture
def oidc_env(monkeypatch):
    pytest.importorskip("flask_appbuilder")
    for name in OIDC_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RESGUARDO_LANG", "en")
    monkeypatch.setenv("RESGUARDO_OIDC_CLIENT_ID", "resguardo-airflow")
    monkeypatch.setenv("RESGUARDO_OIDC_CLIENT_SECRET", "test-only-client-secret")
    return monkeypatch


def _authorization_url(remote_app: dict, provider: str) -> dict[str, list[str]]:
    """Start a login with Authlib as FAB does; return the redirect URL's query parameters."""
    from authlib.integrations.flask_client import OAuth
    from flask import Flask

    app = Flask("login-test")
    app.secret_key = "test-only-flask-key"
    client = OAuth(app).register(provider, **remote_app)
    with app.test_request_context():
        started = client.create_authorization_url(f"https://airflow.example/auth/oauth-authorized/{provider}")
    parts = urlsplit(started["url"])
    query = parse_qs(parts.query)
    query["_host"] = [parts.netloc]
    query["_path"] = [parts.path]
    return query


def test_azure_login_uses_pkce(oidc_env):
    oidc_env.setenv("RESGUARDO_OIDC_PROVIDER", "azure")
    oidc_env.setenv("RESGUARDO_OIDC_AZURE_TENANT_ID", TENANT)
    oidc_env.setenv("RESGUARDO_OIDC_GROUP_DBA", "Resguardo.DBA, Resguardo.Ops")
    oidc_env.setenv("RESGUARDO_OIDC_GROUP_DR", "Resguardo.DR")
    settings = runpy.run_path(str(WEBSERVER_CONFIG))

    (provider,) = settings["OAUTH_PROVIDERS"]
    assert provider["name"] == "azure"
    assert provider["remote_app"]["client_kwargs"]["tenant_id"] == TENANT
    assert provider["remote_app"]["client_kwargs"]["verify_signature"] is True
    assert settings["AUTH_ROLES_MAPPING"] == {
        "Resguardo.DBA": ["resguardo_dba"], "Resguardo.Ops": ["resguardo_dba"], "Resguardo.DR": ["resguardo_dr_coordinator"],
    }
    assert settings["AUTH_ROLES_SYNC_AT_LOGIN"] is True
    assert settings["AUTH_USER_REGISTRATION_ROLE"] == "Public"
    assert settings["AUTH_OAUTH_ROLE_KEYS"] == {"azure": "roles"}

    query = _authorization_url(provider["remote_app"], "azure")
    assert query["_host"] == ["login.microsoftonline.com"]
    assert query["_path"] == [f"/{TENANT}/oauth2/v2.0/authorize"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) >= 43
    assert query["response_type"] == ["code"]
    assert query["client_id"] == ["resguardo-airflow"]
    assert "nonce" in query
    assert "test-only-client-secret" not in json.dumps(query)


class _DiscoveryHandler(http.server.BaseHTTPRequestHandler):
    document = {
        "issuer": "https://banco-test.auth0.example/",
        "authorization_endpoint": "https://banco-test.auth0.example/authorize",
        "token_endpoint": "https://banco-test.auth0.example/oauth/token",
        "userinfo_endpoint": "https://banco-test.auth0.example/userinfo",
        "jwks_uri": "https://banco-test.auth0.example/.well-known/jwks.json",
    }

    def do_GET(self):  # noqa: N802 - http.server's method name
        body = json.dumps(self.document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_auth0_login_uses_pkce(oidc_env):
    oidc_env.setenv("RESGUARDO_OIDC_PROVIDER", "auth0")
    oidc_env.setenv("RESGUARDO_OIDC_AUTH0_DOMAIN", "https://banco-test.auth0.example/")
    settings = runpy.run_path(str(WEBSERVER_CONFIG))
    (provider,) = settings["OAUTH_PROVIDERS"]
    remote_app = dict(provider["remote_app"])
    assert remote_app["server_metadata_url"] == "https://banco-test.auth0.example/.well-known/openid-configuration"
    assert remote_app["client_kwargs"]["code_challenge_method"] == "S256"

    # A stand-in for the tenant's discovery document, on 127.0.0.1.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DiscoveryHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        oidc_env.setenv("NO_PROXY", "127.0.0.1")
        remote_app["server_metadata_url"] = f"http://127.0.0.1:{server.server_port}/.well-known/openid-configuration"
        query = _authorization_url(remote_app, "auth0")
    finally:
        server.shutdown()
        server.server_close()
    assert query["_host"] == ["banco-test.auth0.example"]
    assert query["_path"] == ["/authorize"]
    assert query["code_challenge_method"] == ["S256"]
    assert query["scope"] == ["openid email profile"]


def test_oidc_settings_rejected(oidc_env, tmp_path):
    from resguardo.errors import ConfigError

    with pytest.raises(ConfigError, match="RESGUARDO_OIDC_PROVIDER is not set"):
        runpy.run_path(str(WEBSERVER_CONFIG))

    oidc_env.setenv("RESGUARDO_OIDC_PROVIDER", "keycloak")
    with pytest.raises(ConfigError, match="not a supported identity provider"):
        runpy.run_path(str(WEBSERVER_CONFIG))

    oidc_env.setenv("RESGUARDO_OIDC_PROVIDER", "azure")
    with pytest.raises(ConfigError, match="RESGUARDO_OIDC_AZURE_TENANT_ID is not set"):
        runpy.run_path(str(WEBSERVER_CONFIG))

    oidc_env.setenv("RESGUARDO_OIDC_AZURE_TENANT_ID", TENANT)
    oidc_env.setenv("RESGUARDO_OIDC_CLIENT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="could not be read"):
        runpy.run_path(str(WEBSERVER_CONFIG))

    secret_file = tmp_path / "client-secret"
    secret_file.write_text("from-a-mounted-file\n", encoding="utf-8")
    oidc_env.setenv("RESGUARDO_OIDC_CLIENT_SECRET_FILE", str(secret_file))
    settings = runpy.run_path(str(WEBSERVER_CONFIG))
    assert settings["OAUTH_PROVIDERS"][0]["remote_app"]["client_secret"] == "from-a-mounted-file"

    oidc_env.setenv("RESGUARDO_SESSION_MINUTES", "0")
    with pytest.raises(ConfigError, match="RESGUARDO_SESSION_MINUTES"):
        runpy.run_path(str(WEBSERVER_CONFIG))


# -- evidence viewer ------------------------------------------------------------------------------


@pytest.fixture
def evidence_config(tmp_path, keys_dir):
    from conftest import write_config
    from evidence import open_store
    from resguardo.config import load_config

    config = load_config(write_config(tmp_path, keys_dir, regions={}, databases={}))
    store = open_store(config, writable=True)
    store.append("restore_test", "core", {"backup_id": "20261204T201500Z-3f9a"}, "passed",
                 {"rto_seconds": 380.5, "rto_target_seconds": 3600, "triggered_by": "airflow:test"})
    store.append("restore_test", "cartera", {"backup_id": "20261204T203000Z-a1b2"}, "failed",
                 {"rto_seconds": 12.0, "triggered_by": "airflow:test"})
    return tmp_path, config


@pytest.fixture
def viewer(evidence_config, monkeypatch):
    """A client of the viewer mounted under its URL prefix, and a function to log a user in."""
    pytest.importorskip("airflow.providers.fab")
    from airflow.api_fastapi import app as api_app
    from airflow.api_fastapi.core_api.security import get_user
    from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    import resguardo_evidence

    monkeypatch.setenv("RESGUARDO_LANG", "es")
    _tmp, config = evidence_config
    app = resguardo_evidence.create_app(load_config=lambda: config)
    root = FastAPI()
    root.mount(resguardo_evidence.URL_PREFIX, app)
    monkeypatch.setattr(api_app._AuthManagerState, "instance", FabAuthManager())

    def log_in(permissions: set[tuple[str, str]]) -> None:
        user = types.SimpleNamespace(perms=permissions, get_id=lambda: "42")
        app.dependency_overrides[get_user] = lambda: user

    return TestClient(root), log_in


VIEWER_ROUTES = ("/", "/records/0", "/verify", "/api/records", "/api/records/0", "/api/verify")


def test_evidence_viewer_requires_login(viewer):
    client, _log_in = viewer
    for route in VIEWER_ROUTES:
        response = client.get(f"/resguardo-evidence{route}")
        assert response.status_code == 401, route


def test_evidence_viewer_forbidden_without_permission(viewer):
    client, log_in = viewer
    log_in({("can_read", "DAGs")})
    for route in VIEWER_ROUTES:
        response = client.get(f"/resguardo-evidence{route}")
        assert response.status_code == 403, route


def test_evidence_viewer_lists_and_shows(viewer):
    client, log_in = viewer
    log_in({("can_read", EVIDENCE_RESOURCE)})

    index = client.get("/resguardo-evidence/")
    assert index.status_code == 200
    assert '<html lang="es">' in index.text
    assert "Registros de evidencia" in index.text
    assert index.text.index("cartera") < index.text.index("core")  # newest first
    assert index.text.count("válida") == 2

    record = client.get("/resguardo-evidence/records/0")
    assert record.status_code == 200
    assert "Registro de evidencia 0" in record.text
    assert "<table>" in record.text or "<ul>" in record.text

    listing = client.get("/resguardo-evidence/api/records", params={"database": "core"}).json()
    assert [item["database"] for item in listing["records"]] == ["core"]
    assert listing["records"][0]["signature_valid"] is True

    verified = client.get("/resguardo-evidence/api/verify").json()
    assert verified["ok"] is True
    assert verified["records"] == 2
    page = client.get("/resguardo-evidence/verify")
    assert "La cadena está íntegra." in page.text


def test_evidence_viewer_reports_tampering(viewer, evidence_config):
    client, log_in = viewer
    log_in({("can_read", EVIDENCE_RESOURCE)})
    tmp_path, _config = evidence_config

    # An edit by someone with write access to the bucket but not the key.
    (path,) = sorted((tmp_path / "evidence" / "evidence").glob("000000000000-*.json"))
    document = json.loads(path.read_text(encoding="utf-8"))
    document["outcome"] = "failed"
    path.write_text(json.dumps(document), encoding="utf-8")

    verified = client.get("/resguardo-evidence/api/verify").json()
    assert verified["ok"] is False
    assert "bad_signature" in {problem["kind"] for problem in verified["problems"]}
    assert "La cadena está dañada" in client.get("/resguardo-evidence/verify").text
    shown = client.get("/resguardo-evidence/api/records/0").json()
    assert shown["signature_valid"] is False


def test_evidence_viewer_unknown_record(viewer):
    client, log_in = viewer
    log_in({("can_read", EVIDENCE_RESOURCE)})
    response = client.get("/resguardo-evidence/api/records/99")
    assert response.status_code == 404
    assert "99" in response.json()["error"]
    assert client.get("/resguardo-evidence/records/99").status_code == 404


# -- metrics --------------------------------------------------------------------------------------


@pytest.fixture
def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def _received(sock: socket.socket, count: int) -> list[str]:
    lines = []
    while len(lines) < count:
        data, _address = sock.recvfrom(65535)
        lines.extend(data.decode().splitlines())
    return lines


def test_run_metrics_sent_over_statsd(udp_socket, monkeypatch):
    pytest.importorskip("statsd")
    from airflow.observability import stats
    from airflow.observability.metrics import stats_utils

    import resguardo_metrics

    port = udp_socket.getsockname()[1]
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(port))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
    from airflow._shared.observability.metrics import stats as stats_state

    saved = (stats_state._factory, stats_state._backend, stats_state._export_legacy_names)
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    try:
        listener = resguardo_metrics.ResguardoRunListener(clock=lambda: 1_800_000_000.0)
        run = types.SimpleNamespace(dag_id="resguardo_dr_failover", run_id="manual__1", conf={"database": "core"})
        listener.on_dag_run_running(dag_run=run, msg="")
        listener.on_dag_run_failed(dag_run=types.SimpleNamespace(dag_id="resguardo_restore_test_core", run_id="r2"),
                                   msg="")
        listener.on_dag_run_success(dag_run=types.SimpleNamespace(dag_id="etl_daily", run_id="r3"), msg="")
        lines = _received(udp_socket, 5)
    finally:
        stats_state._factory, stats_state._backend, stats_state._export_legacy_names = saved
    assert lines == [
        "airflow.resguardo.dagrun.started.failover.core:1|c",
        "airflow.resguardo.dagrun.last_start_timestamp.failover.core:1800000000.0|g",
        "airflow.resguardo.dagrun.failed.restore_test.core:1|c",
        "airflow.resguardo.dagrun.last_failure_timestamp.restore_test.core:1800000000.0|g",
        "airflow.resguardo.dagrun.last_outcome.restore_test.core:0|g",
    ]


def test_task_metric_failure_is_logged_not_raised(caplog):
    import resguardo_metrics

    class Broken:
        dag_id = "resguardo_archive_check_core"
        task_id = "archive_check"
        run_id = "r1"

        def xcom_pull(self, **kwargs):
            raise RuntimeError("supervisor gone")

    listener = resguardo_metrics.ResguardoRunListener(task_stats=types.SimpleNamespace())
    listener.on_task_instance_success(previous_state=None, task_instance=Broken())
    assert any(record.getMessage() == "metrics.task.failed" for record in caplog.records)


def _glob_map(name: str, mappings: list[dict]) -> tuple[str, dict[str, str]] | None:
    """Apply statsd-exporter glob mappings (``*`` is one dot-free segment)."""
    for mapping in mappings:
        pattern = "^" + re.escape(mapping["match"]).replace(r"\*", "([^.]+)") + "$"
        match = re.match(pattern, name)
        if not match:
            continue

        def fill(template: str) -> str:
            return re.sub(r"\$\{?(\d+)\}?", lambda ref: match.group(int(ref.group(1))), template)

        return fill(mapping["name"]), {key: fill(value) for key, value in mapping.get("labels", {}).items()}
    return None


def test_mapping_feeds_every_alert_series():
    import resguardo_metrics

    mappings = yaml.safe_load(STATSD_MAPPING.read_text(encoding="utf-8"))["mappings"]
    helm_mappings = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))["statsd"]["extraMappings"]
    assert helm_mappings == mappings

    produced = set()
    kinds = {kind for _prefix, kind in resguardo_metrics.KIND_PREFIXES} | set(resguardo_metrics.SHARED_DAGS.values())
    for kind in kinds:
        for metric in ("started", "succeeded", "failed", "last_start_timestamp", "last_success_timestamp",
                       "last_failure_timestamp", "last_outcome"):
            name, labels = _glob_map("airflow." + resguardo_metrics.run_metric(metric, kind, "core-1"), mappings)
            assert labels == {"kind": kind, "database": "core-1"}
            produced.add(name)
        for field in resguardo_metrics.VALUE_FIELDS:
            name, labels = _glob_map("airflow." + resguardo_metrics.value_metric(kind, field, "core_qa"), mappings)
            assert labels == {"database": "core_qa"}
            produced.add(name)

    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= set(re.findall(r"\bresguardo_[a-z_]+", rule["expr"]))
    assert used, "no resguardo series in the rules"
    assert used <= produced, f"alert series nobody emits: {sorted(used - produced)}"


REQUIRED_ALERTS = {
    "ResguardoBackupMissing", "ResguardoRestoreTestFailed", "ResguardoEvidenceChainInvalid",
    "ResguardoWalArchiveLagOverRpo", "ResguardoDrRehearsalTargetMissed", "ResguardoFailoverStarted",
}


def test_alert_rules_complete():
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert REQUIRED_ALERTS <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["labels"]["team"] in ("dba", "dr"), name
        assert rule["annotations"]["summary"], name
        assert "for" in rule, name
    assert alerts["ResguardoFailoverStarted"]["labels"]["team"] == "dr"


def _promtool() -> str | None:
    return os.environ.get("RESGUARDO_PROMTOOL") or shutil.which("promtool")


@pytest.mark.skipif(_promtool() is None, reason="promtool not installed (set RESGUARDO_PROMTOOL to its path)")
def test_alert_rules_pass_promtool():
    checked = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([_promtool(), "test", "rules", "prometheus-rules.test.yaml"], cwd=RULES.parent,
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# -- compose and Helm ---------------------------------------------------------------------------------


def _image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_compose_services_limited_and_pinned():
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker", "airflow-init", "statsd-exporter", "prometheus",
            "alertmanager"} <= set(services)
    for name, service in services.items():
        assert _image_is_pinned(service["image"]), (name, service["image"])
        resources = service["deploy"]["resources"]
        for section in ("reservations", "limits"):
            assert resources[section]["cpus"], (name, section)
            assert resources[section]["memory"], (name, section)
        if name != "airflow-init":
            assert service["healthcheck"]["test"], name
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert services["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]
    assert "/api/v2/version" in " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    env = services["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert "FROM apache/airflow:3.3.2-python3.11" in dockerfile


HELM_COMPONENTS = ("apiServer", "scheduler", "dagProcessor", "triggerer", "workers", "pgbouncer")


def test_helm_values_highly_available():
    values = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))
    for name in HELM_COMPONENTS:
        component = values[name]
        assert component["replicas"] >= 2, name
        assert component["podDisruptionBudget"]["enabled"] is True, name
        zones = [item for item in component["topologySpreadConstraints"]
                 if item["topologyKey"] == "topology.kubernetes.io/zone"]
        assert zones and zones[0]["whenUnsatisfiable"] == "DoNotSchedule", name

    # Every container the chart renders from these values has requests and limits.
    containers = [values[name]["resources"] for name in HELM_COMPONENTS]
    containers += [values[name]["logGroomerSidecar"]["resources"] for name in
                   ("scheduler", "dagProcessor", "triggerer", "workers")]
    containers += [values["pgbouncer"]["metricsExporterSidecar"]["resources"], values["statsd"]["resources"],
                   values["migrateDatabaseJob"]["resources"]]
    for resources in containers:
        for section in ("requests", "limits"):
            assert resources[section]["cpu"] and resources[section]["memory"], resources

    assert values["apiServer"]["hpa"]["enabled"] is True
    assert values["apiServer"]["hpa"]["minReplicaCount"] >= 2
    assert values["workers"]["keda"]["enabled"] is True
    assert values["workers"]["keda"]["minReplicaCount"] >= 2
    assert values["pgbouncer"]["enabled"] is True
    assert values["statsd"]["enabled"] is True
    assert values["postgresql"]["enabled"] is False
    assert values["data"]["metadataSecretName"]
    assert values["createUserJob"]["enabled"] is False
    assert values["airflowVersion"] == "3.3.2"
    assert values["defaultAirflowTag"] not in ("", "latest")


# Shapes of secrets that must never be committed: cloud keys, private keys,
# and a secret-named key with a literal value. References (env names,
# ${VAR} interpolation, secret names, file paths) are allowed.
ANY_FILE = (".yml", ".yaml", ".py", "")
SECRET_PATTERNS = (
    (ANY_FILE, re.compile(r"AKIA[0-9A-Z]{16}")),
    (ANY_FILE, re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    (ANY_FILE, re.compile(r"hooks\.slack\.com/services/|webhook\.office\.com/webhookb2/")),
    # YAML: a key ending in a secret word, then a literal value.
    ((".yml", ".yaml", ""), re.compile(
        r"(?im)^[ \t-]*\"?[a-z_]*(?:password|secret|secret_key|token|fernet_key)\"?[ \t]*:[ \t]*"
        r"(?!\$\{)(?!/)[\"']?[A-Za-z0-9+=_.-]{6,}")),
    # Python: a secret-named variable or key assigned a string literal.
    ((".py",), re.compile(
        r"(?i)[a-z_]*(?:password|secret|token)[\"']?[ \t]*[=:][ \t]*[\"'][^\"'\s]{6,}[\"']")),
)


def _deploy_files() -> list[Path]:
    files = [COMPOSE, *sorted((ROOT / "deploy").rglob("*")), *sorted(PLUGINS.rglob("*.py"))]
    return [path for path in files if path.is_file() and path.suffix in ANY_FILE and path.name != "setup.sh"
            and "__pycache__" not in path.parts]


def test_no_secret_literal_in_deploy_files():
    found = []
    for path in _deploy_files():
        text = path.read_text(encoding="utf-8")
        for suffixes, pattern in SECRET_PATTERNS:
            if path.suffix not in suffixes:
                continue
            for match in pattern.finditer(text):
                found.append(f"{path.relative_to(ROOT)}: {match.group(0).strip()}")
    assert found == []


def _finds_secret(text: str, suffix: str) -> bool:
    return any(pattern.search(text) for suffixes, pattern in SECRET_PATTERNS if suffix in suffixes)


def test_secret_scan_catches_literal():
    assert _finds_secret("password: hunter2hunter2", ".yaml")
    assert _finds_secret('  AIRFLOW__API__SECRET_KEY: "s3cr3tvalue"', ".yml")
    assert _finds_secret('CLIENT_SECRET = "abcdefgh"', ".py")
    assert _finds_secret('"client_secret": "abcdefgh"', ".py")
    assert _finds_secret("key: -----BEGIN PRIVATE KEY-----", ".yaml")
    assert not _finds_secret("POSTGRES_PASSWORD: ${AIRFLOW_DB_PASSWORD:?set it}", ".yml")
    assert not _finds_secret("secretName: resguardo-oidc", ".yaml")
    assert not _finds_secret("client_secret: /run/secrets/client-secret", ".yaml")
    assert not _finds_secret('"client_secret": client_secret,', ".py")


def test_deploy_messages_translated():
    from babel.messages.extract import extract_from_file

    from resguardo import i18n

    catalog = i18n.load_catalog("es")
    files = [*(ROOT / "deploy").rglob("*.py"), *PLUGINS.rglob("*.py")]
    missing, wrong = [], []
    for path in files:
        for _lineno, message, _comments, _context in extract_from_file("python", str(path), keywords={"_": None}):
            if message not in catalog:
                missing.append(message)
                continue
            placeholders = {name for _, name, _, _ in string.Formatter().parse(message) if name}
            translated = {name for _, name, _, _ in string.Formatter().parse(catalog[message]) if name}
            if placeholders != translated:
                wrong.append(message)
    assert missing == []
    assert wrong == []


# -- against a real Airflow metadata database -----------------------------------------------------------


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    """A migrated SQLite metadata database with the FAB auth manager; returns the environment."""
    pytest.importorskip("airflow.providers.fab")
    home = tmp_path_factory.mktemp("airflow-home")
    (home / "dags").mkdir()
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    })
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return home, env


READ_BACK = """
import json, sys, types
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager

manager = FabAuthManager()
result = {}
with get_application_builder() as appbuilder:
    for name in sys.argv[1:]:
        role = appbuilder.sm.find_role(name)
        perms = {(p.action.name, p.resource.name) for p in role.permissions}
        user = types.SimpleNamespace(perms=perms)
        result[name] = {
            dag_id: manager.is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                              details=DagDetails(id=dag_id), user=user)
            for dag_id in ("resguardo_dr_failover", "resguardo_backup_core", "resguardo_dr_rehearsal_cartera")
        }
        result[name]["evidence"] = manager.is_authorized_custom_view(
            method="GET", resource_name="Resguardo Evidence", user=user)
print(json.dumps(result))
"""


@pytest.mark.airflow
def test_apply_roles_in_fab_database(airflow_home, tmp_path, keys_dir):
    from conftest import write_config

    _home, env = airflow_home
    databases = {name: {"dsn": f"host=127.0.0.1 dbname={name}", "regions": ["fs"]} for name in ("core", "cartera")}
    config = write_config(tmp_path, keys_dir, regions={"fs": {"kind": "filesystem", "path": str(tmp_path / "fs")}},
                          databases=databases)
    roles_cli = [sys.executable, "-m", "deploy.airflow.roles", "--config", str(config)]
    env = {**env, "RESGUARDO_LANG": "en"}

    applied = subprocess.run([*roles_cli, "apply"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Role resguardo_dr_coordinator created." in applied.stdout

    read = subprocess.run([sys.executable, "-c", READ_BACK, ROLE_DBA, ROLE_DR_COORDINATOR, ROLE_COMPLIANCE,
                           ROLE_AUTOMATION], env=env, capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr
    granted = json.loads(read.stdout.strip().splitlines()[-1])
    assert granted[ROLE_DR_COORDINATOR] == {"resguardo_dr_failover": True, "resguardo_backup_core": False,
                                            "resguardo_dr_rehearsal_cartera": True, "evidence": True}
    assert granted[ROLE_DBA] == {"resguardo_dr_failover": False, "resguardo_backup_core": True,
                                 "resguardo_dr_rehearsal_cartera": False, "evidence": True}
    assert granted[ROLE_COMPLIANCE] == {"resguardo_dr_failover": False, "resguardo_backup_core": False,
                                        "resguardo_dr_rehearsal_cartera": False, "evidence": True}
    assert granted[ROLE_AUTOMATION] == {"resguardo_dr_failover": False, "resguardo_backup_core": True,
                                        "resguardo_dr_rehearsal_cartera": False, "evidence": False}

    # Dropping a database from the config revokes its DAGs on the next apply.
    del databases["cartera"]
    write_config(tmp_path, keys_dir, regions={"fs": {"kind": "filesystem", "path": str(tmp_path / "fs")}},
                 databases=databases)
    planned = subprocess.run([*roles_cli, "apply", "--dry-run"], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "- resguardo_dr_coordinator: can_create DAG Run:resguardo_dr_rehearsal_cartera" in planned.stdout
    assert "Permissions added: 0;" in planned.stdout
    assert "+ " not in planned.stdout


@pytest.mark.airflow
def test_task_values_reach_statsd(airflow_home, udp_socket):
    pytest.importorskip("statsd")
    home, env = airflow_home
    # A stand-in for dags/dr_failover.py: one DAG for all databases, the
    # database as a run parameter, measurements in the returned dict.
    (home / "dags" / "failover_probe.py").write_text(
        "import datetime as dt\n"
        "from airflow.sdk import DAG, Param, task\n"
        "with DAG(dag_id='resguardo_dr_failover', schedule=None,\n"
        "         start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),\n"
        "         params={'database': Param('core', type='string')}):\n"
        "    @task\n"
        "    def finish():\n"
        "        return {'rto_seconds': 42.5, 'rpo_seconds': 0, 'passed': True, 'run_id': 'x'}\n"
        "    finish()\n",
        encoding="utf-8",
    )
    port = udp_socket.getsockname()[1]
    env = {**env, "AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
           "AIRFLOW__METRICS__STATSD_PORT": str(port), "AIRFLOW__METRICS__STATSD_PREFIX": "airflow"}
    airflow = str(Path(sys.executable).with_name("airflow"))
    run = subprocess.run([airflow, "dags", "test", "resguardo_dr_failover"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    lines = []
    try:
        while True:
            lines.extend(_received(udp_socket, 1))
    except socket.timeout:
        pass
    resguardo_lines = [line for line in lines if line.startswith("airflow.resguardo.")]
    assert resguardo_lines == [
        "airflow.resguardo.value.failover.rpo_seconds.core:0.0|g",
        "airflow.resguardo.value.failover.rto_seconds.core:42.5|g",
        "airflow.resguardo.value.failover.passed.core:1.0|g",
    ]
