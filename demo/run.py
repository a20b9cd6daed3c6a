"""``make demo``: a backup and a verified restore, end to end, through Airflow.

1. Starts a throwaway PostgreSQL on 127.0.0.1 and fills ``banca`` (clients
   with valid cédulas, accounts, transactions; a few hundred thousand rows).
2. Generates an X25519 recipient key and an Ed25519 signing key.
3. Writes ``.demo/resguardo.yaml`` with two filesystem regions (``uio`` and
   ``gye``) and a separate evidence region.
4. Runs the backup DAG and the restore-test DAG with ``airflow dags test``.
5. Prints, in Spanish, where the evidence is and what it says, and checks
   the evidence chain.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.airflow_env import airflow_env, dags_test, migrate  # noqa: E402
from demo.seed import seed_sql  # noqa: E402
from resguardo.i18n import _  # noqa: E402


def say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    import yaml

    from encryption.keys import generate_keypair
    from evidence import open_store, render_text
    from resguardo.config import load_config
    from restore.scratch import ScratchCluster

    work = ROOT / ".demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    started = time.monotonic()

    say(_("1/5 Starting a throwaway PostgreSQL and loading the demo bank database..."))
    cluster = ScratchCluster(name="demo")
    try:
        cluster.start()
        cluster.create_database("banca")
        cluster.psql(seed_sql(), "banca")
        rows = cluster.psql("SELECT (SELECT count(*) FROM banca.clientes) + (SELECT count(*) FROM banca.cuentas)"
                            " + (SELECT count(*) FROM banca.movimientos)", "banca")
        say(_("    database banca on 127.0.0.1:{port}, {rows} rows").format(port=cluster.port, rows=rows))

        say(_("2/5 Generating keys (X25519 for encryption, Ed25519 for signatures)..."))
        keys = work / "keys"
        generate_keypair(keys, "recipient", "x25519")
        generate_keypair(keys, "signing", "ed25519")

        say(_("3/5 Writing the configuration with two storage regions and an evidence region..."))
        for name in ("region-uio", "region-gye", "evidence"):
            (work / name).mkdir()
        config_path = work / "resguardo.yaml"
        config_path.write_text(yaml.safe_dump({
            "language": os.environ.get("RESGUARDO_LANG", "es")[:2] or "es",
            "state_dir": str(work / "state"),
            "encryption": {"recipients": ["keys/recipient.pub"], "identity": "keys/recipient.key"},
            "signing": {"private_key": "keys/signing.key", "public_key": "keys/signing.pub"},
            "evidence": {"region": "evidence", "prefix": "evidence"},
            "regions": {
                "uio": {"kind": "filesystem", "path": "region-uio", "location": "Quito"},
                "gye": {"kind": "filesystem", "path": "region-gye", "location": "Guayaquil"},
                "evidence": {"kind": "filesystem", "path": "evidence", "location": "Quito"},
            },
            "databases": {"banca": {
                "dsn": cluster.dsn("banca"),
                "regions": ["uio", "gye"],
                # The hand-written suite for banca.clientes (cédula format and check digit, ...).
                "restore_test": {"expectations_dir": str(ROOT / "expectations" / "demo")},
            }},
        }, allow_unicode=True, sort_keys=False), encoding="utf-8")

        say(_("4/5 Running the backup DAG and the restore-test DAG with 'airflow dags test'..."))
        env = airflow_env(work / "airflow", config_path)
        migrate(env)
        for dag_id in ("resguardo_backup_banca", "resguardo_restore_test_banca"):
            step = time.monotonic()
            result = dags_test(dag_id, env)
            if result.returncode != 0:
                say(result.stdout[-4000:])
                say(result.stderr[-4000:])
                say(_("ERROR: DAG {dag_id} failed; its log is above").format(dag_id=dag_id))
                return 1
            say(_("    {dag_id}: OK in {seconds:.1f} s").format(dag_id=dag_id, seconds=time.monotonic() - step))

        say(_("5/5 Restore-test evidence"))
        config = load_config(config_path)
        store = open_store(config)
        record = list(store.list())[-1]
        say(render_text(record, public_key=store.public_key))
        report = store.verify_chain()
        say(_("Evidence chain: {status} ({count} records) in {path}").format(
            status=_("valid") if report.ok else _("INVALID"), count=report.records,
            path=work / "evidence"))
        say(_("Backups: {path}").format(path=work / "region-uio"))
        say(_("Demo finished in {seconds:.0f} s. Verify again with: .venv/bin/resguardo --config {config} evidence verify")
            .format(seconds=time.monotonic() - started, config=config_path))
        return 0 if report.ok and record["outcome"] == "passed" else 1
    finally:
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
