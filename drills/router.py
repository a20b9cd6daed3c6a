"""The router: the one address clients use, switched from the old primary to the new one.

:class:`Router` is the interface a failover drives; :class:`PgBouncerRouter`
implements it for PgBouncer. A DNS or load-balancer router would implement
the same three methods.

Terms:

- *alias*: the database name clients connect to, an entry of PgBouncer's
  ``[databases]`` section (``core = host=10.0.0.5 port=5432 dbname=core``).
- *target*: the host and port the alias sends connections to.
- *switch*: PAUSE the alias (PgBouncer waits for running transactions to end
  and closes its server connections), rewrite the alias's ``host`` and
  ``port`` in ``pgbouncer.ini`` atomically, RELOAD, then RESUME. Clients that
  connect during the switch wait instead of failing; after RESUME every new
  server connection goes to the new target.

With ``pool_mode = session`` PAUSE waits for every client to disconnect. So a
PAUSE that does not finish within ``pause_timeout`` seconds is replaced by
KILL, which drops the alias's client and server connections at once and keeps
new clients waiting until RESUME.

>>> parse_entry("host=10.0.0.5 port=5432 dbname=core pool_size=20")
{'host': '10.0.0.5', 'port': '5432', 'dbname': 'core', 'pool_size': '20'}
>>> render_entry({"host": "10.0.0.6", "port": "5432", "application_name": "core app"})
"host=10.0.0.6 port=5432 application_name='core app'"
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drills.topology import Endpoint
from resguardo.config import RouterConfig
from resguardo.errors import ConfigError, ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("drills.router")

DEFAULT_PAUSE_TIMEOUT_SECONDS = 15.0
ADMIN_CONNECT_TIMEOUT_SECONDS = 5

_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")
_ENTRY = re.compile(r"^(\s*)(\"[^\"]+\"|[^=\s;#]+)(\s*=\s*)(.*?)\s*$")
_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.|'')*'|[^\s']+)")


class RouterError(ResguardoError):
    """The router could not be read, switched or reached."""

    exit_status = 9


@dataclass
class SwitchResult:
    """The outcome of one switch."""

    router: str
    alias: str
    previous: str
    current: str
    drain: str  # "pause" (clean drain), "kill" (connections dropped) or "unchanged"
    pause_seconds: float
    seconds: float
    backup_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Router(abc.ABC):
    """The address clients connect to, which a failover points at the new primary."""

    kind: str

    @abc.abstractmethod
    def current_target(self) -> Endpoint:
        """Return the host and port clients are sent to now."""

    @abc.abstractmethod
    def switch(self, target: Endpoint, *, pause_timeout: float = DEFAULT_PAUSE_TIMEOUT_SECONDS) -> SwitchResult:
        """Send new client connections to ``target``; running transactions finish or are dropped first."""

    @abc.abstractmethod
    def client_dsn(self, user: str | None = None) -> str:
        """Return the DSN a client uses to reach the database through the router."""


# -- PgBouncer ini handling -------------------------------------------------------


def parse_entry(value: str) -> dict[str, str]:
    """Parse the value of a ``[databases]`` entry into its ``key=value`` pairs."""
    params: dict[str, str] = {}
    position = 0
    value = value.strip()
    while position < len(value):
        match = _TOKEN.match(value, position)
        if not match:
            raise ValueError(f"cannot parse {value[position:]!r}")
        raw = match.group(2)
        if raw.startswith("'"):
            raw = raw[1:-1].replace("''", "'").replace("\\'", "'")
        params[match.group(1)] = raw
        position = match.end()
        while position < len(value) and value[position].isspace():
            position += 1
    return params


def render_entry(params: dict[str, str]) -> str:
    """Render ``key=value`` pairs, quoting values that contain spaces or quotes."""
    parts = []
    for key, value in params.items():
        text = str(value)
        if not text or re.search(r"[\s']", text):
            text = "'" + text.replace("'", "''") + "'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _alias_name(raw: str) -> str:
    return raw[1:-1] if raw.startswith('"') and raw.endswith('"') else raw


def find_entry(text: str, alias: str) -> tuple[int, dict[str, str]]:
    """Return the line index and parameters of ``alias`` in the ``[databases]`` section."""
    section = None
    for index, line in enumerate(text.splitlines()):
        header = _SECTION.match(line)
        if header:
            section = header.group(1).strip().lower()
            continue
        if section != "databases" or not line.strip() or line.lstrip().startswith((";", "#")):
            continue
        match = _ENTRY.match(line)
        if match and _alias_name(match.group(2)) == alias:
            return index, parse_entry(match.group(4))
    raise KeyError(alias)


def replace_target(text: str, alias: str, target: Endpoint) -> tuple[str, dict[str, str]]:
    """Return ``text`` with the alias's host and port set to ``target``, and the old parameters.

    Every other parameter of the entry (dbname, pool_size, auth_user, ...)
    and every other line, comments included, stays as it was.

    >>> text = "[databases]\\ncore = host=a port=5432 dbname=core\\n[pgbouncer]\\nlisten_port = 6432\\n"
    >>> print(replace_target(text, "core", Endpoint("b", 5433))[0], end="")
    [databases]
    core = host=b port=5433 dbname=core
    [pgbouncer]
    listen_port = 6432
    """
    index, params = find_entry(text, alias)
    lines = text.splitlines(keepends=True)
    match = _ENTRY.match(lines[index].rstrip("\r\n"))
    assert match is not None
    updated = dict(params)
    updated["host"] = target.host
    updated["port"] = str(target.port)
    ending = lines[index][len(lines[index].rstrip("\r\n")):]
    lines[index] = f"{match.group(1)}{match.group(2)}{match.group(3)}{render_entry(updated)}{ending or os.linesep}"
    return "".join(lines), params


def write_atomically(path: Path, data: str) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix.

    The temporary file is created in the same directory with the original's
    mode and owner, flushed to disk and renamed over the original. The
    directory is synced afterwards, so the rename survives a crash.
    """
    original = path.stat()
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, original.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(temporary, original.st_uid, original.st_gid)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# -- PgBouncer ------------------------------------------------------------------


