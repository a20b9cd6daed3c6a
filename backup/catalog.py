"""The catalog: which backups exist, found by listing signed manifests.

A backup is listed when at least one region contains a manifest whose
signature verifies. Each entry says which regions hold a valid manifest and which copies
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


def list_backups(regions: Iterable[Region], public_key: Ed25519PublicKey, database: str, kind: str,
                 *, include_invalid: bool = False) -> list[CatalogEntry]:
    """Return the database's committed backups of ``kind``, oldest first.

    With ``include_invalid``, backups whose every manifest copy failed
    verification follow at the end, with an empty ``manifest``.
    """
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
    # The id's random suffix does not order two backups started in the same
    # second, so order by the manifest's start time first.
    valid = [entry for entry in entries.values() if entry.manifest]
    valid.sort(key=lambda entry: (entry.manifest.get("started_at", ""), entry.backup_id))
    if include_invalid:
        invalid = sorted((e for e in entries.values() if not e.manifest), key=lambda e: e.backup_id)
        return valid + invalid
    return valid


def find_backup(regions: Iterable[Region], public_key: Ed25519PublicKey, database: str, kind: str,
                backup_id: str | None = None) -> CatalogEntry:
    """Return one backup (the newest when ``backup_id`` is None or ``latest``)."""
    every = list_backups(regions, public_key, database, kind, include_invalid=True)
    entries = [e for e in every if e.manifest]
    rejected = [e for e in every if not e.manifest]
    if backup_id in (None, "latest") and rejected and (not entries or rejected[-1].backup_id > entries[-1].backup_id):
        # A newer backup whose manifests all fail verification must not be
        # skipped silently in favour of an older one.
        newest = rejected[-1]
        raise IntegrityError(
            _("the newest backup {backup_id} has no valid manifest: {detail}").format(
                backup_id=newest.backup_id, detail="; ".join(f"{k}: {v}" for k, v in newest.invalid_copies.items())),
            _("investigate the tampered manifests; to restore an older backup, name it with --backup-id"),
        )
    for entry in rejected:
        if entry.backup_id == backup_id:
            raise IntegrityError(
                _("backup {backup_id} has no valid manifest: {detail}").format(
                    backup_id=backup_id, detail="; ".join(f"{k}: {v}" for k, v in entry.invalid_copies.items())),
                _("the manifest was changed or signed with another key; check signing.public_key"),
            )
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
