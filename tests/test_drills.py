"""DR drills against real servers: a primary, a streaming standby and PgBouncer, all on 127.0.0.1.

The tests share one topology and run in file order, because each builds on
the previous state. Rehearsals and refusals come first, then a failover under
write load, the fenced old primary, the failback by pg_rewind and the
switchover back to the configured primary.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from drills import failback, failover, rehearsal
from drills.report import render_rehearsal
from drills.topology import load_topology, probe
from encryption.keys import generate_keypair
from resguardo.config import parse_config
from resguardo.pgtools import chown_tree, demote, find_program, run_checked, server_user
from restore.scratch import ScratchCluster, free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
pytestmark = pytest.mark.skipif(not os.path.exists(PGBOUNCER),
                                reason="pgbouncer is not installed (apt-get install pgbouncer)")

REPLICATION_SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": 10,
    "hot_standby": "on",
    "wal_keep_size": "256MB",
    "track_commit_timestamp": "on",
}
ALIAS = "core"


class PgBouncer:
    """A PgBouncer process on 127.0.0.1 in transaction pooling mode, run as the server's OS user."""

    def __init__(self, target_port: int):
        self.root = Path(tempfile.mkdtemp(prefix="resguardo-pgbouncer-"))
        os.chmod(self.root, 0o755)
        self.port = free_port()
        self.ini = self.root / "pgbouncer.ini"
        self.ini.write_text(
            "[databases]\n"
            f"{ALIAS} = host=127.0.0.1 port={target_port} dbname=core\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.root}\n"
            "auth_type = trust\n"
            f"auth_file = {self.root}/users.txt\n"
            "admin_users = postgres\n"
            "pool_mode = transaction\n"
            "server_login_retry = 1\n"
            f"logfile = {self.root}/pgbouncer.log\n"
            f"pidfile = {self.root}/pgbouncer.pid\n",
            encoding="utf-8",
        )
        (self.root / "users.txt").write_text('"postgres" ""\n', encoding="utf-8")
        chown_tree(self.root, server_user())
        self.process = subprocess.Popen([PGBOUNCER, str(self.ini)], preexec_fn=demote(server_user()),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("pgbouncer did not start")

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=pgbouncer"

    @property
    def client_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={ALIAS}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def make_standby(primary: ScratchCluster) -> ScratchCluster:
    """Clone ``primary`` with pg_basebackup and start the clone as a streaming standby."""
    standby = ScratchCluster(name="dr-standby", initdb=False, settings=dict(REPLICATION_SETTINGS))
    run_checked(
        [str(find_program("pg_basebackup")), "-D", str(standby.data_dir), "-X", "stream", "-c", "fast",
         "-R", "-d", primary.dsn()],
        what="pg_basebackup", as_server_user=True, timeout=120,
    )
    standby.write_settings({"primary_conninfo": f"host=127.0.0.1 port={primary.port} user=postgres"})
    standby.start()
    return standby


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Primary, standby, PgBouncer and a configuration naming them."""
    base = tmp_path_factory.mktemp("drills")
    keys = base / "keys"
    keys.mkdir()
    (base / "region-a").mkdir()
    (base / "evidence").mkdir()
    generate_keypair(keys, "backup", "x25519")
    generate_keypair(keys, "signing", "ed25519")

    primary = ScratchCluster(name="dr-primary", settings=dict(REPLICATION_SETTINGS))
    primary.start()
    primary.create_database("core")
    primary.psql("CREATE SCHEMA app; CREATE TABLE app.ledger (id bigint PRIMARY KEY, amount numeric NOT NULL,"
                 " created_at timestamptz NOT NULL DEFAULT now());"
                 " INSERT INTO app.ledger SELECT g, g * 1.5 FROM generate_series(1, 1000) g", dbname="core")
    standby = make_standby(primary)
    bouncer = PgBouncer(primary.port)

    data = {
        "state_dir": str(base / "state"),
        "encryption": {"recipients": [str(keys / "backup.pub")], "identity": str(keys / "backup.key")},
        "signing": {"private_key": str(keys / "signing.key"), "public_key": str(keys / "signing.pub")},
        "evidence": {"region": "evidence"},
        "regions": {
            "local-a": {"kind": "filesystem", "path": str(base / "region-a")},
            "evidence": {"kind": "filesystem", "path": str(base / "evidence")},
        },
        "databases": {
            "core": {
                "dsn": primary.dsn("core"),
                "regions": ["local-a"],
                "dr": {
                    "primary_data_dir": str(primary.data_dir),
                    "standby": {"dsn": standby.dsn("core"), "data_dir": str(standby.data_dir), "site": "dr-quito"},
                    "router": {"config_file": str(bouncer.ini), "admin_dsn": bouncer.admin_dsn,
                               "database_alias": ALIAS},
                    "rto_target_seconds": 600,
                    "rpo_target_seconds": 60,
                },
            }
        },
    }
    config = parse_config(data, base)
    config_file = base / "resguardo.yaml"
    config_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    lab = dataclasses.make_dataclass("Lab", ["config", "config_file", "primary", "standby", "bouncer", "base"])(
        config, config_file, primary, standby, bouncer, base)
    yield lab
    bouncer.stop()
    standby.destroy()
    primary.destroy()


def wait_replayed(primary: ScratchCluster, standby: ScratchCluster, timeout: float = 30) -> None:
    target = primary.psql("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") == "t":
            return
        time.sleep(0.1)
    raise AssertionError("standby did not catch up")


def evidence_records(config, kind):
    from evidence import open_store

    return open_store(config).list(database="core", kind=kind)


# -- rehearsal (replica path) ---------------------------------------------------------


def test_rehearsal_replica_measures_rto_and_rpo(lab):
    results = rehearsal.run_rehearsal(lab.config, "core", scenarios=(rehearsal.SCENARIO_REPLICA,))
    result = results[0]

    assert result.error is None
    assert [s["name"] for s in result.steps] == ["detect", "fetch", "restore", "replay", "validate", "open"]
    assert all(s["outcome"] == "ok" for s in result.steps)
    assert result.rpo_method == "marker_present"
    assert result.rpo_seconds == 0.0
    assert 0 < result.rto_seconds < 600
    assert result.validation["success"] is True
    assert result.passed is True
    assert result.evidence["sequence"] >= 0
    print(f"\nreplica rehearsal: RTO {result.rto_seconds} s, RPO {result.rpo_seconds} s, "
          f"steps {[(s['name'], s['seconds']) for s in result.steps]}")

    stored = [r for r in evidence_records(lab.config, "dr_rehearsal") if r["subject"]["run_id"] == result.run_id]
    assert len(stored) == 1
    assert stored[0]["outcome"] == "passed"
    assert stored[0]["body"]["rto_seconds"] == result.rto_seconds

    report = render_rehearsal(results)
    assert "RTO" in report
    assert "RPO" in report
    # The copy is gone and production is unchanged: the standby still streams.
    assert probe(load_topology(lab.config, "core").standby).role == "standby"


def test_rehearsal_missed_target_fails(lab):
    topology = dataclasses.replace(load_topology(lab.config, "core"), rto_target_seconds=0)

    result = rehearsal.rehearse_replica(lab.config, "core", topology=topology)

    assert result.rto_met is False
    assert result.passed is False
    assert any("RTO" in finding for finding in result.findings)
    stored = [r for r in evidence_records(lab.config, "dr_rehearsal") if r["subject"]["run_id"] == result.run_id]
    assert stored[0]["outcome"] == "failed"


# -- refusals ------------------------------------------------------------------------


def test_failover_rejects_wrong_confirmation(lab):
    with pytest.raises(failover.FailoverRejected) as caught:
        failover.run_failover(lab.config, "core", reason="rehearsal of the refusal path", confirmation="failover",
                              notify=False)
    assert "FAILOVER" in caught.value.message


@pytest.fixture
def cli_logging():
    """Restore the resguardo logger after main(), which adds a handler on pytest's captured stderr."""
    import logging

    logger = logging.getLogger("resguardo")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def test_cli_dr_status_shows_roles(lab, capsys, monkeypatch, cli_logging):
    from resguardo.cli import main

    monkeypatch.setenv("RESGUARDO_LANG", "en")
    status = main(["--config", str(lab.config_file), "dr", "status", "core"])

    output = capsys.readouterr().out
    assert status == 0
    assert "primary (primary): primary, timeline 1" in output
    assert "standby (dr-quito): standby, timeline 1" in output
    assert f"Router sends clients to 127.0.0.1:{lab.primary.port}" in output


def test_cli_failover_wrong_word_exits_12(lab, capsys, cli_logging):
    from resguardo.cli import main

    status = main(["--config", str(lab.config_file), "failover", "core", "--reason", "cli refusal test run",
                   "--confirm", "yes"])

    assert status == 12
    assert "FAILOVER" in capsys.readouterr().err
    assert probe(load_topology(lab.config, "core").standby).role == "standby"


def test_failover_rejects_scheduled_run(lab):
    with pytest.raises(failover.FailoverRejected):
        failover.begin(lab.config, "core", reason="rehearsal of the refusal path", confirmation="FAILOVER",
                       run_type="scheduled")


def test_failover_rejects_short_reason(lab):
    with pytest.raises(failover.FailoverRejected):
        failover.begin(lab.config, "core", reason="x", confirmation="FAILOVER")


def test_failover_rejects_unreachable_standby(lab, monkeypatch):
    monkeypatch.setenv("RESGUARDO_LANG", "en")
    topology = load_topology(lab.config, "core")
    closed = dataclasses.replace(topology.standby, dsn=f"host=127.0.0.1 port={free_port()} user=postgres dbname=core")
    topology = dataclasses.replace(topology, standby=closed)

    with pytest.raises(failover.FailoverRejected) as caught:
        failover.run_failover(lab.config, "core", reason="standby unreachable test", confirmation="FAILOVER",
                              topology=topology, notify=False)

    assert "cannot be promoted" in caught.value.message
    assert "does not accept connections" in caught.value.message
    assert lab.primary.psql("SELECT current_setting('default_transaction_read_only')", dbname="core") == "off"


def test_failover_rejects_lagging_standby(lab):
    topology = dataclasses.replace(load_topology(lab.config, "core"), rpo_target_seconds=1)
    lab.standby.psql("SELECT pg_wal_replay_pause()")
    try:
        time.sleep(1.5)
        lab.primary.psql("INSERT INTO app.ledger VALUES (1000001, 1)", dbname="core")

        with pytest.raises(failover.FailoverRejected) as caught:
            failover.run_failover(lab.config, "core", reason="lagging standby test", confirmation="FAILOVER",
                                  topology=topology, notify=False)

        assert "RPO" in caught.value.message
        assert probe(topology.standby).role == "standby"
        assert lab.primary.psql("SELECT current_setting('default_transaction_read_only')", dbname="core") == "off"
    finally:
        lab.standby.psql("SELECT pg_wal_replay_resume()")
    wait_replayed(lab.primary, lab.standby)

    rejected = evidence_records(lab.config, "failover")[-1]
    assert rejected["outcome"] == "failed"
    assert rejected["body"]["run"]["outcome"] == "rejected"
    assert rejected["body"]["run"]["preflight"]["exposure"]["method"] == "commit_timestamps"


def test_failover_rejects_standby_without_archiving(lab, monkeypatch):
    monkeypatch.setenv("RESGUARDO_LANG", "en")
    data = yaml.safe_load(lab.config_file.read_text(encoding="utf-8"))
    data["databases"]["core"]["pitr"] = {"enabled": True}
    config = parse_config(data, lab.base)

    with pytest.raises(failover.FailoverRejected) as caught:
        failover.run_failover(config, "core", reason="standby without WAL archiving", confirmation="FAILOVER",
                              notify=False)

    assert caught.value.exit_status == 12
    assert "archive_mode is off on standby" in caught.value.message
    assert "--accept-unarchived" in caught.value.hint
    assert probe(load_topology(lab.config, "core").standby).role == "standby"
    assert lab.primary.psql("SELECT current_setting('default_transaction_read_only')", dbname="core") == "off"


def test_finish_marks_failed_base_backup(lab):
    topology = load_topology(lab.config, "core")
    run = failover.begin(lab.config, "core", reason="finish with a failed base backup", confirmation="FAILOVER")
    run.steps = [{"name": "preflight", "outcome": "ok"}, {"name": "base_backup", "outcome": "failed"}]
    run.rto_seconds, run.rpo_seconds = 1.0, 0.0
    run.base_backup = {"error": "archive_mode is off"}

    failover.finish(lab.config, topology, run)

    assert run.outcome == failover.OUTCOME_STEP_FAILED
    stored = [r for r in evidence_records(lab.config, "failover") if r["subject"]["run_id"] == run.run_id]
    assert stored[0]["outcome"] == "failed"


# -- failover under load --------------------------------------------------------------


class Writer(threading.Thread):
    """Inserts rows through PgBouncer, remembering the ids whose commit was acknowledged."""

    def __init__(self, dsn: str, first_id: int):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.next_id = first_id
        self.committed: list[int] = []
        self.errors = 0
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        conn = None
        while not self.stop_event.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2, prepare_threshold=None)
                row_id = self.next_id
                self.next_id += 1
                conn.execute("INSERT INTO app.ledger (id, amount) VALUES (%s, 1)", (row_id,))
                with self.lock:
                    self.committed.append(row_id)
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def snapshot(self) -> list[int]:
        with self.lock:
            return list(self.committed)


