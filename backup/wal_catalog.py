"""Contents of the WAL archive: listing, gaps, timeline histories, and WAL that base backups need.

Terms:

- *archived in a region*: the file's sidecar exists there (see :mod:`backup.wal`).
- *gap*: a segment missing between the oldest and the newest archived
  segment of one timeline (or between a base backup's start segment and the
  newest segment). Recovery cannot pass a gap: everything after it is lost
  for point-in-time recovery.
- *needed WAL*: for each timeline, the oldest segment that some kept base
  backup needs, i.e. its start segment. Deleting archived WAL is safe only
  below that segment on that timeline (and never for history files), which
  :func:`wal_needed_by` computes for a future retention job.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from backup.wal import SIDECAR_SUFFIX, wal_prefix
from backup.wal_format import (
    HistoryEntry,
    SEGMENT_PATTERN,
    TIMELINE_HISTORY_PATTERN,
    history_file_name,
    parse_history,
    parse_segment_name,
    segment_name,
)
from resguardo.errors import StorageError
from resguardo.i18n import _
from resguardo.log import get_logger

if TYPE_CHECKING:
    from backup.wal import WalArchive
    from storage.base import Region

log = get_logger("backup.wal_catalog")


@dataclass
class ArchiveListing:
    """Archived files of one cluster: file name to the regions holding it, plus unreachable regions."""

    files: dict[str, set[str]] = field(default_factory=dict)
    failed_regions: dict[str, str] = field(default_factory=dict)

    def segments(self) -> list[str]:
        """Return the archived segment names (full segments only), sorted."""
        return sorted(name for name in self.files if SEGMENT_PATTERN.match(name))

    def timelines(self) -> list[int]:
        """Return the timelines that have a history file, sorted."""
        return sorted(int(name[:8], 16) for name in self.files if TIMELINE_HISTORY_PATTERN.match(name))


def list_archive(regions: Iterable["Region"], database: str, system_identifier: int | str) -> ArchiveListing:
    """List the committed files of one cluster's archive in every region.

    A region that fails is recorded in ``failed_regions``; StorageError is
    raised only when every region failed.
    """
    prefix = wal_prefix(database, system_identifier)
    listing = ArchiveListing()
    region_list = list(regions)
    for region in region_list:
        try:
            for info in region.list(prefix):
                name = info.key[len(prefix):]
                if name.endswith(SIDECAR_SUFFIX) and "/" not in name:
                    listing.files.setdefault(name[: -len(SIDECAR_SUFFIX)], set()).add(region.name)
        except StorageError as error:
            listing.failed_regions[region.name] = error.message
            log.warning("wal_catalog.list_failed", extra={"region": region.name, "error": error.message})
    if region_list and len(listing.failed_regions) == len(region_list):
        raise StorageError(
            _("no WAL region could be listed: {detail}").format(
                detail="; ".join(f"{name}: {error}" for name, error in listing.failed_regions.items())
            ),
            _("check network access and credentials for these regions"),
        )
    return listing


def list_system_identifiers(regions: Iterable["Region"], database: str) -> list[str]:
    """Return the system identifiers that have a WAL archive for ``database`` in any region."""
    prefix = f"{database}/wal/"
    found: set[str] = set()
    for region in regions:
        try:
            for info in region.list(prefix):
                found.add(info.key[len(prefix):].split("/", 1)[0])
        except StorageError as error:
            log.warning("wal_catalog.list_failed", extra={"region": region.name, "error": error.message})
    return sorted(found)


def wal_needed_by(manifests: Iterable[dict[str, Any]]) -> dict[int, str]:
    """Return, per timeline, the oldest segment that one of the base backups ``manifests`` needs.

    Every segment at or after that name on that timeline, every segment of
    later timelines, and every history file must be kept.

    >>> wal_needed_by([{"wal": {"timeline": 1, "start_wal_file": "000000010000000000000009"}},
    ...                {"wal": {"timeline": 1, "start_wal_file": "000000010000000000000003"}},
    ...                {"wal": {"timeline": 2, "start_wal_file": "00000002000000000000000C"}}])
    {1: '000000010000000000000003', 2: '00000002000000000000000C'}
    """
    needed: dict[int, str] = {}
    for manifest in manifests:
        wal = manifest.get("wal") or {}
        name = wal.get("start_wal_file")
        timeline = wal.get("timeline")
        if not name or timeline is None:
            continue
        # Names on one timeline sort like their segment numbers (fixed-width hex).
        if timeline not in needed or name < needed[timeline]:
            needed[timeline] = name
    return dict(sorted(needed.items()))


def find_gaps(segments: Iterable[str], segment_size: int, *, since: dict[int, str] | None = None,
              limit: int = 1000) -> dict[int, list[str]]:
    """Return, per timeline, the segments missing between the first and the last archived one.

    ``since`` moves the start of a timeline back to a needed segment (from
    :func:`wal_needed_by`), so a missing start is reported too. At most
    ``limit`` names are returned per timeline.

    >>> find_gaps(["000000010000000000000001", "000000010000000000000004"], 16 << 20)
    {1: ['000000010000000000000002', '000000010000000000000003']}
    """
    by_timeline: dict[int, set[int]] = {}
    for name in segments:
        timeline, number = parse_segment_name(name, segment_size)
        by_timeline.setdefault(timeline, set()).add(number)
    gaps: dict[int, list[str]] = {}
    for timeline, numbers in sorted(by_timeline.items()):
        first, last = min(numbers), max(numbers)
        if since and timeline in since:
            first = min(first, parse_segment_name(since[timeline], segment_size)[1])
        missing = []
        for number in range(first, last + 1):
            if number not in numbers:
                missing.append(segment_name(timeline, number, segment_size))
                if len(missing) >= limit:
                    break
        if missing:
            gaps[timeline] = missing
    return gaps


def read_history(archive: "WalArchive", system_identifier: int | str, timeline: int) -> list[HistoryEntry]:
    """Fetch and parse the history file of ``timeline`` (empty for timeline 1)."""
    if timeline == 1:
        return []
    name = history_file_name(timeline)
    with tempfile.TemporaryDirectory(prefix="resguardo-history-") as directory:
        destination = Path(directory) / name
        archive.fetch(name, destination, system_identifier=system_identifier)
        return parse_history(destination.read_text(encoding="utf-8"))
