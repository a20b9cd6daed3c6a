"""Logical backup and restore-test DAGs, one pair per configured database.

``resguardo_backup_<db>`` takes an encrypted ``pg_dump`` into every required
region and emits the Asset ``resguardo://<db>/logical``. ``resguardo_restore_test_<db>``
restores the newest backup into a scratch cluster, validates it with Great
Expectations and appends signed evidence; by default the Asset schedules it.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, Asset, Param, task

from _common import (
    DEFAULT_ARGS,
    database_connection,
    doc,
    fail_or_retry,
    load_config,
    timetable,
    use_airflow_credentials,
)

BACKUP_DOC = """\
### Logical backup of `{database}`

Takes a consistent `pg_dump` of **{database}**, compresses it with zstd,
encrypts it (AES-256-GCM, data key wrapped for the configured X25519 recipients)
and writes it to every required region at once: **{regions}**.

The backup counts only when every region (or the configured quorum, {quorum})
confirmed size and SHA-256 and holds the signed manifest. If a region fails,
partial objects are removed and the task retries with growing delays.

On success it updates the asset `resguardo://{database}/logical`, which starts
the restore test.

Without Airflow: `resguardo backup {database}`.
"""

RESTORE_TEST_DOC = """\
### Restore test of `{database}`

Proves that the newest backup of **{database}** can be restored:

1. starts an isolated scratch PostgreSQL (127.0.0.1 only);
2. downloads, decrypts and restores the backup, switching to another region
   if a copy is missing or corrupted;
3. validates the restored data with Great Expectations (tables, columns,
   row counts equal to the source's, primary keys) plus the hand-written suites;
4. writes a signed, hash-chained evidence record with timings and the
   measured RTO, and deletes the scratch cluster.

The task fails when the data does not validate; the evidence record is written
either way. Without Airflow: `resguardo verify {database}`.
"""


def _backup_dag(name: str, db, config) -> DAG:
    asset = Asset(f"resguardo://{name}/logical", extra={"database": name})

    with DAG(
        dag_id=f"resguardo_backup_{name}",
        schedule=timetable(db.schedule, config.timezone),
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        doc_md=doc(BACKUP_DOC, database=name, regions=", ".join(db.regions), quorum=str(db.required_quorum)),
        tags=["resguardo", "backup", name],
        params={"triggered_by": Param("airflow", type="string", title=doc("Triggered by"))},
    ) as dag:

        @task(outlets=[asset], doc_md=doc("Runs pg_dump and streams it encrypted into every region."))
        def logical_backup(**context) -> dict:
            from backup.logical import run_logical_backup
            from resguardo.errors import ResguardoError

            use_airflow_credentials()
            dsn, password = database_connection(name)
            who = f"airflow:{context['dag_run'].run_id}"
            try:
                result = run_logical_backup(load_config(), name, triggered_by=who, dsn=dsn, password=password)
            except ResguardoError as error:
                raise fail_or_retry(error) from error
            return {"backup_id": result.backup_id, "regions": result.regions,
                    "failed_regions": result.failed_regions}

        logical_backup()
    return dag


def _restore_test_dag(name: str, db, config) -> DAG:
    schedule_setting = db.restore_test.schedule
    if schedule_setting == "asset":
        schedule = [Asset(f"resguardo://{name}/logical")]
    else:
        schedule = timetable(schedule_setting, config.timezone)

    with DAG(
        dag_id=f"resguardo_restore_test_{name}",
        schedule=schedule,
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args={**DEFAULT_ARGS, "retries": 1},
        doc_md=doc(RESTORE_TEST_DOC, database=name),
        tags=["resguardo", "restore-test", name],
        params={"backup_id": Param("latest", type="string", title=doc("Backup id"),
                                   description=doc("Backup to test; 'latest' takes the newest."))},
    ) as dag:

        # Only workers on this queue hold the private key (see docs/deployment.md).
        @task(doc_md=doc("Restores into a scratch cluster, validates with GX and writes signed evidence."),
              queue=os.environ.get("RESGUARDO_RESTORE_QUEUE", "default"))
        def restore_test(**context) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from restore.verify import run_restore_test, summarize

            use_airflow_credentials()
            outcome = run_restore_test(load_config(), name, backup_id=context["params"]["backup_id"],
                                       triggered_by=f"airflow:{context['dag_run'].run_id}")
            print(summarize(outcome))
            if not outcome.passed:
                raise AirflowFailException(doc("Restore test failed; see the evidence record {sequence}.",
                                               sequence=str(outcome.record.get("sequence"))))
            return {"backup_id": outcome.backup_id, "sequence": outcome.record.get("sequence"),
                    "rto_seconds": outcome.timings.get("rto")}

        restore_test()
    return dag


def _register() -> None:
    config = load_config()
    for name, db in config.databases.items():
        globals()[f"resguardo_backup_{name}"] = _backup_dag(name, db, config)
        globals()[f"resguardo_restore_test_{name}"] = _restore_test_dag(name, db, config)


_register()