def test_failover_under_write_load(lab):
    writer = Writer(lab.bouncer.client_dsn, 2_000_000)
    writer.start()
    time.sleep(1.0)
    before = writer.snapshot()
    assert before, "the writer committed nothing before the failover"

    run = failover.run_failover(lab.config, "core", reason="failover test under write load",
                                confirmation="FAILOVER", requested_by="pytest", notify=False)
    committed_at_switch = writer.snapshot()
    time.sleep(1.0)
    writer.stop_event.set()
    writer.join(10)
    after = writer.snapshot()
    print(f"\nfailover: RTO {run.rto_seconds} s, RPO {run.rpo_seconds} s ({run.rpo_method}), "
          f"{len(committed_at_switch)} rows committed before the switch, {writer.errors} client errors, "
          f"steps {[(s['name'], s['seconds']) for s in run.steps]}")

    assert run.outcome == "completed"
    assert run.promote["timeline"] == 2
    assert run.router["current"] == f"127.0.0.1:{lab.standby.port}"
    assert run.probe["server_port"] == lab.standby.port
    assert run.rpo_seconds == 0.0
    assert run.rpo_method == "wal_position"
    assert run.lost_bytes == 0
    assert 0 < run.rto_seconds < 600

    # Every acknowledged commit, before and during the failover, is on the new primary.
    present = {int(v) for v in lab.standby.psql(
        "SELECT id FROM app.ledger WHERE id >= 2000000", dbname="core").split()}
    assert set(committed_at_switch) <= present
    assert set(after) <= present
    # Clients reconnected through PgBouncer and kept writing on the new primary.
    assert len(after) > len(committed_at_switch)

    stored = [r for r in evidence_records(lab.config, "failover") if r["subject"]["run_id"] == run.run_id]
    assert len(stored) == 1
    assert stored[0]["outcome"] == "passed"
    assert stored[0]["subject"]["timeline"] == 2


