"""Verification of a whole evidence chain.

:func:`verify_chain` reads every object under the chain prefix and lists
every *problem* (a sign of tampering or damage) and every *warning* (a state
that an interrupted or running append leaves behind). A chain is intact when
there are no problems. Each problem has a ``kind`` from the constants below:

- ``unparseable``: an object named like a record is not a valid record.
- ``name_mismatch``: a record's object name disagrees with its signed
  sequence number or record id (renamed or copied object).
- ``bad_signature``: the signature does not verify (edited record) or is absent.
- ``other_key``: the record is signed by a key other than the configured one.
- ``duplicate_sequence``: several records carry one sequence number.
- ``gap``: a sequence number below the newest one has no record (deleted record).
- ``broken_link``: a record's ``previous_hash`` is not the record hash of
  the record before it (that record was deleted, edited or replaced).
- ``truncated``: the head checkpoint names a sequence number beyond the
  newest record (the newest records were deleted).
- ``checkpoint_missing``, ``checkpoint_invalid``, ``checkpoint_mismatch``:
  the head checkpoint was deleted, does not verify, or names a record other
  than the one stored under its sequence number.
- ``marker_missing``, ``marker_invalid``, ``marker_mismatch``: a record's
  sequence marker was deleted, does not verify, or contains a different record.
- ``attachment_missing``, ``attachment_mismatch``: an attachment that a
  record refers to was deleted, or its SHA-256 differs from the one in the record.
- ``unexpected_object``: an object under the prefix that a chain never writes.

Warnings:

- ``incomplete_append``: a marker beyond the checkpoint has no record object yet.
- ``checkpoint_behind``: the checkpoint names an older record than the
  newest, which happens when an append stops after writing its record.
- ``unreferenced_attachment``: no record refers to an attachment, usually
  left by a run that stopped before appending its record.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from encryption.signing import public_key_id
from evidence import layout
from evidence.checkpoint import Checkpoint, parse_checkpoint
from evidence.record import (
    GENESIS_HASH,
    SIGNATURE_OTHER_KEY,
    SIGNATURE_VALID,
    describe_signature_problem,
    parse_record,
    record_hash,
    signature_status,
)
from resguardo.errors import NotFoundError
from resguardo.i18n import _
from resguardo.log import get_logger
from storage.base import Region

log = get_logger("evidence.verify")

# Parallel reads when a whole chain is read. Records are small, so reading
# from an object store is bound by request latency, not bandwidth.
READ_WORKERS = 8

UNPARSEABLE = "unparseable"
NAME_MISMATCH = "name_mismatch"
BAD_SIGNATURE = "bad_signature"
OTHER_KEY = "other_key"
DUPLICATE_SEQUENCE = "duplicate_sequence"
GAP = "gap"
BROKEN_LINK = "broken_link"
TRUNCATED = "truncated"
CHECKPOINT_MISSING = "checkpoint_missing"
CHECKPOINT_INVALID = "checkpoint_invalid"
CHECKPOINT_MISMATCH = "checkpoint_mismatch"
MARKER_MISSING = "marker_missing"
MARKER_INVALID = "marker_invalid"
MARKER_MISMATCH = "marker_mismatch"
ATTACHMENT_MISSING = "attachment_missing"
ATTACHMENT_MISMATCH = "attachment_mismatch"
UNEXPECTED_OBJECT = "unexpected_object"

INCOMPLETE_APPEND = "incomplete_append"
CHECKPOINT_BEHIND = "checkpoint_behind"
UNREFERENCED_ATTACHMENT = "unreferenced_attachment"


@dataclass(frozen=True)
class ChainProblem:
    """One finding of a verification, with a message in the active language."""

    kind: str
    message: str
    sequence: int | None = None
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sequence": self.sequence, "key": self.key, "message": self.message}


@dataclass
class ChainReport:
    """The result of verifying one chain."""

    region: str
    prefix: str
    key_id: str
    records: int = 0
    last_sequence: int | None = None
    head_hash: str | None = None
    checkpoint_sequence: int | None = None
    problems: list[ChainProblem] = field(default_factory=list)
    warnings: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found; warnings do not count."""
        return not self.problems

    @property
    def where(self) -> str:
        return f"{self.region}:{self.prefix or '/'}"

    def problems_of(self, kind: str) -> list[ChainProblem]:
        """Return the problems of one kind."""
        return [problem for problem in self.problems if problem.kind == kind]

    def kinds(self) -> set[str]:
        """Return the kinds of problem found."""
        return {problem.kind for problem in self.problems}

    def summary(self) -> str:
        """Return a multi-line summary for people, in the active language."""
        lines = [
            _("Evidence chain {chain}: {count} records, checked with key {key_id}.").format(
                chain=self.where, count=self.records, key_id=self.key_id
            )
        ]
        if self.last_sequence is not None:
            lines.append(_("Newest record: sequence {sequence}, record hash {hash}.").format(
                sequence=self.last_sequence, hash=self.head_hash or "-"
            ))
        if self.checkpoint_sequence is not None:
            lines.append(_("Head checkpoint: sequence {sequence}.").format(sequence=self.checkpoint_sequence))
        if self.ok:
            lines.append(_("Result: INTACT. Every record is signed, linked and in sequence."))
        else:
            lines.append(_("Result: DAMAGED. {count} problems found:").format(count=len(self.problems)))
            lines.extend(_format_finding(problem) for problem in self.problems)
        if self.warnings:
            lines.append(_("Warnings ({count}):").format(count=len(self.warnings)))
            lines.extend(_format_finding(warning) for warning in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "prefix": self.prefix,
            "key_id": self.key_id,
            "ok": self.ok,
            "records": self.records,
            "last_sequence": self.last_sequence,
            "head_hash": self.head_hash,
            "checkpoint_sequence": self.checkpoint_sequence,
            "problems": [problem.to_dict() for problem in self.problems],
            "warnings": [warning.to_dict() for warning in self.warnings],
        }


