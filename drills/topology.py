"""The DR topology of one database and the state probes run against its servers.

Terms:

- *node*: one PostgreSQL server of the topology. The *configured primary* is
  the server named by ``databases.<db>.dsn`` (data directory
  ``dr.primary_data_dir``); the *configured standby* is ``dr.standby`` in the DR
  site. The names stay fixed in the configuration while the roles change: after
  a failover the configured standby is the *acting primary*.
- *role*: what a node is right now, read from ``pg_is_in_recovery()``:
  ``primary`` (not in recovery), ``standby`` (in recovery) or ``unreachable``.
- *fenced primary*: a primary whose ``default_transaction_read_only`` is on,
  which is how :mod:`drills.fencing` stops the old primary. Ordinary
  transactions on it are read-only, so it is not a *writable primary*
  (:attr:`NodeState.accepts_writes`).
- *LSN*: a WAL position, written ``X/Y`` by PostgreSQL and handled here as an
  integer byte offset (:func:`parse_lsn`).
- *timeline*: the WAL history a server is on. Every promotion starts a new
  timeline, so the new primary's timeline is one higher than the old one's.
- *replay lag*: how far a standby is behind its primary, in bytes of WAL
  (``lag_bytes``) and as the *exposure*: the seconds of commits the standby
  does not have yet (see :func:`measure_exposure`).

A node's password comes from the caller (an Airflow Connection) or from the
environment variable named by ``password_env``. A physical standby has the same
roles and password hashes as its primary, so one password serves both nodes.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from resguardo.config import ResguardoConfig, RouterConfig
from resguardo.errors import ConfigError, ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("drills.topology")

CONNECT_TIMEOUT_SECONDS = 5
DR_SCHEMA = "resguardo_dr"


class NodeUnreachable(ResguardoError):
    """A node of the DR topology does not accept connections."""

    exit_status = 5


def parse_lsn(text: str | None) -> int | None:
    """Return an LSN as an integer byte position (None stays None).

    >>> parse_lsn("0/3000060")
    50331744
    >>> parse_lsn("1/0")
    4294967296
    """
    if text is None:
        return None
    high, low = str(text).split("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(value: int | None) -> str | None:
    """Return an integer LSN in PostgreSQL's ``X/Y`` notation.

    >>> format_lsn(50331744)
    '0/3000060'
    """
    if value is None:
        return None
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def timeline_of_walfile(name: str) -> int:
    """Return the timeline encoded in the first 8 hex digits of a WAL file name.

    >>> timeline_of_walfile("000000020000000000000003")
    2
    """
    return int(name[:8], 16)


@dataclass(frozen=True)
class Endpoint:
    """A host and TCP port that clients connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Node:
    """One server of the topology: how to reach it and where its data directory is."""

    label: str
    site: str
    dsn: str
    data_dir: Path | None = None
    password: str | None = field(default=None, repr=False, compare=False)

    @property
    def endpoint(self) -> Endpoint:
        """The host and port in the node's DSN (port 5432 when the DSN names none)."""
        params = conninfo_to_dict(self.dsn)
        host = params.get("host") or params.get("hostaddr")
        if not host:
            raise ConfigError(
                _("the DSN of node {node} names no host").format(node=self.label),
                _("add host=... to the DSN; the router needs a host and port to send clients to"),
            )
        return Endpoint(str(host).split(",")[0], int(str(params.get("port") or 5432).split(",")[0]))

    def conninfo(self, **overrides: Any) -> str:
        """Return the DSN with ``overrides`` applied, without the password."""
        return make_conninfo(self.dsn, **overrides)

    def connect(self, *, timeout: int = CONNECT_TIMEOUT_SECONDS, autocommit: bool = True,
                **overrides: Any) -> psycopg.Connection:
        """Open a connection; raise NodeUnreachable naming the node when it fails."""
        params: dict[str, Any] = {"connect_timeout": timeout, "application_name": "resguardo-drills", **overrides}
        if self.password:
            params["password"] = self.password
        try:
            return psycopg.connect(self.dsn, autocommit=autocommit, **params)
        except psycopg.OperationalError as error:
            raise NodeUnreachable(
                _("node {node} ({site}) does not accept connections: {error}").format(
                    node=self.label, site=self.site, error=_first_line(error)
                ),
                _("check that the server runs and that this host may connect to {endpoint}").format(
                    endpoint=self.conninfo()
                ),
            ) from None

    def subprocess_env(self) -> dict[str, str]:
        """Return an environment for PostgreSQL programs that connect to this node."""
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


