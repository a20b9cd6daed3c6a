"""The failover DAG: promote the DR standby of one database, by hand only.

``resguardo_dr_failover`` accepts only manual runs (``allowed_run_types``)
started with a form: the database, a reason, the confirmation word FAILOVER
and whether data loss is accepted. Each step of :mod:`drills.failover` is
its own task, so the run's grid shows where a failover stopped. Tasks never
retry: a repeated promote or fence must be a person's decision.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from _common import DEFAULT_ARGS, database_connection, doc, load_config

FAILOVER_DOC = """\
### Failover to the DR standby

**Use only when the primary is lost or must be abandoned.** It promotes the
DR standby of the chosen database to primary and sends clients to it:

1. **preflight**: the standby answers, belongs to the same cluster, and may
   lack at most the RPO target of commits; otherwise the run is rejected unless
   *accept data loss* is checked. Base backup and WAL in storage are listed.
2. **fence**: the old primary is made read-only and its sessions ended (if it
   answers), `standby.signal` is written into its data directory (if it is on
   this host) and the configured fence command runs. It cannot take writes
   even if it comes back.
3. **promote**: waits until the standby received the old primary's last WAL,
   then `pg_promote`.
4. **switch router**: PgBouncer is paused, pointed at the new primary, reloaded and resumed.
5. **write probe** through the router and **smoke checks** on the new primary. The measured RTO ends here.
6. **base backup** on the new timeline (if point-in-time recovery is enabled).
7. **evidence**: measured RTO and RPO in a signed record (kind `failover`), then the DR channel is notified.

Type the reason (at least 10 characters) and the word **FAILOVER**.
Without Airflow: `resguardo failover DATABASE --reason "..." --confirm FAILOVER`.
"""


def _alert_on_failure(context) -> None:
    """Task failure callback: alert the DR channel through the webhook in RESGUARDO_DR_WEBHOOK_URL."""
    from drills.alerting import alert_task_failure

    alert_task_failure(context, title=doc("Failover task failed"))


def _run_type(context) -> str:
    run_type = context["dag_run"].run_type
    return getattr(run_type, "value", str(run_type))


def _requested_by(context) -> str:
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None)
    return f"airflow:{user}" if user else f"airflow:{dag_run.run_id}"


def _failover_dag(databases: list[str]) -> DAG:
    with DAG(
        dag_id="resguardo_dr_failover",
        schedule=None,
        allowed_run_types=["manual"],
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args={**DEFAULT_ARGS, "retries": 0, "on_failure_callback": _alert_on_failure},
        doc_md=doc(FAILOVER_DOC),
        tags=["resguardo", "dr", "failover"],
        params={
            "database": Param(databases[0], type="string", enum=databases, title=doc("Database")),
            "reason": Param(type="string", minLength=10, title=doc("Reason"),
                            description=doc("Why the failover is needed (incident number); at least 10 characters.")),
            "confirmation": Param(type="string", pattern="^FAILOVER$", title=doc("Confirmation"),
                                  description=doc("Type FAILOVER in capitals.")),
            "accept_data_loss": Param(False, type="boolean", title=doc("Accept data loss"),
                                      description=doc("Promote even if the standby may lack more commits than the "
                                                      "RPO target. Needs authorisation.")),
            "accept_unarchived": Param(False, type="boolean", title=doc("Accept no WAL archiving"),
                                       description=doc("Promote even if the standby does not archive WAL through "
                                                       "'resguardo wal-push'. Needs authorisation.")),
        },
    ) as dag:

        def _topology(database: str):
            from drills.topology import load_topology

            dsn, password = database_connection(database)
            return load_topology(load_config(), database, dsn=dsn, password=password)

        def _step_task(name: str, description: str):
            @task(task_id=name, doc_md=description)
            def step(run: dict) -> dict:
                from airflow.sdk.exceptions import AirflowFailException

                from drills.failover import FailoverRun, run_step
                from resguardo.errors import ResguardoError

                state = FailoverRun.from_dict(run)
                try:
                    state = run_step(load_config(), _topology(state.database), state, name)
                except ResguardoError as error:
                    raise AirflowFailException(error.render()) from error
                return state.to_dict()

            return step

        @task(doc_md=doc("Checks the form and the run type; changes nothing."))
        def check_request(**context) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from drills.failover import begin
            from resguardo.errors import ResguardoError

            params = context["params"]
            try:
                run = begin(load_config(), params["database"], reason=params["reason"],
                            confirmation=params["confirmation"], accept_data_loss=bool(params["accept_data_loss"]),
                            accept_unarchived=bool(params.get("accept_unarchived", False)),
                            requested_by=_requested_by(context), run_type=_run_type(context))
            except ResguardoError as error:
                raise AirflowFailException(error.render()) from error
            return run.to_dict()

        @task(doc_md=doc("Writes the signed evidence record with the measured RTO and RPO, "
                         "then alerts the DR channel."))
        def record_evidence(run: dict) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from drills.alerting import AlertError, post_alert
            from drills.failover import OUTCOME_STEP_FAILED, FailoverRun, alert_text, finish, outcome_label

            state = FailoverRun.from_dict(run)
            topology = _topology(state.database)
            state = finish(load_config(), topology, state)
            print(alert_text(state, topology))
            try:
                post_alert(alert_text(state, topology))
            except AlertError as error:
                print(error.render())
            # Clients already use the new primary, but the run must not show
            # green while the new timeline has no base backup.
            if state.outcome == OUTCOME_STEP_FAILED:
                raise AirflowFailException(outcome_label(state.outcome) + ": " + "; ".join(state.findings))
            return state.to_dict()

        run = check_request()
        for name, description in (
            ("preflight", doc("Standby reachable, same cluster, lag within the RPO target, backups listed.")),
            ("fence", doc("Makes the old primary unable to take writes.")),
            ("promote", doc("Waits for the last WAL, then pg_promote on the standby.")),
            ("switch_router", doc("PAUSE, rewrite pgbouncer.ini, RELOAD, RESUME.")),
            ("write_probe", doc("Writes and reads a row through the router on the new primary.")),
            ("smoke_checks", doc("Validates the new primary; the measured RTO ends here.")),
            ("base_backup", doc("Takes a base backup on the new timeline.")),
        ):
            run = _step_task(name, description)(run)
        record_evidence(run)
    return dag


def _register() -> None:
    config = load_config()
    databases = sorted(name for name, db in config.databases.items() if db.dr.standby is not None)
    if databases:
        globals()["resguardo_dr_failover"] = _failover_dag(databases)


_register()
