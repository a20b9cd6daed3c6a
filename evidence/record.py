"""The evidence record format: build, serialise, hash, parse and check one record.

A record is a JSON object signed with :func:`encryption.signing.sign_document`.
Its members are described in ``docs/evidence.md``. The terms used here:

- *record hash*: the hex SHA-256 of the record's canonical JSON, signature
  included (see :func:`encryption.signing.canonical_json`). Stored bytes may be
  indented, so the hash is always taken over the parsed record, never over the
  bytes as stored.
- *link*: the ``previous_hash`` member, which carries the record hash of the
  record with the previous sequence number. Sequence 0 links to
  :data:`GENESIS_HASH`, 64 zeros.
- *signature status*: the outcome of checking a record's signature against the
  configured public key, one of the ``SIGNATURE_*`` constants.

>>> record_object_name(7, "0b6f6f4e-1c1d-4a57-9b0e-4d0c1b0a8f35")
'000000000007-0b6f6f4e-1c1d-4a57-9b0e-4d0c1b0a8f35.json'
>>> parse_record_object_name("000000000007-0b6f6f4e-1c1d-4a57-9b0e-4d0c1b0a8f35.json")
(7, '0b6f6f4e-1c1d-4a57-9b0e-4d0c1b0a8f35')
>>> parse_record_object_name("head.json") is None
True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from encryption.signing import canonical_json, public_key_id, sign_document, verify_document
from resguardo.errors import IntegrityError, ResguardoError
from resguardo.i18n import _

RECORD_FORMAT = "resguardo-evidence"
RECORD_VERSION = 1
GENESIS_HASH = "0" * 64
OUTCOMES = ("passed", "failed")

# A kind is free text chosen by the caller ("restore_test", "masking",
# "dr_rehearsal", "failover", ...), but it appears in logs and file listings,
# so it is limited to an identifier.
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
HASH_PATTERN = re.compile(r"^[0-9a-f]{64}$")
SEQUENCE_DIGITS = 12
MAX_SEQUENCE = 10**SEQUENCE_DIGITS - 1
_OBJECT_NAME_PATTERN = re.compile(
    r"^(\d{12})-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.json$"
)

SIGNATURE_VALID = "valid"
SIGNATURE_INVALID = "invalid"
SIGNATURE_OTHER_KEY = "other_key"
SIGNATURE_MISSING = "missing"

# Members every version-1 record has, with the JSON type each must have.
_MEMBER_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "sequence": int,
    "record_id": str,
    "kind": str,
    "created_at": str,
    "database": str,
    "subject": dict,
    "outcome": str,
    "body": dict,
    "previous_hash": str,
    "signature": dict,
}


class EvidenceError(ResguardoError):
    """An evidence record cannot be built from the values a caller passed."""

    exit_status = 1


def utc_timestamp(moment: dt.datetime | None = None) -> str:
    """Format ``moment`` (default: now) as ISO 8601 in UTC with microseconds and a ``Z``.

    >>> utc_timestamp(dt.datetime(2026, 12, 4, 20, 15, tzinfo=dt.timezone.utc))
    '2026-12-04T20:15:00.000000Z'
    """
    moment = moment or dt.datetime.now(dt.timezone.utc)
    if moment.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware time")
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_object_name(sequence: int, record_id: str) -> str:
    """Return the object name of a record, relative to the chain prefix."""
    return f"{sequence:0{SEQUENCE_DIGITS}d}-{record_id}.json"


def parse_record_object_name(name: str) -> tuple[int, str] | None:
    """Return ``(sequence, record_id)`` encoded in a record's object name, or None."""
    match = _OBJECT_NAME_PATTERN.match(name)
    if not match:
        return None
    return int(match.group(1)), match.group(2)


def record_hash(record: dict[str, Any]) -> str:
    """Return the record hash: hex SHA-256 of the canonical JSON, signature included.

    >>> record_hash({"a": 1})
    '015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862'
    """
    return hashlib.sha256(canonical_json(record)).hexdigest()