@dataclass(frozen=True)
class Topology:
    """The two nodes, the router and the targets of one database."""

    database: str
    primary: Node
    standby: Node | None
    router: RouterConfig | None
    rto_target_seconds: int
    rpo_target_seconds: int
    fence_command: tuple[str, ...] | None = None

    def require_standby(self) -> Node:
        """Return the configured standby or raise ConfigError naming the missing key."""
        if self.standby is None:
            raise ConfigError(
                _("database {database} has no standby configured").format(database=self.database),
                _("set databases.{database}.dr.standby.dsn to the streaming standby in the DR site").format(
                    database=self.database
                ),
            )
        return self.standby

    def other(self, node: Node) -> Node:
        """Return the node that is not ``node``."""
        standby = self.require_standby()
        return standby if node.label == self.primary.label else self.primary

    def node(self, label: str) -> Node:
        """Return the node labelled ``primary`` or ``standby``."""
        if label == self.primary.label:
            return self.primary
        if label == "standby":
            return self.require_standby()
        raise ConfigError(
            _("unknown node {label!r}").format(label=label),
            _("use 'primary' (the configured primary) or 'standby' (the configured standby)"),
        )


def load_topology(config: ResguardoConfig, database: str, *, dsn: str | None = None,
                  password: str | None = None) -> Topology:
    """Build the topology of ``database`` from the configuration.

    ``dsn`` and ``password`` override the configured primary DSN and the
    password from ``password_env`` (a DAG passes the Airflow Connection's).
    """
    db = config.database(database)
    if password is None and db.password_env:
        password = os.environ.get(db.password_env)
    dr = db.dr
    primary = Node(
        label="primary",
        site="primary",
        dsn=dsn or db.dsn,
        data_dir=config.resolve(dr.primary_data_dir),
        password=password,
    )
    standby = None
    if dr.standby is not None:
        standby = Node(
            label="standby",
            site=dr.standby.site,
            dsn=dr.standby.dsn,
            data_dir=config.resolve(dr.standby.data_dir),
            password=password,
        )
    return Topology(
        database=database,
        primary=primary,
        standby=standby,
        router=dr.router,
        rto_target_seconds=dr.rto_target_seconds,
        rpo_target_seconds=dr.rpo_target_seconds,
        fence_command=tuple(dr.fence_command) if dr.fence_command else None,
    )


# -- probes -----------------------------------------------------------------------


@dataclass
class NodeState:
    """The state of one node as one probe read it; times are ISO 8601 UTC strings or None."""

    label: str
    site: str
    role: str
    error: str | None = None
    server_time: str | None = None
    system_identifier: str | None = None
    timeline: int | None = None
    # Primary: the current WAL flush position. Standby: the last replayed position.
    lsn: int | None = None
    received_lsn: int | None = None
    replay_paused: bool | None = None
    last_replay_at: str | None = None
    last_commit_at: str | None = None
    receiver_status: str | None = None
    last_contact_at: str | None = None
    track_commit_timestamp: bool | None = None
    read_only_default: bool | None = None
    archive_mode: str | None = None
    # Whether archive_command runs Resguardo's wal-push or wal-ship. The
    # command text itself is not stored, because it may name key files.
    archive_command_resguardo: bool | None = None

    @property
    def reachable(self) -> bool:
        return self.role != "unreachable"

    @property
    def accepts_writes(self) -> bool:
        """Whether the node is a primary whose ordinary transactions may write (not fenced read-only)."""
        return self.role == "primary" and not self.read_only_default

    @property
    def fenced_primary(self) -> bool:
        """Whether the node is a primary fenced read-only (``default_transaction_read_only = on``)."""
        return self.role == "primary" and bool(self.read_only_default)

    def to_dict(self) -> dict[str, Any]:
        """Return the state as JSON-ready values, LSNs in ``X/Y`` notation."""
        data = asdict(self)
        data["lsn"] = format_lsn(self.lsn)
        data["received_lsn"] = format_lsn(self.received_lsn)
        return data


def _iso(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> dt.datetime | None:
    """Parse an ISO 8601 time written by this module (a trailing ``Z`` allowed)."""
    if text is None:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def archive_command_runs_resguardo(command: str | None) -> bool:
    """Return whether an ``archive_command`` pushes WAL through Resguardo's ``wal-push`` or ``wal-ship``.

    Only the subcommand is checked, because sites install the executable
    under their own path or behind a launcher script.

    >>> archive_command_runs_resguardo("/opt/resguardo/bin/resguardo wal-push %p --db core")
    True
    >>> archive_command_runs_resguardo("cp %p /mnt/archive/%f")
    False
    """
    words = (command or "").split()
    return "wal-push" in words or "wal-ship" in words


def probe(node: Node, *, timeout: int = CONNECT_TIMEOUT_SECONDS) -> NodeState:
    """Read the role, WAL position, timeline and replication state of ``node``.

    An unreachable node gives a state with role ``unreachable`` and the error;
    every other failure raises.
    """
    try:
        conn = node.connect(timeout=timeout)
    except NodeUnreachable as error:
        log.warning("drills.probe.unreachable", extra={"node": node.label, "site": node.site, "error": error.message})
        return NodeState(label=node.label, site=node.site, role="unreachable", error=error.message)

    with conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(), clock_timestamp(), current_setting('track_commit_timestamp'),"
            " current_setting('default_transaction_read_only'),"
            " (SELECT system_identifier::text FROM pg_control_system()),"
            " current_setting('archive_mode'), current_setting('archive_command')"
        ).fetchone()
        in_recovery, now, track_commit, read_only, system_id, archive_mode, archive_command = row
        state = NodeState(
            label=node.label,
            site=node.site,
            role="standby" if in_recovery else "primary",
            server_time=_iso(now),
            system_identifier=system_id,
            track_commit_timestamp=track_commit == "on",
            read_only_default=read_only == "on",
            archive_mode=archive_mode,
            archive_command_resguardo=archive_command_runs_resguardo(archive_command),
        )
        if in_recovery:
            _probe_standby(conn, state)
        else:
            _probe_primary(conn, state)
    return state