def _format_finding(finding: ChainProblem) -> str:
    if finding.sequence is None:
        return f"  - {finding.message}"
    return "  - " + _("[record {sequence}] {message}").format(sequence=finding.sequence, message=finding.message)


@dataclass(frozen=True)
class _Entry:
    """The members of one parsed record that the link checks need."""

    key: str
    sequence: int
    record_id: str
    hash: str
    previous_hash: str


def read_many(region: Region, keys: list[str], workers: int = READ_WORKERS) -> dict[str, bytes | None]:
    """Read small objects in parallel; a key deleted since it was listed maps to None."""

    def read_one(key: str) -> bytes | None:
        try:
            return region.get_bytes(key)
        except NotFoundError:
            return None

    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
        return dict(zip(keys, pool.map(read_one, keys)))


def verify_chain(region: Region, prefix: str, public_key: Ed25519PublicKey, *,
                 workers: int = READ_WORKERS) -> ChainReport:
    """Check every object of the chain under ``prefix`` and return the report.

    Raises StorageError only when the region cannot be listed or read; every
    finding about the data is in the report. Appends may run meanwhile: they
    can add warnings but no problems, because the checkpoint is read before
    the listing and objects only ever appear.
    """
    prefix = layout.normalise_prefix(prefix)
    report = ChainReport(region=region.name, prefix=prefix, key_id=public_key_id(public_key))
    log.info("evidence.verify.start", extra={"chain": report.where})

    # The checkpoint is read first: every record it names was written before
    # the listing starts, so a running append cannot look like a deletion.
    # A chain created between the two reads shows objects but no checkpoint,
    # so that case is read once more.
    checkpoint_key = layout.checkpoint_key(prefix)
    for _attempt in range(2):
        checkpoint, checkpoint_present = _read_checkpoint(region, checkpoint_key, public_key, report)
        listing = _list_chain(region, prefix)
        if checkpoint_present or not (listing.record_names or listing.marker_keys):
            break
    record_names, marker_keys = listing.record_names, listing.marker_keys

    for key in listing.other_keys:
        report.problems.append(ChainProblem(
            UNEXPECTED_OBJECT,
            _("object {key} is not part of an evidence chain; evidence chains never write it").format(key=key),
            key=key,
        ))

    blobs = read_many(region, [key for key, _seq, _id in record_names] + list(marker_keys.values()), workers)
    references: list[tuple[int, str, str]] = []
    entries, unreadable = _check_records(prefix, record_names, blobs, public_key, references, report)
    markers = _check_markers(marker_keys, blobs, entries, public_key, report)

    if not checkpoint_present and (record_names or marker_keys):
        report.problems.append(ChainProblem(
            CHECKPOINT_MISSING,
            _("the head checkpoint {key} is missing: it was deleted, so deleting the newest records "
              "would go unnoticed").format(key=checkpoint_key),
            key=checkpoint_key,
        ))

    effective = _add_incomplete_appends(entries, unreadable, markers, checkpoint, report)
    top = max([*effective, *unreadable], default=-1)
    _check_sequence_numbers(effective, unreadable, marker_keys, report)
    _check_checkpoint(checkpoint, effective, top, max([*entries, *unreadable], default=-1), report)
    _check_links(effective, report)
    _check_attachments(region, references, listing.attachment_keys, workers, report)

    report.records = sum(len(found) for found in entries.values()) + len(unreadable)
    if top >= 0:
        report.last_sequence = top
        newest = effective.get(top, [])
        report.head_hash = newest[0].hash if len(newest) == 1 else None
    report.problems.sort(key=lambda problem: (-1 if problem.sequence is None else problem.sequence, problem.kind))
    report.warnings.sort(key=lambda warning: (-1 if warning.sequence is None else warning.sequence, warning.kind))

    log.info(
        "evidence.verify.done",
        extra={
            "chain": report.where, "records": report.records, "problems": len(report.problems),
            "warnings": len(report.warnings), "kinds": sorted(report.kinds()),
        },
    )
    return report


