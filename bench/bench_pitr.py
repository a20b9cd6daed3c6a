"""Benchmark: Resguardo base backup, restore and wal-push against pgBackRest on the same database.

Run as root from the repository (PostgreSQL servers and both tools' archive
commands run as the ``postgres`` OS user)::

    .venv/bin/python bench/bench_pitr.py --scale 100 --segments 48

What is measured, with comparable settings on both sides (zstd level 3,
AES-256 encryption, one local repository on the same disk):

1. Full base backup of a ``pgbench -i -s SCALE`` database with an immediate
   checkpoint. pgBackRest: ``backup --type=full``, ``process-max=2``,
   ``repo1-cipher-type=aes-256-cbc``. Resguardo: ``pg_basebackup`` streamed
   through zstd and AES-256-GCM into one filesystem region (single stream).
2. Restore of that backup into an empty directory. pgBackRest: ``restore``
   (files only) and then the server start until it accepts connections.
   Resguardo: ``restore_pitr(target=immediate)`` into a data directory, whose
   timings split fetch and unpack, ``pg_verifybackup`` and recovery.
3. WAL push throughput in segments per second over real 16 MiB segments,
   each tool writing to a fresh archive: one process per segment in order
   (synchronous), and with each tool's asynchronous mode (``wal-ship`` with 2
   uploads at once; ``archive-async=y`` with ``process-max=2``), calling the
   push command per segment in order as PostgreSQL's archiver does.

Ratios are Resguardo time over pgBackRest time (below 1: Resguardo faster)
and Resguardo rate over pgBackRest rate (above 1: Resguardo faster). The
machine is shared, so repeat a run before trusting small differences.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from resguardo.launcher import LAUNCHER, SYSTEM_PYTHON, VENV_SITE  # noqa: E402
from resguardo.pgtools import chown_tree, demote, find_program, server_user  # noqa: E402



def as_postgres(args, *, cwd=None, check=True, env=None, timeout=3600):
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            preexec_fn=demote(server_user()), env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"{args[0]} {args[1:3]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def timed(function, *args, **kwargs):
    # Flush dirty pages first, so one step's writeback does not slow the next one down.
    os.sync()
    started = time.monotonic()
    value = function(*args, **kwargs)
    return time.monotonic() - started, value


class Bench:
    def __init__(self, root: Path, scale: int):
        from encryption.keys import generate_keypair

        self.root = root
        self.scale = scale
        self.keys = root / "keys"
        generate_keypair(self.keys, "recipient", "x25519")
        generate_keypair(self.keys, "signing", "ed25519")
        for name in ("repo", "evidence", "state", "spool", "pgbr-lock", "pgbr-spool", "staging"):
            (root / name).mkdir()
        self.launcher = root / "resguardo"
        self.launcher.write_text(LAUNCHER.format(python=SYSTEM_PYTHON, site=VENV_SITE), encoding="utf-8")
        os.chmod(self.launcher, 0o755)
        self.config_file = root / "resguardo.yaml"
        self.cipher_pass = secrets.token_urlsafe(32)
        self.results: dict = {"scale": scale, "cpus": os.cpu_count()}

    # -- configuration -------------------------------------------------------------------

    def write_config(self, dsn: str, fake_pgdata: Path) -> None:
        def database(**pitr):
            return {"dsn": dsn, "regions": ["repo"], "compression_level": 3, "pitr": {"enabled": True, **pitr}}

        document = {
            "language": "en",
            "state_dir": str(self.root / "state"),
            "encryption": {"recipients": [str(self.keys / "recipient.pub")],
                           "identity": str(self.keys / "recipient.key"), "chunk_size_kib": 1024},
            "signing": {"private_key": str(self.keys / "signing.key"), "public_key": str(self.keys / "signing.pub")},
            "evidence": {"region": "evidence"},
            "regions": {"evidence": {"kind": "filesystem", "path": str(self.root / "evidence")},
                        "repo": {"kind": "filesystem", "path": str(self.root / "repo")}},
            "databases": {
                "bench": database(fetch_prefetch=4),
                "pushsync": database(),
                "pushasync": database(async_push=True, push_parallel=2, pgdata=str(fake_pgdata),
                                      spool_dir=str(self.root / "spool")),
            },
        }
        self.config_file.write_text(yaml.safe_dump(document), encoding="utf-8")

    def pgbackrest_config(self, name: str, cluster, *, asynchronous: bool = False, pg_path: Path | None = None) -> Path:
        path = self.root / f"pgbackrest-{name}.conf"
        lines = [
            "[global]",
            f"repo1-path={self.root / ('pgbr-repo-' + name)}",
            "repo1-cipher-type=aes-256-cbc",
            f"repo1-cipher-pass={self.cipher_pass}",
            "compress-type=zst",
            "compress-level=3",
            "process-max=2",
            "start-fast=y",
            "log-level-console=warn",
            "log-level-file=off",
            f"lock-path={self.root / 'pgbr-lock'}",
            f"spool-path={self.root / 'pgbr-spool'}",
            f"archive-async={'y' if asynchronous else 'n'}",
            "",
            f"[{name}]",
            f"pg1-path={pg_path or cluster.data_dir}",
            f"pg1-port={cluster.port}",
            f"pg1-socket-path={cluster.socket_dir}",
            "pg1-user=postgres",
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.chmod(path, 0o640)
        chown_tree(path, server_user())
        return path

    def config(self):
        from resguardo.config import load_config

        return load_config(self.config_file)

    # -- steps ----------------------------------------------------------------------------

    def run(self, segments: int) -> dict:
        from restore.scratch import ScratchCluster

        fake_pgdata = self.root / "fake-pgdata"
        cluster = ScratchCluster(name="bench-source", base_dir=self.root, settings={
            "wal_level": "replica", "archive_mode": "on", "max_wal_size": "4GB", "checkpoint_timeout": "30min",
            "shared_buffers": "256MB", "max_wal_senders": 4,
        })
        self.cluster = cluster
        self.write_config(cluster.dsn(), fake_pgdata)
        main_pgbr = self.pgbackrest_config("bench", cluster)
        chown_tree(self.root, server_user())
        cluster.write_settings({"archive_command": (
            f"{self.launcher} wal-push %p --db bench --config {self.config_file} && "
            f"pgbackrest --config={main_pgbr} --stanza=bench archive-push %p")})
        cluster.start()
        try:
            as_postgres(["pgbackrest", f"--config={main_pgbr}", "--stanza=bench", "stanza-create"])
            seconds, _ = timed(subprocess.run, [str(find_program("pgbench")), "-i", "-s", str(self.scale), "-q",
                                                cluster.dsn()], check=True, capture_output=True)
            size = int(cluster.psql("SELECT pg_database_size('postgres')"))
            self.results["database_bytes"] = size
            self.results["pgbench_init_seconds"] = round(seconds, 1)
            print(f"pgbench -i -s {self.scale}: {size / 1e9:.2f} GB in {seconds:.1f} s", flush=True)
            cluster.psql("CHECKPOINT")
            # Both tools' backups wait for their WAL to be archived; start with an idle archiver.
            seconds = self.wait_archiver_idle()
            print(f"archiver caught up after {seconds:.1f} s", flush=True)
            self.base_backups(main_pgbr)
            self.restores(main_pgbr)
            self.wal_push(segments, fake_pgdata)
        finally:
            cluster.destroy()
        return self.results

    def wait_archiver_idle(self, timeout: float = 1800) -> float:
        started = time.monotonic()
        current = self.cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        self.cluster.psql("SELECT pg_switch_wal()")
        while time.monotonic() - started < timeout:
            if (self.cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver") or "") >= current:
                return time.monotonic() - started
            time.sleep(0.5)
        raise RuntimeError("the archiver did not catch up")

    def base_backups(self, pgbr_config: Path) -> None:
        from backup.basebackup import run_base_backup

        ours, result = timed(run_base_backup, self.config(), "bench", fast_checkpoint=True)
        self.backup_id = result.backup_id
        theirs, _ = timed(as_postgres, ["pgbackrest", f"--config={pgbr_config}", "--stanza=bench", "--type=full",
                                        "backup"])
        entry = result.manifest["objects"][0]
        self.results["base_backup"] = {
            "resguardo_seconds": round(ours, 2), "pgbackrest_seconds": round(theirs, 2),
            "ratio": round(ours / theirs, 2), "resguardo_stored_bytes": entry["size"],
            "resguardo_copy_seconds": result.manifest["timings"]["copy_seconds"],
            "resguardo_archive_wait_seconds": result.manifest["timings"]["archive_wait_seconds"],
            "pgbackrest_repo_bytes": _tree_size(self.root / "pgbr-repo-bench" / "backup"),
        }
        print("base backup:", self.results["base_backup"], flush=True)

    def restores(self, pgbr_config: Path) -> None:
        from restore.pitr import restore_pitr
        from restore.pitr_target import build_target

        ours_dir = self.root / "restore-resguardo"
        ours, report = timed(restore_pitr, self.config(), "bench", target=build_target(immediate=True),
                             data_dir=ours_dir, config_file=self.config_file, wal_fetch_command=str(self.launcher),
                             record_evidence=False, timeout=3600)
        shutil.rmtree(ours_dir, ignore_errors=True)

        theirs_dir = self.root / "restore-pgbackrest"
        restore_command = (f"pgbackrest --config={pgbr_config} --stanza=bench --pg1-path={theirs_dir} "
                           "archive-get %f \"%p\"")
        theirs_files, _ = timed(as_postgres, [
            "pgbackrest", f"--config={pgbr_config}", "--stanza=bench", f"--pg1-path={theirs_dir}", "--type=immediate",
            "--target-action=promote", f"--recovery-option=restore_command={restore_command}", "restore"])
        theirs_start = self._start_and_stop(theirs_dir)
        shutil.rmtree(theirs_dir, ignore_errors=True)
        files_only = report.timings["fetch_seconds"]
        self.results["restore"] = {
            "resguardo_files_seconds": files_only,
            "resguardo_verify_seconds": report.timings.get("verify_seconds"),
            "resguardo_recovery_seconds": report.timings.get("recovery_seconds"),
            "resguardo_total_seconds": round(ours, 2),
            "pgbackrest_files_seconds": round(theirs_files, 2),
            "pgbackrest_start_seconds": round(theirs_start, 2),
            "ratio_files": round(files_only / theirs_files, 2),
            "ratio_total": round(ours / (theirs_files + theirs_start), 2),
        }
        print("restore:", self.results["restore"], flush=True)

    def _start_and_stop(self, data_dir: Path) -> float:
        from restore.scratch import free_port

        socket_dir = Path(tempfile.mkdtemp(prefix="bench-socket-", dir=self.root))
        chown_tree(socket_dir, server_user())
        pg_ctl = find_program("pg_ctl")
        options = f"-c port={free_port()} -c listen_addresses='' -c unix_socket_directories={socket_dir} -c archive_mode=off"
        log_file = self.root / "pgbr-restore.log"
        try:
            seconds, _ = timed(as_postgres, [pg_ctl, "-D", data_dir, "-l", log_file, "-o", options,
                                             "-w", "-t", "3600", "start"])
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{log_file.read_text(errors='replace')[-3000:]}") from None
        as_postgres([pg_ctl, "-D", data_dir, "-m", "fast", "-w", "stop"])
        return seconds

    def wal_push(self, count: int, fake_pgdata: Path) -> None:
        from backup.wal import WalArchive

        config = self.config()
        system_identifier = self.cluster.psql("SELECT system_identifier FROM pg_control_system()")
        archive = WalArchive(config, "bench")
        names = sorted(p.name[:-5] for p in (self.root / "repo" / "bench" / "wal" / system_identifier).glob("*.json")
                       if len(p.name) == 29)[1:count + 1]
        for name in names:
            archive.fetch(name, self.root / "staging" / name, system_identifier=system_identifier)
        (fake_pgdata / "global").mkdir(parents=True)
        shutil.copy2(self.cluster.data_dir / "global" / "pg_control", fake_pgdata / "global" / "pg_control")
        chown_tree(self.root / "staging", server_user())
        results = {"segments": len(names)}

        def fill_pg_wal() -> None:
            # As PostgreSQL does: a segment is complete and readable before its .ready file appears.
            shutil.rmtree(fake_pgdata / "pg_wal", ignore_errors=True)
            (fake_pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
            for name in names:
                shutil.copy2(self.root / "staging" / name, fake_pgdata / "pg_wal" / name)
            chown_tree(fake_pgdata, server_user())
            for name in names:
                ready = fake_pgdata / "pg_wal" / "archive_status" / f"{name}.ready"
                ready.touch()
                chown_tree(ready, server_user())

        def push_all(command) -> float:
            # One call per segment, in order, renaming .ready to .done on success as the archiver does.
            started = time.monotonic()
            for name in names:
                as_postgres(command(name), cwd=fake_pgdata)
                status = fake_pgdata / "pg_wal" / "archive_status"
                os.rename(status / f"{name}.ready", status / f"{name}.done")
            return time.monotonic() - started

        fill_pg_wal()
        results["resguardo_sync_seconds"] = push_all(
            lambda name: [self.launcher, "wal-push", f"pg_wal/{name}", "--db", "pushsync", "--config", self.config_file])

        sync_pgbr = self.pgbackrest_config("pushsync", self.cluster, pg_path=fake_pgdata)
        as_postgres(["pgbackrest", f"--config={sync_pgbr}", "--stanza=pushsync", f"--pg1-path={self.cluster.data_dir}",
                     "stanza-create"])
        fill_pg_wal()
        results["pgbackrest_sync_seconds"] = push_all(
            lambda name: ["pgbackrest", f"--config={sync_pgbr}", "--stanza=pushsync", "archive-push",
                          fake_pgdata / "pg_wal" / name])

        # The shipper runs continuously in production: start it first, then hand both tools the same backlog.
        shutil.rmtree(fake_pgdata / "pg_wal", ignore_errors=True)
        shipper = subprocess.Popen([str(self.launcher), "--config", str(self.config_file), "wal-ship", "pushasync"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=demote(server_user()))
        time.sleep(3)
        fill_pg_wal()
        try:
            results["resguardo_async_seconds"] = push_all(
                lambda name: [self.launcher, "wal-push", f"pg_wal/{name}", "--db", "pushasync", "--spool",
                              self.root / "spool", "--config", self.config_file])
        finally:
            shipper.terminate()
            shipper.wait(timeout=60)

        async_pgbr = self.pgbackrest_config("pushasync", self.cluster, asynchronous=True, pg_path=fake_pgdata)
        as_postgres(["pgbackrest", f"--config={async_pgbr}", "--stanza=pushasync",
                     f"--pg1-path={self.cluster.data_dir}", "stanza-create"])
        fill_pg_wal()
        results["pgbackrest_async_seconds"] = push_all(
            lambda name: ["pgbackrest", f"--config={async_pgbr}", "--stanza=pushasync", "archive-push",
                          fake_pgdata / "pg_wal" / name])

        for mode in ("sync", "async"):
            ours = len(names) / results[f"resguardo_{mode}_seconds"]
            theirs = len(names) / results[f"pgbackrest_{mode}_seconds"]
            results[f"resguardo_{mode}_segments_per_second"] = round(ours, 2)
            results[f"pgbackrest_{mode}_segments_per_second"] = round(theirs, 2)
            results[f"ratio_{mode}"] = round(ours / theirs, 2)
        for key in list(results):
            if key.endswith("_seconds"):
                results[key] = round(results[key], 2)
        self.results["wal_push"] = results
        print("wal-push:", results, flush=True)


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=100, help="pgbench scale (100 is about 1.5 GB)")
    parser.add_argument("--segments", type=int, default=48, help="WAL segments pushed per measurement")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if shutil.which("pgbackrest") is None:
        print("pgbackrest is not installed: apt-get install -y pgbackrest", file=sys.stderr)
        return 2
    os.environ.setdefault("RESGUARDO_LOG_LEVEL", "WARNING")
    root = Path(tempfile.mkdtemp(prefix="resguardo-bench-pitr-"))
    os.chmod(root, 0o755)
    try:
        results = Bench(root, args.scale).run(args.segments)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
