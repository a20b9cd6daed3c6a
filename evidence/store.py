"""The evidence store: append, read and verify the records of one chain.

Terms (the object layout is in :mod:`evidence.layout`):

- *chain*: the records under one prefix of one region, numbered 0, 1, 2, ...
  with each record linking to its predecessor's record hash.
- *tip*: the record with the highest sequence number, the one the next
  append links to.
- *interrupted append*: an append that wrote its sequence marker but not its
  record object, because the process stopped or the region failed in
  between. The marker contains the signed record, so the next append writes
  the missing record object from it.

Appending is safe from several processes at once: each writer takes a
sequence number by creating its marker with ``put_bytes(if_absent=True)``,
and a writer that finds the number taken reads the tip again and retries.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from encryption.signing import public_key_id
from evidence import layout
from evidence.checkpoint import Checkpoint, build_checkpoint, parse_checkpoint
from evidence.record import (
    GENESIS_HASH,
    EvidenceError,
    SIGNATURE_VALID,
    build_record,
    describe_signature_problem,
    parse_record,
    record_hash,
    serialise,
    sign_record,
    signature_status,
)
from evidence.verify import ChainReport, read_many, verify_chain
from resguardo.errors import IntegrityError, KeyError_, NotFoundError, StorageError
from resguardo.i18n import _
from resguardo.log import get_logger
from storage.base import AlreadyExists, Region

if TYPE_CHECKING:
    from resguardo.config import ResguardoConfig

log = get_logger("evidence.store")

DEFAULT_MAX_ATTEMPTS = 10
# Upper bound of the random pause before retry n is n times this, in seconds.
# Spreading retries keeps writers that lost the same race from colliding again.
RETRY_DELAY_SECONDS = 0.05
# Rounds of "write the checkpoint, then look for a newer record" per append.
CHECKPOINT_ROUNDS = 5
ATTACHMENT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


@dataclass(frozen=True)
class _Tip:
    """The newest record, as read from its sequence marker."""

    sequence: int
    record: dict[str, Any]
    data: bytes
    hash: str


def damaged_chain_hint() -> str:
    """Return the hint shown whenever a damaged chain stops an operation."""
    return _(
        "run 'resguardo evidence verify' to list every problem; keep the damaged chain for investigation "
        "and set a new evidence.prefix in the config to start a new chain"
    )


class EvidenceStore:
    """One evidence chain: the records under ``prefix`` in ``region``.

    ``signing_key`` may be None for read-only use (list, get, head, verify).
    When given, it must be the private half of ``public_key``.
    """

    def __init__(
        self,
        region: Region,
        prefix: str,
        signing_key: Ed25519PrivateKey | None,
        public_key: Ed25519PublicKey,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ):
        if signing_key is not None:
            signing_id = public_key_id(signing_key.public_key())
            verify_id = public_key_id(public_key)
            if signing_id != verify_id:
                raise KeyError_(
                    _("the evidence signing key {signing} is not the private half of the public key {public}").format(
                        signing=signing_id, public=verify_id
                    ),
                    _("signing.private_key and signing.public_key in the config must be one key pair"),
                )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.region = region
        self.prefix = layout.normalise_prefix(prefix)
        self.signing_key = signing_key
        self.public_key = public_key
        self.max_attempts = max_attempts

    @property
    def where(self) -> str:
        """The chain's location as ``region:prefix``, for messages and logs."""
        return f"{self.region.name}:{self.prefix or '/'}"

    def __repr__(self) -> str:
        return f"EvidenceStore({self.where!r})"

    # -- appending -------------------------------------------------------------

    def append(
        self, kind: str, database: str, subject: dict[str, Any], outcome: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Sign and store a new record at the end of the chain; return the stored record.

        Raises EvidenceError for invalid values, KeyError_ without a signing
        key, IntegrityError when the chain's tip or checkpoint is damaged (the
        record is not written), and StorageError when the region fails or
        other writers took every sequence number tried.
        """
        signing_key = self._require_signing_key()

        # Check the caller's values before anything is written.
        build_record(
            sequence=0, previous_hash=GENESIS_HASH, kind=kind, database=database,
            subject=subject, outcome=outcome, body=body,
        )
        log.info("evidence.append.start", extra={"chain": self.where, "kind": kind, "database": database})

        for attempt in range(1, self.max_attempts + 1):
            tip = self._find_tip(complete_interrupted=True)
            sequence = 0 if tip is None else tip.sequence + 1
            previous_hash = GENESIS_HASH if tip is None else tip.hash
            record = sign_record(
                build_record(
                    sequence=sequence, previous_hash=previous_hash, kind=kind, database=database,
                    subject=subject, outcome=outcome, body=body,
                ),
                signing_key,
            )
            data = serialise(record)

            # The create-only marker is what reserves the sequence number: the
            # record's own key contains a fresh record id and never collides.
            try:
                self.region.put_bytes(layout.marker_key(self.prefix, sequence), data, if_absent=True)
            except AlreadyExists:
                log.info(
                    "evidence.append.retry",
                    extra={"chain": self.where, "sequence": sequence, "attempt": attempt, "record_id": record["record_id"]},
                )
                time.sleep(random.uniform(0, RETRY_DELAY_SECONDS * attempt))
                continue

            self._write_record_object(sequence, record["record_id"], data, interrupted=False)
            self._advance_checkpoint(sequence)
            log.info(
                "evidence.append.done",
                extra={
                    "chain": self.where, "sequence": sequence, "record_id": record["record_id"],
                    "kind": kind, "database": database, "outcome": outcome, "attempts": attempt,
                },
            )
            return record

        log.error(
            "evidence.append.failed",
            extra={"chain": self.where, "kind": kind, "database": database, "attempts": self.max_attempts},
        )
        raise StorageError(
            _("could not append an evidence record to {chain}: other writers took the sequence number "
              "in each of {attempts} attempts").format(chain=self.where, attempts=self.max_attempts),
            _("too many processes append at once; retry the task later"),
        )

    def put_attachment(self, name: str, data: bytes) -> dict[str, Any]:
        """Store ``data`` create-only as attachment ``name`` and return its reference.

        Put the returned ``{"region", "key", "sha256", "size"}`` into the body
        of the record it belongs to: :meth:`verify_chain` then checks that the
        attachment still exists with that SHA-256. Raises EvidenceError for an
        invalid name and StorageError when the name is taken or the region fails.
        """
        segments = name.split("/")
        if not ATTACHMENT_NAME_PATTERN.match(name) or any(not part or part.startswith(".") for part in segments):
            raise EvidenceError(
                _("invalid attachment name {name!r}").format(name=name),
                _("use letters, digits, '.', '_', '-' and '/', with each '/'-separated part starting with a "
                  "letter or digit"),
            )
        key = layout.attachment_key(self.prefix, name)
        try:
            self.region.put_bytes(key, data, if_absent=True)
        except AlreadyExists:
            raise StorageError(
                _("attachment {key} already exists in {region}").format(key=key, region=self.region.name),
                _("attachments are never replaced; choose a unique name, for example with a timestamp"),
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        log.info("evidence.attachment.write", extra={"chain": self.where, "key": key, "size": len(data)})
        return {"region": self.region.name, "key": key, "sha256": digest, "size": len(data)}

    def _require_signing_key(self) -> Ed25519PrivateKey:
        if self.signing_key is None:
            raise KeyError_(
                _("cannot append evidence to {chain}: no signing key is loaded").format(chain=self.where),
                _("set signing.private_key in the config or RESGUARDO_SIGNING_KEY_FILE on the host that writes evidence"),
            )
        return self.signing_key

    def _write_record_object(self, sequence: int, record_id: str, data: bytes, *, interrupted: bool) -> None:
        """Store the record object unless it exists; an existing one must hold ``data``."""
        key = layout.record_key(self.prefix, sequence, record_id)
        try:
            if self.region.stat(key) is not None:
                existing = self.region.get_bytes(key)
            else:
                self.region.put_bytes(key, data, if_absent=True)
                if interrupted:
                    log.warning(
                        "evidence.append.completed_interrupted",
                        extra={"chain": self.where, "sequence": sequence, "record_id": record_id},
                    )
                return
        except AlreadyExists:
            # Another writer completed the record from its marker first.
            existing = self.region.get_bytes(key)
        except StorageError as error:
            log.error(
                "evidence.append.record_write_failed",
                extra={"chain": self.where, "sequence": sequence, "record_id": record_id, "error": error.message},
            )
            raise StorageError(
                _("evidence record {sequence} was reserved in {chain} but its record object could not be "
                  "written: {error}").format(sequence=sequence, chain=self.where, error=error.message),
                _("the signed record is kept in its sequence marker and the next append writes the record object; "
                  "fix the region and run the task again"),
            ) from error
        if existing != data:
            raise IntegrityError(
                _("evidence record object {key} in {region} differs from its sequence marker").format(
                    key=key, region=self.region.name
                ),
                damaged_chain_hint(),
            )

    def _advance_checkpoint(self, sequence: int) -> None:
        """Point the head checkpoint at the newest record, never moving it backwards.

        Another writer may append between this writer's record and its
        checkpoint, so each round looks for a newer marker after writing.
        """
        signing_key = self._require_signing_key()
        for _round in range(CHECKPOINT_ROUNDS):
            top = sequence
            while self.region.stat(layout.marker_key(self.prefix, top + 1)) is not None:
                top += 1
            tip = self._read_marker(top)

            # The checkpoint must never name a record whose object is missing,
            # so the record object is written first if its writer has not yet.
            self._write_record_object(top, tip.record["record_id"], tip.data, interrupted=True)

            current = self._read_checkpoint()
            if current is None or current.sequence < top:
                document = build_checkpoint(top, tip.record["record_id"], tip.hash, signing_key)
                self.region.put_bytes(layout.checkpoint_key(self.prefix), serialise(document))
                log.info("evidence.checkpoint.write", extra={"chain": self.where, "sequence": top})
            if self.region.stat(layout.marker_key(self.prefix, top + 1)) is None:
                return
            sequence = top + 1
        log.warning("evidence.checkpoint.behind", extra={"chain": self.where, "sequence": sequence})

    # -- the tip and the checkpoint ----------------------------------------------

    def _find_tip(self, *, complete_interrupted: bool) -> _Tip | None:
        """Return the newest record, or None for a chain without records.

        The search starts at the checkpoint and follows the markers written
        after it, so it reads a few objects instead of listing the chain.
        Raises IntegrityError when the checkpoint is missing from a chain
        that has objects, or names a record that is gone or different.
        """
        checkpoint = self._read_checkpoint()
        if checkpoint is None:
            first_key = self._first_record_or_marker()
            if first_key is not None:
                # Another writer may have created the chain between the read
                # and the listing; its checkpoint came before any record or marker.
                checkpoint = self._read_checkpoint()
            if first_key is not None and checkpoint is None:
                raise IntegrityError(
                    _("the head checkpoint of evidence chain {chain} is missing, but the chain contains objects "
                      "such as {key}").format(chain=self.where, key=first_key),
                    damaged_chain_hint(),
                )
        if checkpoint is None:
            if not complete_interrupted:
                return None
            checkpoint = self._create_empty_checkpoint()

        tip: _Tip | None = None
        sequence = checkpoint.sequence
        if sequence >= 0:
            tip = self._read_marker(sequence)
            if tip.hash != checkpoint.record_hash:
                raise IntegrityError(
                    _("evidence record {sequence} in {chain} is not the record its head checkpoint names").format(
                        sequence=sequence, chain=self.where
                    ),
                    damaged_chain_hint(),
                )
            if complete_interrupted:
                self._write_record_object(sequence, tip.record["record_id"], tip.data, interrupted=True)

        while self.region.stat(layout.marker_key(self.prefix, sequence + 1)) is not None:
            sequence += 1
            following = self._read_marker(sequence)
            expected = GENESIS_HASH if tip is None else tip.hash
            if following.record["previous_hash"] != expected:
                raise IntegrityError(
                    _("evidence record {sequence} in {chain} does not link to record {previous}").format(
                        sequence=sequence, chain=self.where, previous=sequence - 1
                    ),
                    damaged_chain_hint(),
                )
            tip = following
            if complete_interrupted:
                self._write_record_object(sequence, tip.record["record_id"], tip.data, interrupted=True)
        return tip

    def _first_record_or_marker(self) -> str | None:
        """Return the key of the first record or sequence marker, or None.

        Attachments may precede the first record, because a restore test
        stores its results before it appends the record that refers to them.
        """
        for info in self.region.list(layout.list_prefix(self.prefix)):
            if layout.classify_key(self.prefix, info.key)[0] in (layout.RECORD, layout.MARKER):
                return info.key
        return None

    def _create_empty_checkpoint(self) -> Checkpoint:
        """Create the checkpoint of a chain without records (sequence -1).

        It is written before the first marker, so from then on a missing
        checkpoint always means a deleted one.
        """
        document = build_checkpoint(-1, "", GENESIS_HASH, self._require_signing_key())
        data = serialise(document)
        try:
            self.region.put_bytes(layout.checkpoint_key(self.prefix), data, if_absent=True)
            log.info("evidence.chain.created", extra={"chain": self.where})
        except AlreadyExists:
            # Another writer created the chain at the same moment; use its checkpoint.
            existing = self._read_checkpoint()
            if existing is not None:
                return existing
        return parse_checkpoint(data)

    def _read_checkpoint(self) -> Checkpoint | None:
        """Return the verified checkpoint, None when absent; IntegrityError when damaged."""
        key = layout.checkpoint_key(self.prefix)
        try:
            data = self.region.get_bytes(key)
        except NotFoundError:
            return None
        try:
            checkpoint = parse_checkpoint(data)
        except ValueError as error:
            raise IntegrityError(
                _("the head checkpoint {key} in {region} is unreadable: {error}").format(
                    key=key, region=self.region.name, error=error
                ),
                damaged_chain_hint(),
            ) from None
        status = signature_status(checkpoint.document, self.public_key)
        if status != SIGNATURE_VALID:
            object_name = _("the head checkpoint {where}").format(where=f"{self.region.name}:{key}")
            raise IntegrityError(
                describe_signature_problem(status, checkpoint.document, object_name, self.public_key),
                damaged_chain_hint(),
            )
        return checkpoint

    def _read_marker(self, sequence: int) -> _Tip:
        """Read, parse and verify the record held in a sequence marker."""
        key = layout.marker_key(self.prefix, sequence)
        try:
            data = self.region.get_bytes(key)
        except NotFoundError:
            raise IntegrityError(
                _("the sequence marker {key} of evidence record {sequence} is missing from {region}").format(
                    key=key, sequence=sequence, region=self.region.name
                ),
                damaged_chain_hint(),
            ) from None
        try:
            record = parse_record(data)
        except ValueError as error:
            raise IntegrityError(
                _("the sequence marker {key} in {region} is not a valid evidence record: {error}").format(
                    key=key, region=self.region.name, error=error
                ),
                damaged_chain_hint(),
            ) from None
        status = signature_status(record, self.public_key)
        if status != SIGNATURE_VALID:
            object_name = _("the sequence marker {where}").format(where=f"{self.region.name}:{key}")
            raise IntegrityError(
                describe_signature_problem(status, record, object_name, self.public_key), damaged_chain_hint()
            )
        if record["sequence"] != sequence:
            raise IntegrityError(
                _("the sequence marker {key} in {region} contains a record with sequence {found}").format(
                    key=key, region=self.region.name, found=record["sequence"]
                ),
                damaged_chain_hint(),
            )
        return _Tip(sequence=sequence, record=record, data=data, hash=record_hash(record))

    # -- reading ---------------------------------------------------------------------

    def head(self) -> dict[str, Any] | None:
        """Return the newest record, verified, or None when the chain has no records.

        Raises IntegrityError when the checkpoint or the tip is damaged.
        """
        tip = self._find_tip(complete_interrupted=False)
        return None if tip is None else tip.record

    def list(self, *, database: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Return the chain's records in sequence order, optionally filtered.

        Signatures are not checked here: use :func:`evidence.record.signature_status`
        per record, or :meth:`verify_chain` for the whole chain. Objects that
        do not parse as records are skipped with a logged warning.
        """
        keys = []
        for info in self.region.list(layout.list_prefix(self.prefix)):
            role, _sequence, _record_id = layout.classify_key(self.prefix, info.key)
            if role == layout.RECORD:
                keys.append(info.key)

        records = []
        for key, data in read_many(self.region, keys).items():
            if data is None:
                continue
            try:
                record = parse_record(data)
            except ValueError as error:
                log.warning("evidence.list.unparseable", extra={"chain": self.where, "key": key, "error": str(error)})
                continue
            if database is not None and record["database"] != database:
                continue
            if kind is not None and record["kind"] != kind:
                continue
            records.append(record)
        records.sort(key=lambda record: (record["sequence"], record["record_id"]))
        return records

    def get(self, reference: int | str, *, verify: bool = True) -> dict[str, Any]:
        """Return one record by sequence number (int or digits) or by record id.

        With ``verify`` (the default) a record whose signature does not
        verify with the configured key raises IntegrityError; pass False to
        inspect a damaged record. Raises NotFoundError when no record matches
        and IntegrityError when several records share the sequence number.
        """
        keys = self._find_record_keys(reference)
        if not keys:
            raise NotFoundError(
                _("evidence record {reference} not found in {chain}").format(reference=reference, chain=self.where),
                _("list the records with 'resguardo evidence list'"),
            )
        if len(keys) > 1:
            raise IntegrityError(
                _("evidence chain {chain} has {count} records for {reference}: {keys}").format(
                    chain=self.where, count=len(keys), reference=reference, keys=", ".join(keys)
                ),
                damaged_chain_hint(),
            )

        key = keys[0]
        try:
            record = parse_record(self.region.get_bytes(key))
        except ValueError as error:
            raise IntegrityError(
                _("evidence object {key} in {region} is not a valid record: {error}").format(
                    key=key, region=self.region.name, error=error
                ),
                damaged_chain_hint(),
            ) from None
        if verify:
            self.check_signature(record, where=f"{self.region.name}:{key}")
        return record

    def _find_record_keys(self, reference: int | str) -> list[str]:
        if isinstance(reference, int) or (isinstance(reference, str) and reference.isascii() and reference.isdigit()):
            sequence = int(reference)
            listing = self.region.list(layout.record_list_prefix(self.prefix, sequence))
            return [
                info.key for info in listing
                if layout.classify_key(self.prefix, info.key)[:2] == (layout.RECORD, sequence)
            ]
        try:
            record_id = str(uuid.UUID(reference))
        except ValueError:
            raise NotFoundError(
                _("{reference!r} is neither a sequence number nor a record id").format(reference=reference),
                _("pass a sequence number such as 12 or a record id as shown by 'resguardo evidence list'"),
            ) from None
        return [
            info.key for info in self.region.list(layout.list_prefix(self.prefix))
            if layout.classify_key(self.prefix, info.key)[::2] == (layout.RECORD, record_id)
        ]

    def check_signature(self, record: dict[str, Any], *, where: str) -> None:
        """Raise IntegrityError unless ``record`` is signed by the configured key."""
        status = signature_status(record, self.public_key)
        if status != SIGNATURE_VALID:
            object_name = _("the evidence record {where}").format(where=where)
            raise IntegrityError(
                describe_signature_problem(status, record, object_name, self.public_key), damaged_chain_hint()
            )

    # -- verification ------------------------------------------------------------------

    def verify_chain(self) -> ChainReport:
        """Check the whole chain and return a report listing every problem found."""
        return verify_chain(self.region, self.prefix, self.public_key)


def open_store(config: ResguardoConfig, *, writable: bool = False) -> EvidenceStore:
    """Open the configured evidence chain (``evidence.region``, ``evidence.prefix``).

    ``writable`` also loads the signing key, which only hosts that append
    evidence have. Keys come from ``signing.*`` via :mod:`resguardo.keyring`.
    """
    # Imported here so that importing this module needs neither the storage
    # drivers' cloud libraries nor a configuration.
    from resguardo.keyring import load_signing_key, load_verify_key
    from storage.registry import open_region

    region = open_region(config.evidence.region, config)
    signing_key = load_signing_key(config) if writable else None
    return EvidenceStore(region, config.evidence.prefix, signing_key, load_verify_key(config))
