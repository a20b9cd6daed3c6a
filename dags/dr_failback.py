"""The failback DAG: rebuild the old primary as a standby, optionally switch back; by hand only.

``resguardo_dr_failback`` accepts only manual runs started with a form: the
database, a reason, the confirmation word FAILBACK, the rebuild method and
whether to switch the primary role back afterwards (see :mod:`drills.failback`).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from _common import DEFAULT_ARGS, database_connection, doc, load_config

FAILBACK_DOC = """\
### Failback after a failover

Run it once the old primary's site works again:

1. **rebuild**: the old primary is stopped and rebuilt as a streaming standby
   of the new primary, with `pg_rewind` (copies only what changed since the
   failover) or, when that is impossible, a new `pg_basebackup` copy. A cloned
   node's old data directory is kept next to it as `<dir>.pre-rebuild-<time>`:
   it may hold the only copy of transactions lost in the failover.
2. **switch back** (optional): a planned switchover, which loses nothing, moves
   the primary role back to the configured primary and the router with it;
   then the DR standby is rebuilt as its standby.
3. **evidence**: a signed record (kind `failback`) with every step.

Type the reason (at least 10 characters) and the word **FAILBACK**.
Without Airflow: `resguardo failback DATABASE --reason "..." --confirm FAILBACK [--switchover]`.
"""


def _alert_on_failure(context) -> None:
    """Task failure callback: alert the DR channel through the webhook in RESGUARDO_DR_WEBHOOK_URL."""
    from drills.alerting import alert_task_failure

    alert_task_failure(context, title=doc("Failback task failed"))


def _failback_dag(databases: list[str]) -> DAG:
    with DAG(
        dag_id="resguardo_dr_failback",
        schedule=None,
        allowed_run_types=["manual"],
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args={**DEFAULT_ARGS, "retries": 0, "on_failure_callback": _alert_on_failure},
        doc_md=doc(FAILBACK_DOC),
        tags=["resguardo", "dr", "failback"],
        params={
            "database": Param(databases[0], type="string", enum=databases, title=doc("Database")),
            "reason": Param(type="string", minLength=10, title=doc("Reason"),
                            description=doc("Why and under which change ticket; at least 10 characters.")),
            "confirmation": Param(type="string", pattern="^FAILBACK$", title=doc("Confirmation"),
                                  description=doc("Type FAILBACK in capitals.")),
            "method": Param("auto", type="string", enum=["auto", "rewind", "clone"], title=doc("Rebuild method"),
                            description=doc("rewind: pg_rewind; clone: new pg_basebackup; auto: rewind, else clone.")),
            "switchover": Param(False, type="boolean", title=doc("Switch back"),
                                description=doc("After the rebuild, move the primary role back to the configured "
                                                "primary (planned, no data loss).")),
        },
    ) as dag:

        def _topology(database: str):
            from drills.topology import load_topology

            dsn, password = database_connection(database)
            return load_topology(load_config(), database, dsn=dsn, password=password)

        def _fail(run, error):
            from airflow.sdk.exceptions import AirflowFailException

            from drills.failback import finish_failback

            finish_failback(load_config(), run, error=error.message)
            return AirflowFailException(error.render())

        @task(doc_md=doc("Checks the form and the run type; changes nothing."))
        def check_request(**context) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from drills.failback import begin_failback
            from resguardo.errors import ResguardoError

            params = context["params"]
            run_type = context["dag_run"].run_type
            user = getattr(context["dag_run"], "triggering_user_name", None)
            try:
                run = begin_failback(load_config(), params["database"], reason=params["reason"],
                                     confirmation=params["confirmation"], method=params["method"],
                                     switchover=bool(params["switchover"]),
                                     requested_by=f"airflow:{user or context['dag_run'].run_id}",
                                     run_type=getattr(run_type, "value", str(run_type)))
            except ResguardoError as error:
                raise AirflowFailException(error.render()) from error
            return run.to_dict()

        @task(doc_md=doc("Stops the old primary and rebuilds it as a standby of the new primary."))
        def rebuild(run: dict) -> dict:
            from drills.failback import FailbackRun, rebuild_standby
            from resguardo.errors import ResguardoError

            state = FailbackRun.from_dict(run)
            try:
                report = rebuild_standby(load_config(), _topology(state.database), "primary", method=state.method,
                                         run_id=state.run_id)
            except ResguardoError as error:
                raise _fail(state, error) from error
            state.rebuild = report.to_dict()
            return state.to_dict()

        @task(doc_md=doc("Planned switchover to the configured primary, then rebuilds the DR standby."))
        def switch_back(run: dict) -> dict:
            from drills.failback import FailbackRun
            from drills.failback import switch_back as switch_back_core
            from resguardo.errors import ResguardoError

            state = FailbackRun.from_dict(run)
            if not state.switchover_requested:
                print(doc("Switch back not requested; the configured primary stays a standby."))
                return state.to_dict()
            try:
                state = switch_back_core(load_config(), _topology(state.database), state)
            except ResguardoError as error:
                raise _fail(state, error) from error
            return state.to_dict()

        @task(doc_md=doc("Writes the signed evidence record and alerts the DR channel."))
        def record_evidence(run: dict) -> dict:
            from drills.alerting import AlertError, format_alert, post_alert
            from drills.failback import FailbackRun, finish_failback
            from drills.failover import outcome_label

            state = finish_failback(load_config(), FailbackRun.from_dict(run))
            text = format_alert(doc("Failback of {database}: {outcome}", database=state.database,
                                    outcome=outcome_label(state.outcome)),
                                state.findings, {doc("run"): state.run_id,
                                                 doc("evidence"): str((state.evidence or {}).get("sequence"))})
            print(text)
            try:
                post_alert(text)
            except AlertError as error:
                print(error.render())
            return state.to_dict()

        record_evidence(switch_back(rebuild(check_request())))
    return dag


def _register() -> None:
    config = load_config()
    databases = sorted(name for name, db in config.databases.items() if db.dr.standby is not None)
    if databases:
        globals()["resguardo_dr_failback"] = _failback_dag(databases)


_register()