class PgBouncerRouter(Router):
    """PgBouncer: rewrite the alias in ``pgbouncer.ini`` and reload through the admin console.

    Resguardo must run on the PgBouncer host (it writes ``config_file``) and be
    listed in ``admin_users``. The admin console's password, when it needs one,
    comes from libpq's usual sources (``PGPASSFILE``/``~/.pgpass``).
    """

    kind = "pgbouncer"

    def __init__(self, config_file: Path, admin_dsn: str, alias: str):
        self.config_file = Path(config_file)
        self.admin_dsn = admin_dsn
        self.alias = alias

    def __repr__(self) -> str:
        return f"PgBouncerRouter({str(self.config_file)!r}, alias={self.alias!r})"

    def _read(self) -> str:
        try:
            return self.config_file.read_text(encoding="utf-8")
        except OSError as error:
            raise RouterError(
                _("cannot read the PgBouncer config {path}: {error}").format(
                    path=self.config_file, error=error.strerror),
                _("run Resguardo on the PgBouncer host with read and write access to this file"),
            ) from None

    def _entry(self, text: str) -> dict[str, str]:
        try:
            return find_entry(text, self.alias)[1]
        except KeyError:
            raise RouterError(
                _("the PgBouncer config {path} has no [databases] entry {alias}").format(
                    path=self.config_file, alias=self.alias
                ),
                _("define the alias in that file itself (entries in %include files are not rewritten) "
                  "or fix dr.router.database_alias"),
            ) from None
        except ValueError as error:
            raise RouterError(
                _("the [databases] entry {alias} in {path} cannot be parsed: {error}").format(
                    alias=self.alias, path=self.config_file, error=error
                ),
                _("write the entry as key=value pairs, quoting values with spaces in single quotes"),
            ) from None

    def current_target(self) -> Endpoint:
        params = self._entry(self._read())
        return Endpoint(params.get("host", "localhost"), int(params.get("port", "5432")))

    def client_dsn(self, user: str | None = None) -> str:
        params = {k: v for k, v in conninfo_to_dict(self.admin_dsn).items() if k not in ("user", "dbname")}
        params["dbname"] = self.alias
        if user:
            params["user"] = user
        return make_conninfo(**params)

    def _admin(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=ADMIN_CONNECT_TIMEOUT_SECONDS)
        except psycopg.OperationalError as error:
            raise RouterError(
                _("cannot connect to the PgBouncer admin console: {error}").format(
                    error=str(error).strip().splitlines()[0]),
                _("check dr.router.admin_dsn (dbname=pgbouncer) and that this user is in admin_users"),
            ) from None

    def _admin_command(self, conn: psycopg.Connection, command: str) -> None:
        try:
            conn.execute(command)
        except psycopg.Error as error:
            raise RouterError(
                _("PgBouncer rejected {command}: {error}").format(command=command, error=str(error).strip()),
                _("read PgBouncer's log for the cause; the admin console accepts PAUSE, KILL, RELOAD and RESUME"),
            ) from None

    def _drain(self, admin: psycopg.Connection, pause_timeout: float) -> tuple[str, float]:
        """PAUSE the alias, falling back to KILL; return the method and seconds taken."""
        started = time.monotonic()
        pause_conn = self._admin()
        outcome: dict[str, BaseException | None] = {}

        def pause() -> None:
            try:
                pause_conn.execute(f"PAUSE {self.alias}")
                outcome["error"] = None
            except BaseException as error:  # reported to the waiting thread below
                outcome["error"] = error

        # PAUSE blocks until running transactions end, so it runs on its own
        # connection in a thread that can be abandoned.
        worker = threading.Thread(target=pause, name="pgbouncer-pause", daemon=True)
        worker.start()
        worker.join(pause_timeout)

        if not worker.is_alive() and outcome.get("error") is None:
            pause_conn.close()
            return "pause", time.monotonic() - started
        if not worker.is_alive():
            pause_conn.close()
            raise RouterError(
                _("PgBouncer rejected PAUSE {alias}: {error}").format(alias=self.alias, error=outcome["error"]),
                _("check that the alias exists in the running PgBouncer (SHOW DATABASES)"),
            )

        log.warning("drills.router.pause_timeout", extra={"alias": self.alias, "timeout_seconds": pause_timeout})
        self._admin_command(admin, f"KILL {self.alias}")
        # PgBouncer 1.18 sends no reply to the pending PAUSE after KILL, so
        # shutting the socket down ends the waiting thread's connection.
        try:
            with socket.socket(fileno=os.dup(pause_conn.fileno())) as raw:
                raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        worker.join(5)
        return "kill", time.monotonic() - started

    def switch(self, target: Endpoint, *, pause_timeout: float = DEFAULT_PAUSE_TIMEOUT_SECONDS) -> SwitchResult:
        started = time.monotonic()
        text = self._read()
        previous = self._entry(text)
        previous_target = f"{previous.get('host', 'localhost')}:{previous.get('port', '5432')}"
        log.info("drills.router.switch.start",
                 extra={"alias": self.alias, "previous": previous_target, "target": str(target)})

        admin = self._admin()
        backup_file: Path | None = None
        drain = "unchanged"
        pause_seconds = 0.0
        try:
            drain, pause_seconds = self._drain(admin, pause_timeout)

            new_text, _old = replace_target(text, self.alias, target)
            if new_text != text:
                stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
                backup_file = self.config_file.with_name(f"{self.config_file.name}.{stamp}.resguardo-prev")
                shutil.copy2(self.config_file, backup_file)
                write_atomically(self.config_file, new_text)
            self._admin_command(admin, "RELOAD")
            self._check_loaded(admin, target)
        finally:
            # Clients wait while the alias is paused or killed; leave neither
            # state behind, even when the rewrite failed.
            try:
                admin.execute(f"RESUME {self.alias}")
            except psycopg.Error as error:
                log.warning("drills.router.resume_failed", extra={"alias": self.alias, "error": str(error).strip()})
            admin.close()

        result = SwitchResult(
            router=self.kind,
            alias=self.alias,
            previous=previous_target,
            current=str(target),
            drain=drain,
            pause_seconds=round(pause_seconds, 3),
            seconds=round(time.monotonic() - started, 3),
            backup_file=str(backup_file) if backup_file else None,
        )
        log.info("drills.router.switch.done", extra=result.to_dict())
        return result

    def _check_loaded(self, admin: psycopg.Connection, target: Endpoint) -> None:
        rows = admin.execute("SHOW DATABASES")
        names = [column.name for column in rows.description or []]
        for row in rows.fetchall():
            entry = dict(zip(names, row))
            if entry.get("name") != self.alias:
                continue
            if str(entry.get("host")) == target.host and int(entry.get("port") or 0) == target.port:
                return
            raise RouterError(
                _("PgBouncer still sends {alias} to {host}:{port} after RELOAD, not to {target}").format(
                    alias=self.alias, host=entry.get("host"), port=entry.get("port"), target=target
                ),
                _("check that PgBouncer was started with {path}; a different config file ignores the rewrite").format(
                    path=self.config_file
                ),
            )
        raise RouterError(
            _("PgBouncer has no database {alias} after RELOAD").format(alias=self.alias),
            _("check that PgBouncer was started with {path}").format(path=self.config_file),
        )


def open_router(router: RouterConfig | None, resolve=lambda path: path) -> Router | None:
    """Return the router of a topology, or None when none is configured.

    ``resolve`` turns a config-relative path into an absolute one
    (``config.resolve``).
    """
    if router is None:
        return None
    if router.kind == "pgbouncer":
        return PgBouncerRouter(resolve(router.config_file), router.admin_dsn, router.database_alias)
    raise ConfigError(
        _("router kind {kind!r} is not supported").format(kind=router.kind),
        _("use kind: pgbouncer"),
    )
