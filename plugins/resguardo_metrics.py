"""Metrics of Resguardo DAG runs for Prometheus: an Airflow listener plugin that emits StatsD metrics.

Airflow sends them with its own metrics client (``[metrics] statsd_on``, or
OpenTelemetry with ``[metrics] otel_on``), so they share its prefix
(``[metrics] statsd_prefix``, ``airflow`` by default). The statsd-exporter
mapping ``deploy/monitoring/statsd-mapping.yaml`` turns them into the
Prometheus series that ``deploy/monitoring/prometheus-rules.yaml`` alerts on.

Terms:

- *kind* and *subject*: parsed from the DAG id, e.g. ``resguardo_backup_core``
  is kind ``backup``, subject ``core``. The subject is the database, except
  for ``masking``, where it is ``<database>_<target>``. The DAGs shared by
  all databases (:data:`SHARED_DAGS`, e.g. ``resguardo_dr_failover``) take
  the run's ``database`` parameter. Other DAG ids emit nothing.
- *run metrics*, from the DAG-run hooks in the scheduler (or in the API
  server when someone marks a run), with ``airflow.observability.stats``::

      resguardo.dagrun.<metric>.<kind>.<subject>

  ``started``, ``succeeded``, ``failed`` (counters);
  ``last_start_timestamp``, ``last_success_timestamp``,
  ``last_failure_timestamp`` (gauges, Unix seconds);
  ``last_outcome`` (gauge: 1 succeeded, 0 failed).
- *value metrics*, from the task-success hook in the worker's task process,
  with ``airflow.sdk.observability.stats``: each member of the task's
  returned dict named in :data:`VALUE_FIELDS` that is a number or a boolean
  (as 1/0) becomes the gauge::

      resguardo.value.<kind>.<field>.<subject>

  e.g. ``resguardo.value.archive_check.lag_seconds.core``.

Each process uses the stats module that Airflow initialised in it: the
scheduler and API server initialise ``airflow.observability.stats``, the task
process ``airflow.sdk.observability.stats``. A listener that fails logs the
error and never fails the task or the run.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

from resguardo.log import get_logger

log = get_logger("plugins.resguardo_metrics")

# Checked in order. No entry is a prefix of another, so a new entry that is
# must come before the shorter one.
KIND_PREFIXES = (
    ("resguardo_restore_test_", "restore_test"),
    ("resguardo_archive_check_", "archive_check"),
    ("resguardo_dr_rehearsal_", "dr_rehearsal"),
    ("resguardo_basebackup_", "basebackup"),
    ("resguardo_masking_", "masking"),
    ("resguardo_backup_", "backup"),
)
# DAGs shared by all databases: the run's "database" parameter is the
# subject, or "all" when the run has none.
SHARED_DAGS = {
    "resguardo_dr_failover": "failover",
    "resguardo_dr_failback": "failback",
    "resguardo_evidence_verify": "evidence_verify",
}
SUBJECT_ALL = "all"
# Database names as resguardo.config accepts them; anything else in a run's
# parameters is not used in a metric name.
DATABASE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")

# Members of a task's returned dict that become gauges. Seconds, bytes and
# counts as returned; booleans as 1 (true) or 0 (false).
VALUE_FIELDS = (
    "lag_seconds", "rpo_seconds", "segments_behind", "pg_wal_bytes",
    "rto_seconds", "rto_target_seconds", "rpo_target_seconds", "rto_met", "rpo_met",
    "passed", "ok", "records", "problems",
)


def parse_dag_id(dag_id: str, params: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """Return ``(kind, subject)`` of a Resguardo DAG id, or None for other DAGs.

    ``params`` are the run's parameters (its ``conf``); only the shared DAGs read them.

    >>> parse_dag_id("resguardo_restore_test_core")
    ('restore_test', 'core')
    >>> parse_dag_id("resguardo_masking_core_qa")
    ('masking', 'core_qa')
    >>> parse_dag_id("resguardo_dr_failover", {"database": "core"})
    ('failover', 'core')
    >>> parse_dag_id("resguardo_dr_failover", {"database": "core.x"})
    ('failover', 'all')
    >>> parse_dag_id("etl_daily") is None
    True
    """
    if dag_id in SHARED_DAGS:
        database = (params or {}).get("database")
        valid = isinstance(database, str) and DATABASE_NAME.fullmatch(database)
        return SHARED_DAGS[dag_id], database if valid else SUBJECT_ALL
    for prefix, kind in KIND_PREFIXES:
        if dag_id.startswith(prefix) and len(dag_id) > len(prefix):
            return kind, dag_id[len(prefix):]
    return None


def run_metric(metric: str, kind: str, subject: str) -> str:
    """Return the StatsD name of a run metric.

    >>> run_metric("last_outcome", "restore_test", "core")
    'resguardo.dagrun.last_outcome.restore_test.core'
    """
    return f"resguardo.dagrun.{metric}.{kind}.{subject}"


def value_metric(kind: str, field: str, subject: str) -> str:
    """Return the StatsD name of a value metric.

    >>> value_metric("archive_check", "lag_seconds", "core")
    'resguardo.value.archive_check.lag_seconds.core'
    """
    return f"resguardo.value.{kind}.{field}.{subject}"


def gauge_values(returned: Any) -> dict[str, float]:
    """Return the members of a task's returned value that become gauges.

    >>> gauge_values({"lag_seconds": 12.5, "ok": True, "backup_id": "x", "records": None})
    {'lag_seconds': 12.5, 'ok': 1.0}
    >>> gauge_values(["not", "a", "dict"])
    {}
    """
    if not isinstance(returned, dict):
        return {}
    values: dict[str, float] = {}
    for field in VALUE_FIELDS:
        value = returned.get(field)
        if isinstance(value, bool):
            values[field] = 1.0 if value else 0.0
        elif isinstance(value, (int, float)) and math.isfinite(value):
            values[field] = float(value)
    return values


def _core_stats():
    from airflow.observability import stats

    return stats


def _task_stats():
    from airflow.sdk.observability import stats

    return stats


class ResguardoRunListener:
    """Listener with Airflow's DAG-run and task-instance hooks (pluggy ``hookimpl``s)."""

    def __init__(self, core_stats=None, task_stats=None, clock=time.time):
        # Tests pass their own stats modules and clock; Airflow uses the defaults.
        self._core_stats = core_stats
        self._task_stats = task_stats
        self._clock = clock

    def _run_stats(self):
        return self._core_stats or _core_stats()

    def _value_stats(self):
        return self._task_stats or _task_stats()

    # -- DAG runs (scheduler, API server) -------------------------------------------

    def _on_run(self, dag_run: Any, outcome: str) -> None:
        dag_id = str(getattr(dag_run, "dag_id", ""))
        conf = getattr(dag_run, "conf", None)
        parsed = parse_dag_id(dag_id, conf if isinstance(conf, dict) else None)
        if parsed is None:
            return
        kind, subject = parsed
        try:
            stats = self._run_stats()
            now = self._clock()
            if outcome == "started":
                stats.incr(run_metric("started", kind, subject))
                stats.gauge(run_metric("last_start_timestamp", kind, subject), now)
            elif outcome == "succeeded":
                stats.incr(run_metric("succeeded", kind, subject))
                stats.gauge(run_metric("last_success_timestamp", kind, subject), now)
                stats.gauge(run_metric("last_outcome", kind, subject), 1)
            else:
                stats.incr(run_metric("failed", kind, subject))
                stats.gauge(run_metric("last_failure_timestamp", kind, subject), now)
                stats.gauge(run_metric("last_outcome", kind, subject), 0)
            log.info("metrics.dagrun.emitted", extra={"dag_id": dag_id, "run_id": getattr(dag_run, "run_id", None),
                                                      "outcome": outcome})
        except Exception as error:  # noqa: BLE001 - a metrics failure must never fail a run
            log.warning("metrics.dagrun.failed", extra={"dag_id": dag_id, "run_id": getattr(dag_run, "run_id", None),
                                                        "error": str(error), "error_type": type(error).__name__})

    @hookimpl
    def on_dag_run_running(self, dag_run: Any, msg: str) -> None:
        self._on_run(dag_run, "started")

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        self._on_run(dag_run, "succeeded")

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        self._on_run(dag_run, "failed")

    # -- task instances (worker task process) ---------------------------------------

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        dag_id = str(getattr(task_instance, "dag_id", ""))
        if parse_dag_id(dag_id) is None:
            return
        ids = {"dag_id": dag_id, "task_id": getattr(task_instance, "task_id", None),
               "run_id": getattr(task_instance, "run_id", None)}
        try:
            params = task_instance.get_template_context().get("params") if dag_id in SHARED_DAGS else None
            kind, subject = parse_dag_id(dag_id, dict(params) if params else None)
            # The return value was pushed as XCom before this hook runs.
            returned = task_instance.xcom_pull(task_ids=task_instance.task_id, key="return_value")
            values = gauge_values(returned)
            stats = self._value_stats()
            for field, value in values.items():
                stats.gauge(value_metric(kind, field, subject), value)
            if values:
                log.info("metrics.task.emitted", extra={**ids, "fields": sorted(values)})
        except Exception as error:  # noqa: BLE001 - a metrics failure must never fail a task
            log.warning("metrics.task.failed", extra={**ids, "error": str(error), "error_type": type(error).__name__})


class ResguardoMetricsPlugin(AirflowPlugin):
    """Registers :class:`ResguardoRunListener`."""

    name = "resguardo_metrics"
    listeners = [ResguardoRunListener()]