@dataclass
class _Listing:
    """The chain's objects by role."""

    record_names: list[tuple[str, int, str]] = field(default_factory=list)  # (key, sequence, record id)
    marker_keys: dict[int, str] = field(default_factory=dict)
    attachment_keys: set[str] = field(default_factory=set)
    other_keys: list[str] = field(default_factory=list)


def _list_chain(region: Region, prefix: str) -> _Listing:
    """List the chain's objects, sorted by role."""
    listing = _Listing()
    for info in region.list(layout.list_prefix(prefix)):
        role, sequence, record_id = layout.classify_key(prefix, info.key)
        if role == layout.RECORD:
            assert sequence is not None and record_id is not None
            listing.record_names.append((info.key, sequence, record_id))
        elif role == layout.MARKER:
            assert sequence is not None
            listing.marker_keys[sequence] = info.key
        elif role == layout.ATTACHMENT:
            listing.attachment_keys.add(info.key)
        elif role == layout.OTHER:
            listing.other_keys.append(info.key)
    return listing


def _read_checkpoint(region: Region, key: str, public_key: Ed25519PublicKey,
                     report: ChainReport) -> tuple[Checkpoint | None, bool]:
    """Return the valid checkpoint (or None) and whether an object exists at its key."""
    try:
        data = region.get_bytes(key)
    except NotFoundError:
        return None, False
    try:
        checkpoint = parse_checkpoint(data)
    except ValueError as error:
        report.problems.append(ChainProblem(
            CHECKPOINT_INVALID,
            _("the head checkpoint {key} is unreadable: {error}").format(key=key, error=error),
            key=key,
        ))
        return None, True
    status = signature_status(checkpoint.document, public_key)
    if status != SIGNATURE_VALID:
        report.problems.append(ChainProblem(
            CHECKPOINT_INVALID,
            describe_signature_problem(status, checkpoint.document, _("the head checkpoint {key}").format(key=key), public_key),
            key=key,
        ))
        return None, True
    report.checkpoint_sequence = checkpoint.sequence
    return checkpoint, True