def test_cli_status_warns_fenced_second_primary(lab, capsys, monkeypatch, cli_logging):
    from resguardo.cli import main

    monkeypatch.setenv("RESGUARDO_LANG", "en")
    status = main(["--config", str(lab.config_file), "dr", "status", "core"])

    output = capsys.readouterr().out
    assert status == 0
    assert "primary (primary): primary fenced read-only" in output
    assert "WARNING: both nodes are primaries; primary is fenced read-only and only standby accepts writes" in output
    assert "?" not in output


def test_repeated_failover_with_fenced_old_primary_rejected(lab, monkeypatch):
    monkeypatch.setenv("RESGUARDO_LANG", "en")
    marker_before = (lab.primary.data_dir / "resguardo.fenced").read_text(encoding="utf-8")

    with pytest.raises(failover.FailoverRejected) as caught:
        failover.run_failover(lab.config, "core", reason="second failover after the first", confirmation="FAILOVER",
                              notify=False)

    assert caught.value.exit_status == 12
    assert "already happened" in caught.value.message
    assert "split brain" not in caught.value.message
    assert (lab.primary.data_dir / "resguardo.fenced").read_text(encoding="utf-8") == marker_before
    assert probe(load_topology(lab.config, "core").standby).accepts_writes


def test_fenced_old_primary_rejects_writes_after_restart(lab):
    lab.primary.stop("fast")
    lab.primary.start()

    assert lab.primary.psql("SELECT pg_is_in_recovery()") == "t"
    with pytest.raises(Exception) as caught:
        lab.primary.psql("INSERT INTO app.ledger (id, amount) VALUES (3000000, 1)", dbname="core")
    assert "read-only" in str(caught.value)
    assert (lab.primary.data_dir / "resguardo.fenced").is_file()


