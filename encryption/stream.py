"""The streaming encryption format of backup objects (``RSGENC01``).

A stream is the magic ``RSGENC01``, a 4-byte big-endian header length, a
canonical JSON header and a sequence of AES-256-GCM chunks. The header names
the backup id, the object name and one wrapped DEK per recipient. Every chunk
is authenticated together with a SHA-256 digest of the header, and its nonce
contains the chunk index and a final flag, so the decryptor detects changed
headers, reordered, dropped, repeated or spliced chunks, truncation and
trailing data. ``docs/encryption-format.md`` specifies the layout byte by byte.

:class:`Encryptor` and :class:`Decryptor` work incrementally on bytes that
the caller supplies. :func:`encrypt_stream` and :func:`decrypt_stream` drive
them over file-like objects. Memory use does not grow with the stream: the
objects buffer at most one or two chunks beyond the piece passed to
``update``, and the helpers peak at about four chunks (measured with
tracemalloc in ``tests/test_encryption.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from encryption.keys import key_id
from resguardo.errors import IntegrityError, KeyError_
from resguardo.i18n import _

__all__ = [
    "MAGIC",
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_CHUNKS",
    "MAX_HEADER_SIZE",
    "RecipientStanza",
    "StreamHeader",
    "Encryptor",
    "Decryptor",
    "EncryptResult",
    "DecryptResult",
    "encrypt_stream",
    "decrypt_stream",
    "header_size",
    "read_header",
]

MAGIC = b"RSGENC01"
FORMAT_VERSION = 1
AEAD_NAME = "AES-256-GCM"
KDF_NAME = "HKDF-SHA256"

# Magic plus the 4-byte big-endian header length.
PREFIX_SIZE = len(MAGIC) + 4
MAX_HEADER_SIZE = 1 << 20
KEY_SIZE = 32
SALT_SIZE = 32
TAG_SIZE = 16
WRAPPED_DEK_SIZE = KEY_SIZE + TAG_SIZE

DEFAULT_CHUNK_SIZE = 1 << 20
# The decryptor buffers up to two stored chunks, so the header's chunk size
# must be bounded. 16 MiB is far below GCM's limit of 2**36 - 31 bytes per
# message (RFC 5116, section 5.1).
MAX_CHUNK_SIZE = 16 << 20
# The nonce counter has 11 bytes, but the format caps a stream at 2**32
# chunks so that the data under one payload key stays bounded: 4 PiB at the
# default chunk size.
MAX_CHUNKS = 1 << 32
MAX_LABEL_LENGTH = 1024

WRAP_INFO = b"resguardo/v1/wrap"
PAYLOAD_INFO = b"resguardo/v1/payload"
# Each wrap key comes from a fresh ephemeral X25519 key and encrypts exactly
# one DEK, so a constant nonce never repeats under one key.
WRAP_NONCE = bytes(12)

_FINAL = b"\x01"
_NOT_FINAL = b"\x00"
_HEADER_FIELDS = frozenset({"v", "aead", "kdf", "chunk", "salt", "backup_id", "object", "recipients"})
_STANZA_FIELDS = frozenset({"kid", "epk", "wdek"})
_KEY_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
# C0 and C1 control characters, rejected in backup ids and object names so
# that headers print safely in `resguardo inspect` and in logs.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# --- header ----------------------------------------------------------------


@dataclass(frozen=True)
class RecipientStanza:
    """One recipient's entry in the header: its key id, the ephemeral public key and the wrapped DEK."""

    key_id: str
    ephemeral_public_key: bytes
    wrapped_dek: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "kid": self.key_id,
            "epk": _b64encode(self.ephemeral_public_key),
            "wdek": _b64encode(self.wrapped_dek),
        }


