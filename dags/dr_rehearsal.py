"""Quarterly DR rehearsal DAGs, one per database with a standby or point-in-time recovery.

``resguardo_dr_rehearsal_<db>`` runs on ``dr.rehearsal_schedule`` (default
06:00 on the 1st of January, April, July and October, America/Guayaquil) and
by hand. It rebuilds the database in isolated scratch clusters (storage and
replica scenarios, see :mod:`drills.rehearsal`), writes signed evidence, and
fails with an alert to the DR channel when a target is missed.

:class:`DrAlertNotifier` is the failure callback of all DR DAGs: it posts to
the webhook in ``RESGUARDO_DR_WEBHOOK_URL`` (Slack or Teams incoming webhook)
and logs.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, BaseNotifier, Param, task

from _common import DEFAULT_ARGS, database_connection, doc, load_config, timetable

REHEARSAL_DOC = """\
### DR rehearsal of `{database}`

Simulates the loss of the primary and measures how long it takes to have the
database back (**RTO**, target {rto} s) and how much committed data would be
lost (**RPO**, target {rpo} s). Nothing in production changes: the copies run
in isolated scratch clusters on 127.0.0.1, without archiving or replication,
and are deleted at the end. The only write to production is one marker row in
`resguardo_dr.marker` on the primary, which marks the moment of the simulated loss.

Scenarios:

- **storage**: rebuild from the storage regions only (newest base backup +
  archived WAL, to the end of the archive), as after losing the whole primary region;
- **replica**: copy the DR standby, start the copy and promote it, as in a failover.

Each step is timed (detect, fetch, restore, replay, validate, open). The task
**fails and alerts the DR channel** when a target is missed or the copy does
not validate; the signed evidence record (kind `dr_rehearsal`) is written either way.

Without Airflow: `resguardo dr rehearse {database}`.
"""


class DrAlertNotifier(BaseNotifier):
    """Post a failed DR task to the DR channel's webhook and log it.

    ``webhook_url`` defaults to the variable ``RESGUARDO_DR_WEBHOOK_URL``,
    read when the alert is sent, so the URL (which contains the channel's
    token) never appears in the DAG file or its serialisation.
    """

    template_fields = ()

    def __init__(self, *, webhook_url: str | None = None, title: str | None = None):
        super().__init__()
        self.webhook_url = webhook_url
        self.title = title

    def notify(self, context) -> None:
        from drills.alerting import alert_task_failure

        dag_id = str(getattr(context.get("dag"), "dag_id", "?"))
        alert_task_failure(context, title=self.title or doc("DR task failed: {dag_id}", dag_id=dag_id),
                           url=self.webhook_url)


def _rehearsal_dag(name: str, db, config) -> DAG:
    scenarios = [s for s, on in (("storage", db.pitr.enabled), ("replica", db.dr.standby is not None)) if on]

    with DAG(
        dag_id=f"resguardo_dr_rehearsal_{name}",
        schedule=timetable(db.dr.rehearsal_schedule, config.timezone),
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        # A rerun would measure a different moment: a failed rehearsal is a finding, not a retry.
        default_args={**DEFAULT_ARGS, "retries": 0, "on_failure_callback": DrAlertNotifier()},
        doc_md=doc(REHEARSAL_DOC, database=name, rto=str(db.dr.rto_target_seconds), rpo=str(db.dr.rpo_target_seconds)),
        tags=["resguardo", "dr", "rehearsal", name],
        params={
            "scenarios": Param(scenarios, type="array", items={"type": "string", "enum": scenarios},
                               minItems=1, uniqueItems=True, title=doc("Scenarios"),
                               description=doc("storage: from base backup + WAL; "
                                               "replica: promote a copy of the standby.")),
        },
    ) as dag:

        def _scenario_task(scenario: str):
            @task(task_id=f"rehearse_{scenario}", trigger_rule="all_done",
                  doc_md=doc("Rebuilds the database in an isolated copy and measures RTO and RPO."))
            def rehearse(**context) -> dict | None:
                from airflow.sdk.exceptions import AirflowSkipException

                from drills.rehearsal import rehearse_replica, rehearse_storage
                from drills.topology import load_topology

                if scenario not in context["params"]["scenarios"]:
                    raise AirflowSkipException(doc("Scenario {scenario} not requested.", scenario=scenario))
                dsn, password = database_connection(name)
                config = load_config()
                topology = load_topology(config, name, dsn=dsn, password=password)
                function = rehearse_storage if scenario == "storage" else rehearse_replica
                result = function(config, name, topology=topology, run_id=context["dag_run"].run_id)
                return result.to_dict()

            return rehearse()

        @task(trigger_rule="all_done", doc_md=doc("Writes the rehearsal report and fails when a target was missed."))
        def verdict(results: list, **context) -> str:
            from airflow.sdk.exceptions import AirflowFailException

            from drills.report import render_rehearsal

            done = [r for r in results if r]
            report = render_rehearsal(done, timezone=load_config().timezone)
            print(report)
            # A requested scenario without a result failed before it could record one.
            requested = context["params"]["scenarios"]
            missing = [s for s, r in zip(scenarios, results) if not r and s in requested]
            failed = [r["scenario"] for r in done if not r["passed"]]
            if failed or missing:
                raise AirflowFailException(doc("DR rehearsal failed for: {scenarios}. See the report above.",
                                               scenarios=", ".join(failed + missing)))
            return report

        tasks = [_scenario_task(s) for s in scenarios]
        # One scenario at a time: both copy the whole database.
        for before, after in zip(tasks, tasks[1:]):
            before >> after
        verdict(tasks)
    return dag


def _register() -> None:
    config = load_config()
    for name, db in config.databases.items():
        if db.pitr.enabled or db.dr.standby is not None:
            globals()[f"resguardo_dr_rehearsal_{name}"] = _rehearsal_dag(name, db, config)


_register()