# -- failback ------------------------------------------------------------------------


def test_failback_rewinds_old_primary_as_standby(lab):
    with pytest.raises(failover.FailoverRejected):
        failback.run_failback(lab.config, "core", reason="failback test run", confirmation="FAILOVER")

    run = failback.run_failback(lab.config, "core", reason="failback test: rebuild old primary",
                                confirmation="FAILBACK", requested_by="pytest")

    assert run.outcome == "completed"
    assert run.rebuild["method"] == "rewind"
    assert run.rebuild["timeline"] == 2
    state = probe(load_topology(lab.config, "core").primary)
    assert state.role == "standby"
    assert state.receiver_status == "streaming"
    assert not (lab.primary.data_dir / "resguardo.fenced").exists()

    lab.standby.psql("INSERT INTO app.ledger (id, amount) VALUES (4000000, 1)", dbname="core")
    wait_replayed(lab.standby, lab.primary)
    assert lab.primary.psql("SELECT count(*) FROM app.ledger WHERE id = 4000000", dbname="core") == "1"
    # The node kept its own port: the rewind copied the source's settings, which were put back.
    assert lab.primary.psql("SHOW port") == str(lab.primary.port)


def test_repeated_failover_after_failback_exits_12(lab, capsys, monkeypatch, cli_logging):
    from resguardo.cli import main

    monkeypatch.setenv("RESGUARDO_LANG", "en")
    status = main(["--config", str(lab.config_file), "failover", "core", "--reason", "failover repeated by mistake",
                   "--confirm", "FAILOVER"])

    captured = capsys.readouterr()
    assert status == 12
    assert "standby is already the primary (timeline 2)" in captured.err
    assert "nothing to switch" in captured.err
    assert "failback core" in captured.err
    assert "?" not in captured.out
    # The rebuilt node was not fenced: it still streams and carries no fence marker.
    assert not (lab.primary.data_dir / "resguardo.fenced").exists()
    state = probe(load_topology(lab.config, "core").primary)
    assert state.role == "standby"
    assert state.receiver_status == "streaming"


