"""The newest base backup and archived WAL file of a database in the storage regions.

A failover preflight reports both, because after a failover the new primary
must be protected again: the newest base backup plus the archived WAL bound
how far back a point-in-time recovery could reach if the new primary failed
too. A missing base backup or a stale archive is a finding, not a reason to
refuse the failover.

*Archive lag* is the time since the newest WAL file's sidecar was written
(``pushed_at``). WAL files are listed only under the current timeline and
the current 4 GiB WAL log (the first 16 hex digits of the file name), so the
listing stays short on a large archive.

>>> walfile_name(1, 0x3000060)
'000000010000000000000003'
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from resguardo.config import ResguardoConfig
from resguardo.errors import ResguardoError
from resguardo.log import get_logger

log = get_logger("drills.storage_status")

WAL_SEGMENT_BYTES = 16 * 1024 * 1024


def walfile_name(timeline: int, lsn: int, segment_bytes: int = WAL_SEGMENT_BYTES) -> str:
    """Return the name of the WAL file that contains ``lsn`` on ``timeline``."""
    segments_per_log = 0x100000000 // segment_bytes
    segment = lsn // segment_bytes
    return f"{timeline:08X}{segment // segments_per_log:08X}{segment % segments_per_log:08X}"


def storage_status(config: ResguardoConfig, database: str, *, system_identifier: str | None,
                   timeline: int | None, lsn: int | None) -> dict[str, Any]:
    """Return the newest base backup and archived WAL file of ``database``, with any errors."""
    status: dict[str, Any] = {"base_backup": None, "wal": None, "errors": []}
    db = config.database(database)

    try:
        from backup.catalog import list_backups
        from resguardo.keyring import load_verify_key
        from storage.registry import open_regions

        entries = list_backups(open_regions(db.regions, config), load_verify_key(config), database, "base")
        if entries:
            newest = entries[-1]
            status["base_backup"] = {
                "backup_id": newest.backup_id,
                "regions": newest.regions,
                "started_at": newest.manifest.get("started_at"),
            }
    except ResguardoError as error:
        log.warning("drills.storage_status.base_failed", extra={"database": database, "error": error.message})
        status["errors"].append(error.message)

    if system_identifier is None or timeline is None or lsn is None:
        return status
    try:
        from backup.wal import wal_prefix, wal_region_names
        from storage.registry import open_region

        region = open_region(wal_region_names(db)[0], config)
        prefix = wal_prefix(database, system_identifier)
        current = walfile_name(timeline, lsn)
        newest_key = None
        for info in region.list(prefix + current[:16]):
            if info.key.endswith(".json") and len(info.key[len(prefix):-5]) == 24:
                newest_key = info.key
        if newest_key is not None:
            sidecar = json.loads(region.get_bytes(newest_key))
            pushed_at = sidecar.get("pushed_at")
            lag = None
            if pushed_at:
                moment = dt.datetime.fromisoformat(pushed_at.replace("Z", "+00:00"))
                lag = round((dt.datetime.now(dt.timezone.utc) - moment).total_seconds(), 1)
            status["wal"] = {
                "region": region.name,
                "newest_file": sidecar.get("name"),
                "pushed_at": pushed_at,
                "archive_lag_seconds": lag,
                "current_file": current,
            }
    except (ResguardoError, ValueError, KeyError) as error:
        message = getattr(error, "message", str(error))
        log.warning("drills.storage_status.wal_failed", extra={"database": database, "error": message})
        status["errors"].append(message)
    return status
