"""The catalog: which backups exist, found by listing signed manifests.

A backup is listed when at least one region holds a manifest whose signature
verifies. Each entry says which regions hold a valid manifest and which copies
failed verification, so a tampered copy in one region is reported, not
silently skipped, while the good copies keep the backup usable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from backup.manifest import MANIFEST_NAME, backup_prefix, load_manifest
from resguardo.errors import IntegrityError, NotFoundError, StorageError
from resguardo.i18n import _
from resguardo.log import get_logger
from storage.base import AlreadyExists, Region

log = get_logger("backup.catalog")


@dataclass
class CatalogEntry:
    """One backup as seen across regions."""

    backup_id: str
    manifest: dict[str, Any]
    regions: list[str] = field(default_factory=list)
    invalid_copies: dict[str, str] = field(default_factory=dict)


def commit_manifest(regions: Iterable[Region], database: str, kind: str, backup_id: str, data: bytes) -> list[str]:
    """Write the manifest to every region, create-only; return the region names written.

    Raises StorageError naming the region that failed; the caller decides
    whether the remaining regions still meet the quorum.
    """
    key = backup_prefix(database, kind, backup_id) + MANIFEST_NAME
    written = []
    for region in regions:
        try:
            region.put_bytes(key, data, if_absent=True)
        except AlreadyExists:
            raise StorageError(
                _("region {region} already has a manifest at {key}").format(region=region.name, key=key),
                _("two backups got the same id, or one is being retried; start a new backup"),
            ) from None
        written.append(region.name)
        log.info("manifest.commit", extra={"region": region.name, "key": key, "backup_id": backup_id})
    return written


def list_backups(regions: Iterable[Region], public_key: Ed25519PublicKey, database: str, kind: str) -> list[CatalogEntry]:
    """Return the database's committed backups of ``kind``, oldest first."""
    prefix = backup_prefix(database, kind)
    entries: dict[str, CatalogEntry] = {}
    unreachable: list[str] = []
    region_list = list(regions)
    for region in region_list:
        try:
            keys = [info.key for info in region.list(prefix) if info.key.endswith("/" + MANIFEST_NAME)]
        except StorageError as error:
            log.warning("catalog.list_failed", extra={"region": region.name, "error": error.message})
            unreachable.append(region.name)
            continue
        for key in keys:
            backup_id = key[len(prefix):].split("/", 1)[0]
            where = f"{region.name}:{key}"
            try:
                manifest = load_manifest(
                    region.get_bytes(key), public_key, where=where, database=database, kind=kind, backup_id=backup_id
                )
            except (IntegrityError, NotFoundError, StorageError) as error:
                log.warning("catalog.invalid_manifest", extra={"region": region.name, "key": key, "error": error.message})
                entry = entries.setdefault(backup_id, CatalogEntry(backup_id, {}))
                entry.invalid_copies[region.name] = error.message
                continue
            entry = entries.setdefault(backup_id, CatalogEntry(backup_id, manifest))
            if not entry.manifest:
                entry.manifest = manifest
            entry.regions.append(region.name)
    if unreachable and len(unreachable) == len(region_list):
        raise StorageError(
            _("no region could be listed: {regions}").format(regions=", ".join(unreachable)),
            _("check network access and credentials for these regions"),
        )
    return [entries[k] for k in sorted(entries) if entries[k].manifest]


def find_backup(regions: Iterable[Region], public_key: Ed25519PublicKey, database: str, kind: str,
                backup_id: str | None = None) -> CatalogEntry:
    """Return one backup (the newest when ``backup_id`` is None or ``latest``)."""
    entries = list_backups(regions, public_key, database, kind)
    if not entries:
        raise NotFoundError(
            _("database {database} has no committed {kind} backup").format(database=database, kind=kind),
            _("run 'resguardo backup {database}' first, or check that the config names the right regions").format(
                database=database
            ),
        )
    if backup_id in (None, "latest"):
        return entries[-1]
    for entry in entries:
        if entry.backup_id == backup_id:
            return entry
    raise NotFoundError(
        _("backup {backup_id} of database {database} not found").format(backup_id=backup_id, database=database),
        _("list backups with 'resguardo list {database}'").format(database=database),
    )
