"""Masked refresh DAGs, one per non-production target configured in ``masking.yaml``.

``resguardo_masking_<db>_<target>`` restores a backup of ``<db>`` into a
scratch cluster, masks it under the LOPDP policy, proves that no personal
data remains and loads the copy into ``<target>`` (or stores it encrypted),
then appends signed evidence. It runs on the target's ``schedule`` and can be
triggered by hand with another ``backup_id``. Without ``masking.yaml`` no DAG
is registered.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from _common import DEFAULT_ARGS, doc, fail_or_retry, load_config, timetable

REFRESH_DOC = """\
### Masked refresh of `{database}` into `{target}`

Builds a copy of **{database}** without personal data for the non-production
target **{target}** ({destination}), as the LOPDP requires:

1. restores the chosen backup (default: the newest) into an isolated scratch
   PostgreSQL (127.0.0.1 only);
2. checks the masking policy against the database: a column without a rule,
   a column kept while it looks personal without a review, or a JSON path
   with personal-looking values and no rule stops the run;
3. deletes the data subjects of the suppression list (right to deletion);
4. masks every column under its rule with the masking key, which never leaves
   the masking host;
5. proves the result: no original value left, valid formats, intact keys and
   relations, unchanged row counts;
6. loads the masked copy only if the proof passed, replacing everything in
   the target database, and writes a signed evidence record either way.

Without Airflow: `resguardo mask run {database} --target {target}`.
"""


def _refresh_dag(database: str, target_name: str, target, config):
    destination = target.dsn or ", ".join(target.encrypted_dump_regions)
    with DAG(
        dag_id=f"resguardo_masking_{database}_{target_name}",
        schedule=timetable(target.schedule, config.timezone),
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args={**DEFAULT_ARGS, "retries": 1},
        doc_md=doc(REFRESH_DOC, database=database, target=target_name, destination=destination),
        tags=["resguardo", "masking", database],
        params={
            "backup_id": Param("latest", type="string", title=doc("Backup to mask")),
            "triggered_by": Param("airflow", type="string", title=doc("Triggered by")),
        },
    ) as dag:

        @task(doc_md=doc("Restores, masks, proves and loads the masked copy; appends the evidence record."))
        def masked_refresh(**context) -> dict:
            from masking.pipeline import run_masked_refresh
            from resguardo.errors import ResguardoError

            params = context["params"]
            who = f"{params['triggered_by']}:{context['dag_run'].run_id}"
            try:
                body = run_masked_refresh(load_config(), database, target_name, backup_id=params["backup_id"],
                                          triggered_by=who)
            except ResguardoError as error:
                raise fail_or_retry(error) from error
            return {"backup_id": body.get("backup_id"), "proof": body["proof"]["outcome"],
                    "evidence_record_id": body.get("evidence_record_id")}

        masked_refresh()
    return dag


def _register() -> None:
    from masking.pipeline import load_for
    from resguardo.errors import ConfigError
    from resguardo.log import get_logger

    config = load_config()
    try:
        masking = load_for(config)
    except ConfigError as error:
        # Without a valid masking.yaml the other DAG files must still load.
        get_logger("dags.masking_refresh").warning("masking.dags.not_registered", extra={"error": error.message})
        return
    for database, settings in masking.databases.items():
        for target_name, target in settings.targets.items():
            globals()[f"resguardo_masking_{database}_{target_name}"] = _refresh_dag(database, target_name, target, config)


_register()
