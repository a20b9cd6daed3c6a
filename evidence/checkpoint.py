"""The head checkpoint: a signed object naming the newest record of a chain.

Deleting the newest records of a hash chain leaves a shorter chain that is
still internally consistent. The checkpoint, overwritten after every append,
records the sequence number and record hash of the newest record, so a chain
that ends before the checkpoint's sequence has lost records at its end.

The checkpoint's members are ``format`` (``resguardo-evidence-head``),
``version`` (1), ``sequence``, ``record_id``, ``record_hash``, ``updated_at``
and ``signature``. ``record_hash`` is always the value the next record's
``previous_hash`` must have.

The first append of a chain writes an *empty-chain checkpoint* (sequence
-1, record id ``""``, record hash 64 zeros) before any other object, so a
chain that has objects but no checkpoint has lost its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from encryption.signing import sign_document
from evidence.record import GENESIS_HASH, HASH_PATTERN, parse_json_object, utc_timestamp
from resguardo.i18n import _

CHECKPOINT_FORMAT = "resguardo-evidence-head"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A parsed head checkpoint."""

    sequence: int
    record_id: str
    record_hash: str
    updated_at: str
    document: dict[str, Any]


def build_checkpoint(sequence: int, record_id: str, record_hash: str, signing_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return a signed checkpoint naming the record ``sequence`` (-1: the chain has no records)."""
    document = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "sequence": sequence,
        "record_id": record_id,
        "record_hash": record_hash,
        "updated_at": utc_timestamp(),
    }
    return sign_document(document, signing_key)


def parse_checkpoint(data: bytes) -> Checkpoint:
    """Parse and shape-check a stored checkpoint; the ValueError message describes the defect.

    The signature is not checked here.
    """
    document = parse_json_object(data)
    if document.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(_("format is {found!r}, not {expected!r}").format(
            found=document.get("format"), expected=CHECKPOINT_FORMAT
        ))
    if document.get("version") != CHECKPOINT_VERSION:
        raise ValueError(_("version {found!r} is not supported, only version {supported}").format(
            found=document.get("version"), supported=CHECKPOINT_VERSION
        ))
    sequence = document.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < -1:
        raise ValueError(_("sequence {sequence!r} is not an integer of at least -1").format(sequence=sequence))
    for member in ("record_id", "record_hash", "updated_at"):
        if not isinstance(document.get(member), str):
            raise ValueError(_("member {member!r} is missing or not a string").format(member=member))
    if not HASH_PATTERN.match(document["record_hash"]):
        raise ValueError(_("{member} is not 64 lowercase hex digits").format(member="record_hash"))
    if sequence == -1 and document["record_hash"] != GENESIS_HASH:
        raise ValueError(_("a checkpoint with sequence -1 must have 64 zeros as record_hash"))
    return Checkpoint(
        sequence=sequence,
        record_id=document["record_id"],
        record_hash=document["record_hash"],
        updated_at=document["updated_at"],
        document=document,
    )
