"""Connecting to the source database and reading its identity.

The *identity* of a server is what a restore must match against: PostgreSQL
version, system identifier (unique per ``initdb``), current timeline and the
WAL position (LSN) when the backup started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg

from resguardo.config import DatabaseConfig
from resguardo.errors import ConfigError, ExternalToolError
from resguardo.i18n import _


@dataclass(frozen=True)
class Source:
    """How to reach one configured database: DSN plus an optional password."""

    name: str
    dsn: str
    password: str | None = None

    def libpq_env(self) -> dict[str, str]:
        """Return the environment for libpq programs (password via PGPASSWORD, never argv)."""
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, **kwargs) -> psycopg.Connection:
        """Open a psycopg connection, raising ExternalToolError with the server's reason."""
        try:
            return psycopg.connect(self.dsn, password=self.password, connect_timeout=15, **kwargs)
        except psycopg.OperationalError as error:
            raise ExternalToolError(
                _("could not connect to database {name}: {error}").format(name=self.name, error=str(error).strip()),
                _("check databases.{name}.dsn, that the server runs and accepts connections from this host").format(
                    name=self.name
                ),
            ) from None


def source_for(name: str, db: DatabaseConfig, *, dsn: str | None = None, password: str | None = None) -> Source:
    """Build the Source of database ``name``; ``dsn``/``password`` come from Airflow when set."""
    if password is None and db.password_env:
        password = os.environ.get(db.password_env)
        if password is None:
            raise ConfigError(
                _("environment variable {env} (databases.{name}.password_env) is not set").format(
                    env=db.password_env, name=name
                ),
                _("export it before running, or use a ~/.pgpass file and remove password_env"),
            )
    return Source(name=name, dsn=dsn or db.dsn, password=password)


def server_identity(conn: psycopg.Connection) -> dict:
    """Return version, system identifier, timeline and current LSN of the connected server."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT current_setting('server_version'),
                   current_setting('server_version_num')::int,
                   (SELECT system_identifier::text FROM pg_control_system()),
                   (SELECT timeline_id FROM pg_control_checkpoint()),
                   pg_is_in_recovery(),
                   CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text
                        ELSE pg_current_wal_lsn()::text END,
                   current_database(),
                   pg_database_size(current_database())
            """
        )
        row = cur.fetchone()
    return {
        "version": row[0],
        "version_num": row[1],
        "system_identifier": row[2],
        "timeline": row[3],
        "in_recovery": row[4],
        "lsn": row[5],
        "database": row[6],
        "database_size": row[7],
    }
