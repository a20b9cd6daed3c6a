"""Recovery targets and the choice of base backup for a point-in-time recovery.

Terms:

- *recovery target*: where replay stops, one of: a time (``time``, always
  with an explicit time zone), a WAL position (``lsn``), a transaction
  (``xid``, stop at its commit), a restore point made with
  ``pg_create_restore_point`` (``name``), the first consistent point of the
  backup (``immediate``), or the end of the archive (``latest``).
- *target timeline*: which branch of history to follow: ``latest`` (the
  newest timeline in the archive, PostgreSQL's default), ``current`` (the
  backup's own) or a number.
- *usable backup*: a base backup of the same cluster (system identifier)
  that became consistent before the target, and whose timeline is on the
  path to the target timeline at its stop LSN.

How "before the target" is judged from the manifest, per kind:

- ``time``: ``wal.stopped_by``, the server clock read right after the backup
  stopped, is at or before the target. This is conservative: a backup that
  stopped moments before the target may be passed over for an older one.
- ``lsn``: ``wal.stop_lsn`` is at or before the target.
- ``xid``: ``wal.xmin_after_stop`` (the oldest transaction still running just
  after the stop) is at or before the target in 32-bit modulo order, so the
  target transaction committed after the backup was consistent.
- ``name``: a restore point's position is not known in advance. The newest
  backup is tried first and older ones after it when PostgreSQL reports that
  recovery ended before reaching the restore point.
- ``immediate`` and ``latest``: the newest backup.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from backup.wal_format import HistoryEntry, WalFormatError, format_lsn, parse_lsn, timeline_contains
from resguardo.errors import NotFoundError, ResguardoError
from resguardo.i18n import _

TARGET_KINDS = ("time", "lsn", "xid", "name", "immediate", "latest")


class RecoveryTargetError(ResguardoError):
    """The recovery target given is invalid."""

    exit_status = 2


@dataclass(frozen=True)
class RecoveryTarget:
    """Recovery target: the stop point and the timeline to follow."""

    kind: str = "latest"
    value: str | None = None
    inclusive: bool = True
    timeline: str = "latest"

    @property
    def time(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.value) if self.kind == "time" and self.value else None

    @property
    def lsn(self) -> int | None:
        return parse_lsn(self.value) if self.kind == "lsn" and self.value else None

    def describe(self) -> str:
        """Return a short English text for logs and evidence, e.g. ``time 2026-12-04T20:15:00+00:00``."""
        return self.kind if self.value is None else f"{self.kind} {self.value}"

    def label(self) -> str:
        """Return the target in the user's language for messages, e.g. ``la hora 2026-12-04T20:15:00+00:00``."""
        labels = {
            "time": _("time {value}"),
            "lsn": _("WAL position {value}"),
            "xid": _("commit of transaction {value}"),
            "name": _("restore point {value}"),
            "immediate": _("first consistent point of the backup"),
            "latest": _("end of the archive"),
        }
        return labels[self.kind].format(value=self.value)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "inclusive": self.inclusive, "timeline": self.timeline}

    def settings(self) -> dict[str, str]:
        """Return the ``recovery_target*`` settings for ``postgresql.auto.conf``."""
        settings: dict[str, str] = {"recovery_target_timeline": self.timeline}
        if self.kind == "time":
            settings["recovery_target_time"] = self.time.astimezone(dt.timezone.utc).isoformat(sep=" ")
        elif self.kind == "lsn":
            settings["recovery_target_lsn"] = self.value or ""
        elif self.kind == "xid":
            settings["recovery_target_xid"] = self.value or ""
        elif self.kind == "name":
            settings["recovery_target_name"] = self.value or ""
        elif self.kind == "immediate":
            settings["recovery_target"] = "immediate"
        if self.kind in ("time", "lsn", "xid"):
            settings["recovery_target_inclusive"] = "on" if self.inclusive else "off"
        return settings


