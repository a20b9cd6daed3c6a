"""Ed25519 signatures over canonical JSON documents (manifests, evidence records).

A signed document is a JSON object with a ``signature`` member::

    {"...": "...", "signature": {"alg": "Ed25519", "kid": "<key id>", "value": "<base64>"}}

The signature covers the *canonical JSON* of the document without its
``signature`` member: keys sorted, no insignificant white space, UTF-8,
non-ASCII characters kept as they are. Any change to any other member, including
key order-independent edits such as a changed number, breaks the signature.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> key = Ed25519PrivateKey.generate()
>>> doc = sign_document({"a": 1}, key)
>>> verify_document(doc, key.public_key())
>>> doc["a"] = 2
>>> verify_document(doc, key.public_key())  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
resguardo.errors.IntegrityError: ...
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from resguardo.errors import IntegrityError
from resguardo.i18n import _


def canonical_json(document: Any) -> bytes:
    """Serialise ``document`` as canonical JSON bytes."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def public_key_id(public_key: Ed25519PublicKey) -> str:
    """Return the first 16 hex digits of SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_document(document: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return a copy of ``document`` with a fresh ``signature`` member."""
    body = {k: v for k, v in document.items() if k != "signature"}
    value = private_key.sign(canonical_json(body))
    body["signature"] = {
        "alg": "Ed25519",
        "kid": public_key_id(private_key.public_key()),
        "value": base64.b64encode(value).decode("ascii"),
    }
    return body


def verify_document(document: dict[str, Any], public_key: Ed25519PublicKey, *, what: str = "document") -> None:
    """Raise IntegrityError unless ``document`` carries a valid signature by ``public_key``."""
    signature = document.get("signature")
    if not isinstance(signature, dict) or signature.get("alg") != "Ed25519" or "value" not in signature:
        raise IntegrityError(
            _("{what} has no Ed25519 signature").format(what=what),
            _("the object was not written by Resguardo or was edited; use a copy from another region"),
        )
    expected_kid = public_key_id(public_key)
    if signature.get("kid") != expected_kid:
        raise IntegrityError(
            _("{what} is signed by key {kid}, not by the configured key {expected}").format(
                what=what, kid=signature.get("kid"), expected=expected_kid
            ),
            _("check signing.public_key in the config; if the key was rotated, verify with the old public key"),
        )
    body = {k: v for k, v in document.items() if k != "signature"}
    try:
        public_key.verify(base64.b64decode(signature["value"], validate=True), canonical_json(body))
    except (InvalidSignature, ValueError):
        raise IntegrityError(
            _("{what} failed signature verification: its content was changed after signing").format(what=what),
            _("treat this copy as tampered: keep it for investigation and use a copy from another region"),
        ) from None
