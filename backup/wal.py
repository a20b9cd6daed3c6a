"""The WAL archive: push and fetch of archive files, one encrypted object per file.

Terms (WAL file kinds are defined in :mod:`backup.wal_format`):

- *WAL regions*: ``databases.<db>.pitr.wal_regions``, or the database's
  regions when that is unset. Every WAL file must reach every WAL region
  before ``wal-push`` acknowledges it: a region that is down stalls
  archiving, PostgreSQL keeps the file in ``pg_wal`` and retries, and
  ``archive-check`` reports the growing lag. No region silently misses a file.
- *archive object*: ``<db>/wal/<system identifier>/<file name>.enc``, the
  file compressed with zstd and encrypted in the ``RSGENC01`` format to every
  recipient. The stream header binds the object to its file name and to the
  label ``wal-<system identifier>``, so an object copied under another name or
  into another cluster's archive fails authentication.
- *sidecar*: ``<db>/wal/<system identifier>/<file name>.json``, written after
  the object. It records the plaintext size and SHA-256 (the ciphertext
  differs on every push, so only the plaintext can be compared), the stored
  size and SHA-256, and it is signed with the signing key when the host has
  one. A file is *archived in a region* only when its sidecar exists there.
  An object without a sidecar is the remains of an interrupted push, and the
  next push overwrites it.

Pushing a file whose sidecar already records the same plaintext SHA-256 is a
no-op that succeeds, as PostgreSQL requires when it retries after a crash.
Pushing different content under an existing name raises IntegrityError and
changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from backup.wal_format import (
    SEGMENT_PATTERN as SEGMENT_NAME_PATTERN,
    WalFormatError,
    archive_file_kind,
    parse_segment_header,
    LONG_HEADER_SIZE,
)
from resguardo.errors import ConfigError, IntegrityError, KeyError_, NotFoundError, ResguardoError, StorageError
from resguardo.i18n import _
from resguardo.log import get_logger

if TYPE_CHECKING:
    from resguardo.config import DatabaseConfig, ResguardoConfig
    from storage.base import Region

log = get_logger("backup.wal")

SIDECAR_FORMAT = "resguardo-wal"
SIDECAR_VERSION = 1
OBJECT_SUFFIX = ".enc"
SIDECAR_SUFFIX = ".json"
READ_SIZE = 1 << 20


class WalNotFoundError(NotFoundError):
    """The requested file is in no WAL region, and every region responded."""


class WalGapError(IntegrityError):
    """A segment is in no WAL region, but a later segment of its timeline is archived (or may be).

    Recovery must stop here, because exit status 1 ("not found") would make PostgreSQL
    end recovery at the gap and promote, losing everything after it.
    """


def wal_prefix(database: str, system_identifier: int | str) -> str:
    """Return the key prefix of one cluster's WAL archive.

    >>> wal_prefix("core", 7715544490620757889)
    'core/wal/7715544490620757889/'
    """
    return f"{database}/wal/{system_identifier}/"


def wal_object_key(database: str, system_identifier: int | str, name: str) -> str:
    """Return the key of the encrypted archive object of WAL file ``name``."""
    return wal_prefix(database, system_identifier) + name + OBJECT_SUFFIX


def wal_sidecar_key(database: str, system_identifier: int | str, name: str) -> str:
    """Return the key of the sidecar that commits WAL file ``name``."""
    return wal_prefix(database, system_identifier) + name + SIDECAR_SUFFIX


def encryption_label(system_identifier: int | str) -> str:
    """Return the backup-id label that WAL objects of one cluster are encrypted under."""
    return f"wal-{system_identifier}"


def wal_region_names(db: "DatabaseConfig") -> list[str]:
    """Return the regions WAL of ``db`` goes to, in read order."""
    return list(db.pitr.wal_regions or db.regions)


def sha256_file(path: Path) -> tuple[str, int]:
    """Return (hex SHA-256, size) of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            piece = handle.read(READ_SIZE)
            if not piece:
                break
            digest.update(piece)
            size += len(piece)
    return digest.hexdigest(), size


