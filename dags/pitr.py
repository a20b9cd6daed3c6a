"""Point-in-time recovery DAGs, one pair per database with ``pitr.enabled``.

``resguardo_basebackup_<db>`` takes an encrypted physical base backup on
``pitr.base_backup_schedule`` and emits the Asset ``resguardo://<db>/base``.
``resguardo_archive_check_<db>`` checks the WAL archive on
``pitr.archive_check_schedule`` and fails when the archive lag exceeds
``pitr.rpo_seconds`` or WAL is missing. WAL itself is archived by the
database server's ``archive_command``, not by Airflow.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Asset, Param, task

from _common import DEFAULT_ARGS, database_connection, doc, fail_or_retry, load_config, timetable

BASE_BACKUP_DOC = """\
### Base backup of `{database}` for point-in-time recovery

Runs `pg_basebackup` against **{database}** and streams the copy, compressed
with zstd and encrypted for the configured recipients, into every required
region at once: **{regions}**. No copy is written to local disk.

The copy carries no WAL: it relies on the WAL archive that the server fills
through `archive_command = 'resguardo wal-push %p'`. Before the signed
manifest is written, the task checks that the WAL of the copy window is in
every WAL region ({wal_regions}); otherwise the backup is discarded.

With this backup and the archived WAL, `resguardo restore-pitr {database}
--target-time ...` restores any moment after it.

Without Airflow: `resguardo basebackup {database}`.
"""

ARCHIVE_CHECK_DOC = """\
### WAL archive check of `{database}`

Compares the server's archiver statistics with the WAL regions
({wal_regions}) and fails when:

- the archive lag (the current RPO exposure) exceeds **{rpo} s**;
- a segment is missing in the archive (a gap that no recovery can pass) or
  missing in one region;
- the server reports a file as archived that no region holds.

It also records the size of `pg_wal`, which grows while archiving fails until
the disk fills and the server stops.

Without Airflow: `resguardo archive-check {database}`.
"""


def _base_backup_dag(name: str, db, config) -> DAG:
    asset = Asset(f"resguardo://{name}/base", extra={"database": name})
    wal_regions = db.pitr.wal_regions or db.regions

    with DAG(
        dag_id=f"resguardo_basebackup_{name}",
        schedule=timetable(db.pitr.base_backup_schedule, config.timezone),
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        doc_md=doc(BASE_BACKUP_DOC, database=name, regions=", ".join(db.regions), wal_regions=", ".join(wal_regions)),
        tags=["resguardo", "pitr", "base-backup", name],
        params={
            "fast_checkpoint": Param(False, type="boolean", title=doc("Fast checkpoint"),
                                     description=doc("Start at once with an immediate checkpoint (more I/O).")),
        },
    ) as dag:

        @task(outlets=[asset], doc_md=doc("Runs pg_basebackup and streams it encrypted into every region."))
        def base_backup(**context) -> dict:
            from backup.basebackup import run_base_backup
            from resguardo.errors import ResguardoError

            dsn, password = database_connection(name)
            try:
                result = run_base_backup(load_config(), name, triggered_by=f"airflow:{context['dag_run'].run_id}",
                                         dsn=dsn, password=password,
                                         fast_checkpoint=bool(context["params"]["fast_checkpoint"]))
            except ResguardoError as error:
                raise fail_or_retry(error) from error
            wal = result.manifest["wal"]
            return {"backup_id": result.backup_id, "regions": result.regions, "start_lsn": wal["start_lsn"],
                    "stop_lsn": wal["stop_lsn"], "timeline": wal["timeline"]}

        base_backup()
    return dag


def _archive_check_dag(name: str, db, config) -> DAG:
    wal_regions = db.pitr.wal_regions or db.regions

    with DAG(
        dag_id=f"resguardo_archive_check_{name}",
        schedule=timetable(db.pitr.archive_check_schedule, config.timezone),
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        # A check that fails must be seen now; the next scheduled run is the retry.
        default_args={**DEFAULT_ARGS, "retries": 0},
        doc_md=doc(ARCHIVE_CHECK_DOC, database=name, wal_regions=", ".join(wal_regions), rpo=str(db.pitr.rpo_seconds)),
        tags=["resguardo", "pitr", "archive-check", name],
    ) as dag:

        @task(doc_md=doc("Checks archive lag, gaps and pg_wal growth against pitr.rpo_seconds."))
        def archive_check() -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from backup.wal_health import check_archive

            dsn, password = database_connection(name)
            report = check_archive(load_config(), name, dsn=dsn, password=password)
            for warning in report.warnings:
                print(warning)
            if not report.ok:
                raise AirflowFailException(doc("WAL archive check failed: {problems}",
                                               problems=" ".join(report.problems)))
            return {"lag_seconds": report.lag_seconds, "segments_behind": report.segments_behind,
                    "pg_wal_bytes": report.pg_wal_bytes, "newest_segment": report.archive.get("newest_segment")}

        archive_check()
    return dag


def _register() -> None:
    config = load_config()
    for name, db in config.databases.items():
        if not db.pitr.enabled:
            continue
        globals()[f"resguardo_basebackup_{name}"] = _base_backup_dag(name, db, config)
        globals()[f"resguardo_archive_check_{name}"] = _archive_check_dag(name, db, config)


_register()
