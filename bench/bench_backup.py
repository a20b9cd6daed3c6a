"""Time ``resguardo backup`` against plain ``pg_dump -Fc`` on the same database, in one run.

Usage: ``.venv/bin/python bench/bench_backup.py [--scale 50] [--runs 2]``

Creates a scratch cluster, fills it with ``pgbench -i -s SCALE`` (about 15 MB
per scale unit), then alternates the two commands:

- ``pg_dump -Fc`` (built-in gzip, level 6 by default) writing to a file in a
  filesystem region directory;
- ``resguardo backup`` (pg_dump -Z0, zstd-3, AES-256-GCM, SHA-256, fan-out) into
  two filesystem regions.

It prints wall time, output size and the peak RSS of the resguardo process, and
the ratio resguardo / pg_dump (below 1.0 means resguardo was faster).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resguardo.pgtools import find_program  # noqa: E402
from restore.scratch import ScratchCluster  # noqa: E402


def _timed(args: list[str], env: dict[str, str], stdout=None) -> tuple[float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    subprocess.run(args, env=env, check=True, stdout=stdout or subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(after, before)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale factor (about 15 MB each)")
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each command")
    options = parser.parse_args()

    import yaml

    from encryption.keys import generate_keypair

    work = Path(tempfile.mkdtemp(prefix="resguardo-bench-"))
    cluster = ScratchCluster(name="bench")
    try:
        cluster.start()
        cluster.create_database("bench")
        pgbench = find_program("pgbench")
        subprocess.run([str(pgbench), "-i", "-q", "-s", str(options.scale), "-d", cluster.dsn("bench")], check=True,
                       stderr=subprocess.DEVNULL)
        size = int(cluster.psql("SELECT pg_database_size('bench')"))

        generate_keypair(work / "keys", "recipient", "x25519")
        generate_keypair(work / "keys", "signing", "ed25519")
        for name in ("a", "b", "evidence", "plain"):
            (work / name).mkdir()
        config_path = work / "resguardo.yaml"
        config_path.write_text(yaml.safe_dump({
            "state_dir": str(work / "state"),
            "encryption": {"recipients": ["keys/recipient.pub"]},
            "signing": {"private_key": "keys/signing.key", "public_key": "keys/signing.pub"},
            "evidence": {"region": "evidence"},
            "regions": {"a": {"kind": "filesystem", "path": "a"}, "b": {"kind": "filesystem", "path": "b"},
                        "evidence": {"kind": "filesystem", "path": "evidence"}},
            "databases": {"bench": {"dsn": cluster.dsn("bench"), "regions": ["a", "b"]}},
        }))
        env = dict(os.environ, RESGUARDO_CONFIG=str(config_path), RESGUARDO_LOG_LEVEL="WARNING")
        pg_dump = find_program("pg_dump")
        resguardo = str(Path(sys.executable).with_name("resguardo"))

        plain_times, ours_times, peak_rss = [], [], 0
        for run in range(options.runs):
            target = work / "plain" / f"dump-{run}.Fc"
            elapsed, _ = _timed([str(pg_dump), "-Fc", "-f", str(target), "-d", cluster.dsn("bench")], env)
            plain_times.append(elapsed)
            plain_size = target.stat().st_size
            target.unlink()
            elapsed, rss = _timed([resguardo, "backup", "bench"], env)
            ours_times.append(elapsed)
            peak_rss = max(peak_rss, rss)
        ours_size = sum(p.stat().st_size for p in (work / "a").rglob("dump.enc"))
        ours_size //= max(1, options.runs)

        plain = statistics.median(plain_times)
        ours = statistics.median(ours_times)
        print(f"database size        : {size / 1e6:.0f} MB (pgbench scale {options.scale})")
        print(f"pg_dump -Fc          : {plain:.2f} s, {plain_size / 1e6:.1f} MB, one local file")
        print(f"resguardo backup     : {ours:.2f} s, {ours_size / 1e6:.1f} MB per region, 2 regions, encrypted")
        print(f"ratio resguardo/pg_dump: {ours / plain:.2f}")
        print(f"peak RSS of the largest child process: {peak_rss / 1024:.0f} MiB "
              "(the resguardo process, or pg_dump if larger)")
    finally:
        cluster.destroy()
        subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
