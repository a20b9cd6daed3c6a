"""WAL file names, LSNs, page headers, ``pg_control`` and timeline history files.

Pure functions with no import beyond the standard library, because
``wal-push`` and ``wal-fetch`` import this module once per WAL file that
PostgreSQL archives or restores.

Terms (PostgreSQL's own, see ``src/include/access/xlog_internal.h``):

- *LSN*: a 64-bit byte position in the WAL stream, written ``X/Y`` in hex
  (high and low 32 bits).
- *segment*: one WAL file of ``wal_segment_size`` bytes (16 MiB unless set
  at ``initdb``). Its name is 24 hex digits: timeline, then the high and low
  parts of the segment number, ``TTTTTTTTXXXXXXXXYYYYYYYY``.
- *timeline*: a numbered branch of WAL history. Promoting a server after a
  point-in-time recovery starts a new timeline and writes
  ``<timeline>.history``, which lists every ancestor timeline and the LSN at
  which it was left (the *switch point*).
- *system identifier*: a 64-bit number chosen by ``initdb``. Every segment's
  first page (the *long page header*) and ``global/pg_control`` carry it, so
  WAL of two clusters is never mixed.
- *archive file*: anything PostgreSQL hands to ``archive_command``: segments,
  ``.partial`` segments (the last, incomplete segment of a timeline left at
  promotion), ``.history`` files and ``.backup`` history files.

>>> parse_lsn("0/3000028")
50331688
>>> format_lsn(50331688)
'0/3000028'
>>> segment_name(1, lsn_segment(parse_lsn("1/FF000000"), 16 << 20), 16 << 20)
'0000000100000001000000FF'
>>> next_segment_name("0000000100000001000000FF", 16 << 20)
'000000010000000200000000'
>>> archive_file_kind("000000020000000000000005.partial")
'partial'
>>> archive_file_kind("00000002.history")
'history'
>>> archive_file_kind("RECOVERYXLOG") is None
True
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

DEFAULT_SEGMENT_SIZE = 16 << 20
# The high 32 bits of an LSN are the "log id"; each covers 4 GiB of WAL.
LOG_ID_BYTES = 1 << 32

SEGMENT_PATTERN = re.compile(r"^[0-9A-F]{24}$")
PARTIAL_PATTERN = re.compile(r"^[0-9A-F]{24}\.partial$")
BACKUP_HISTORY_PATTERN = re.compile(r"^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$")
TIMELINE_HISTORY_PATTERN = re.compile(r"^[0-9A-F]{8}\.history$")
LSN_PATTERN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

# xlp_info flag that marks the long header at the start of each segment.
XLP_LONG_HEADER = 0x0002
# Size of the long page header fields read here: the short header (magic,
# info, timeline, page address, remaining length) padded to 24 bytes, then
# system identifier, segment size and block size.
LONG_HEADER_SIZE = 40

# XLOG_PAGE_MAGIC per PostgreSQL major version, from xlog_internal.h of each
# release. An unknown magic of the form 0xDxxx is not an error: it is reported as "unknown".
PAGE_MAGIC_VERSIONS = {
    0xD093: 9.6, 0xD097: 10, 0xD098: 11, 0xD101: 12, 0xD106: 13,
    0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18,
}


class WalFormatError(ValueError):
    """A WAL file name, LSN, header or history file is malformed."""


def parse_lsn(text: str) -> int:
    """Return the LSN ``X/Y`` as an integer.

    >>> parse_lsn("16/B374D848")
    97500059720
    """
    match = LSN_PATTERN.match(text.strip())
    if not match:
        raise WalFormatError(f"invalid LSN {text!r}; expected two hex numbers as X/Y, e.g. 0/3000028")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """Return the integer LSN in PostgreSQL's ``X/Y`` notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_log_id(segment_size: int) -> int:
    """Return the number of segments in one 4 GiB log id (256 for 16 MiB segments)."""
    if segment_size <= 0 or segment_size & (segment_size - 1) or segment_size > LOG_ID_BYTES:
        raise WalFormatError(f"invalid WAL segment size {segment_size}; it is a power of two from 1 MiB to 1 GiB")
    return LOG_ID_BYTES // segment_size