def _check_records(prefix: str, record_names: list[tuple[str, int, str]], blobs: dict[str, bytes | None],
                   public_key: Ed25519PublicKey, references: list[tuple[int, str, str]],
                   report: ChainReport) -> tuple[dict[int, list[_Entry]], set[int]]:
    """Parse and verify each record object, and collect its attachment references.

    Returns the parsed records grouped by their signed sequence number, and
    the sequence numbers (taken from object names) of records that did not
    parse. Appends ``(sequence, key, sha256)`` to ``references`` for each
    attachment a record refers to.
    """
    entries: dict[int, list[_Entry]] = defaultdict(list)
    unreadable: set[int] = set()
    for key, name_sequence, name_record_id in record_names:
        data = blobs.get(key)
        if data is None:
            continue  # deleted after the listing, so the gap check treats it as absent
        try:
            record = parse_record(data)
        except ValueError as error:
            report.problems.append(ChainProblem(
                UNPARSEABLE,
                _("object {key} is not a valid evidence record: {error}").format(key=key, error=error),
                sequence=name_sequence,
                key=key,
            ))
            unreadable.add(name_sequence)
            continue

        sequence = record["sequence"]
        if (sequence, record["record_id"]) != (name_sequence, name_record_id):
            report.problems.append(ChainProblem(
                NAME_MISMATCH,
                _("object {key} contains record {record_id} with sequence {found}, which its name does not match; "
                  "the object was renamed or copied").format(key=key, record_id=record["record_id"], found=sequence),
                sequence=sequence,
                key=key,
            ))

        status = signature_status(record, public_key)
        if status != SIGNATURE_VALID:
            report.problems.append(ChainProblem(
                OTHER_KEY if status == SIGNATURE_OTHER_KEY else BAD_SIGNATURE,
                describe_signature_problem(status, record, _("the record object {key}").format(key=key), public_key),
                sequence=sequence,
                key=key,
            ))

        entries[sequence].append(_Entry(key, sequence, record["record_id"], record_hash(record), record["previous_hash"]))
        references.extend(
            (sequence, reference_key, sha256) for reference_key, sha256 in _attachment_references(prefix, record["body"])
        )

    for sequence, found in entries.items():
        if len(found) > 1:
            report.problems.append(ChainProblem(
                DUPLICATE_SEQUENCE,
                _("{count} records carry sequence {sequence}: {keys}").format(
                    count=len(found), sequence=sequence, keys=", ".join(entry.key for entry in found)
                ),
                sequence=sequence,
            ))
    return entries, unreadable


def _check_markers(marker_keys: dict[int, str], blobs: dict[str, bytes | None], entries: dict[int, list[_Entry]],
                   public_key: Ed25519PublicKey, report: ChainReport) -> dict[int, _Entry]:
    """Verify each sequence marker against its record; return the valid markers."""
    markers: dict[int, _Entry] = {}
    for sequence, key in marker_keys.items():
        data = blobs.get(key)
        if data is None:
            continue
        try:
            record = parse_record(data)
        except ValueError as error:
            report.problems.append(ChainProblem(
                MARKER_INVALID,
                _("sequence marker {key} is not a valid evidence record: {error}").format(key=key, error=error),
                sequence=sequence,
                key=key,
            ))
            continue
        status = signature_status(record, public_key)
        if status != SIGNATURE_VALID:
            message = describe_signature_problem(
                status, record, _("the sequence marker {key}").format(key=key), public_key
            )
        elif record["sequence"] != sequence:
            message = _("sequence marker {key} contains a record with sequence {found}").format(
                key=key, found=record["sequence"]
            )
        else:
            message = None
        if message is not None:
            report.problems.append(ChainProblem(MARKER_INVALID, message, sequence=sequence, key=key))
            continue
        markers[sequence] = _Entry(key, sequence, record["record_id"], record_hash(record), record["previous_hash"])

    for sequence, marker in markers.items():
        found = entries.get(sequence, [])
        if found and all(entry.hash != marker.hash for entry in found):
            report.problems.append(ChainProblem(
                MARKER_MISMATCH,
                _("sequence marker {key} contains record {record_id}, but the stored record differs: "
                  "one of the two was replaced").format(key=marker.key, record_id=marker.record_id),
                sequence=sequence,
                key=marker.key,
            ))
    for sequence in entries:
        if sequence not in marker_keys:
            report.problems.append(ChainProblem(
                MARKER_MISSING,
                _("the sequence marker of record {sequence} is missing: it was deleted, so another record "
                  "could take this sequence number").format(sequence=sequence),
                sequence=sequence,
            ))
    return markers