@dataclass(frozen=True)
class StreamHeader:
    """The parsed header of a stream.

    A header read without a key, or before the first chunk has authenticated,
    is unauthenticated: anyone could have written it.
    """

    version: int
    aead: str
    kdf: str
    chunk_size: int
    salt: bytes
    backup_id: str
    object_name: str
    recipients: tuple[RecipientStanza, ...]
    size: int
    """Bytes from the start of the stream to the first chunk: magic, length and JSON."""
    digest: bytes
    """SHA-256 of magic, length and JSON, the associated data of every chunk."""

    @property
    def key_ids(self) -> list[str]:
        return [stanza.key_id for stanza in self.recipients]

    def as_dict(self) -> dict[str, object]:
        """Return the fields that ``resguardo inspect`` shows, none of them secret."""
        return {
            "version": self.version,
            "aead": self.aead,
            "kdf": self.kdf,
            "chunk_size": self.chunk_size,
            "backup_id": self.backup_id,
            "object_name": self.object_name,
            "key_ids": self.key_ids,
            "header_size": self.size,
        }


def header_size(prefix: bytes) -> int:
    """Return the total header size in bytes from the first 12 bytes of a stream.

    Raises IntegrityError when ``prefix`` is shorter than 12 bytes, does not
    start with the magic or declares a header longer than 1 MiB.
    """
    if len(prefix) < PREFIX_SIZE:
        raise _truncated_header_error(len(prefix), PREFIX_SIZE)
    _check_magic(bytes(prefix[: len(MAGIC)]))
    length = int.from_bytes(prefix[len(MAGIC) : PREFIX_SIZE], "big")
    if length > MAX_HEADER_SIZE:
        raise IntegrityError(
            _("invalid stream header: its length {length} bytes exceeds the maximum of {maximum} bytes").format(
                length=length, maximum=MAX_HEADER_SIZE
            ),
            _fetch_again_hint(),
        )
    return PREFIX_SIZE + length


def read_header(first_bytes: bytes) -> dict[str, object]:
    """Parse the header at the start of a stream without any key.

    ``first_bytes`` must contain at least the whole header. Read 12 bytes and
    call :func:`header_size` to learn how many that is. Returns
    :meth:`StreamHeader.as_dict`. The result is unauthenticated.
    """
    return parse_header(first_bytes).as_dict()


def parse_header(data: bytes) -> StreamHeader:
    """Parse and validate the header at the start of ``data``.

    Raises IntegrityError when the header is invalid or ``data`` ends before it does.
    """
    total = header_size(data)
    if len(data) < total:
        raise _truncated_header_error(len(data), total)
    raw = bytes(data[:total])
    document = _decode_header_json(raw[PREFIX_SIZE:])
    return _header_from_document(document, raw)


def _check_magic(magic: bytes) -> None:
    if magic == MAGIC:
        return
    if magic.startswith(MAGIC[:6]):
        raise IntegrityError(
            _("unsupported encrypted stream format {found}; this version of Resguardo reads {expected}").format(
                found=magic.decode("ascii", "replace"), expected=MAGIC.decode("ascii")
            ),
            _("Decrypt the object with a newer version of Resguardo."),
        )
    raise IntegrityError(
        _("not a Resguardo encrypted stream: the first 8 bytes are {found} in hex, expected {expected}").format(
            found=magic.hex(), expected=MAGIC.decode("ascii")
        ),
        _(
            "Check that the object is an encrypted backup object, such as dump.enc, and that it was "
            "downloaded completely."
        ),
    )


def _decode_header_json(body: bytes) -> dict[str, object]:
    def reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        result: dict[str, object] = {}
        for name, value in pairs:
            if name in result:
                raise _invalid_header_error(_("field {field} appears twice").format(field=name))
            result[name] = value
        return result

    def reject_constant(name: str) -> None:
        raise _invalid_header_error(_("it contains the non-standard JSON value {value}").format(value=name))

    try:
        text = body.decode("utf-8")
        document = json.loads(text, object_pairs_hook=reject_duplicates, parse_constant=reject_constant)
    except UnicodeDecodeError:
        raise _invalid_header_error(_("it is not valid UTF-8")) from None
    except json.JSONDecodeError as error:
        raise _invalid_header_error(
            _("it is not valid JSON ({error})").format(error=f"{error.msg}, char {error.pos}")
        ) from None
    if not isinstance(document, dict):
        raise _invalid_header_error(_("it is not a JSON object"))
    return document


