"""Backing up a database larger than the memory bound keeps the process under it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# Python, psycopg, boto3 and the GCS client alone take about 70 MiB (measured
# on the development machine). The pipeline adds a few chunks and the fan-out
# queues, a few MiB.
RSS_LIMIT_MIB = 160
DATABASE_MIB = 300


def test_backup_rss_bounded(tmp_path, keys_dir):
    from resguardo.config import load_config
    from restore.scratch import ScratchCluster
    from tests.conftest import write_config

    cluster = ScratchCluster(name="big")
    try:
        cluster.start()
        cluster.create_database("grande")
        rows = DATABASE_MIB * 1024
        cluster.psql(
            "CREATE TABLE blob AS SELECT g AS id, "
            "(SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 32) AS i) AS payload "
            f"FROM generate_series(1, {rows}) AS g",
            "grande",
            timeout=900,
        )
        size_mib = int(cluster.psql("SELECT pg_database_size('grande')")) / 2**20
        path = write_config(
            tmp_path, keys_dir,
            regions={"fs-a": {"kind": "filesystem", "path": str(tmp_path / "a")},
                     "fs-b": {"kind": "filesystem", "path": str(tmp_path / "b")}},
            databases={"grande": {"dsn": cluster.dsn("grande"), "regions": ["fs-a", "fs-b"]}},
        )
        env = dict(os.environ, RESGUARDO_CONFIG=str(path))
        # VmHWM is the peak RSS of this process image. ru_maxrss would not do:
        # Linux carries it across fork and exec, so it would include pytest's own
        # peak, inherited through the fork.
        script = (
            "import sys\n"
            "from resguardo.cli import main\n"
            "status = main(['backup', 'grande'])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print('MAXRSS_KIB', hwm)\n"
            "sys.exit(status)\n"
        )
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        peak_mib = int(result.stdout.split("MAXRSS_KIB")[1].split()[0]) / 1024
        print(f"database {size_mib:.0f} MiB, backup process peak RSS {peak_mib:.0f} MiB")
        assert size_mib > 2 * RSS_LIMIT_MIB
        assert peak_mib < RSS_LIMIT_MIB
        config = load_config(path)
        assert config.databases["grande"].regions == ["fs-a", "fs-b"]
    finally:
        cluster.destroy()