def build_record(
    *,
    sequence: int,
    previous_hash: str,
    kind: str,
    database: str,
    subject: dict[str, Any],
    outcome: str,
    body: dict[str, Any],
    record_id: str | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """Return an unsigned record after checking every caller-supplied value.

    Raises EvidenceError naming the first invalid value. ``subject`` and
    ``body`` must be JSON objects that serialise without NaN or infinities,
    because a float that JSON cannot represent would make the hash ambiguous.
    """
    if not KIND_PATTERN.match(kind or ""):
        raise EvidenceError(
            _("invalid evidence kind {kind!r}").format(kind=kind),
            _("use lowercase letters, digits, '_', '.' or '-', starting with a letter, e.g. restore_test"),
        )
    if not isinstance(database, str) or not database:
        raise EvidenceError(
            _("invalid database name {database!r} for an evidence record").format(database=database),
            _("pass the configured database name"),
        )
    if outcome not in OUTCOMES:
        raise EvidenceError(
            _("invalid evidence outcome {outcome!r}").format(outcome=outcome),
            _("use one of: {choices}").format(choices=", ".join(OUTCOMES)),
        )
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise EvidenceError(
            _("sequence number {sequence} is out of range").format(sequence=sequence),
            _("an evidence chain can contain at most {count} records; start a new chain under a new prefix").format(
                count=MAX_SEQUENCE + 1
            ),
        )
    if not HASH_PATTERN.match(previous_hash):
        raise ValueError(f"previous_hash must be 64 lowercase hex digits, got {previous_hash!r}")

    for member, value in (("subject", subject), ("body", body)):
        if not isinstance(value, dict):
            raise EvidenceError(
                _("evidence member {member} must be a JSON object, got {type}").format(
                    member=member, type=type(value).__name__
                ),
                _("pass a dict"),
            )
        try:
            canonical_json(value)
        except (TypeError, ValueError) as error:
            raise EvidenceError(
                _("evidence member {member} cannot be stored as JSON: {error}").format(member=member, error=error),
                _("convert times to ISO 8601 strings, paths and ids to strings, and replace NaN or infinity"),
            ) from None

    return {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "sequence": sequence,
        "record_id": record_id or str(uuid.uuid4()),
        "kind": kind,
        "created_at": created_at or utc_timestamp(),
        "database": database,
        "subject": subject,
        "outcome": outcome,
        "body": body,
        "previous_hash": previous_hash,
    }


def sign_record(record: dict[str, Any], signing_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return a signed copy of ``record``."""
    return sign_document(record, signing_key)


def serialise(document: dict[str, Any]) -> bytes:
    """Return the bytes stored for a record or checkpoint: indented, sorted JSON in UTF-8."""
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"


def _reject_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # With duplicate members, JSON parsers disagree on which value wins, so a
    # viewer could show a value other than the one the signature covers.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(_("duplicate member {member!r}").format(member=key))
        document[key] = value
    return document


def _reject_constant(name: str) -> Any:
    raise ValueError(_("{constant} is not valid JSON").format(constant=name))


def parse_json_object(data: bytes) -> dict[str, Any]:
    """Parse stored bytes into a JSON object; ValueError on anything else.

    Duplicate members, NaN and infinities are rejected.

    >>> parse_json_object(b'{"a": 1}')
    {'a': 1}
    >>> parse_json_object(b'{"a": 1, "a": 2}')  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    ValueError: duplicate member 'a'
    """
    try:
        document = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_members,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError as error:
        raise ValueError(_("not UTF-8 text: {error}").format(error=error)) from None
    except json.JSONDecodeError as error:
        raise ValueError(_("not JSON: {error}").format(error=error)) from None
    if not isinstance(document, dict):
        raise ValueError(_("a JSON object is required, got {type}").format(type=type(document).__name__))
    return document


def check_record_shape(record: dict[str, Any]) -> None:
    """Raise ValueError unless ``record`` has the members and types of a version-1 record.

    The signature is not checked here.
    """
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(_("format is {found!r}, not {expected!r}").format(found=record.get("format"), expected=RECORD_FORMAT))
    if record.get("version") != RECORD_VERSION:
        raise ValueError(_("version {found!r} is not supported, only version {supported}").format(
            found=record.get("version"), supported=RECORD_VERSION
        ))
    for member, expected_type in _MEMBER_TYPES.items():
        if member not in record:
            raise ValueError(_("member {member!r} is missing").format(member=member))
        value = record[member]
        # bool is a subclass of int, and true is not a sequence number.
        if not isinstance(value, expected_type) or (expected_type is int and isinstance(value, bool)):
            raise ValueError(_("member {member!r} has the wrong type {type}").format(
                member=member, type=type(value).__name__
            ))
    if record["sequence"] < 0:
        raise ValueError(_("sequence {sequence} is negative").format(sequence=record["sequence"]))
    if not HASH_PATTERN.match(record["previous_hash"]):
        raise ValueError(_("{member} is not 64 lowercase hex digits").format(member="previous_hash"))


def parse_record(data: bytes) -> dict[str, Any]:
    """Parse and shape-check a stored record; the ValueError message describes the defect."""
    record = parse_json_object(data)
    check_record_shape(record)
    return record


def signature_status(document: dict[str, Any], public_key: Ed25519PublicKey) -> str:
    """Return the signature status of a record or checkpoint against ``public_key``."""
    signature = document.get("signature")
    if not isinstance(signature, dict) or signature.get("alg") != "Ed25519" or "value" not in signature:
        return SIGNATURE_MISSING
    if signature.get("kid") != public_key_id(public_key):
        return SIGNATURE_OTHER_KEY
    try:
        verify_document(document, public_key, what="evidence")
    except IntegrityError:
        return SIGNATURE_INVALID
    return SIGNATURE_VALID


def describe_signature_problem(status: str, document: dict[str, Any], what: str,
                               public_key: Ed25519PublicKey) -> str:
    """Return the message for a signature status other than valid; ``what`` names the object."""
    if status == SIGNATURE_OTHER_KEY:
        return _("{what} is signed by key {kid}, not by the configured key {expected}").format(
            what=what, kid=signing_key_id(document), expected=public_key_id(public_key)
        )
    if status == SIGNATURE_MISSING:
        return _("{what} has no signature").format(what=what)
    return _("{what} fails signature verification: it was changed after signing").format(what=what)


def signing_key_id(document: dict[str, Any]) -> str | None:
    """Return the key id named in the document's signature, or None."""
    signature = document.get("signature")
    if isinstance(signature, dict) and isinstance(signature.get("kid"), str):
        return signature["kid"]
    return None
