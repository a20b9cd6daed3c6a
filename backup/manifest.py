"""Manifests: the signed description of one committed backup.

A manifest is a JSON object (see ``docs/manifest.md``) signed with the
configured Ed25519 signing key via :mod:`encryption.signing`. This module
builds object keys, backup ids and manifests, and checks a loaded manifest's
signature and identity (database, kind, backup id) against where it was found.

>>> object_key("core", "logical", "20261204T201500Z-3f9a", "dump.enc")
'core/logical/20261204T201500Z-3f9a/dump.enc'
>>> parse_backup_id("20261204T201500Z-3f9a").year
2026
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from encryption.signing import sign_document, verify_document
from resguardo.errors import IntegrityError
from resguardo.i18n import _

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "resguardo-manifest"
MANIFEST_VERSION = 1
BACKUP_KINDS = ("logical", "base")
BACKUP_ID_PATTERN = re.compile(r"^(\d{8}T\d{6}Z)-([0-9a-f]{4,})$")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def isoformat(moment: dt.datetime) -> str:
    """Format a timezone-aware time as ISO 8601 in UTC with microseconds."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_backup_id(moment: dt.datetime | None = None) -> str:
    """Return a new backup id for ``moment`` (default: now)."""
    moment = (moment or utc_now()).astimezone(dt.timezone.utc)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def parse_backup_id(backup_id: str) -> dt.datetime:
    """Return the start time encoded in ``backup_id``; ValueError when malformed."""
    match = BACKUP_ID_PATTERN.match(backup_id)
    if not match:
        raise ValueError(f"malformed backup id {backup_id!r}")
    return dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)


def backup_prefix(database: str, kind: str, backup_id: str | None = None) -> str:
    """Return the key prefix of a database's backups of ``kind`` (and of one backup)."""
    if kind not in BACKUP_KINDS:
        raise ValueError(f"unknown backup kind {kind!r}")
    base = f"{database}/{kind}/"
    return base if backup_id is None else f"{base}{backup_id}/"


def object_key(database: str, kind: str, backup_id: str, name: str) -> str:
    """Return the key of object ``name`` of one backup."""
    return backup_prefix(database, kind, backup_id) + name


def build_manifest(*, kind: str, database: str, backup_id: str, **fields: Any) -> dict[str, Any]:
    """Return an unsigned manifest with the identity members filled in."""
    document: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "kind": kind,
        "database": database,
        "backup_id": backup_id,
    }
    document.update(fields)
    return document


def sign_manifest(document: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """Sign ``document`` and return its bytes as stored (canonical-ish, indented JSON)."""
    signed = sign_document(document, key)
    return json.dumps(signed, sort_keys=True, indent=2, ensure_ascii=False).encode("utf-8")


def load_manifest(data: bytes, key: Ed25519PublicKey, *, where: str, database: str | None = None,
                  kind: str | None = None, backup_id: str | None = None) -> dict[str, Any]:
    """Parse, verify and identity-check a stored manifest.

    ``where`` (``region:key``) names the copy in error messages. A manifest
    copied to another backup's folder, or edited, raises IntegrityError.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IntegrityError(
            _("manifest {where} is not valid JSON: {error}").format(where=where, error=error),
            _("the manifest is corrupted; Resguardo reads another region's copy when one exists"),
        ) from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(
            _("{where} is not a Resguardo manifest").format(where=where),
            _("remove foreign objects from the backup prefix"),
        )
    verify_document(document, key, what=_("manifest {where}").format(where=where))
    if document.get("version") != MANIFEST_VERSION:
        raise IntegrityError(
            _("manifest {where} has version {version}, this Resguardo reads version {supported}").format(
                where=where, version=document.get("version"), supported=MANIFEST_VERSION
            ),
            _("upgrade Resguardo to read this backup"),
        )
    for member, expected in (("database", database), ("kind", kind), ("backup_id", backup_id)):
        if expected is not None and document.get(member) != expected:
            raise IntegrityError(
                _("manifest {where} says {member}={value!r}, but was found where {expected!r} belongs").format(
                    where=where, member=member, value=document.get(member), expected=expected
                ),
                _("a manifest was copied or moved between backups; treat this copy as tampered"),
            )
    return document
