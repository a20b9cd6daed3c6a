"""Pure parts of the drills package: pgbouncer.ini rewriting, exposure, settings, report text."""

from __future__ import annotations

import datetime as dt
import doctest
import importlib
import os
import stat

import pytest

from drills.router import PgBouncerRouter, RouterError, parse_entry, replace_target, write_atomically
from drills.topology import Endpoint, NodeState, measure_exposure


@pytest.mark.parametrize("module_name", [
    "drills.topology", "drills.timeline", "drills.router", "drills.alerting", "drills.storage_status",
    "drills.failover", "drills.failback", "drills.report", "drills.display",
])
def test_doctests_pass(module_name, monkeypatch):
    # Doctest outputs are the English msgids.
    monkeypatch.setenv("RESGUARDO_LANG", "en")
    result = doctest.testmod(importlib.import_module(module_name))
    assert result.failed == 0


INI = """\
; production pools
[databases]
core = host=10.0.0.5 port=5432 dbname=core pool_size=40 application_name='core app'
"reports" = host=10.0.0.7 dbname=reports
* = host=10.0.0.9

[pgbouncer]
listen_port = 6432
core = not-a-database-entry
"""


def test_replace_target_keeps_other_parameters():
    text, old = replace_target(INI, "core", Endpoint("10.1.0.5", 5433))

    assert old["host"] == "10.0.0.5"
    assert "core = host=10.1.0.5 port=5433 dbname=core pool_size=40 application_name='core app'\n" in text
    assert text.startswith("; production pools\n")
    assert '"reports" = host=10.0.0.7 dbname=reports\n' in text
    assert "core = not-a-database-entry\n" in text


def test_replace_target_quoted_alias_without_port():
    text, _old = replace_target(INI, "reports", Endpoint("10.1.0.7", 5432))

    assert '"reports" = host=10.1.0.7 dbname=reports port=5432\n' in text


def test_parse_entry_quotes():
    assert parse_entry("host=a application_name='it''s x'") == {"host": "a", "application_name": "it's x"}
    with pytest.raises(ValueError):
        parse_entry("host=a broken")


def test_router_missing_alias_raises(tmp_path):
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(INI, encoding="utf-8")

    router = PgBouncerRouter(ini, "host=127.0.0.1 port=1 dbname=pgbouncer", "ledger")

    with pytest.raises(RouterError) as caught:
        router.current_target()
    assert "ledger" in caught.value.message


def test_router_client_dsn(tmp_path):
    router = PgBouncerRouter(tmp_path / "x.ini", "host=127.0.0.1 port=6432 user=admin dbname=pgbouncer", "core")

    assert router.client_dsn("app") == "host=127.0.0.1 port=6432 dbname=core user=app"


def test_write_atomically_keeps_mode(tmp_path):
    target = tmp_path / "pgbouncer.ini"
    target.write_text("old\n", encoding="utf-8")
    os.chmod(target, 0o640)

    write_atomically(target, "new\n")

    assert target.read_text(encoding="utf-8") == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["pgbouncer.ini"]


def _states(**primary):
    base = {"lsn": 1000, "server_time": "2026-01-01T00:01:00Z", "track_commit_timestamp": False}
    base.update(primary)
    return (NodeState("primary", "a", "primary", **base),
            NodeState("standby", "b", "standby", lsn=900, last_replay_at="2026-01-01T00:00:30Z",
                      last_contact_at="2026-01-01T00:00:50Z"))


def test_exposure_by_commit_timestamps():
    primary, standby = _states(track_commit_timestamp=True, last_commit_at="2026-01-01T00:00:40Z")

    exposure = measure_exposure(primary, standby)

    assert exposure.method == "commit_timestamps"
    assert exposure.seconds == 10.0
    assert exposure.lag_bytes == 100


def test_exposure_upper_bound_without_commit_timestamps():
    primary, standby = _states()

    exposure = measure_exposure(primary, standby)

    assert exposure.method == "primary_clock"
    assert exposure.seconds == 30.0


def test_exposure_primary_unreachable_uses_last_contact():
    primary = NodeState("primary", "a", "unreachable", error="refused")
    _unused, standby = _states()

    exposure = measure_exposure(primary, standby, now=dt.datetime(2026, 1, 1, 0, 2, tzinfo=dt.timezone.utc))

    assert exposure.method == "last_contact"
    assert exposure.seconds == 70.0
    assert exposure.lag_bytes is None


def test_pitr_steps_sum_to_wall_time():
    from drills.rehearsal import _pitr_steps

    steps = _pitr_steps(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), 10.0,
                        {"fetch_seconds": 3.0, "verify_seconds": 1.0, "preflight_seconds": 0.5,
                         "recovery_seconds": 4.0}, None)

    assert [s.name for s in steps] == ["fetch", "restore", "replay"]
    assert [s.seconds for s in steps] == [4.5, 1.5, 4.0]
    assert steps[2].started_at == "2026-01-01T00:00:06.000000Z"


