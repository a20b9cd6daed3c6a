"""Object keys of one evidence chain inside its region.

Under the chain prefix (config key ``evidence.prefix``) a chain keeps::

    <prefix>/<sequence:012d>-<record_id>.json   a record
    <prefix>/seq/<sequence:012d>                 the sequence marker of that record
    <prefix>/head.json                           the head checkpoint
    <prefix>/attachments/<name>                  an attachment

The *sequence marker* is written create-only before the record, so two
writers cannot both take one sequence number. It contains the same bytes as the
record, which lets the next append finish a record whose writer stopped
between the two writes. The *head checkpoint* is a signed object naming the
newest record; it is overwritten after each append. An *attachment* is a
larger document that belongs to a record, such as the full Great
Expectations results of a restore test. The record refers to it by key and
SHA-256, so the record's signature also covers the attachment's content.
``gx-results/`` is accepted as a second attachment directory because
``restore.verify`` writes there.

>>> record_key("evidence", 3, "0b6f6f4e-1c1d-4a57-9b0e-4d0c1b0a8f35")
'evidence/000000000003-0b6f6f4e-1c1d-4a57-9b0e-4d0c1b0a8f35.json'
>>> marker_key("evidence", 3)
'evidence/seq/000000000003'
>>> classify_key("evidence", "evidence/seq/000000000003")
('marker', 3, None)
>>> classify_key("", "head.json")
('checkpoint', None, None)
>>> classify_key("evidence", "evidence/attachments/gx-20261204.json")
('attachment', None, None)
"""

from __future__ import annotations

from evidence.record import SEQUENCE_DIGITS, parse_record_object_name, record_object_name

CHECKPOINT_NAME = "head.json"
MARKER_DIRECTORY = "seq"
ATTACHMENT_DIRECTORY = "attachments"
ATTACHMENT_DIRECTORIES = (ATTACHMENT_DIRECTORY, "gx-results")

RECORD = "record"
MARKER = "marker"
CHECKPOINT = "checkpoint"
ATTACHMENT = "attachment"
OTHER = "other"


def normalise_prefix(prefix: str) -> str:
    """Return ``prefix`` without leading or trailing slashes.

    >>> normalise_prefix("/evidence/core/")
    'evidence/core'
    """
    return prefix.strip("/")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def list_prefix(prefix: str) -> str:
    """Return the string to pass to ``Region.list`` for every object of the chain."""
    return f"{prefix}/" if prefix else ""


def record_key(prefix: str, sequence: int, record_id: str) -> str:
    """Return the key of a record."""
    return _join(prefix, record_object_name(sequence, record_id))


def record_list_prefix(prefix: str, sequence: int) -> str:
    """Return the key prefix shared by every record object with ``sequence``."""
    return _join(prefix, f"{sequence:0{SEQUENCE_DIGITS}d}-")


def marker_key(prefix: str, sequence: int) -> str:
    """Return the key of a sequence marker."""
    return _join(prefix, f"{MARKER_DIRECTORY}/{sequence:0{SEQUENCE_DIGITS}d}")


def marker_list_prefix(prefix: str) -> str:
    """Return the key prefix shared by every sequence marker."""
    return _join(prefix, f"{MARKER_DIRECTORY}/")


def checkpoint_key(prefix: str) -> str:
    """Return the key of the head checkpoint."""
    return _join(prefix, CHECKPOINT_NAME)


def attachment_key(prefix: str, name: str) -> str:
    """Return the key of an attachment."""
    return _join(prefix, f"{ATTACHMENT_DIRECTORY}/{name}")


def classify_key(prefix: str, key: str) -> tuple[str, int | None, str | None]:
    """Return ``(role, sequence, record_id)`` of a key listed under the chain prefix.

    ``role`` is one of RECORD, MARKER, CHECKPOINT, ATTACHMENT or OTHER.
    Sequence and record id are None where the role has none.
    """
    name = key[len(list_prefix(prefix)):] if key.startswith(list_prefix(prefix)) else None
    if name is None:
        return OTHER, None, None
    if name == CHECKPOINT_NAME:
        return CHECKPOINT, None, None
    parsed = parse_record_object_name(name)
    if parsed is not None:
        return RECORD, parsed[0], parsed[1]
    directory, _, rest = name.partition("/")
    if directory == MARKER_DIRECTORY and len(rest) == SEQUENCE_DIGITS and rest.isascii() and rest.isdigit():
        return MARKER, int(rest), None
    if directory in ATTACHMENT_DIRECTORIES and rest:
        return ATTACHMENT, None, None
    return OTHER, None, None