class _HashingReader:
    """A file wrapper that hashes what is read, so one pass both stores and hashes."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        piece = self.handle.read(size)
        self.digest.update(piece)
        self.size += len(piece)
        return piece


@dataclass
class PushResult:
    """Outcome of one push: regions written now and regions that already had the file."""

    name: str
    system_identifier: int
    plaintext_sha256: str
    plaintext_size: int
    written: list[str] = field(default_factory=list)
    already_archived: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class FetchOutcome:
    """Outcome of one fetch: the region used and the regions that failed before it."""

    name: str
    region: str
    plaintext_size: int
    failed_regions: dict[str, str] = field(default_factory=dict)
    missing_regions: list[str] = field(default_factory=list)
    seconds: float = 0.0


def identify_wal_file(path: Path, *, control_system_identifier: int | None) -> tuple[str, int, dict[str, Any]]:
    """Return (kind, system identifier, header facts) of the archive file at ``path``.

    Segments carry their system identifier in the long page header, which is
    also checked against the file name. ``.history`` and ``.backup`` files have
    no header, so the identifier comes from ``pg_control``
    (``control_system_identifier``); without it they are rejected.
    """
    name = path.name
    kind = archive_file_kind(name)
    if kind is None:
        raise IntegrityError(
            _("{name} is not a WAL archive file name").format(name=name),
            _("archive_command must pass %p; only segments, .partial, .history and .backup files are archived"),
        )
    if kind in ("segment", "partial"):
        with open(path, "rb") as handle:
            first = handle.read(LONG_HEADER_SIZE)
        try:
            header = parse_segment_header(first)
        except WalFormatError as error:
            raise IntegrityError(
                _("WAL file {name} has no valid segment header: {error}").format(name=name, error=error),
                _("the file is damaged or not a WAL segment; do not archive it, check the disk of pg_wal"),
            ) from None
        expected_name = name.split(".")[0]
        # The first segment of a new timeline starts with a copy of the old
        # timeline's last segment, so its header may carry an older timeline.
        # The segment number (page address) must match exactly.
        header_timeline_ok = header.timeline <= int(expected_name[:8], 16)
        if header.segment_name()[8:] != expected_name[8:] or not header_timeline_ok:
            raise IntegrityError(
                _("WAL file {name} contains segment {actual} according to its header").format(
                    name=name, actual=header.segment_name()
                ),
                _("a WAL file was renamed or copied over another; check pg_wal before archiving"),
            )
        if control_system_identifier is not None and control_system_identifier != header.system_identifier:
            raise IntegrityError(
                _("WAL file {name} belongs to system {segment_system}, but pg_control of this data directory "
                  "says {control_system}").format(
                    name=name, segment_system=header.system_identifier, control_system=control_system_identifier
                ),
                _("a segment from another cluster is in pg_wal; remove it and check how it got there"),
            )
        facts = {
            "timeline": header.timeline,
            "wal_segment_size": header.segment_size,
            "page_magic": f"0x{header.magic:04X}",
            "pg_major_version": header.pg_major_version,
        }
        return kind, header.system_identifier, facts
    if control_system_identifier is None:
        raise ConfigError(
            _("the system identifier for {name} is unknown: it is not in the file and no pg_control was found").format(
                name=name
            ),
            _("run wal-push from the data directory (archive_command does) or set pitr.pgdata in the config"),
        )
    return kind, control_system_identifier, {}


class WalArchive:
    """Push and fetch WAL files of one database in its WAL regions.

    Regions and keys are loaded on first use, so a process that only finds a
    prefetched file never opens a region.
    """

    def __init__(self, config: "ResguardoConfig", database: str, *, regions: list["Region"] | None = None,
                 identity_file: str | None = None):
        self.config = config
        self.database = database
        self.db = config.database(database)
        self._regions = regions
        self._identity_file = identity_file
        self._recipients = None
        self._identities = None
        self._signing_key: Any = False
        self._verify_key = None

    # -- lazily loaded parts ---------------------------------------------------

    @property
    def regions(self) -> list["Region"]:
        if self._regions is None:
            from storage.registry import open_regions

            self._regions = open_regions(wal_region_names(self.db), self.config)
        return self._regions

    @property
    def recipients(self):
        if self._recipients is None:
            from resguardo.keyring import load_recipients

            self._recipients = load_recipients(self.config)
        return self._recipients

    @property
    def identities(self):
        if self._identities is None:
            from resguardo.keyring import load_identities

            self._identities = load_identities(self.config, self._identity_file)
        return self._identities

    @property
    def signing_key(self):
        """The Ed25519 key that signs sidecars, or None on hosts without one."""
        if self._signing_key is False:
            from resguardo.keyring import load_signing_key

            try:
                self._signing_key = load_signing_key(self.config)
            except KeyError_:
                self._signing_key = None
        return self._signing_key

    @property
    def verify_key(self):
        if self._verify_key is None:
            from resguardo.keyring import load_verify_key

            self._verify_key = load_verify_key(self.config)
        return self._verify_key

    # -- sidecars --------------------------------------------------------------

    def read_sidecar(self, region: "Region", system_identifier: int | str, name: str) -> dict[str, Any] | None:
        """Return the verified sidecar of ``name`` in ``region``, or None when the file is not archived there.

        Raises StorageError when the region fails and IntegrityError when the
        sidecar is malformed, names another file or fails its signature.
        """
        key = wal_sidecar_key(self.database, system_identifier, name)
        try:
            data = region.get_bytes(key)
        except NotFoundError:
            return None
        where = f"{region.name}:{key}"
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise IntegrityError(
                _("WAL sidecar {where} is not valid JSON: {error}").format(where=where, error=error),
                _("the sidecar is damaged; push the file again from pg_wal if the server still has it"),
            ) from None
        if (not isinstance(document, dict) or document.get("format") != SIDECAR_FORMAT
                or document.get("name") != name or str(document.get("system_identifier")) != str(system_identifier)):
            raise IntegrityError(
                _("WAL sidecar {where} does not describe {name} of system {system}").format(
                    where=where, name=name, system=system_identifier
                ),
                _("a sidecar was copied or edited; treat this region's copy as tampered"),
            )
        if "signature" in document:
            from encryption.signing import verify_document

            verify_document(document, self.verify_key, what=_("WAL sidecar {where}").format(where=where))
        return document

    def _write_sidecar(self, region: "Region", key: str, document: dict[str, Any]) -> bool:
        """Create the sidecar; return False when an identical-content sidecar was already there."""
        from storage.base import AlreadyExists

        if self.signing_key is not None:
            from encryption.signing import sign_document

            document = sign_document(document, self.signing_key)
        data = json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8")
        try:
            region.put_bytes(key, data, if_absent=True)
        except AlreadyExists:
            return False
        return True

    # -- push ------------------------------------------------------------------

    def push(self, path: Path, *, control_system_identifier: int | None = None) -> PushResult:
        """Store the WAL file at ``path`` in every WAL region that does not hold it yet.

        Raises IntegrityError when a region has different content under the
        same name, and StorageError when a region fails. PostgreSQL then keeps
        the file and calls ``archive_command`` again later.
        """
        started = time.monotonic()
        path = Path(path)
        name = path.name
        if not path.is_file():
            raise NotFoundError(
                _("WAL file {path} to archive does not exist").format(path=path),
                _("archive_command must pass %p and run in the data directory (PostgreSQL does both); a manual "
                  "wal-push needs the file's full path"),
            )
        kind, system_identifier, facts = identify_wal_file(path, control_system_identifier=control_system_identifier)
        sidecar_key = wal_sidecar_key(self.database, system_identifier, name)
        object_key = wal_object_key(self.database, system_identifier, name)
        log.info("wal.push.start", extra={"database": self.database, "wal_file": name, "system_identifier": str(system_identifier)})

        # Find which regions already hold the file; different content is an error before anything is written.
        local_sha: str | None = None
        local_size: int | None = None
        missing: list["Region"] = []
        already: list[str] = []
        for region in self.regions:
            sidecar = self.read_sidecar(region, system_identifier, name)
            if sidecar is None:
                missing.append(region)
                continue
            if local_sha is None:
                local_sha, local_size = sha256_file(path)
            if sidecar.get("plaintext_sha256") != local_sha or sidecar.get("plaintext_size") != local_size:
                log.error("wal.push.conflict", extra={"database": self.database, "wal_file": name,
                                                       "region": region.name})
                raise IntegrityError(
                    _("region {region} already holds {name} with different content (SHA-256 {stored}, "
                      "local file {local})").format(
                        region=region.name, name=name, stored=str(sidecar.get("plaintext_sha256"))[:16],
                        local=local_sha[:16]
                    ),
                    _("two servers with the same system identifier write the same timeline (an old primary "
                      "still running after a failover?). Stop the wrong server; do not delete archived WAL"),
                )
            stored = region.stat(object_key)
            if stored is None or stored.size != sidecar.get("size"):
                # A sidecar without its object: drop the sidecar and push the object again.
                log.warning("wal.push.repair", extra={"database": self.database, "wal_file": name, "region": region.name})
                region.delete(sidecar_key)
                missing.append(region)
                continue
            already.append(region.name)

        if not missing:
            seconds = round(time.monotonic() - started, 3)
            log.info("wal.push.already_archived", extra={"database": self.database, "wal_file": name,
                                                         "regions": already, "seconds": seconds})
            return PushResult(name, system_identifier, local_sha or "", local_size or 0, [], already, seconds)

        # One pass reads, hashes, compresses, encrypts and uploads the file.
        from backup.pipeline import store_stream

        with open(path, "rb") as handle:
            reader = _HashingReader(handle)

            def check_unchanged() -> None:
                if local_sha is not None and reader.digest.hexdigest() != local_sha:
                    raise IntegrityError(
                        _("WAL file {name} changed while it was being archived").format(name=name),
                        _("PostgreSQL never rewrites a file it hands to archive_command; check what else writes to pg_wal"),
                    )

            stored = store_stream(
                reader,
                regions=missing,
                key=object_key,
                object_name=name,
                backup_id=encryption_label(system_identifier),
                recipients=self.recipients,
                quorum=len(missing),
                compression_level=self.db.compression_level,
                chunk_size=self.config.encryption.chunk_size_kib * 1024,
                before_commit=check_unchanged,
            )
        plaintext_sha = reader.digest.hexdigest()

        document = {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "database": self.database,
            "system_identifier": str(system_identifier),
            "name": name,
            "kind": kind,
            "plaintext_size": reader.size,
            "plaintext_sha256": plaintext_sha,
            "size": stored.size,
            "sha256": stored.sha256,
            "compression": stored.compression,
            "encryption": stored.manifest_entry(self.recipients)["encryption"],
            "pushed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "host": socket.gethostname(),
            **facts,
        }
        written = []
        for region in missing:
            if self._write_sidecar(region, sidecar_key, document):
                written.append(region.name)
                continue
            # Another pusher committed the same name first: accept it only with identical content.
            other = self.read_sidecar(region, system_identifier, name)
            if other is None or other.get("plaintext_sha256") != plaintext_sha:
                raise IntegrityError(
                    _("region {region} got a different {name} from another pusher at the same time").format(
                        region=region.name, name=name
                    ),
                    _("two servers with the same system identifier write the same timeline; stop the wrong one"),
                )
            already.append(region.name)
        seconds = round(time.monotonic() - started, 3)
        log.info("wal.push.done", extra={"database": self.database, "wal_file": name, "regions": written,
                                         "already_archived": already, "bytes": reader.size,
                                         "stored_bytes": stored.size, "seconds": seconds})
        return PushResult(name, system_identifier, plaintext_sha, reader.size, written, already, seconds)

    # -- fetch -----------------------------------------------------------------

    def fetch(self, name: str, destination: Path, *, system_identifier: int | str,
              check_gap: bool = True) -> FetchOutcome:
        """Restore WAL file ``name`` to ``destination``, trying the WAL regions in order.

        Raises WalNotFoundError only when every region responded that it does
        not have the file and, for a segment with ``check_gap``, no region
        holds a later segment of the same timeline. Any region failure,
        damaged copy, key problem or gap raises StorageError, IntegrityError
        (WalGapError for a gap) or KeyError_ instead, because PostgreSQL would
        take "not found" as the end of the archive and end recovery early.
        ``check_gap=False`` skips the listing, for prefetching ahead of
        PostgreSQL, where a miss only means "do not prefetch".
        """
        from restore.fetch import fetch_object

        started = time.monotonic()
        destination = Path(destination)
        if not destination.parent.is_dir():
            raise ConfigError(
                _("the directory {directory} to restore {name} into does not exist").format(
                    directory=destination.parent, name=name),
                _("restore_command must pass %p, which PostgreSQL makes relative to the data directory; run "
                  "wal-fetch from there or give an existing directory"),
            )
        failed: dict[str, str] = {}
        missing: list[str] = []
        for region in self.regions:
            try:
                sidecar = self.read_sidecar(region, system_identifier, name)
            except (StorageError, IntegrityError) as error:
                failed[region.name] = error.message
                log.warning("wal.fetch.region_failed", extra={"database": self.database, "wal_file": name,
                                                              "region": region.name, "error": error.message})
                continue
            if sidecar is None:
                missing.append(region.name)
                continue
            entry = {
                "name": name,
                "size": sidecar["size"],
                "sha256": sidecar["sha256"],
                "compression": "zstd" if str(sidecar.get("compression", "")).startswith("zstd") else "none",
                "regions": {region.name: {"key": wal_object_key(self.database, system_identifier, name)}},
            }

            def sink_factory(sidecar=sidecar) -> _VerifiedFileSink:
                return _VerifiedFileSink(destination, sidecar["plaintext_sha256"], sidecar["plaintext_size"], name)

            try:
                result = fetch_object([region], entry, self.identities,
                                      backup_id=encryption_label(system_identifier), sink_factory=sink_factory)
            except (StorageError, IntegrityError) as error:
                failed[region.name] = error.message
                log.warning("wal.fetch.region_failed", extra={"database": self.database, "wal_file": name,
                                                              "region": region.name, "error": error.message})
                continue
            seconds = round(time.monotonic() - started, 3)
            log.info("wal.fetch.done", extra={"database": self.database, "wal_file": name, "region": region.name,
                                              "failed_regions": sorted(failed), "seconds": seconds})
            return FetchOutcome(name, region.name, result.value, failed, missing, seconds)

        if failed:
            detail = "; ".join(f"{region}: {error}" for region, error in failed.items())
            raise StorageError(
                _("WAL file {name} could not be read from any region: {detail}").format(name=name, detail=detail),
                _("recovery stops here instead of ending early; fix the regions listed and start the server again"),
            )
        if check_gap and SEGMENT_NAME_PATTERN.match(name):
            self._raise_if_gap(name, system_identifier)
        raise WalNotFoundError(
            _("WAL file {name} is not in the archive (regions asked: {regions})").format(
                name=name, regions=", ".join(missing)
            ),
            _("this is the end of the archive for that timeline"),
        )

    def _raise_if_gap(self, name: str, system_identifier: int | str) -> None:
        """Raise WalGapError when a region contains a segment after ``name`` on its timeline or cannot be listed.

        Runs only after every region missed ``name``, so listing the
        timeline's keys (one prefix listing per region) is paid once per
        recovery, at the end of the archive. A region that is empty or
        unmounted cannot hide a gap, because any other region's later
        segment is enough to stop recovery.
        """
        # NOTE: a standby whose streaming is down calls restore_command for the next segment every few
        # seconds, and each miss repeats this listing. Region.list has no "start after" option, so the cost
        # grows with the number of segments archived on the timeline.
        prefix = wal_prefix(self.database, system_identifier) + name[:8]
        base = wal_prefix(self.database, system_identifier)
        later: dict[str, str] = {}
        unlisted: dict[str, str] = {}
        for region in self.regions:
            try:
                for info in region.list(prefix):
                    stem = info.key[len(base):]
                    if not stem.endswith(SIDECAR_SUFFIX):
                        continue
                    stem = stem[: -len(SIDECAR_SUFFIX)]
                    if SEGMENT_NAME_PATTERN.match(stem) and stem > name:
                        if region.name not in later or stem < later[region.name]:
                            later[region.name] = stem
            except StorageError as error:
                unlisted[region.name] = error.message
                log.warning("wal.fetch.gap_check_failed", extra={"database": self.database, "wal_file": name,
                                                                 "region": region.name, "error": error.message})
        if later:
            region, first_later = min(later.items(), key=lambda item: item[1])
            log.error("wal.fetch.gap", extra={"database": self.database, "wal_file": name, "region": region,
                                              "later_wal_file": first_later})
            raise WalGapError(
                _("WAL segment {name} is missing from every region, but region {region} holds the later segment "
                  "{later} of the same timeline: the archive has a gap").format(
                    name=name, region=region, later=first_later),
                _("recovery was stopped on purpose instead of ending at the gap; restore {name} into the archive "
                  "(from pg_wal of the server, if it still has it), or choose a recovery target before "
                  "{name}").format(name=name),
            )
        if unlisted:
            detail = "; ".join(f"{region}: {error}" for region, error in unlisted.items())
            raise WalGapError(
                _("WAL segment {name} is missing from every region, and whether a later segment exists cannot be "
                  "checked: {detail}").format(name=name, detail=detail),
                _("recovery was stopped on purpose, because {name} may be a gap and not the end of the archive; "
                  "fix access to the regions listed and start the server again").format(name=name),
            )


class _VerifiedFileSink:
    """Writes plaintext to a temporary file and renames it over ``destination`` once the SHA-256 matches."""

    def __init__(self, destination: Path, expected_sha256: str, expected_size: int, name: str):
        self.destination = destination
        self.expected_sha256 = expected_sha256
        self.expected_size = expected_size
        self.name = name
        descriptor, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{name}.", suffix=".tmp")
        self.temporary = Path(temporary)
        self.handle = os.fdopen(descriptor, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        self.handle.write(data)

    def close(self) -> int:
        self.handle.close()
        if self.size != self.expected_size or self.digest.hexdigest() != self.expected_sha256:
            self.temporary.unlink(missing_ok=True)
            raise IntegrityError(
                _("WAL file {name} decrypted to {size} bytes with SHA-256 {sha}, but its sidecar records "
                  "{expected_size} bytes with SHA-256 {expected}").format(
                    name=self.name, size=self.size, sha=self.digest.hexdigest()[:16],
                    expected_size=self.expected_size, expected=self.expected_sha256[:16]
                ),
                _("this region's copy does not match what was archived; another region's copy is tried"),
            )
        os.replace(self.temporary, self.destination)
        return self.size

    def abort(self) -> None:
        try:
            self.handle.close()
        finally:
            self.temporary.unlink(missing_ok=True)


def control_system_identifier(pgdata: Path | None) -> int | None:
    """Return the system identifier from ``<pgdata>/global/pg_control``, or None when unreadable."""
    if pgdata is None:
        return None
    from backup.wal_format import read_control_system_identifier

    try:
        return read_control_system_identifier(Path(pgdata) / "global" / "pg_control")
    except (OSError, WalFormatError):
        return None


def resolve_database(config: "ResguardoConfig", database: str | None) -> str:
    """Return ``database``, or the only database with ``pitr.enabled`` when None."""
    if database:
        config.database(database)
        return database
    enabled = sorted(name for name, db in config.databases.items() if db.pitr.enabled)
    if len(enabled) == 1:
        return enabled[0]
    raise ConfigError(
        _("no database was named and {count} databases have pitr.enabled: {names}").format(
            count=len(enabled), names=", ".join(enabled) or "-"
        ),
        _("pass --db NAME in archive_command and restore_command"),
    )


def describe_error(error: BaseException) -> str:
    """Return the message of a Resguardo error or the type and text of another exception."""
    if isinstance(error, ResguardoError):
        return error.message
    return f"{type(error).__name__}: {error}"
