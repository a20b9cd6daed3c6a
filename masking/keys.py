"""The masking key: the secret that makes every transformer one-way.

Terms:

- *masking key*: at least 32 random bytes, stored base64- or hex-encoded in a
  file or an environment variable that the masking config references. It never
  leaves the masking host: it is not written to the masked copy, the evidence,
  the logs or the suppression list.
- *key id*: the first 16 hex digits of HMAC-SHA256(key, "resguardo-masking-key-id").
  Evidence and suppression lists record it so a reader can tell which key was
  used without being able to recover the key.
- *subkey*: HMAC-SHA256(key, purpose), one per transformer purpose, so two
  transformers never share a keyed function.

>>> key = MaskingKey(bytes(32))
>>> key.key_id
'6ae404e77ab47347'
>>> len(key.subkey("cedula"))
32
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from pathlib import Path

from resguardo.errors import KeyError_
from resguardo.i18n import _

MIN_KEY_BYTES = 32
_KEY_ID_LABEL = b"resguardo-masking-key-id"


class MaskingKey:
    """A loaded masking key. ``repr`` shows only the key id."""

    def __init__(self, secret: bytes):
        if len(secret) < MIN_KEY_BYTES:
            raise KeyError_(
                _("the masking key has {length} bytes; at least {minimum} are required").format(
                    length=len(secret), minimum=MIN_KEY_BYTES
                ),
                _("generate a new key with 'resguardo mask keygen PATH'"),
            )
        self._secret = secret
        self.key_id = hmac.digest(secret, _KEY_ID_LABEL, "sha256").hex()[:16]

    def __repr__(self) -> str:
        return f"MaskingKey(key_id={self.key_id!r})"

    def subkey(self, purpose: str) -> bytes:
        """Derive the 32-byte key of one purpose (a transformer name plus options)."""
        return hmac.digest(self._secret, b"resguardo-masking:" + purpose.encode("utf-8"), "sha256")

    def mac(self, purpose: str, value: str) -> bytes:
        """Return HMAC-SHA256 of ``value`` under the subkey of ``purpose``."""
        return hmac.digest(self.subkey(purpose), value.encode("utf-8"), "sha256")


def decode_key_text(text: str, source: str) -> bytes:
    """Decode a key stored as hex or base64 text; ``source`` names it in errors."""
    text = text.strip()
    try:
        if len(text) >= 2 * MIN_KEY_BYTES and all(c in "0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text)
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise KeyError_(
            _("the masking key in {source} is neither hex nor base64").format(source=source),
            _("store the key as one line of base64 or hex, as 'resguardo mask keygen' writes it"),
        ) from None


def load_key(*, file: Path | None = None, env: str | None = None) -> MaskingKey:
    """Load the masking key from a file or an environment variable (exactly one)."""
    if (file is None) == (env is None):
        raise KeyError_(
            _("the masking key must be referenced by exactly one of key.file or key.env"),
            _("set key.file to a key file path or key.env to an environment variable name in masking.yaml"),
        )
    if env is not None:
        text = os.environ.get(env)
        if not text:
            raise KeyError_(
                _("environment variable {name} with the masking key is not set").format(name=env),
                _("export {name} on the masking host, or use key.file").format(name=env),
            )
        return MaskingKey(decode_key_text(text, env))
    assert file is not None
    try:
        text = Path(file).read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyError_(
            _("masking key file {path} not found").format(path=file),
            _("create it with 'resguardo mask keygen {path}' or fix key.file in masking.yaml").format(path=file),
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise KeyError_(
            _("masking key file {path} could not be read: {error}").format(path=file, error=error),
            _("check the file's owner and permissions (0600, owned by the masking user)"),
        ) from None
    return MaskingKey(decode_key_text(text, str(file)))


def generate_key_file(path: Path) -> MaskingKey:
    """Write a new random key (base64, mode 0600) to ``path``; never overwrite."""
    secret = secrets.token_bytes(MIN_KEY_BYTES)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(
            _("key file {path} already exists").format(path=path),
            _("a new key changes every masked value; remove the old file first only if that is intended"),
        ) from None
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(secret).decode("ascii") + "\n")
    return MaskingKey(secret)