def _add_incomplete_appends(entries: dict[int, list[_Entry]], unreadable: set[int], markers: dict[int, _Entry],
                            checkpoint: Checkpoint | None, report: ChainReport) -> dict[int, list[_Entry]]:
    """Return the records to check links on, adding markers of interrupted appends.

    A marker without a record object beyond a valid checkpoint is an append
    that has not written its record object yet. The marker's signed record
    is checked in its place. Without a valid checkpoint such a marker cannot be distinguished
    from a deleted record, so the gap check reports it instead.
    """
    effective = {sequence: list(found) for sequence, found in entries.items()}
    if checkpoint is None:
        return effective
    for sequence, marker in sorted(markers.items()):
        if sequence in entries or sequence in unreadable or sequence <= checkpoint.sequence:
            continue
        effective[sequence] = [marker]
        report.warnings.append(ChainProblem(
            INCOMPLETE_APPEND,
            _("record {sequence} exists only in its sequence marker {key}: its append was interrupted or is "
              "still running, and the next append writes the record object").format(
                sequence=sequence, key=marker.key
            ),
            sequence=sequence,
            key=marker.key,
        ))
    return effective


def _check_sequence_numbers(effective: dict[int, list[_Entry]], unreadable: set[int], marker_keys: dict[int, str],
                            report: ChainReport) -> None:
    """Report the sequence numbers below the newest that have no record.

    A single missing record gets its own problem. A longer run of missing
    numbers gets one problem for the run, because a forged record can
    claim any sequence number up to 10**12 - 1.
    """
    present = sorted({*effective, *unreadable})
    expected = 0
    for sequence in present:
        missing = sequence - expected
        if missing == 1:
            report.problems.append(ChainProblem(GAP, _missing_record_message(expected, marker_keys), sequence=expected))
        elif missing > 1:
            report.problems.append(ChainProblem(
                GAP,
                _("records {first} to {last} are missing: they were deleted").format(
                    first=expected, last=sequence - 1
                ),
                sequence=expected,
            ))
        expected = sequence + 1


def _missing_record_message(sequence: int, marker_keys: dict[int, str]) -> str:
    if sequence in marker_keys:
        return _("record {sequence} is missing; it was deleted, but its sequence marker {key} still "
                 "contains a copy").format(sequence=sequence, key=marker_keys[sequence])
    return _("record {sequence} is missing, together with its sequence marker: it was deleted").format(
        sequence=sequence
    )