def lsn_segment(lsn: int, segment_size: int) -> int:
    """Return the number of the segment that contains byte ``lsn``."""
    return lsn // segment_size


def segment_name(timeline: int, segment_number: int, segment_size: int) -> str:
    """Return the file name of segment ``segment_number`` on ``timeline``."""
    per_id = segments_per_log_id(segment_size)
    return f"{timeline:08X}{segment_number // per_id:08X}{segment_number % per_id:08X}"


def parse_segment_name(name: str, segment_size: int) -> tuple[int, int]:
    """Return ``(timeline, segment number)`` of a segment (or ``.partial``) file name.

    >>> parse_segment_name("000000010000000200000003", 16 << 20)
    (1, 515)
    """
    base = name[:-len(".partial")] if name.endswith(".partial") else name
    if not SEGMENT_PATTERN.match(base):
        raise WalFormatError(f"{name!r} is not a WAL segment file name (24 hex digits)")
    per_id = segments_per_log_id(segment_size)
    log_id, low = int(base[8:16], 16), int(base[16:24], 16)
    if low >= per_id:
        raise WalFormatError(f"{name!r} cannot exist with {segment_size}-byte segments: segment part {low:#x} >= {per_id:#x}")
    return int(base[:8], 16), log_id * per_id + low


def next_segment_name(name: str, segment_size: int) -> str:
    """Return the name of the segment after ``name`` on the same timeline."""
    timeline, number = parse_segment_name(name, segment_size)
    return segment_name(timeline, number + 1, segment_size)


def archive_file_kind(name: str) -> str | None:
    """Return ``segment``, ``partial``, ``history`` or ``backup`` for an archive file name, else None."""
    if SEGMENT_PATTERN.match(name):
        return "segment"
    if PARTIAL_PATTERN.match(name):
        return "partial"
    if TIMELINE_HISTORY_PATTERN.match(name):
        return "history"
    if BACKUP_HISTORY_PATTERN.match(name):
        return "backup"
    return None


def history_file_name(timeline: int) -> str:
    """Return the history file name of ``timeline``.

    >>> history_file_name(10)
    '0000000A.history'
    """
    return f"{timeline:08X}.history"


# -- page headers and pg_control ------------------------------------------------


