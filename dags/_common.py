"""Helpers shared by Resguardo's DAG files: config, docs, credentials, error mapping.

DAG files stay thin: they read the configuration at parse time and call the
core packages inside tasks. Nothing here runs a backup or opens a connection at
import time.
"""

from __future__ import annotations

import datetime as dt
import functools
import os

from resguardo.i18n import _

DEFAULT_ARGS = {
    "owner": "resguardo",
    "retries": 3,
    "retry_delay": dt.timedelta(minutes=2),
    # Airflow 3.3 takes a float multiplier: 2 min, 4 min, 8 min between tries.
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=30),
}


@functools.lru_cache(maxsize=1)
def load_config():
    """Load ``resguardo.yaml`` from ``RESGUARDO_CONFIG`` (cached per parse)."""
    from resguardo.config import load_config as _load

    return _load(os.environ.get("RESGUARDO_CONFIG"))


def doc(text: str, **values: str) -> str:
    """Translate a DAG or task doc (markdown) into the configured language."""
    return _(text).format(**values) if values else _(text)


def timetable(cron: str | None, timezone: str):
    """Return a CronTriggerTimetable in the bank's time zone, or None for manual-only DAGs."""
    if not cron:
        return None
    from airflow.sdk import CronTriggerTimetable

    return CronTriggerTimetable(cron, timezone=timezone)


def database_connection(database: str) -> tuple[str | None, str | None]:
    """Return (dsn, password) from the database's Airflow Connection, or (None, None).

    Called inside tasks only. The Connection's host, port, login and schema
    build the DSN; its password never reaches a log.
    """
    config = load_config()
    db = config.database(database)
    if not db.connection_id:
        return None, None
    from airflow.sdk import Connection
    from psycopg.conninfo import make_conninfo

    conn = Connection.get(db.connection_id)
    params = {"host": conn.host, "port": conn.port, "user": conn.login, "dbname": conn.schema}
    dsn = make_conninfo(**{k: v for k, v in params.items() if v})
    return dsn, conn.password


def airflow_credentials(connection_id: str):
    """Return credentials for a region from its Airflow Connection.

    S3: login = access key id, password = secret key, extra ``aws_session_token``
    optional. GCS: extra ``keyfile_dict`` (service-account JSON) or
    ``key_path``. Called inside tasks only, through the storage registry.
    """
    from airflow.sdk import Connection

    conn = Connection.get(connection_id)
    extra = conn.extra_dejson or {}
    if conn.conn_type in ("google_cloud_platform", "gcs", "google-cloud-platform"):
        from google.oauth2 import service_account

        if extra.get("keyfile_dict"):
            info = extra["keyfile_dict"]
            info = info if isinstance(info, dict) else __import__("json").loads(info)
            return service_account.Credentials.from_service_account_info(info)
        if extra.get("key_path"):
            return service_account.Credentials.from_service_account_file(extra["key_path"])
        return None
    return conn.login, conn.password, extra.get("aws_session_token")


def use_airflow_credentials() -> None:
    """Make every region opened in this task take credentials from Airflow Connections."""
    from storage.registry import set_default_credentials_provider

    set_default_credentials_provider(airflow_credentials)


def fail_or_retry(error: Exception):
    """Map a core error to Airflow's behaviour: retry transient storage errors, fail the rest at once."""
    from airflow.sdk.exceptions import AirflowFailException

    from resguardo.errors import ResguardoError, StorageError

    if isinstance(error, StorageError) and getattr(error, "transient", True):
        return error
    if isinstance(error, ResguardoError):
        return AirflowFailException(error.render())
    return error