def _check_checkpoint(checkpoint: Checkpoint | None, effective: dict[int, list[_Entry]], top: int,
                      top_stored: int, report: ChainReport) -> None:
    """Compare the head checkpoint with the newest record.

    ``top`` counts records that exist only in their markers, ``top_stored``
    only records with a record object, which is all a checkpoint may name.
    """
    if checkpoint is None:
        return
    if checkpoint.sequence > top:
        newest = top if top >= 0 else "-"
        if checkpoint.sequence == top + 1:
            message = _("the head checkpoint names record {checkpoint}, but the newest record is {newest}: "
                        "record {checkpoint} was deleted").format(checkpoint=checkpoint.sequence, newest=newest)
        else:
            message = _("the head checkpoint names record {checkpoint}, but the newest record is {newest}: "
                        "records {first} to {checkpoint} were deleted").format(
                checkpoint=checkpoint.sequence, newest=newest, first=top + 1
            )
        report.problems.append(ChainProblem(TRUNCATED, message, sequence=top + 1))
        return
    if checkpoint.sequence >= 0:
        found = effective.get(checkpoint.sequence, [])
        if found and all(entry.hash != checkpoint.record_hash for entry in found):
            report.problems.append(ChainProblem(
                CHECKPOINT_MISMATCH,
                _("the head checkpoint names record {record_id} with a different record hash than the record "
                  "stored under sequence {sequence}: that record was replaced").format(
                    record_id=checkpoint.record_id, sequence=checkpoint.sequence
                ),
                sequence=checkpoint.sequence,
            ))
    if checkpoint.sequence < top_stored:
        report.warnings.append(ChainProblem(
            CHECKPOINT_BEHIND,
            _("the head checkpoint names record {checkpoint}, older than the newest record {newest}; "
              "the next append updates it").format(checkpoint=checkpoint.sequence, newest=top_stored),
        ))


def _check_links(effective: dict[int, list[_Entry]], report: ChainReport) -> None:
    """Check that each record's previous_hash is the record hash of its predecessor."""
    for sequence in sorted(effective):
        if sequence == 0:
            expected = {GENESIS_HASH}
        else:
            expected = {entry.hash for entry in effective.get(sequence - 1, [])}
        for entry in effective[sequence]:
            if entry.previous_hash in expected:
                continue
            if sequence == 0:
                message = _("the first record does not link to the genesis value (64 zeros)")
            elif not expected:
                message = _("the link to record {previous} cannot be checked because that record is missing "
                            "or unreadable").format(previous=sequence - 1)
            else:
                message = _("previous_hash does not match record {previous}: that record was edited or "
                            "replaced after this one was written").format(previous=sequence - 1)
            report.problems.append(ChainProblem(BROKEN_LINK, message, sequence=sequence, key=entry.key))


def _attachment_references(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Return ``(key, sha256)`` of every attachment a record body refers to.

    A reference is any JSON object in the body with a string ``key`` in the
    chain's attachment directories and a string ``sha256``, as returned by
    :meth:`evidence.store.EvidenceStore.put_attachment`.
    """
    found: list[tuple[str, str]] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            key, sha256 = item.get("key"), item.get("sha256")
            if isinstance(key, str) and isinstance(sha256, str) and \
                    layout.classify_key(prefix, key)[0] == layout.ATTACHMENT:
                found.append((key, sha256))
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found


def _check_attachments(region: Region, references: list[tuple[int, str, str]], attachment_keys: set[str],
                       workers: int, report: ChainReport) -> None:
    """Check that each referenced attachment exists with the SHA-256 its record names."""
    referenced = sorted({key for _sequence, key, _sha256 in references})
    digests = {
        key: None if data is None else hashlib.sha256(data).hexdigest()
        for key, data in read_many(region, referenced, workers).items()
    }
    for sequence, key, sha256 in references:
        actual = digests.get(key)
        if actual is None:
            report.problems.append(ChainProblem(
                ATTACHMENT_MISSING,
                _("attachment {key}, which the record refers to, is missing: it was deleted").format(key=key),
                sequence=sequence,
                key=key,
            ))
        elif actual != sha256:
            report.problems.append(ChainProblem(
                ATTACHMENT_MISMATCH,
                _("attachment {key} has SHA-256 {actual}, but the record names {expected}: "
                  "the attachment was changed").format(key=key, actual=actual, expected=sha256),
                sequence=sequence,
                key=key,
            ))
    for key in sorted(attachment_keys - set(referenced)):
        report.warnings.append(ChainProblem(
            UNREFERENCED_ATTACHMENT,
            _("attachment {key} is not referred to by any record, usually because the run that wrote it "
              "stopped before appending its record").format(key=key),
            key=key,
        ))