def _header_from_document(document: dict[str, object], raw: bytes) -> StreamHeader:
    # The version is checked first, so that a header from a newer format is
    # reported as such rather than as a list of unknown fields.
    version = document.get("v")
    if type(version) is not int or version != FORMAT_VERSION:
        raise IntegrityError(
            _(
                "unsupported encrypted stream version {version}; this version of Resguardo reads version {supported}"
            ).format(version=json.dumps(version), supported=FORMAT_VERSION),
            _("Decrypt the object with a newer version of Resguardo."),
        )
    aead = document.get("aead")
    if aead != AEAD_NAME:
        raise IntegrityError(
            _("unsupported AEAD {aead} in stream header; only {supported} is supported").format(
                aead=json.dumps(aead), supported=AEAD_NAME
            ),
            _fetch_again_hint(),
        )
    kdf = document.get("kdf")
    if kdf != KDF_NAME:
        raise IntegrityError(
            _("unsupported KDF {kdf} in stream header; only {supported} is supported").format(
                kdf=json.dumps(kdf), supported=KDF_NAME
            ),
            _fetch_again_hint(),
        )
    unknown = sorted(set(document) - _HEADER_FIELDS)
    if unknown:
        raise _invalid_header_error(_("unknown field {field}").format(field=unknown[0]))

    chunk_size = document.get("chunk")
    if type(chunk_size) is not int or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise _invalid_field_error("chunk")
    salt = _decode_b64_field(document.get("salt"), SALT_SIZE, "salt")
    backup_id = document.get("backup_id")
    if not _is_valid_label(backup_id):
        raise _invalid_field_error("backup_id")
    object_name = document.get("object")
    if not _is_valid_label(object_name):
        raise _invalid_field_error("object")
    recipients = document.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise _invalid_field_error("recipients")
    stanzas = tuple(_stanza_from_document(entry) for entry in recipients)

    return StreamHeader(
        version=version,
        aead=aead,
        kdf=kdf,
        chunk_size=chunk_size,
        salt=salt,
        backup_id=backup_id,
        object_name=object_name,
        recipients=stanzas,
        size=len(raw),
        digest=hashlib.sha256(raw).digest(),
    )


def _stanza_from_document(entry: object) -> RecipientStanza:
    if not isinstance(entry, dict) or set(entry) != _STANZA_FIELDS:
        raise _invalid_field_error("recipients")
    kid = entry["kid"]
    if not isinstance(kid, str) or not _KEY_ID_PATTERN.fullmatch(kid):
        raise _invalid_field_error("recipients[].kid")
    return RecipientStanza(
        key_id=kid,
        ephemeral_public_key=_decode_b64_field(entry["epk"], KEY_SIZE, "recipients[].epk"),
        wrapped_dek=_decode_b64_field(entry["wdek"], WRAPPED_DEK_SIZE, "recipients[].wdek"),
    )


def _decode_b64_field(value: object, size: int, field: str) -> bytes:
    if not isinstance(value, str):
        raise _invalid_field_error(field)
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid_field_error(field) from None
    if len(decoded) != size:
        raise _invalid_field_error(field)
    return decoded


def _is_valid_label(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_LABEL_LENGTH
        and not _CONTROL_CHARACTERS.search(value)
        and not _has_surrogates(value)
    )


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _encode_header(
    *, chunk_size: int, salt: bytes, backup_id: str, object_name: str, stanzas: list[RecipientStanza]
) -> bytes:
    """Return magic, length and canonical JSON: sorted keys, no spaces, UTF-8."""
    document = {
        "v": FORMAT_VERSION,
        "aead": AEAD_NAME,
        "kdf": KDF_NAME,
        "chunk": chunk_size,
        "salt": _b64encode(salt),
        "backup_id": backup_id,
        "object": object_name,
        "recipients": [stanza.to_json() for stanza in stanzas],
    }
    body = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_HEADER_SIZE:
        raise ValueError(f"stream header of {len(body)} bytes exceeds {MAX_HEADER_SIZE} bytes; use fewer recipients")
    return MAGIC + len(body).to_bytes(4, "big") + body


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- key derivation --------------------------------------------------------