@dataclass(frozen=True)
class SegmentHeader:
    """The fields of a segment's long page header that identify it."""

    magic: int
    timeline: int
    page_address: int
    system_identifier: int
    segment_size: int
    block_size: int

    @property
    def pg_major_version(self) -> float | None:
        """The PostgreSQL major version whose WAL format this is, when known."""
        return PAGE_MAGIC_VERSIONS.get(self.magic)

    def segment_name(self) -> str:
        """Return the file name this header belongs in."""
        return segment_name(self.timeline, self.page_address // self.segment_size, self.segment_size)


def parse_segment_header(data: bytes) -> SegmentHeader:
    """Parse the long page header at the start of a segment (at least 40 bytes).

    PostgreSQL writes WAL in the server's native byte order. Little-endian is
    tried first; big-endian is accepted when only it yields a valid segment
    size.
    """
    if len(data) < LONG_HEADER_SIZE:
        _ = _translator()
        raise WalFormatError(_("the WAL segment header is {size} bytes; a segment starts with a {expected}-byte "
                               "long header").format(size=len(data), expected=LONG_HEADER_SIZE))
    for order in ("<", ">"):
        magic, info, timeline, page_address, _remaining = struct.unpack_from(order + "HHIQI", data, 0)
        system_identifier, segment_size, block_size = struct.unpack_from(order + "QII", data, 24)
        if not info & XLP_LONG_HEADER:
            continue
        try:
            segments_per_log_id(segment_size)
        except WalFormatError:
            continue
        if page_address % segment_size or timeline == 0:
            continue
        # Every XLOG_PAGE_MAGIC so far (9.6 to 18) is 0xD0xx or 0xD1xx; an unknown one of the form 0xDxxx
        # may be a newer release, so only a magic outside that range is rejected.
        if magic & 0xF000 != 0xD000:
            _ = _translator()
            raise WalFormatError(_("the WAL page magic is 0x{magic:04X}; PostgreSQL writes 0xDxxx, so the first "
                                   "page is damaged").format(magic=magic))
        return SegmentHeader(magic, timeline, page_address, system_identifier, segment_size, block_size)
    _ = _translator()
    raise WalFormatError(_("the file does not start with a WAL long page header (no valid flag, segment size or "
                           "page address)"))


def _translator():
    """Return the gettext function, imported only on error to keep ``wal-push`` start-up fast."""
    from resguardo.i18n import _

    return _


def read_segment_header(path) -> SegmentHeader:
    """Read and parse the long page header of the segment file at ``path``."""
    with open(path, "rb") as handle:
        return parse_segment_header(handle.read(LONG_HEADER_SIZE))


def read_control_system_identifier(path) -> int:
    """Return the system identifier stored in a ``global/pg_control`` file.

    ``ControlFileData`` starts with the 64-bit system identifier, followed by
    ``pg_control_version`` (a small number, used here to pick the byte order).
    """
    with open(path, "rb") as handle:
        data = handle.read(16)
    return parse_control_system_identifier(data)


def parse_control_system_identifier(data: bytes) -> int:
    """Return the system identifier from the first 16 bytes of ``pg_control``."""
    if len(data) < 16:
        raise WalFormatError("pg_control is shorter than 16 bytes")
    for order in ("<", ">"):
        system_identifier, control_version = struct.unpack_from(order + "QI", data, 0)
        # pg_control_version is 1300 for PostgreSQL 13 to 16 and grows slowly.
        if 900 <= control_version < 10000:
            return system_identifier
    raise WalFormatError("pg_control has no recognisable pg_control_version; the file is not a PostgreSQL control file")


# -- timeline history -----------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a history file: ``timeline`` was left at ``switch_lsn``."""

    timeline: int
    switch_lsn: int
    reason: str


def parse_history(text: str) -> list[HistoryEntry]:
    """Parse a ``.history`` file: ``parentTLI<TAB>switchpoint<TAB>reason`` per line.

    >>> parse_history("1\\t0/5000000\\tbefore 2026-12-04 20:15:00+00\\n")
    [HistoryEntry(timeline=1, switch_lsn=83886080, reason='before 2026-12-04 20:15:00+00')]
    """
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise WalFormatError(f"history file line {number} has no switch point: {line!r}")
        try:
            timeline = int(parts[0])
        except ValueError:
            raise WalFormatError(f"history file line {number} has an invalid timeline {parts[0]!r}") from None
        entries.append(HistoryEntry(timeline, parse_lsn(parts[1]), parts[2] if len(parts) > 2 else ""))
    return entries


def timeline_switch_lsn(history: list[HistoryEntry], timeline: int) -> int | None:
    """Return where the history leaves ``timeline``, or None when it is not an ancestor."""
    for entry in history:
        if entry.timeline == timeline:
            return entry.switch_lsn
    return None


def timeline_contains(target_timeline: int, history: list[HistoryEntry], timeline: int, lsn: int) -> bool:
    """Return whether WAL position ``lsn`` on ``timeline`` lies on the path to ``target_timeline``.

    ``history`` is the parsed history file of ``target_timeline`` (empty for
    timeline 1). The position is on the path when it is on the target
    timeline itself, or on an ancestor before the point where the path left it.

    >>> history = parse_history("1\\t0/5000000\\tx\\n")
    >>> timeline_contains(2, history, 1, parse_lsn("0/4000000"))
    True
    >>> timeline_contains(2, history, 1, parse_lsn("0/6000000"))
    False
    """
    if timeline == target_timeline:
        return True
    switch = timeline_switch_lsn(history, timeline)
    return switch is not None and lsn <= switch