def _probe_primary(conn: psycopg.Connection, state: NodeState) -> None:
    lsn, walfile = conn.execute(
        "SELECT pg_current_wal_flush_lsn()::text, pg_walfile_name(pg_current_wal_flush_lsn())"
    ).fetchone()
    state.lsn = parse_lsn(lsn)
    state.timeline = timeline_of_walfile(walfile)
    if state.track_commit_timestamp:
        last = conn.execute("SELECT timestamp FROM pg_last_committed_xact()").fetchone()
        state.last_commit_at = _iso(last[0]) if last else None


def _probe_standby(conn: psycopg.Connection, state: NodeState) -> None:
    received, replayed, replay_at, paused = conn.execute(
        "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,"
        " pg_last_xact_replay_timestamp(), pg_is_wal_replay_paused()"
    ).fetchone()
    state.received_lsn = parse_lsn(received)
    state.lsn = parse_lsn(replayed)
    state.last_replay_at = _iso(replay_at)
    state.replay_paused = bool(paused)
    receiver = conn.execute(
        "SELECT status, received_tli, last_msg_receipt_time FROM pg_stat_wal_receiver"
    ).fetchone()
    if receiver is not None:
        state.receiver_status, state.timeline, contact = receiver
        state.last_contact_at = _iso(contact)
    if state.timeline is None:
        state.timeline = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]


@dataclass
class Exposure:
    """How much committed data a standby is missing, and how that was measured.

    ``seconds`` is None when it cannot be known (the primary is unreachable
    and the standby never heard from it). ``method`` names the measurement:

    - ``caught_up``: the standby replayed everything the primary flushed;
    - ``commit_timestamps``: primary's newest commit (``track_commit_timestamp``)
      minus the standby's newest replayed commit;
    - ``primary_clock``: primary's current time minus the standby's newest
      replayed commit, an upper bound used without ``track_commit_timestamp``;
    - ``last_contact``: the primary is unreachable, so the bound is the time
      since the standby last heard from it. The primary may have committed
      for that long without the standby receiving it.
    """

    seconds: float | None
    lag_bytes: int | None
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_exposure(primary: NodeState, standby: NodeState, *, now: dt.datetime | None = None) -> Exposure:
    """Return the standby's data-loss exposure from two probes.

    >>> p = NodeState("primary", "a", "primary", lsn=100, server_time="2026-01-01T00:00:10Z")
    >>> s = NodeState("standby", "b", "standby", lsn=100, last_replay_at="2026-01-01T00:00:00Z")
    >>> measure_exposure(p, s).method
    'caught_up'
    >>> s.lsn = 90
    >>> measure_exposure(p, s).seconds
    10.0
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    replayed_at = parse_time(standby.last_replay_at)

    if primary.reachable and primary.role == "primary":
        lag_bytes = max(0, (primary.lsn or 0) - (standby.lsn or 0))
        if lag_bytes == 0:
            return Exposure(0.0, 0, "caught_up")
        if primary.track_commit_timestamp and primary.last_commit_at:
            newest = parse_time(primary.last_commit_at)
            if replayed_at is None:
                return Exposure(None, lag_bytes, "commit_timestamps")
            return Exposure(round(max(0.0, (newest - replayed_at).total_seconds()), 3), lag_bytes, "commit_timestamps")
        primary_now = parse_time(primary.server_time) or now
        if replayed_at is None:
            return Exposure(None, lag_bytes, "primary_clock")
        return Exposure(round(max(0.0, (primary_now - replayed_at).total_seconds()), 3), lag_bytes, "primary_clock")

    contact = parse_time(standby.last_contact_at)
    if contact is None:
        return Exposure(None, None, "last_contact")
    return Exposure(round(max(0.0, (now - contact).total_seconds()), 3), None, "last_contact")


def wait_for(predicate, *, timeout: float, interval: float = 0.2, what: str) -> float:
    """Call ``predicate`` until it returns true; return the seconds waited.

    Raises TimeoutError naming ``what`` when ``timeout`` seconds pass first.
    """
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
