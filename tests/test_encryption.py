"""Tests of encryption.keys and encryption.stream.

Besides round trips and every kind of damage to a stream, these tests include a
second, independent encoder and decoder written from docs/encryption-format.md
with only the cryptography primitives. They check that the documentation and
the implementation describe the same bytes.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import os
import re
import stat
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from encryption.keys import (
    generate_keypair,
    key_id,
    load_ed25519_private,
    load_ed25519_public,
    load_x25519_private,
    load_x25519_public,
)
from encryption.stream import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_HEADER_SIZE,
    Decryptor,
    Encryptor,
    decrypt_stream,
    encrypt_stream,
    header_size,
    read_header,
)
from resguardo.errors import IntegrityError, KeyError_, ResguardoError
from resguardo.i18n import load_catalog

REPO = Path(__file__).resolve().parents[1]
SMALL_CHUNK = 64
TAG = 16


@pytest.fixture(autouse=True)
def english_messages(monkeypatch):
    """Run with English messages so that assertions can match msgids. One test switches to Spanish."""
    monkeypatch.setenv("RESGUARDO_LANG", "en")


@pytest.fixture(scope="module")
def alice() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.generate()


@pytest.fixture(scope="module")
def bob() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.generate()


@pytest.fixture(scope="module")
def mallory() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.generate()


def encrypt(
    data: bytes,
    identities: list[x25519.X25519PrivateKey],
    *,
    chunk_size: int = SMALL_CHUNK,
    backup_id: str = "20261204T201500Z-3f9a",
    object_name: str = "clientes/logical/20261204T201500Z-3f9a/dump.enc",
    piece_size: int | None = None,
) -> bytes:
    encryptor = Encryptor(
        [identity.public_key() for identity in identities],
        backup_id=backup_id,
        object_name=object_name,
        chunk_size=chunk_size,
    )
    piece_size = piece_size or max(1, len(data))
    output = [encryptor.update(data[start : start + piece_size]) for start in range(0, len(data), piece_size)]
    output.append(encryptor.finalize())
    assert encryptor.plaintext_size == len(data)
    stream = b"".join(output)
    assert encryptor.ciphertext_size == len(stream)
    return stream


def decrypt(stream: bytes, identities: list[x25519.X25519PrivateKey], *, piece_size: int | None = None, **expected):
    decryptor = Decryptor(identities, **expected)
    piece_size = piece_size or max(1, len(stream))
    output = [decryptor.update(stream[start : start + piece_size]) for start in range(0, len(stream), piece_size)]
    output.append(decryptor.finalize())
    return b"".join(output)


def decrypt_collecting(stream: bytes, identities, piece_size: int = 1, **expected) -> tuple[bytes, Exception | None]:
    """Feed ``stream`` in pieces and return the plaintext released before the first error, and that error."""
    decryptor = Decryptor(identities, **expected)
    released = bytearray()
    try:
        for start in range(0, len(stream), piece_size):
            released += decryptor.update(stream[start : start + piece_size])
        released += decryptor.finalize()
    except ResguardoError as error:
        return bytes(released), error
    return bytes(released), None


def chunk_offsets(stream: bytes, chunk_size: int = SMALL_CHUNK) -> list[tuple[int, int]]:
    """Return (start, end) of each stored chunk of ``stream``."""
    start = header_size(stream[:12])
    stored = chunk_size + TAG
    offsets = []
    while start < len(stream):
        offsets.append((start, min(start + stored, len(stream))))
        start += stored
    return offsets


def expected_stream_size(stream: bytes, plaintext_size: int, chunk_size: int) -> int:
    chunks = max(1, -(-plaintext_size // chunk_size))
    return header_size(stream[:12]) + plaintext_size + chunks * TAG


# --- an independent implementation of docs/encryption-format.md -------------


def reference_hkdf(input_key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(input_key)


def raw(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def reference_encrypt(
    plaintext_chunks: list[bytes],
    recipients: list[x25519.X25519PublicKey],
    *,
    chunk_size: int = SMALL_CHUNK,
    backup_id: str = "b1",
    object_name: str = "o1",
    header_changes: dict | None = None,
    raw_body: bytes | None = None,
) -> bytes:
    """Encrypt pre-split chunks as the format document specifies, with the final flag on the last chunk."""
    dek = os.urandom(32)
    salt = os.urandom(32)

    stanzas = []
    for recipient in recipients:
        ephemeral = x25519.X25519PrivateKey.generate()
        epk = raw(ephemeral.public_key())
        wrap_key = reference_hkdf(ephemeral.exchange(recipient), epk + raw(recipient), b"resguardo/v1/wrap")
        wdek = AESGCM(wrap_key).encrypt(bytes(12), dek, b"resguardo/v1/wrap")
        kid = hashlib.sha256(raw(recipient)).hexdigest()[:16]
        stanzas.append({"kid": kid, "epk": base64.b64encode(epk).decode(), "wdek": base64.b64encode(wdek).decode()})

    document = {
        "v": 1,
        "aead": "AES-256-GCM",
        "kdf": "HKDF-SHA256",
        "chunk": chunk_size,
        "salt": base64.b64encode(salt).decode(),
        "backup_id": backup_id,
        "object": object_name,
        "recipients": stanzas,
    }
    document.update(header_changes or {})
    body = raw_body
    if body is None:
        body = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    header = b"RSGENC01" + len(body).to_bytes(4, "big") + body

    associated_data = hashlib.sha256(header).digest()
    aead = AESGCM(reference_hkdf(dek, salt, b"resguardo/v1/payload"))
    out = [header]
    for index, chunk in enumerate(plaintext_chunks):
        final = index == len(plaintext_chunks) - 1
        nonce = index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")
        out.append(aead.encrypt(nonce, chunk, associated_data))
    return b"".join(out)


def reference_decrypt(stream: bytes, identity: x25519.X25519PrivateKey) -> tuple[dict, bytes]:
    """Decrypt a whole stream as the format document specifies and return the header and the plaintext."""
    assert stream[:8] == b"RSGENC01"
    length = int.from_bytes(stream[8:12], "big")
    header = stream[: 12 + length]
    document = json.loads(header[12:].decode("utf-8"))

    identity_raw = raw(identity.public_key())
    kid = hashlib.sha256(identity_raw).hexdigest()[:16]
    stanza = next(entry for entry in document["recipients"] if entry["kid"] == kid)
    epk = base64.b64decode(stanza["epk"])
    shared = identity.exchange(x25519.X25519PublicKey.from_public_bytes(epk))
    wrap_key = reference_hkdf(shared, epk + identity_raw, b"resguardo/v1/wrap")
    dek = AESGCM(wrap_key).decrypt(bytes(12), base64.b64decode(stanza["wdek"]), b"resguardo/v1/wrap")

    aead = AESGCM(reference_hkdf(dek, base64.b64decode(document["salt"]), b"resguardo/v1/payload"))
    associated_data = hashlib.sha256(header).digest()
    stored = document["chunk"] + 16
    body = stream[len(header) :]
    pieces = [body[start : start + stored] for start in range(0, len(body), stored)] or [b""]
    plaintext = []
    for index, piece in enumerate(pieces):
        final = index == len(pieces) - 1
        nonce = index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")
        plaintext.append(aead.decrypt(nonce, piece, associated_data))
    return document, b"".join(plaintext)


# --- round trips -----------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, SMALL_CHUNK - 1, SMALL_CHUNK, SMALL_CHUNK + 1, 2 * SMALL_CHUNK, 3 * SMALL_CHUNK + 5],
)
def test_round_trip_small_chunks(alice, size):
    data = os.urandom(size)
    stream = encrypt(data, [alice])

    assert decrypt(stream, [alice]) == data
    assert len(stream) == expected_stream_size(stream, size, SMALL_CHUNK)


@pytest.mark.parametrize("size", [DEFAULT_CHUNK_SIZE - 1, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE + 1])
def test_round_trip_default_chunk_boundaries(alice, size):
    data = os.urandom(size)
    stream = encrypt(data, [alice], chunk_size=DEFAULT_CHUNK_SIZE)

    assert decrypt(stream, [alice]) == data
    assert len(stream) == expected_stream_size(stream, size, DEFAULT_CHUNK_SIZE)


@pytest.mark.parametrize("encrypt_piece, decrypt_piece", [(7919, 4099), (1, 65537), (3 << 20, 1 << 20), (1 << 20, 7)])
def test_round_trip_megabytes_odd_pieces(alice, encrypt_piece, decrypt_piece):
    data = os.urandom(5 * 1024 * 1024 + 123)
    if encrypt_piece == 1:
        data = data[:300_000]
    if decrypt_piece == 7:
        data = data[:200_000]
    stream = encrypt(data, [alice], chunk_size=DEFAULT_CHUNK_SIZE, piece_size=encrypt_piece)

    assert decrypt(stream, [alice], piece_size=decrypt_piece) == data


def test_round_trip_one_byte_pieces_small_chunks(alice):
    data = os.urandom(5 * SMALL_CHUNK + 3)
    stream = encrypt(data, [alice], piece_size=1)

    assert decrypt(stream, [alice], piece_size=1) == data


def test_encryptor_output_size_deterministic(alice):
    data = os.urandom(1000)
    first = encrypt(data, [alice])
    second = encrypt(data, [alice])

    assert len(first) == len(second)
    assert first != second


def test_empty_update_calls_are_harmless(alice):
    encryptor = Encryptor([alice.public_key()], backup_id="b", object_name="o", chunk_size=SMALL_CHUNK)
    parts = [encryptor.update(b""), encryptor.update(b"abc"), encryptor.update(b""), encryptor.finalize()]
    stream = b"".join(parts)

    assert parts[0].startswith(b"RSGENC01")
    assert decrypt(stream, [alice]) == b"abc"


def test_encryptor_accepts_bytearray_and_memoryview(alice):
    encryptor = Encryptor([alice.public_key()], backup_id="b", object_name="o", chunk_size=SMALL_CHUNK)
    stream = encryptor.update(bytearray(b"x" * 100)) + encryptor.update(memoryview(b"y" * 100)) + encryptor.finalize()

    assert decrypt(stream, [alice]) == b"x" * 100 + b"y" * 100


def test_encryptor_buffers_at_most_one_chunk(alice):
    encryptor = Encryptor([alice.public_key()], backup_id="b", object_name="o", chunk_size=SMALL_CHUNK)
    header = encryptor.update(b"")
    header_length = len(header)

    assert encryptor.update(b"a" * SMALL_CHUNK) == b""
    released = encryptor.update(b"b")
    assert len(released) == SMALL_CHUNK + TAG
    released = encryptor.update(b"c" * (3 * SMALL_CHUNK))
    assert len(released) == 3 * (SMALL_CHUNK + TAG)
    final = encryptor.finalize()
    assert len(final) == 1 + TAG
    assert encryptor.ciphertext_size == header_length + 4 * (SMALL_CHUNK + TAG) + 1 + TAG


def test_decryptor_holds_back_last_chunk(alice):
    data = os.urandom(2 * SMALL_CHUNK)
    stream = encrypt(data, [alice])
    (first_start, first_end), (second_start, second_end) = chunk_offsets(stream)
    decryptor = Decryptor([alice])

    assert decryptor.update(stream[:first_end]) == b""
    assert decryptor.update(stream[first_end : first_end + 1]) == data[:SMALL_CHUNK]
    assert decryptor.update(stream[first_end + 1 :]) == b""
    assert decryptor.finalize() == data[SMALL_CHUNK:]
    assert decryptor.plaintext_size == len(data)


# --- recipients and identities ---------------------------------------------


def test_each_recipient_can_decrypt(alice, bob):
    data = os.urandom(500)
    stream = encrypt(data, [alice, bob])

    assert decrypt(stream, [alice]) == data
    assert decrypt(stream, [bob]) == data
    assert decrypt(stream, [alice, bob]) == data


def test_header_lists_recipient_key_ids(alice, bob):
    stream = encrypt(b"data", [alice, bob])
    decryptor = Decryptor([bob])
    decryptor.update(stream)

    assert decryptor.header is not None
    assert decryptor.header.key_ids == [key_id(alice.public_key()), key_id(bob.public_key())]
    assert decryptor.finalize() == b"data"


def test_wrong_identity_lists_key_ids(alice, bob, mallory):
    stream = encrypt(b"secret rows", [alice, bob], object_name="nomina/dump.enc")

    with pytest.raises(KeyError_) as raised:
        decrypt(stream, [mallory])

    message = raised.value.message
    assert key_id(alice.public_key()) in message
    assert key_id(bob.public_key()) in message
    assert key_id(mallory.public_key()) in message
    assert "nomina/dump.enc" in message
    assert raised.value.hint


def test_header_available_after_key_error(alice, mallory):
    stream = encrypt(b"secret rows", [alice], object_name="nomina/dump.enc")
    decryptor = Decryptor([mallory])

    with pytest.raises(KeyError_):
        decryptor.update(stream)

    assert decryptor.header is not None
    assert decryptor.header.object_name == "nomina/dump.enc"


def test_second_identity_matches(alice, mallory):
    data = os.urandom(100)
    stream = encrypt(data, [alice])

    assert decrypt(stream, [mallory, alice]) == data


def test_no_recipients_raises_key_error():
    with pytest.raises(KeyError_):
        Encryptor([], backup_id="b", object_name="o")


def test_duplicate_recipient_raises_key_error(alice):
    with pytest.raises(KeyError_) as raised:
        Encryptor([alice.public_key(), alice.public_key()], backup_id="b", object_name="o")

    assert key_id(alice.public_key()) in raised.value.message


def test_low_order_recipient_key_rejected():
    zero_point = x25519.X25519PublicKey.from_public_bytes(bytes(32))

    with pytest.raises(KeyError_):
        Encryptor([zero_point], backup_id="b", object_name="o")


def test_no_identities_raises_key_error():
    with pytest.raises(KeyError_):
        Decryptor([])


def test_wrong_object_types_rejected(alice):
    with pytest.raises(TypeError):
        Encryptor([alice], backup_id="b", object_name="o")
    with pytest.raises(TypeError):
        Decryptor([alice.public_key()])


# --- truncation --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3 * SMALL_CHUNK, 3 * SMALL_CHUNK + 17])
def test_truncation_at_every_offset_detected(alice, size):
    data = os.urandom(size)
    stream = encrypt(data, [alice])

    for cut in range(len(stream)):
        released, error = decrypt_collecting(stream[:cut], [alice], piece_size=max(1, cut))
        assert isinstance(error, IntegrityError), f"cut at {cut} of {len(stream)} was not detected"
        assert data.startswith(released), f"cut at {cut} released plaintext that is not a prefix"
        assert len(released) % SMALL_CHUNK == 0


def test_dropped_final_chunk_is_truncation(alice):
    for size in (3 * SMALL_CHUNK, 3 * SMALL_CHUNK + 17):
        data = os.urandom(size)
        stream = encrypt(data, [alice])
        offsets = chunk_offsets(stream)
        last_start, _ = offsets[-1]

        released, error = decrypt_collecting(stream[:last_start], [alice], piece_size=len(stream))

        assert isinstance(error, IntegrityError)
        assert "truncated" in error.message
        assert "not the final chunk" in error.message
        # The decryptor holds back the last chunk it received, so every chunk
        # before it is released and that one is not.
        assert released == data[: (len(offsets) - 2) * SMALL_CHUNK]


def test_stream_ending_after_header_detected(alice):
    stream = encrypt(b"", [alice])
    header_end = header_size(stream[:12])

    with pytest.raises(IntegrityError, match="before the first chunk"):
        decrypt(stream[:header_end], [alice])


def test_empty_and_partial_header_streams_detected(alice):
    stream = encrypt(b"abc", [alice])

    with pytest.raises(IntegrityError, match="empty"):
        decrypt(b"", [alice])
    with pytest.raises(IntegrityError, match="inside its header"):
        decrypt(stream[:5], [alice])
    with pytest.raises(IntegrityError, match="inside its header"):
        decrypt(stream[:40], [alice])


# --- reordering, splicing and tampering -----------------------------------------


def test_reordered_chunks_detected(alice):
    data = os.urandom(4 * SMALL_CHUNK + 10)
    stream = encrypt(data, [alice])
    offsets = chunk_offsets(stream)
    chunks = [stream[start:end] for start, end in offsets]
    header = stream[: offsets[0][0]]

    swapped = header + chunks[1] + chunks[0] + b"".join(chunks[2:])
    released, error = decrypt_collecting(swapped, [alice], piece_size=len(swapped))

    assert isinstance(error, IntegrityError)
    assert "chunk 0" in error.message
    assert released == b""


def test_duplicated_or_dropped_chunk_detected(alice):
    data = os.urandom(4 * SMALL_CHUNK + 10)
    stream = encrypt(data, [alice])
    offsets = chunk_offsets(stream)
    chunks = [stream[start:end] for start, end in offsets]
    header = stream[: offsets[0][0]]

    duplicated = header + chunks[0] + chunks[1] + chunks[1] + b"".join(chunks[2:])
    dropped = header + chunks[0] + b"".join(chunks[2:])
    for variant in (duplicated, dropped):
        released, error = decrypt_collecting(variant, [alice], piece_size=len(variant))
        assert isinstance(error, IntegrityError)
        assert "chunk 2" in error.message or "chunk 1" in error.message
        assert data.startswith(released)


def test_swapped_final_chunk_detected(alice):
    data = os.urandom(3 * SMALL_CHUNK)
    stream = encrypt(data, [alice])
    offsets = chunk_offsets(stream)
    chunks = [stream[start:end] for start, end in offsets]
    header = stream[: offsets[0][0]]

    swapped = header + chunks[0] + chunks[2] + chunks[1]
    _, error = decrypt_collecting(swapped, [alice], piece_size=len(swapped))

    assert isinstance(error, IntegrityError)


def test_flipped_bit_in_every_header_byte_detected(alice):
    stream = encrypt(os.urandom(100), [alice])
    header_end = header_size(stream[:12])

    for position in range(header_end):
        damaged = bytearray(stream)
        damaged[position] ^= 0x01
        released, error = decrypt_collecting(bytes(damaged), [alice], piece_size=len(stream))
        # A flipped bit in the key id yields a header for an unknown key, so
        # KeyError_. Every other flip is an integrity failure.
        assert isinstance(error, (IntegrityError, KeyError_)), f"flip at header byte {position} not detected"
        assert released == b""


@pytest.mark.parametrize("where", ["first ciphertext byte", "middle ciphertext byte", "tag", "final chunk tag"])
def test_flipped_bit_in_body_detected(alice, where):
    data = os.urandom(3 * SMALL_CHUNK + 10)
    stream = encrypt(data, [alice])
    offsets = chunk_offsets(stream)
    position = {
        "first ciphertext byte": offsets[0][0],
        "middle ciphertext byte": offsets[1][0] + SMALL_CHUNK // 2,
        "tag": offsets[1][1] - 1,
        "final chunk tag": len(stream) - TAG,
    }[where]
    damaged = bytearray(stream)
    damaged[position] ^= 0x80

    released, error = decrypt_collecting(bytes(damaged), [alice], piece_size=len(stream))

    assert isinstance(error, IntegrityError)
    assert "failed authentication" in error.message
    assert data.startswith(released)


def test_chunk_spliced_from_other_object_detected(alice, bob):
    data_a = os.urandom(3 * SMALL_CHUNK)
    data_b = os.urandom(3 * SMALL_CHUNK)
    # The two streams share recipients, backup id and object name, so only
    # their DEKs and salts differ.
    stream_a = encrypt(data_a, [alice, bob], backup_id="b", object_name="o")
    stream_b = encrypt(data_b, [alice, bob], backup_id="b", object_name="o")
    offsets_a = chunk_offsets(stream_a)
    offsets_b = chunk_offsets(stream_b)
    start_a, end_a = offsets_a[1]
    start_b, end_b = offsets_b[1]

    spliced = stream_a[:start_a] + stream_b[start_b:end_b] + stream_a[end_a:]
    released, error = decrypt_collecting(spliced, [alice], piece_size=7)

    assert isinstance(error, IntegrityError)
    assert "chunk 1" in error.message
    assert released == data_a[:SMALL_CHUNK]


def test_header_from_other_object_detected(alice):
    stream_a = encrypt(os.urandom(100), [alice], backup_id="b", object_name="o")
    stream_b = encrypt(os.urandom(100), [alice], backup_id="b", object_name="o")
    header_end_a = header_size(stream_a[:12])
    header_end_b = header_size(stream_b[:12])

    spliced = stream_b[:header_end_b] + stream_a[header_end_a:]
    _, error = decrypt_collecting(spliced, [alice], piece_size=len(spliced))

    assert isinstance(error, IntegrityError)
    assert "chunk 0" in error.message


def rewrite_header(stream: bytes, change) -> bytes:
    """Return ``stream`` with its header JSON replaced by ``change(document)``, re-encoded canonically."""
    end = header_size(stream[:12])
    document = json.loads(stream[12:end])
    change(document)
    body = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return b"RSGENC01" + len(body).to_bytes(4, "big") + body + stream[end:]


@pytest.mark.parametrize(
    "field, value",
    [("backup_id", "20261205T000000Z-0000"), ("object", "otra/dump.enc"), ("chunk", SMALL_CHUNK + 1)],
)
def test_header_field_change_detected(alice, field, value):
    stream = encrypt(os.urandom(3 * SMALL_CHUNK), [alice])
    tampered = rewrite_header(stream, lambda document: document.__setitem__(field, value))

    released, error = decrypt_collecting(tampered, [alice], piece_size=len(tampered))

    assert isinstance(error, IntegrityError)
    assert "chunk 0" in error.message
    assert released == b""


def test_header_change_beats_expected_values(alice):
    stream = encrypt(os.urandom(100), [alice], backup_id="real", object_name="o")
    tampered = rewrite_header(stream, lambda document: document.__setitem__("backup_id", "fake"))

    with pytest.raises(IntegrityError, match="chunk 0"):
        decrypt(tampered, [alice], expected_backup_id="fake", expected_object_name="o")


def test_removed_recipient_stanza_detected(alice, bob):
    stream = encrypt(os.urandom(100), [alice, bob])
    tampered = rewrite_header(stream, lambda document: document["recipients"].pop(1))

    with pytest.raises(IntegrityError, match="chunk 0"):
        decrypt(tampered, [alice])


def test_swapped_wrapped_deks_detected(alice, bob):
    stream = encrypt(os.urandom(100), [alice, bob])

    def swap(document):
        first, second = document["recipients"]
        first["wdek"], second["wdek"] = second["wdek"], first["wdek"]

    tampered = rewrite_header(stream, swap)

    with pytest.raises(IntegrityError, match="wrapped DEK"):
        decrypt(tampered, [alice])


def test_expected_backup_id_mismatch(alice):
    stream = encrypt(b"data", [alice], backup_id="20261204T201500Z-3f9a")

    with pytest.raises(IntegrityError) as raised:
        decrypt(stream, [alice], expected_backup_id="20261205T201500Z-0000")

    assert "20261204T201500Z-3f9a" in raised.value.message
    assert "20261205T201500Z-0000" in raised.value.message


def test_expected_object_name_mismatch(alice):
    stream = encrypt(b"data", [alice], object_name="clientes/dump.enc")

    with pytest.raises(IntegrityError) as raised:
        decrypt(stream, [alice], expected_object_name="cuentas/dump.enc")

    assert "clientes/dump.enc" in raised.value.message
    assert "cuentas/dump.enc" in raised.value.message


def test_expected_values_match(alice):
    stream = encrypt(b"data", [alice], backup_id="b7", object_name="o7")

    assert decrypt(stream, [alice], expected_backup_id="b7", expected_object_name="o7") == b"data"


@pytest.mark.parametrize("size", [0, 10, 3 * SMALL_CHUNK])
@pytest.mark.parametrize("garbage_size", [1, TAG, SMALL_CHUNK + TAG, 3 * SMALL_CHUNK])
def test_trailing_garbage_detected(alice, size, garbage_size):
    data = os.urandom(size)
    stream = encrypt(data, [alice]) + os.urandom(garbage_size)

    released, error = decrypt_collecting(stream, [alice], piece_size=len(stream))

    assert isinstance(error, IntegrityError)
    assert data.startswith(released)


def test_trailing_data_after_full_chunk(alice):
    stream = encrypt(os.urandom(2 * SMALL_CHUNK), [alice]) + b"extra bytes"

    with pytest.raises(IntegrityError, match="after its final chunk"):
        decrypt(stream, [alice])


def test_appended_copy_of_final_chunk_detected(alice):
    stream = encrypt(os.urandom(2 * SMALL_CHUNK), [alice])
    start, end = chunk_offsets(stream)[-1]

    with pytest.raises(IntegrityError):
        decrypt(stream + stream[start:end], [alice])


def test_decryptor_unusable_after_error(alice):
    stream = bytearray(encrypt(os.urandom(200), [alice]))
    stream[-1] ^= 1
    decryptor = Decryptor([alice])
    decryptor.update(bytes(stream))

    with pytest.raises(IntegrityError):
        decryptor.finalize()
    with pytest.raises(RuntimeError):
        decryptor.update(b"more")


# --- header parsing without a key -----------------------------------------------


def test_read_header_without_key(alice, bob):
    stream = encrypt(b"data", [alice, bob], chunk_size=4096, backup_id="b9", object_name="o9")

    header = read_header(stream)

    assert header["version"] == 1
    assert header["aead"] == "AES-256-GCM"
    assert header["kdf"] == "HKDF-SHA256"
    assert header["chunk_size"] == 4096
    assert header["backup_id"] == "b9"
    assert header["object_name"] == "o9"
    assert header["key_ids"] == [key_id(alice.public_key()), key_id(bob.public_key())]
    assert header["header_size"] == header_size(stream[:12])
    assert "salt" not in header


def test_read_header_needs_whole_header(alice):
    stream = encrypt(b"data", [alice])
    needed = header_size(stream[:12])

    with pytest.raises(IntegrityError, match=f"{needed} needed"):
        read_header(stream[: needed - 1])
    with pytest.raises(IntegrityError):
        header_size(stream[:11])


def test_header_is_canonical_json(alice):
    stream = encrypt(b"data", [alice], backup_id="b", object_name="clientes/ñandú.enc")
    end = header_size(stream[:12])
    body = stream[12:end]
    document = json.loads(body)

    assert body == json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert set(document) == {"v", "aead", "kdf", "chunk", "salt", "backup_id", "object", "recipients"}
    assert len(base64.b64decode(document["salt"])) == 32
    stanza = document["recipients"][0]
    assert set(stanza) == {"kid", "epk", "wdek"}
    assert len(base64.b64decode(stanza["epk"])) == 32
    assert len(base64.b64decode(stanza["wdek"])) == 48


def header_with(alice, **changes) -> bytes:
    return reference_encrypt([b"data"], [alice.public_key()], header_changes=changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"v": 2}, "unsupported encrypted stream version 2"),
        ({"v": "1"}, "unsupported encrypted stream version"),
        ({"v": True}, "unsupported encrypted stream version"),
        ({"aead": "ChaCha20-Poly1305"}, "unsupported AEAD"),
        ({"kdf": "HKDF-SHA512"}, "unsupported KDF"),
        ({"extra": 1}, "unknown field extra"),
        ({"chunk": 0}, "field chunk"),
        ({"chunk": MAX_CHUNK_SIZE + 1}, "field chunk"),
        ({"chunk": 64.0}, "field chunk"),
        ({"salt": "AAAA"}, "field salt"),
        ({"salt": "not base64!"}, "field salt"),
        ({"backup_id": ""}, "field backup_id"),
        ({"backup_id": "a\nb"}, "field backup_id"),
        ({"object": 5}, "field object"),
        ({"recipients": []}, "field recipients"),
        ({"recipients": [{"kid": "00", "epk": "", "wdek": ""}]}, "field recipients[].kid"),
    ],
)
def test_invalid_header_rejected(alice, changes, message):
    stream = header_with(alice, **changes)

    with pytest.raises(IntegrityError, match=re.escape(message)):
        read_header(stream)
    with pytest.raises(IntegrityError, match=re.escape(message)):
        decrypt(stream, [alice])


def test_header_missing_field_rejected(alice):
    stream = reference_encrypt([b"x"], [alice.public_key()])
    tampered = rewrite_header(stream, lambda document: document.pop("object"))

    with pytest.raises(IntegrityError, match="field object"):
        read_header(tampered)


def test_duplicate_header_key_rejected(alice):
    body = b'{"aead":"AES-256-GCM","backup_id":"a","backup_id":"b","chunk":64,"kdf":"HKDF-SHA256","v":1}'
    stream = reference_encrypt([b"x"], [alice.public_key()], raw_body=body)

    with pytest.raises(IntegrityError, match="appears twice"):
        read_header(stream)


@pytest.mark.parametrize("body", [b"\xff\xfe", b"{not json", b"[1,2]", b'{"v":NaN}'])
def test_malformed_header_json_rejected(alice, body):
    stream = reference_encrypt([b"x"], [alice.public_key()], raw_body=body)

    with pytest.raises(IntegrityError, match="invalid stream header|unsupported encrypted stream version"):
        read_header(stream)


def test_oversized_header_length_rejected():
    stream = b"RSGENC01" + (MAX_HEADER_SIZE + 1).to_bytes(4, "big") + b"{}"

    with pytest.raises(IntegrityError, match="exceeds the maximum"):
        header_size(stream)


def test_wrong_magic_rejected(alice):
    stream = encrypt(b"data", [alice])

    with pytest.raises(IntegrityError, match="not a Resguardo encrypted stream"):
        read_header(b"PGDMP\x01\x0e\x00" + stream[8:])
    with pytest.raises(IntegrityError, match="unsupported encrypted stream format RSGENC02"):
        read_header(b"RSGENC02" + stream[8:])


# --- the format document, checked by an independent implementation ---------------


def test_reference_decoder_reads_encryptor_output(alice, bob):
    data = os.urandom(5 * SMALL_CHUNK + 9)
    stream = encrypt(data, [alice, bob], backup_id="b1", object_name="o1")

    document, plaintext = reference_decrypt(stream, bob)

    assert plaintext == data
    assert document["backup_id"] == "b1"
    assert document["object"] == "o1"


def test_reference_decoder_reads_empty_stream(alice):
    stream = encrypt(b"", [alice])

    assert reference_decrypt(stream, alice)[1] == b""


def test_decryptor_reads_reference_encoder_output(alice):
    chunks = [os.urandom(SMALL_CHUNK), os.urandom(SMALL_CHUNK), os.urandom(10)]
    stream = reference_encrypt(chunks, [alice.public_key()])

    assert decrypt(stream, [alice], piece_size=7) == b"".join(chunks)


def test_empty_final_chunk_after_full_chunks_accepted(alice):
    # The format allows an empty final chunk after full chunks, although this
    # encryptor makes the last full chunk final instead.
    chunks = [os.urandom(SMALL_CHUNK), os.urandom(SMALL_CHUNK), b""]
    stream = reference_encrypt(chunks, [alice.public_key()])

    assert decrypt(stream, [alice]) == b"".join(chunks)


def test_short_chunk_before_final_rejected(alice):
    chunks = [os.urandom(SMALL_CHUNK - 1), os.urandom(10)]
    stream = reference_encrypt(chunks, [alice.public_key()])

    with pytest.raises(IntegrityError):
        decrypt(stream, [alice])


# --- file-like helpers and memory ------------------------------------------------


def test_encrypt_and_decrypt_stream_helpers(alice, tmp_path):
    data = os.urandom(3 * DEFAULT_CHUNK_SIZE + 77)
    encrypted = io.BytesIO()

    encrypt_result = encrypt_stream(io.BytesIO(data), encrypted, [alice.public_key()], backup_id="b", object_name="o")
    decrypted = io.BytesIO()
    decrypt_result = decrypt_stream(
        io.BytesIO(encrypted.getvalue()), decrypted, [alice], expected_backup_id="b", expected_object_name="o"
    )

    assert decrypted.getvalue() == data
    assert encrypt_result.plaintext_size == len(data)
    assert encrypt_result.ciphertext_size == len(encrypted.getvalue())
    assert decrypt_result.plaintext_size == len(data)
    assert decrypt_result.ciphertext_size == len(encrypted.getvalue())
    assert decrypt_result.header.backup_id == "b"


class RandomReader:
    """A file-like source of ``size`` random bytes that never keeps them all in memory."""

    def __init__(self, size: int):
        self.remaining = size
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = os.urandom(size)
        self.remaining -= size
        self.digest.update(data)
        return data


class HashingWriter:
    def __init__(self):
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def test_stream_helpers_use_bounded_memory(alice, tmp_path):
    size = 24 * DEFAULT_CHUNK_SIZE + 5
    path = tmp_path / "dump.enc"
    reader = RandomReader(size)

    tracemalloc.start()
    try:
        with path.open("wb") as handle:
            encrypt_stream(reader, handle, [alice.public_key()], backup_id="b", object_name="o")
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        writer = HashingWriter()
        with path.open("rb") as handle:
            decrypt_stream(handle, writer, [alice])
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert writer.digest.digest() == reader.digest.digest()
    assert writer.size == size
    # Both peaks measured about 4 chunks: the piece just read, the buffered
    # chunk and the output of one chunk. A whole-stream copy would be 24.
    assert encrypt_peak < 6 * DEFAULT_CHUNK_SIZE
    assert decrypt_peak < 6 * DEFAULT_CHUNK_SIZE


# --- API misuse ----------------------------------------------------------------


def test_encryptor_misuse(alice):
    encryptor = Encryptor([alice.public_key()], backup_id="b", object_name="o")
    encryptor.finalize()

    with pytest.raises(RuntimeError):
        encryptor.update(b"x")
    with pytest.raises(RuntimeError):
        encryptor.finalize()


@pytest.mark.parametrize("chunk_size", [0, -1, MAX_CHUNK_SIZE + 1, 1.5, True])
def test_encryptor_rejects_invalid_chunk_size(alice, chunk_size):
    with pytest.raises(ValueError):
        Encryptor([alice.public_key()], backup_id="b", object_name="o", chunk_size=chunk_size)


@pytest.mark.parametrize("label", ["", "a\x00b", "line\nbreak", "x" * 1025])
def test_encryptor_rejects_invalid_labels(alice, label):
    with pytest.raises(ValueError):
        Encryptor([alice.public_key()], backup_id=label, object_name="o")
    with pytest.raises(ValueError):
        Encryptor([alice.public_key()], backup_id="b", object_name=label)


# --- keys ------------------------------------------------------------------------


def test_generate_and_load_x25519(tmp_path):
    private_path, public_path = generate_keypair(tmp_path, "backup-2026", "x25519")

    private_key = load_x25519_private(private_path)
    public_key = load_x25519_public(public_path)

    assert private_path == tmp_path / "backup-2026.key"
    assert public_path == tmp_path / "backup-2026.pub"
    assert key_id(private_key.public_key()) == key_id(public_key)
    stream = encrypt(b"round trip", [private_key])
    assert decrypt(stream, [load_x25519_private(str(private_path))]) == b"round trip"


def test_generate_and_load_ed25519(tmp_path):
    private_path, public_path = generate_keypair(tmp_path, "signing", "ed25519")

    private_key = load_ed25519_private(private_path)
    public_key = load_ed25519_public(public_path)

    signature = private_key.sign(b"manifest")
    public_key.verify(signature, b"manifest")
    assert key_id(public_key) == key_id(private_key.public_key())


def test_key_file_modes(tmp_path):
    private_path, public_path = generate_keypair(tmp_path / "keys", "k", "x25519")

    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


def test_key_files_are_standard_pem(tmp_path):
    private_path, public_path = generate_keypair(tmp_path, "k", "x25519")

    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")


def test_generate_leaves_no_temporary_files(tmp_path):
    generate_keypair(tmp_path, "k", "ed25519")

    assert sorted(path.name for path in tmp_path.iterdir()) == ["k.key", "k.pub"]


def test_generate_refuses_to_overwrite(tmp_path):
    private_path, _ = generate_keypair(tmp_path, "k", "x25519")
    original = private_path.read_bytes()

    with pytest.raises(KeyError_, match="already exists"):
        generate_keypair(tmp_path, "k", "x25519")

    assert private_path.read_bytes() == original
    assert sorted(path.name for path in tmp_path.iterdir()) == ["k.key", "k.pub"]


def test_generate_overwrites_when_asked(tmp_path):
    private_path, _ = generate_keypair(tmp_path, "k", "x25519")
    original = private_path.read_bytes()

    generate_keypair(tmp_path, "k", "x25519", overwrite=True)

    assert private_path.read_bytes() != original
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 101])
def test_generate_rejects_invalid_names(tmp_path, name):
    with pytest.raises(KeyError_, match="invalid key name"):
        generate_keypair(tmp_path, name, "x25519")


def test_generate_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError):
        generate_keypair(tmp_path, "k", "rsa")  # type: ignore[arg-type]


def test_load_ed25519_file_as_x25519_fails(tmp_path):
    private_path, public_path = generate_keypair(tmp_path, "signing", "ed25519")

    with pytest.raises(KeyError_) as raised:
        load_x25519_private(private_path)
    assert "Ed25519 private key" in raised.value.message
    assert "X25519 private key" in raised.value.message
    assert str(private_path) in raised.value.message

    with pytest.raises(KeyError_, match="found Ed25519 public key, expected X25519 public key"):
        load_x25519_public(public_path)


def test_load_x25519_file_as_ed25519_fails(tmp_path):
    private_path, public_path = generate_keypair(tmp_path, "enc", "x25519")

    with pytest.raises(KeyError_, match="found X25519 private key, expected Ed25519 private key"):
        load_ed25519_private(private_path)
    with pytest.raises(KeyError_, match="found X25519 public key, expected Ed25519 public key"):
        load_ed25519_public(public_path)


def test_load_public_file_as_private_fails(tmp_path):
    _, public_path = generate_keypair(tmp_path, "enc", "x25519")

    with pytest.raises(KeyError_, match="found X25519 public key, expected X25519 private key"):
        load_x25519_private(public_path)


def test_load_private_file_as_public_fails(tmp_path):
    private_path, _ = generate_keypair(tmp_path, "enc", "x25519")

    with pytest.raises(KeyError_) as raised:
        load_x25519_public(private_path)

    assert "found X25519 private key, expected X25519 public key" in raised.value.message
    assert ".pub" in raised.value.hint


def test_load_missing_key_file(tmp_path):
    missing = tmp_path / "absent.key"

    with pytest.raises(KeyError_) as raised:
        load_x25519_private(missing)

    assert "not found" in raised.value.message
    assert str(missing) in raised.value.message
    assert raised.value.hint


def test_load_directory_as_key_fails(tmp_path):
    with pytest.raises(KeyError_, match="cannot read key file"):
        load_x25519_public(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key at all",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ],
)
def test_load_malformed_pem_fails(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_bytes(content)

    for loader in (load_x25519_private, load_x25519_public, load_ed25519_private, load_ed25519_public):
        with pytest.raises(KeyError_, match="does not contain a valid PEM"):
            loader(path)


def test_load_passphrase_protected_key_fails(tmp_path):
    key = x25519.X25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"correct horse"),
    )
    path = tmp_path / "locked.key"
    path.write_bytes(pem)

    with pytest.raises(KeyError_, match="encrypted with a passphrase"):
        load_x25519_private(path)


def test_load_private_key_from_pem_bytes(tmp_path):
    private_path, _ = generate_keypair(tmp_path, "k", "ed25519")
    pem = private_path.read_bytes()

    key = load_ed25519_private(pem)

    assert isinstance(key, ed25519.Ed25519PrivateKey)
    with pytest.raises(KeyError_) as raised:
        load_x25519_private(pem)
    assert "PEM data given in memory" in raised.value.message


def test_key_error_message_contains_no_key_material(tmp_path):
    private_path, _ = generate_keypair(tmp_path, "signing", "ed25519")
    pem = private_path.read_text()
    base64_body = "".join(pem.splitlines()[1:-1])

    with pytest.raises(KeyError_) as raised:
        load_x25519_private(private_path)

    assert base64_body not in raised.value.render()
    assert base64_body[:20] not in raised.value.render()


def test_readable_private_key_logs_warning(tmp_path, caplog):
    private_path, _ = generate_keypair(tmp_path, "k", "x25519")
    private_path.chmod(0o644)

    with caplog.at_level("WARNING", logger="resguardo.encryption.keys"):
        load_x25519_private(private_path)

    records = [record for record in caplog.records if record.getMessage() == "encryption.private_key_file_mode"]
    assert len(records) == 1
    assert records[0].mode == "0644"


def test_key_id_format():
    key = x25519.X25519PrivateKey.generate().public_key()
    raw_key = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    assert key_id(key) == hashlib.sha256(raw_key).hexdigest()[:16]
    assert re.fullmatch(r"[0-9a-f]{16}", key_id(key))
    with pytest.raises(TypeError):
        key_id(x25519.X25519PrivateKey.generate())  # type: ignore[arg-type]


# --- messages --------------------------------------------------------------------


def encryption_msgids() -> set[str]:
    msgids = set()
    for path in (REPO / "encryption" / "keys.py", REPO / "encryption" / "stream.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_":
                argument = node.args[0]
                assert isinstance(argument, ast.Constant), f"{path.name}:{node.lineno}: _() needs a literal msgid"
                msgids.add(argument.value)
    return msgids


def test_every_message_has_spanish_translation():
    catalog = load_catalog("es")
    msgids = encryption_msgids()

    missing = sorted(msgid for msgid in msgids if msgid not in catalog)

    assert msgids
    assert missing == []


def test_translations_keep_placeholders():
    catalog = load_catalog("es")
    placeholder = re.compile(r"\{[a-z_]*\}")

    for msgid in encryption_msgids():
        assert sorted(placeholder.findall(catalog[msgid])) == sorted(placeholder.findall(msgid)), msgid


def test_messages_in_spanish(alice, mallory, monkeypatch):
    monkeypatch.setenv("RESGUARDO_LANG", "es")
    stream = encrypt(b"data", [alice])

    with pytest.raises(KeyError_) as raised:
        decrypt(stream, [mallory])

    assert raised.value.message.startswith("ninguna de las claves indicadas puede descifrar")
    assert key_id(alice.public_key()) in raised.value.message
    assert raised.value.hint.startswith("Cargue la clave privada")