def parse_target_time(text: str) -> dt.datetime:
    """Parse an ISO 8601 time that carries a zone; reject a naive time.

    >>> parse_target_time("2026-12-04T15:15:00-05:00").isoformat()
    '2026-12-04T15:15:00-05:00'
    >>> parse_target_time("2026-12-04 15:15:00")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    restore.pitr_target.RecoveryTargetError: ...
    """
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise RecoveryTargetError(
            _("invalid target time {value!r}").format(value=text),
            _("write it in ISO 8601 with its zone, e.g. 2026-12-04T15:15:00-05:00 for Ecuador"),
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise RecoveryTargetError(
            _("target time {value!r} has no time zone").format(value=text),
            _("add the zone explicitly, e.g. {value}-05:00 for Ecuador or {value}Z for UTC; a time without "
              "a zone would be read in the server's zone and could restore the wrong moment").format(value=text.strip()),
        )
    _check_utc_range(moment, text)
    return moment


def _check_utc_range(moment: dt.datetime, text: str) -> None:
    """Reject a time that cannot be written in UTC (it is passed to PostgreSQL in UTC).

    >>> _check_utc_range(dt.datetime.fromisoformat("9999-12-31T23:59:59-12:00"), "9999")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    restore.pitr_target.RecoveryTargetError: ...
    """
    try:
        moment.astimezone(dt.timezone.utc)
    except OverflowError:
        raise RecoveryTargetError(
            _("target time {value!r} is out of range").format(value=text),
            _("give a time between year 1 and year 9999 in UTC"),
        ) from None


def build_target(*, time: str | dt.datetime | None = None, lsn: str | None = None, xid: str | int | None = None,
                 name: str | None = None, immediate: bool = False, inclusive: bool = True,
                 timeline: str | int = "latest") -> RecoveryTarget:
    """Validate the options of one recovery target (at most one kind) and return it."""
    given = [kind for kind, value in (("time", time), ("lsn", lsn), ("xid", xid), ("name", name),
                                       ("immediate", immediate or None)) if value is not None]
    if len(given) > 1:
        raise RecoveryTargetError(
            _("more than one recovery target was given: {kinds}").format(kinds=", ".join(given)),
            _("choose one of --target-time, --target-lsn, --target-xid, --target-name, --target-immediate"),
        )
    timeline_text = str(timeline).strip().lower()
    # Timeline IDs start at 1 and are 32-bit (the first 8 hex digits of a WAL file name).
    numeric_ok = timeline_text.isdigit() and 1 <= int(timeline_text) <= 0xFFFFFFFF
    if timeline_text not in ("latest", "current") and not numeric_ok:
        raise RecoveryTargetError(
            _("invalid target timeline {value!r}").format(value=timeline),
            _("use latest, current or a timeline number from 1 up"),
        )
    if numeric_ok:
        timeline_text = str(int(timeline_text))
    if not given:
        return RecoveryTarget("latest", None, inclusive, timeline_text)
    kind = given[0]
    if kind == "time":
        moment = time if isinstance(time, dt.datetime) else parse_target_time(str(time))
        if moment.tzinfo is None:
            raise RecoveryTargetError(
                _("target time {value!r} has no time zone").format(value=str(moment)),
                _("pass a timezone-aware datetime"),
            )
        _check_utc_range(moment, moment.isoformat())
        return RecoveryTarget("time", moment.isoformat(), inclusive, timeline_text)
    if kind == "lsn":
        try:
            value = format_lsn(parse_lsn(str(lsn)))
        except WalFormatError:
            raise RecoveryTargetError(
                _("invalid target LSN {value!r}").format(value=lsn),
                _("write it as PostgreSQL shows it, e.g. 0/3000028 (pg_current_wal_lsn())"),
            ) from None
        return RecoveryTarget("lsn", value, inclusive, timeline_text)
    if kind == "xid":
        text = str(xid).strip()
        if not text.isdigit() or not 3 <= int(text) < 1 << 32:
            raise RecoveryTargetError(
                _("invalid target transaction id {value!r}").format(value=xid),
                _("give a 32-bit transaction id as txid_current() % 4294967296 shows it"),
            )
        return RecoveryTarget("xid", text, inclusive, timeline_text)
    if kind == "name":
        if not str(name) or len(str(name)) > 63 or re.search(r"[\x00-\x1f]", str(name)):
            raise RecoveryTargetError(
                _("invalid restore point name {value!r}").format(value=name),
                _("use the name given to pg_create_restore_point (at most 63 bytes)"),
            )
        return RecoveryTarget("name", str(name), inclusive, timeline_text)
    return RecoveryTarget("immediate", None, inclusive, timeline_text)


def _xid_precedes_or_equals(first: int, second: int) -> bool:
    """Return whether 32-bit transaction id ``first`` is at or before ``second`` (modulo 2**32).

    >>> _xid_precedes_or_equals(100, 200), _xid_precedes_or_equals(4294967000, 50)
    (True, True)
    """
    return ((second - first) % (1 << 32)) < (1 << 31)


def backup_reaches(manifest: dict[str, Any], target: RecoveryTarget) -> bool:
    """Return whether the backup became consistent before ``target`` (see the module docstring)."""
    wal = manifest.get("wal", {})
    if target.kind == "time":
        stopped = dt.datetime.fromisoformat(wal["stopped_by"].replace("Z", "+00:00"))
        return stopped <= target.time
    if target.kind == "lsn":
        return parse_lsn(wal["stop_lsn"]) <= target.lsn
    if target.kind == "xid":
        xmin = int(wal["xmin_after_stop"]) & 0xFFFFFFFF
        return _xid_precedes_or_equals(xmin, int(target.value))
    return True


def timeline_problem(manifest: dict[str, Any], target_timeline: int, history: list[HistoryEntry]) -> str | None:
    """Return why the backup is not on the path to ``target_timeline``, or None when it is."""
    wal = manifest["wal"]
    timeline = int(wal.get("stop_timeline", wal["timeline"]))
    stop = parse_lsn(wal["stop_lsn"])
    if timeline_contains(target_timeline, history, timeline, stop):
        return None
    switch = next((entry.switch_lsn for entry in history if entry.timeline == timeline), None)
    if switch is None:
        return _("backup {backup_id} is on timeline {timeline}, which is not an ancestor of timeline {target}: "
                 "the two are sibling branches, usually two restores of the same cluster promoted separately").format(
            backup_id=manifest["backup_id"], timeline=timeline, target=target_timeline)
    return _("backup {backup_id} stopped at {stop} on timeline {timeline}, after timeline {target} branched off "
             "at {switch}: it contains changes that are not part of timeline {target}").format(
        backup_id=manifest["backup_id"], stop=wal["stop_lsn"], timeline=timeline, target=target_timeline,
        switch=format_lsn(switch))


def choose_backups(manifests: list[dict[str, Any]], target: RecoveryTarget, *, target_timeline: int,
                   history: list[HistoryEntry], backup_id: str | None = None) -> list[dict[str, Any]]:
    """Return the base backups to try for ``target``, best first (one, except for restore-point targets).

    ``manifests`` are one cluster's base backups, oldest first. Raises
    NotFoundError explaining why no backup fits.
    """
    if backup_id not in (None, "latest"):
        chosen = [m for m in manifests if m["backup_id"] == backup_id]
        if not chosen:
            raise NotFoundError(
                _("base backup {backup_id} not found").format(backup_id=backup_id),
                _("list base backups with 'resguardo list DB --kind base'"),
            )
        problem = timeline_problem(chosen[0], target_timeline, history)
        if problem:
            raise NotFoundError(problem, _("choose a backup taken on timeline {target} or before its branch point, "
                                           "or pass --target-timeline").format(target=target_timeline))
        if not backup_reaches(chosen[0], target):
            raise NotFoundError(
                _("base backup {backup_id} became consistent after the target {target}").format(
                    backup_id=backup_id, target=target.label()),
                _("choose an older base backup, or omit --backup-id to let Resguardo choose"),
            )
        return chosen

    rejected: list[str] = []
    candidates = []
    for manifest in reversed(manifests):
        problem = timeline_problem(manifest, target_timeline, history)
        if problem:
            rejected.append(problem)
            continue
        if not backup_reaches(manifest, target):
            continue
        candidates.append(manifest)
    if not candidates:
        if rejected and len(rejected) == len(manifests):
            raise NotFoundError(
                _("no base backup is on the path to timeline {target}: {reasons}").format(
                    target=target_timeline, reasons=" ".join(rejected[:3])),
                _("take a new base backup on timeline {target}, or pass --target-timeline current to stay on "
                  "the backup's timeline").format(target=target_timeline),
            )
        raise NotFoundError(
            _("no base backup became consistent before the target {target}; the oldest stopped at {stop}").format(
                target=target.label(),
                stop=(manifests[0]["wal"]["stopped_by"] + " / " + manifests[0]["wal"]["stop_lsn"]) if manifests else "-"),
            _("the target is older than every kept base backup, so it cannot be restored"),
        )
    return candidates if target.kind == "name" else candidates[:1]