def _result(**changes):
    from drills.rehearsal import RehearsalResult

    data = dict(
        run_id="run-1", database="core", scenario="storage", started_at="2026-04-01T11:00:00Z",
        rto_target_seconds=3600, rpo_target_seconds=300,
        steps=[{"name": "detect", "started_at": "2026-04-01T11:00:00Z", "seconds": 0.1, "outcome": "ok",
                "detail": {}, "error": None}],
        marker={"created_at": "2026-04-01T11:00:00Z", "lsn": "0/3000060"},
        rto_seconds=4000.0, rpo_seconds=12.5, rpo_method="last_replayed_commit", lost_bytes=8192,
        validation={"engine": "minimal", "success": True, "checks": []},
        findings=["RTO target missed: 4000.0 s measured, target 3600 s"],
        evidence={"sequence": 7, "record_id": "abc", "chain": "evidence:evidence"},
    )
    data.update(changes)
    return RehearsalResult(**data)


def test_report_spanish_by_default(monkeypatch):
    from drills.report import render_rehearsal

    monkeypatch.setenv("RESGUARDO_LANG", "es")
    text = render_rehearsal([_result()])

    assert text.startswith("# Informe de ensayo de DR: base de datos core")
    assert "| RTO (hasta una base de datos validada que acepta escrituras) | 4000.0 s (1 h 6 min 40 s) |" in text
    # 11:00 UTC is 06:00 in Guayaquil.
    assert "2026-04-01 06:00:00" in text
    assert "FALLIDA" in text


def test_report_english_text(monkeypatch):
    from drills.report import render_rehearsal

    monkeypatch.setenv("RESGUARDO_LANG", "en")
    text = render_rehearsal([_result(rto_seconds=60.0, findings=[])], fmt="text")

    assert text.startswith("DR rehearsal report: database core\n")
    assert "Overall result: PASSED" in text
    assert "RPO method: commit time of the last transaction replayed from WAL" in text
    assert "None." in text


def test_unknown_number_is_a_word(monkeypatch):
    from drills.display import format_number
    from drills.report import format_seconds

    monkeypatch.setenv("RESGUARDO_LANG", "es")

    assert format_number(None) == "desconocido"
    assert format_number(None, 1) == "desconocido"
    assert format_seconds(None) == "desconocido"
    assert format_number(12.345, 1) == "12.3"


def _primary_state(label, read_only):
    return NodeState(label, label, "primary", timeline=2, read_only_default=read_only)


def test_status_warns_fenced_second_primary(monkeypatch):
    from drills.cli import status_warnings

    monkeypatch.setenv("RESGUARDO_LANG", "en")

    warnings = status_warnings(_primary_state("primary", True), _primary_state("standby", False))

    assert len(warnings) == 1
    assert "primary is fenced read-only and only standby accepts writes" in warnings[0]
    assert _primary_state("primary", True).accepts_writes is False
    assert _primary_state("primary", True).fenced_primary is True


def test_status_warns_split_brain(monkeypatch):
    from drills.cli import status_warnings

    monkeypatch.setenv("RESGUARDO_LANG", "en")

    warnings = status_warnings(_primary_state("primary", False), _primary_state("standby", False))

    assert len(warnings) == 1
    assert "split brain" in warnings[0]


def test_status_no_warning_for_one_primary():
    from drills.cli import status_warnings

    standby = NodeState("standby", "b", "standby", timeline=2)

    assert status_warnings(_primary_state("primary", False), standby) == []


def _config(tmp_path, *, pitr_enabled, with_file=True):
    from resguardo.config import parse_config

    # Key files are only named here: this configuration is never used to encrypt or sign.
    data = {
        "state_dir": str(tmp_path / "state"),
        "encryption": {"recipients": [str(tmp_path / "backup.pub")], "identity": str(tmp_path / "backup.key")},
        "signing": {"private_key": str(tmp_path / "signing.key"), "public_key": str(tmp_path / "signing.pub")},
        "evidence": {"region": "evidence"},
        "regions": {"local-a": {"kind": "filesystem", "path": str(tmp_path / "a")},
                    "evidence": {"kind": "filesystem", "path": str(tmp_path / "evidence")}},
        "databases": {"core": {"dsn": "host=127.0.0.1 dbname=core", "regions": ["local-a"],
                               "pitr": {"enabled": pitr_enabled}}},
    }
    config_file = tmp_path / "resguardo.yaml" if with_file else None
    return parse_config(data, tmp_path, config_file=config_file)


def test_rewind_restore_command_uses_config_file(tmp_path):
    from drills.failback import rewind_restore_command

    command = rewind_restore_command(_config(tmp_path, pitr_enabled=True), "core")

    assert command is not None
    assert " wal-fetch %f %p --db core --config " in command
    assert str((tmp_path / "resguardo.yaml").resolve()) in command


def test_rewind_restore_command_none_without_archive(tmp_path):
    from drills.failback import rewind_restore_command

    assert rewind_restore_command(_config(tmp_path, pitr_enabled=False), "core") is None
    assert rewind_restore_command(_config(tmp_path, pitr_enabled=True, with_file=False), "core") is None


def test_failed_rehearsal_not_passed_with_gaps():
    result = _result(rto_seconds=60.0, findings=[], archive_gaps={"1": ["000000010000000000000008"]})

    assert result.passed is False
