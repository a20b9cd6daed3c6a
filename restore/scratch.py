"""Throwaway PostgreSQL clusters for restore tests, masking runs and tests.

A :class:`ScratchCluster` runs ``initdb`` into a temporary directory, starts
the server on 127.0.0.1 on a free port with its Unix socket inside that
directory, and removes everything on :meth:`ScratchCluster.destroy`. When the
process runs as root, the server runs as the ``postgres`` system user because
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from psycopg.conninfo import make_conninfo

from resguardo.errors import ExternalToolError
from resguardo.i18n import _
from resguardo.log import get_logger
from resguardo.pgtools import chown_tree, demote, find_program, run_checked, server_user

log = get_logger("restore.scratch")

SUPERUSER = "postgres"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ScratchCluster:
    """A PostgreSQL cluster in a temporary directory, bound to 127.0.0.1."""

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        base_dir: Path | None = None,
        settings: dict[str, str | int] | None = None,
        name: str = "scratch",
        data_checksums: bool = True,
        initdb: bool = True,
    ):
        self.bindir = find_program("initdb", bindir).parent
        self.os_user = server_user()
        self.root = Path(tempfile.mkdtemp(prefix=f"resguardo-{name}-", dir=base_dir))
        os.chmod(self.root, 0o755)
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.socket_dir.mkdir()
        self.log_file = self.root / "postgres.log"
        self.port = free_port()
        self.settings = dict(settings or {})
        self.data_checksums = data_checksums
        self.running = False
        chown_tree(self.root, self.os_user)
        if initdb:
            self.initdb()

    # -- lifecycle ---------------------------------------------------------------

    def initdb(self) -> None:
        """Create the data directory and write the connection settings."""
        args = [
            str(self.bindir / "initdb"),
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            "-A", "trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]
        if self.data_checksums:
            args.append("--data-checksums")
        started = time.monotonic()
        run_checked(args, what="initdb", as_server_user=True, timeout=300)
        self.write_settings()
        log.info("scratch.initdb", extra={"data_dir": str(self.data_dir), "seconds": round(time.monotonic() - started, 2)})

    def write_settings(self, extra: dict[str, str | int] | None = None) -> None:
        """Write the loopback-only connection settings plus ``settings`` to postgresql.auto.conf."""
        merged: dict[str, str | int] = {
            "listen_addresses": "127.0.0.1",
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "on",
            "max_connections": 50,
            "logging_collector": "off",
        }
        merged.update(self.settings)
        merged.update(extra or {})
        self.settings.update(extra or {})
        lines = []
        for key, value in merged.items():
            if isinstance(value, str):
                value = "'" + value.replace("'", "''") + "'"
            lines.append(f"{key} = {value}")
        conf = self.data_dir / "postgresql.auto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        chown_tree(conf, self.os_user)
        os.chmod(conf, 0o600)

    def start(self, timeout: int = 120) -> None:
        """Start the server and wait until it accepts connections."""
        run_checked(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(timeout), "start"],
            what="pg_ctl start",
            as_server_user=True,
            timeout=timeout + 30,
        )
        self.running = True
        log.info("scratch.start", extra={"port": self.port, "data_dir": str(self.data_dir)})

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` or ``immediate``); no-op when not running."""
        if not (self.data_dir / "postmaster.pid").exists():
            self.running = False
            return
        try:
            run_checked(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop"],
                what="pg_ctl stop",
                as_server_user=True,
                timeout=90,
            )
        except ExternalToolError:
            log.warning("scratch.stop_failed", extra={"port": self.port}, exc_info=True)
            raise
        self.running = False
        log.info("scratch.stop", extra={"port": self.port, "mode": mode})

    def destroy(self) -> None:
        """Stop the server (immediately) and delete the directory."""
        try:
            self.stop("immediate")
        except ExternalToolError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
        log.info("scratch.destroy", extra={"root": str(self.root)})

    def __enter__(self) -> "ScratchCluster":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # -- connections -------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a libpq DSN for ``dbname`` over TCP on 127.0.0.1."""
        return make_conninfo(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=dbname)

    def uri(self, dbname: str = "postgres") -> str:
        """Return a ``postgresql+psycopg://`` URL (SQLAlchemy form) for ``dbname``."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def psql(self, sql: str, dbname: str = "postgres", *, timeout: float = 300) -> str:
        """Run SQL with psql and return its unaligned, tuples-only output."""
        result = run_checked(
            [str(find_program("psql", self.bindir)), "-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", self.dsn(dbname), "-c", sql],
            what="psql",
            timeout=timeout,
        )
        return result.stdout.strip()

    def create_database(self, name: str) -> None:
        """Create database ``name`` (UTF8, template0)."""
        quoted = '"' + name.replace('"', '""') + '"'
        self.psql(f"CREATE DATABASE {quoted} TEMPLATE template0 ENCODING 'UTF8'")

    def popen_as_server_user(self, args: list[str], **kwargs) -> subprocess.Popen:
        """Start a program as the server's OS user (for pg_basebackup, pg_rewind, ...)."""
        return subprocess.Popen(args, preexec_fn=demote(self.os_user), **kwargs)
