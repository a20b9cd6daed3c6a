"""Alerts for DR coordinators: a JSON message POSTed to a chat webhook.

The payload ``{"text": "..."}`` is accepted by Slack incoming webhooks and by
Microsoft Teams incoming webhooks (Teams shows ``text`` as Markdown). The
webhook URL contains the channel's secret token, so it is read from an
environment variable (default :data:`WEBHOOK_ENV`) and never logged: logs show
only its scheme and host.

The Airflow notifier that calls this on task failure lives with the DAGs
(``dags/dr_rehearsal.py``) because the core does not import Airflow.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from resguardo.errors import ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("drills.alerting")

WEBHOOK_ENV = "RESGUARDO_DR_WEBHOOK_URL"
TIMEOUT_SECONDS = 10


class AlertError(ResguardoError):
    """The alert webhook rejected the message or could not be reached."""

    exit_status = 11


def webhook_url(explicit: str | None = None, env: str = WEBHOOK_ENV) -> str | None:
    """Return the webhook URL: ``explicit``, else the variable ``env``, else None."""
    return explicit or os.environ.get(env) or None


def _host_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}"


def format_alert(title: str, lines: list[str], facts: dict[str, Any] | None = None) -> str:
    """Return the Markdown text of an alert: a bold title, lines, then ``key: value`` facts.

    >>> print(format_alert("DR", ["RTO missed"], {"database": "core"}))
    **DR**
    RTO missed
    - database: core
    """
    text = [f"**{title}**", *lines]
    for key, value in (facts or {}).items():
        text.append(f"- {key}: {value}")
    return "\n".join(text)


def task_failure_text(*, title: str, dag_id: str, run_id: str, task_id: str, error: str,
                      log_url: str | None = None) -> str:
    """Return the alert text for a failed Airflow task (used by the DR DAGs' failure callbacks).

    >>> print(task_failure_text(title="DR", dag_id="d", run_id="r", task_id="t", error="ERROR: x\\nHINT: y"))
    **DR**
    ERROR: x
    HINT: y
    - DAG: d
    - run: r
    - task: t
    """
    facts = {_("DAG"): dag_id, _("run"): run_id, _("task"): task_id}
    if log_url:
        facts[_("log")] = log_url
    lines = [line for line in error.splitlines() if line.strip()][:10]
    return format_alert(title, lines, facts)


def alert_task_failure(context: dict[str, Any], *, title: str, url: str | None = None) -> bool:
    """Post the failure of the task in an Airflow callback ``context``; log instead of raising.

    Reads only plain attributes of the context's objects, so this module
    does not import Airflow.
    """
    dag = context.get("dag")
    dag_run = context.get("dag_run")
    task_instance = context.get("task_instance") or context.get("ti")
    error = context.get("exception")
    message = error.render() if isinstance(error, ResguardoError) else str(error or "")
    dag_id = str(getattr(dag, "dag_id", "?"))
    run_id = str(getattr(dag_run, "run_id", "?"))
    task_id = str(getattr(task_instance, "task_id", "?"))
    log.error("drills.alert.task_failed", extra={"dag_id": dag_id, "run_id": run_id, "task_id": task_id})
    text = task_failure_text(title=title, dag_id=dag_id, run_id=run_id, task_id=task_id, error=message,
                             log_url=getattr(task_instance, "log_url", None))
    try:
        return post_alert(text, url=url)
    except AlertError as alert_error:
        # The task has failed already; a lost alert is logged, not raised.
        log.error("drills.alert.not_sent", extra={"dag_id": dag_id, "run_id": run_id, "error": alert_error.message})
        return False


def post_alert(text: str, *, url: str | None = None, timeout: float = TIMEOUT_SECONDS) -> bool:
    """POST ``{"text": text}`` to the webhook; return False when no webhook is configured.

    Raises AlertError when the webhook returns an HTTP error or cannot be
    reached, so a caller can decide whether a lost alert fails its task.
    """
    target = webhook_url(url)
    if target is None:
        log.warning("drills.alert.no_webhook", extra={"env": WEBHOOK_ENV})
        return False
    if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
        raise AlertError(
            _("the alert webhook URL must start with http:// or https://"),
            _("set {env} to the incoming-webhook URL of the DR channel").format(env=WEBHOOK_ENV),
        )

    body = json.dumps({"text": text}, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(
        target, data=body, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        log.error("drills.alert.rejected", extra={"webhook": _host_of(target), "status": error.code})
        raise AlertError(
            _("the alert webhook at {host} answered HTTP {status}").format(host=_host_of(target), status=error.code),
            _("check that the webhook still exists and accepts JSON messages"),
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        log.error("drills.alert.unreachable", extra={"webhook": _host_of(target), "error": str(reason)})
        raise AlertError(
            _("the alert webhook at {host} is unreachable: {error}").format(host=_host_of(target), error=reason),
            _("check network access from this host to the webhook"),
        ) from None
    log.info("drills.alert.sent", extra={"webhook": _host_of(target), "status": status, "chars": len(text)})
    return True