def test_switchover_back_restores_topology(lab):
    topology = load_topology(lab.config, "core")
    # The DR standby is rebuilt by cloning, so both rebuild methods run in this module.
    run = failback.FailbackRun(
        run_id="switch-back-test", database="core", reason="switch back to the home site", requested_by="pytest",
        method="clone", switchover_requested=True, started_at="2026-01-01T00:00:00Z",
    )

    failback.switch_back(lab.config, topology, run)

    assert run.switchover["outcome"] == "completed"
    assert run.switchover["rpo_seconds"] == 0.0
    assert run.switchover["promote"]["timeline"] == 3
    assert run.rebuild_standby["timeline"] == 3
    assert run.rebuild_standby["method"] == "clone"
    assert Path(run.rebuild_standby["moved_aside"]).is_dir()
    assert probe(topology.primary).role == "primary"
    assert probe(topology.standby).role == "standby"
    assert lab.primary.psql("SHOW default_transaction_read_only") == "off"
    with psycopg.connect(lab.bouncer.client_dsn, autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == lab.primary.port


def test_router_kills_connections_after_pause_timeout(lab):
    from drills.router import open_router
    from drills.topology import Endpoint

    router = open_router(lab.config.database("core").dr.router)
    holder = psycopg.connect(lab.bouncer.client_dsn, prepare_threshold=None)
    holder.execute("SELECT 1")  # an open transaction keeps PAUSE waiting

    result = router.switch(Endpoint("127.0.0.1", lab.primary.port), pause_timeout=1.0)

    assert result.drain == "kill"
    assert 1.0 <= result.pause_seconds < 10
    with pytest.raises(psycopg.Error):
        holder.execute("SELECT 1")
    holder.close()
    with psycopg.connect(lab.bouncer.client_dsn, autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == lab.primary.port


def test_evidence_chain_verifies(lab):
    from evidence import open_store

    report = open_store(lab.config).verify_chain()

    assert report.ok
    kinds = {record["kind"] for record in evidence_records(lab.config, None)}
    assert kinds == {"dr_rehearsal", "failover", "failback"}