def _hkdf_sha256(input_key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(input_key)


def _raw_public(public_key: x25519.X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _wrap_dek(dek: bytes, recipient: x25519.X25519PublicKey) -> RecipientStanza:
    ephemeral = x25519.X25519PrivateKey.generate()
    ephemeral_raw = _raw_public(ephemeral.public_key())
    recipient_raw = _raw_public(recipient)
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:
        # cryptography raises ValueError when the shared secret is all zeros,
        # which happens only for a low-order public key.
        raise KeyError_(
            _("recipient key {key_id} is not a usable X25519 public key").format(key_id=key_id(recipient)),
            _(
                "Replace the recipient key in the configuration with the .pub file of a key pair made by "
                "generate_keypair."
            ),
        ) from None
    wrap_key = _hkdf_sha256(shared, ephemeral_raw + recipient_raw, WRAP_INFO)
    wrapped = AESGCM(wrap_key).encrypt(WRAP_NONCE, dek, WRAP_INFO)
    return RecipientStanza(key_id=key_id(recipient), ephemeral_public_key=ephemeral_raw, wrapped_dek=wrapped)


def _unwrap_dek(stanza: RecipientStanza, identity: x25519.X25519PrivateKey, object_name: str) -> bytes:
    """Return the DEK from ``stanza``, or raise IntegrityError when the stanza does not authenticate."""
    identity_raw = _raw_public(identity.public_key())
    try:
        shared = identity.exchange(x25519.X25519PublicKey.from_public_bytes(stanza.ephemeral_public_key))
        wrap_key = _hkdf_sha256(shared, stanza.ephemeral_public_key + identity_raw, WRAP_INFO)
        return AESGCM(wrap_key).decrypt(WRAP_NONCE, stanza.wrapped_dek, WRAP_INFO)
    except (ValueError, InvalidTag):
        raise IntegrityError(
            _("the wrapped DEK for key id {key_id} in the header of {object} failed authentication").format(
                key_id=stanza.key_id, object=object_name
            ),
            _fetch_again_hint(),
        ) from None


def _chunk_nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (_FINAL if final else _NOT_FINAL)


# --- encryption ------------------------------------------------------------


class Encryptor:
    """Incremental encryption of one object to one or more X25519 recipients.

    Call :meth:`update` with the plaintext in pieces of any size and write
    each returned value in order, then call :meth:`finalize` exactly once and
    write its result. The output of the first call starts with the header.
    """

    def __init__(
        self,
        recipients: list[x25519.X25519PublicKey],
        *,
        backup_id: str,
        object_name: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ):
        if type(chunk_size) is not int or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be an int from 1 to {MAX_CHUNK_SIZE}, got {chunk_size!r}")
        for name, value in (("backup_id", backup_id), ("object_name", object_name)):
            if not _is_valid_label(value):
                raise ValueError(
                    f"{name} must be a non-empty string of at most {MAX_LABEL_LENGTH} characters "
                    f"without control characters, got {value!r}"
                )
        _check_recipients(recipients)

        dek = os.urandom(KEY_SIZE)
        salt = os.urandom(SALT_SIZE)
        stanzas = [_wrap_dek(dek, recipient) for recipient in recipients]
        self._header_bytes = _encode_header(
            chunk_size=chunk_size, salt=salt, backup_id=backup_id, object_name=object_name, stanzas=stanzas
        )
        self._associated_data = hashlib.sha256(self._header_bytes).digest()
        self._aead = AESGCM(_hkdf_sha256(dek, salt, PAYLOAD_INFO))

        self.chunk_size = chunk_size
        self.backup_id = backup_id
        self.object_name = object_name
        self.key_ids = [stanza.key_id for stanza in stanzas]
        self._pending = bytearray()
        self._header_written = False
        self._finalized = False
        self._index = 0
        self._plaintext_size = 0
        self._ciphertext_size = 0

    @property
    def plaintext_size(self) -> int:
        """Plaintext bytes passed to :meth:`update` so far, which is the object's size after :meth:`finalize`."""
        return self._plaintext_size

    @property
    def ciphertext_size(self) -> int:
        """Bytes returned by :meth:`update` and :meth:`finalize` so far, header included."""
        return self._ciphertext_size

    def update(self, data: bytes) -> bytes:
        """Encrypt ``data`` and return the ciphertext that is ready, possibly b"".

        Up to one chunk of plaintext stays buffered, because a full chunk is
        encrypted only when more data follows it and so is known not to be last.
        """
        if self._finalized:
            raise RuntimeError("Encryptor.update() called after finalize()")
        view = memoryview(data).cast("B")
        self._plaintext_size += len(view)
        output: list[bytes] = []
        if not self._header_written:
            output.append(self._header_bytes)
            self._header_written = True

        chunk_size = self.chunk_size
        pending = self._pending
        if len(pending) + len(view) <= chunk_size:
            pending += view
            return self._join(output)

        # Complete the pending chunk. It is not the last one, because at least
        # one byte of ``view`` follows it.
        offset = chunk_size - len(pending)
        if pending:
            pending += view[:offset]
            output.append(self._seal(pending, final=False))
            pending.clear()
        else:
            output.append(self._seal(view[:offset], final=False))
        # Encrypt whole chunks straight from the caller's buffer while more
        # data follows them.
        while len(view) - offset > chunk_size:
            output.append(self._seal(view[offset : offset + chunk_size], final=False))
            offset += chunk_size
        pending += view[offset:]
        return self._join(output)

    def finalize(self) -> bytes:
        """Encrypt the buffered plaintext as the final chunk and return the remaining ciphertext.

        The final chunk is empty only when the whole plaintext is empty.
        """
        if self._finalized:
            raise RuntimeError("Encryptor.finalize() called twice")
        self._finalized = True
        output: list[bytes] = []
        if not self._header_written:
            output.append(self._header_bytes)
            self._header_written = True
        output.append(self._seal(self._pending, final=True))
        self._pending = bytearray()
        return self._join(output)

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, final: bool) -> bytes:
        if self._index >= MAX_CHUNKS:
            raise ValueError(f"stream exceeds {MAX_CHUNKS} chunks; encrypt it with a larger chunk_size")
        ciphertext = self._aead.encrypt(_chunk_nonce(self._index, final), plaintext, self._associated_data)
        self._index += 1
        return ciphertext

    def _join(self, parts: list[bytes]) -> bytes:
        result = parts[0] if len(parts) == 1 else b"".join(parts)
        self._ciphertext_size += len(result)
        return result


def _check_recipients(recipients: list[x25519.X25519PublicKey]) -> None:
    if not recipients:
        raise KeyError_(
            _("no encryption recipient was given"),
            _("Configure at least one X25519 public key to encrypt backups to."),
        )
    seen: set[str] = set()
    for recipient in recipients:
        if not isinstance(recipient, x25519.X25519PublicKey):
            raise TypeError(f"recipients must be X25519PublicKey objects, got {type(recipient).__name__}")
        kid = key_id(recipient)
        if kid in seen:
            raise KeyError_(
                _("recipient key {key_id} is listed more than once").format(key_id=kid),
                _("Remove the duplicate entry from the list of encryption recipients in the configuration."),
            )
        seen.add(kid)


# --- decryption ------------------------------------------------------------


class Decryptor:
    """Incremental decryption and authentication of one stream.

    :meth:`update` returns only plaintext that has been authenticated, and it
    holds back the last chunk received until either more data arrives or
    :meth:`finalize` is called, because only then is it known whether that
    chunk must carry the final flag. After any error the decryptor is
    unusable.
    """

    def __init__(
        self,
        identities: list[x25519.X25519PrivateKey],
        *,
        expected_backup_id: str | None = None,
        expected_object_name: str | None = None,
    ):
        if not identities:
            raise KeyError_(
                _("no decryption identity was given"),
                _("Configure at least one X25519 private key to decrypt backups with."),
            )
        for identity in identities:
            if not isinstance(identity, x25519.X25519PrivateKey):
                raise TypeError(f"identities must be X25519PrivateKey objects, got {type(identity).__name__}")
        self._identities = list(identities)
        self._expected_backup_id = expected_backup_id
        self._expected_object_name = expected_object_name
        self._buffer = bytearray()
        self._header: StreamHeader | None = None
        self._aead: AESGCM | None = None
        self._stored_chunk_size = 0
        self._index = 0
        self._consumed = 0
        self._plaintext_size = 0
        self._finalized = False
        self._failed = False

    @property
    def header(self) -> StreamHeader | None:
        """The parsed header, or None until the whole header has arrived.

        It is set even when the header is then rejected for an unexpected
        backup id or object name, or because no identity matches. The header
        is authenticated only once the first chunk has decrypted.
        """
        return self._header

    @property
    def plaintext_size(self) -> int:
        """Authenticated plaintext bytes returned so far."""
        return self._plaintext_size

    @property
    def read_size(self) -> int:
        """A good size for the next read from the source: one stored chunk once the header is known."""
        return self._stored_chunk_size or 64 * 1024

    def update(self, data: bytes) -> bytes:
        """Add ciphertext and return the plaintext of every chunk that has authenticated, possibly b"".

        Raises KeyError_ when no identity matches a recipient and
        IntegrityError when the header or a chunk is invalid.
        """
        self._check_usable()
        if self._aead is None:
            self._buffer += data
            if not self._try_start():
                return b""
            data = b""
        try:
            return self._open_complete_chunks(memoryview(data).cast("B"))
        except BaseException:
            self._failed = True
            raise

    def finalize(self) -> bytes:
        """Authenticate the last chunk, which must carry the final flag, and return its plaintext.

        Raises IntegrityError when the stream is empty, ends inside the
        header, ends without a final chunk, or has data after the final chunk.
        """
        self._check_usable()
        self._finalized = True
        if self._aead is None:
            self._failed = True
            if not self._buffer:
                raise IntegrityError(_("the encrypted stream is empty"), _fetch_again_hint())
            needed = header_size(self._buffer) if len(self._buffer) >= PREFIX_SIZE else PREFIX_SIZE
            raise _truncated_header_error(len(self._buffer), needed)
        try:
            plaintext = self._open_last_chunk()
        except BaseException:
            self._failed = True
            raise
        self._buffer = bytearray()
        return plaintext

    def _check_usable(self) -> None:
        if self._failed:
            raise RuntimeError("Decryptor used after it raised an error")
        if self._finalized:
            raise RuntimeError("Decryptor used after finalize()")

    def _try_start(self) -> bool:
        """Parse the header and derive the payload key once the whole header has arrived."""
        buffer = self._buffer
        try:
            if len(buffer) < PREFIX_SIZE:
                return False
            if len(buffer) < header_size(buffer):
                return False
            header = parse_header(buffer)
            # Set before the checks, so that a caller can show the header
            # after a key error or an unexpected backup id.
            self._header = header
            self._check_expected(header)
            dek = self._unwrap(header)
        except BaseException:
            self._failed = True
            raise
        self._aead = AESGCM(_hkdf_sha256(dek, header.salt, PAYLOAD_INFO))
        self._stored_chunk_size = header.chunk_size + TAG_SIZE
        self._consumed = header.size
        del buffer[: header.size]
        return True

    def _check_expected(self, header: StreamHeader) -> None:
        expected_backup = self._expected_backup_id
        if expected_backup is not None and header.backup_id != expected_backup:
            raise IntegrityError(
                _("the encrypted object {object} belongs to backup {found}, expected backup {expected}").format(
                    object=header.object_name, found=header.backup_id, expected=expected_backup
                ),
                _(
                    "The object was stored under the wrong name or replaced. Fetch it from another region, "
                    "and check that the requested backup id is right."
                ),
            )
        expected_object = self._expected_object_name
        if expected_object is not None and header.object_name != expected_object:
            raise IntegrityError(
                _("the encrypted object is {found}, expected {expected}").format(
                    found=header.object_name, expected=expected_object
                ),
                _(
                    "The object was stored under the wrong name or replaced. Fetch it from another region, "
                    "and check that the requested object name is right."
                ),
            )

    def _unwrap(self, header: StreamHeader) -> bytes:
        """Return the DEK from the first stanza that one of the identities can unwrap."""
        identity_ids = []
        first_failure: IntegrityError | None = None
        for identity in self._identities:
            identity_id = key_id(identity.public_key())
            identity_ids.append(identity_id)
            for stanza in header.recipients:
                if stanza.key_id != identity_id:
                    continue
                try:
                    return _unwrap_dek(stanza, identity, header.object_name)
                except IntegrityError as failure:
                    first_failure = first_failure or failure
        if first_failure is not None:
            raise first_failure
        raise KeyError_(
            _(
                "none of the given keys can decrypt {object}: it is encrypted to key ids {recipients}, "
                "and the keys given have key ids {identities}"
            ).format(
                object=header.object_name,
                recipients=", ".join(header.key_ids),
                identities=", ".join(identity_ids),
            ),
            _(
                "Load the private key of one of the listed key ids. After a key rotation the configured "
                "decryption keys may not include the key that encrypted older backups."
            ),
        )

    def _open_complete_chunks(self, data: memoryview) -> bytes:
        """Decrypt every chunk, buffered or in ``data``, that more bytes follow, and buffer the rest.

        A chunk that more bytes follow is not the last one, so it must
        authenticate without the final flag. Whole chunks in ``data`` are
        decrypted in place, without a copy into the buffer.
        """
        buffer = self._buffer
        stored = self._stored_chunk_size
        output: list[bytes] = []

        # The buffer contains several chunks only right after the header was
        # parsed from a large first piece.
        offset = 0
        with memoryview(buffer) as view:
            while len(buffer) - offset > stored or (len(buffer) - offset == stored and data):
                output.append(self._open_middle_chunk(view[offset : offset + stored]))
                offset += stored
        del buffer[:offset]

        # Complete a partial chunk in the buffer from the start of ``data``.
        if buffer and data:
            taken = min(stored - len(buffer), len(data))
            buffer += data[:taken]
            data = data[taken:]
            if len(buffer) == stored and data:
                output.append(self._open_middle_chunk(buffer))
                buffer.clear()

        if data:
            start = 0
            while len(data) - start > stored:
                output.append(self._open_middle_chunk(data[start : start + stored]))
                start += stored
            buffer += data[start:]

        plaintext = output[0] if len(output) == 1 else b"".join(output)
        self._plaintext_size += len(plaintext)
        return plaintext

    def _open_middle_chunk(self, stored_chunk: bytearray | memoryview) -> bytes:
        try:
            plaintext = self._open(stored_chunk, final=False)
        except InvalidTag:
            # A full-size final chunk followed by extra bytes fails here. Name
            # that case, because the data before the extra bytes is intact.
            if self._authenticates(stored_chunk, final=True):
                raise IntegrityError(
                    _("the encrypted stream {object} has data after its final chunk, at byte offset {offset}").format(
                        object=self._object_name(), offset=self._consumed + len(stored_chunk)
                    ),
                    _fetch_again_hint(),
                ) from None
            raise self._chunk_failed_error(len(stored_chunk)) from None
        self._advance(len(stored_chunk))
        return plaintext

    def _open_last_chunk(self) -> bytes:
        rest = self._buffer
        if not rest:
            raise IntegrityError(
                _(
                    "the encrypted stream {object} is truncated: it ends after the header, before the first chunk"
                ).format(object=self._object_name()),
                _fetch_again_hint(),
            )
        if len(rest) < TAG_SIZE:
            raise IntegrityError(
                _(
                    "the encrypted stream {object} is truncated: chunk {index} at byte offset {offset} has "
                    "{count} bytes, fewer than its 16-byte tag"
                ).format(object=self._object_name(), index=self._index, offset=self._consumed, count=len(rest)),
                _fetch_again_hint(),
            )
        try:
            plaintext = self._open(rest, final=True)
        except InvalidTag:
            if self._authenticates(rest, final=False):
                raise IntegrityError(
                    _(
                        "the encrypted stream {object} is truncated: chunk {index} is intact but is not the "
                        "final chunk, so the data after byte offset {offset} is missing"
                    ).format(object=self._object_name(), index=self._index, offset=self._consumed + len(rest)),
                    _fetch_again_hint(),
                ) from None
            raise self._chunk_failed_error(len(rest)) from None
        self._advance(len(rest))
        self._plaintext_size += len(plaintext)
        return plaintext

    def _open(self, stored_chunk: bytes | bytearray | memoryview, *, final: bool) -> bytes:
        if self._index >= MAX_CHUNKS:
            raise IntegrityError(
                _("the encrypted stream {object} has more than {maximum} chunks").format(
                    object=self._object_name(), maximum=MAX_CHUNKS
                ),
                _fetch_again_hint(),
            )
        assert self._aead is not None and self._header is not None
        return self._aead.decrypt(_chunk_nonce(self._index, final), stored_chunk, self._header.digest)

    def _authenticates(self, stored_chunk: bytes | bytearray | memoryview, *, final: bool) -> bool:
        try:
            self._open(stored_chunk, final=final)
        except InvalidTag:
            return False
        return True

    def _advance(self, stored_length: int) -> None:
        self._index += 1
        self._consumed += stored_length

    def _object_name(self) -> str:
        return self._header.object_name if self._header is not None else "?"

    def _chunk_failed_error(self, stored_length: int) -> IntegrityError:
        return IntegrityError(
            _("chunk {index} of {object} ({count} bytes at byte offset {offset}) failed authentication").format(
                index=self._index, object=self._object_name(), count=stored_length, offset=self._consumed
            ),
            _(
                "The object was corrupted, truncated, reordered, assembled from parts of other objects, "
                "or its header was changed. Do not use its data. Fetch the object again from another region."
            ),
        )


# --- file-like helpers -----------------------------------------------------


class EncryptResult(NamedTuple):
    """Sizes of one encrypted stream."""

    plaintext_size: int
    ciphertext_size: int


class DecryptResult(NamedTuple):
    """The header and sizes of one decrypted stream."""

    header: StreamHeader
    plaintext_size: int
    ciphertext_size: int


def encrypt_stream(
    reader: BinaryIO,
    writer: BinaryIO,
    recipients: list[x25519.X25519PublicKey],
    *,
    backup_id: str,
    object_name: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EncryptResult:
    """Encrypt everything ``reader.read()`` returns until EOF and write the stream to ``writer``."""
    encryptor = Encryptor(recipients, backup_id=backup_id, object_name=object_name, chunk_size=chunk_size)
    while True:
        data = reader.read(chunk_size)
        if not data:
            break
        ciphertext = encryptor.update(data)
        if ciphertext:
            writer.write(ciphertext)
    writer.write(encryptor.finalize())
    return EncryptResult(encryptor.plaintext_size, encryptor.ciphertext_size)


def decrypt_stream(
    reader: BinaryIO,
    writer: BinaryIO,
    identities: list[x25519.X25519PrivateKey],
    *,
    expected_backup_id: str | None = None,
    expected_object_name: str | None = None,
) -> DecryptResult:
    """Decrypt the stream from ``reader`` and write the plaintext to ``writer``.

    Plaintext is written chunk by chunk as it authenticates, so when this
    raises, ``writer`` may already hold an authentic but incomplete prefix of
    the plaintext. The caller must discard it.
    """
    decryptor = Decryptor(
        identities, expected_backup_id=expected_backup_id, expected_object_name=expected_object_name
    )
    ciphertext_size = 0
    while True:
        data = reader.read(decryptor.read_size)
        if not data:
            break
        ciphertext_size += len(data)
        plaintext = decryptor.update(data)
        if plaintext:
            writer.write(plaintext)
    plaintext = decryptor.finalize()
    if plaintext:
        writer.write(plaintext)
    assert decryptor.header is not None
    return DecryptResult(decryptor.header, decryptor.plaintext_size, ciphertext_size)


def _fetch_again_hint() -> str:
    return _(
        "The object is damaged, incomplete or was changed after encryption. Fetch it again, "
        "if possible from another region, and do not use the data from this copy."
    )


def _invalid_header_error(reason: str) -> IntegrityError:
    return IntegrityError(_("invalid stream header: {reason}").format(reason=reason), _fetch_again_hint())


def _invalid_field_error(field: str) -> IntegrityError:
    return _invalid_header_error(_("field {field} is missing or has an invalid value").format(field=field))


def _truncated_header_error(received: int, needed: int) -> IntegrityError:
    return IntegrityError(
        _("the encrypted stream is truncated inside its header: {received} bytes received, {needed} needed").format(
            received=received, needed=needed
        ),
        _fetch_again_hint(),
    )
