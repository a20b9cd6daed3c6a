"""Loading the keys a command needs, from the paths in the configuration.

- *recipients*: X25519 public keys; every backup is encrypted to all of them.
  A backup host needs nothing else to write backups.
- *identity*: the X25519 private key of one recipient; restores need it.
  ``RESGUARDO_IDENTITY_FILE`` overrides ``encryption.identity`` so an operator
  can restore with a key brought on removable media.
- *signing key*: the Ed25519 private key that signs manifests and evidence;
  ``RESGUARDO_SIGNING_KEY_FILE`` overrides ``signing.private_key``.
- *verify key*: the matching Ed25519 public key, enough to list backups and
  check evidence.
"""

from __future__ import annotations

import os
from pathlib import Path

from encryption.keys import load_ed25519_private, load_ed25519_public, load_x25519_private, load_x25519_public
from resguardo.config import ResguardoConfig
from resguardo.errors import KeyError_
from resguardo.i18n import _

IDENTITY_ENV = "RESGUARDO_IDENTITY_FILE"
SIGNING_KEY_ENV = "RESGUARDO_SIGNING_KEY_FILE"


def load_recipients(config: ResguardoConfig):
    """Return the X25519 public keys backups are encrypted to."""
    return [load_x25519_public(config.resolve(path)) for path in config.encryption.recipients]


def load_identities(config: ResguardoConfig, explicit: str | os.PathLike[str] | None = None):
    """Return the X25519 private keys available for decryption (usually one)."""
    chosen = explicit or os.environ.get(IDENTITY_ENV) or config.resolve(config.encryption.identity)
    if not chosen:
        raise KeyError_(
            _("no private key is configured for decryption"),
            _("set encryption.identity in the config, pass --identity FILE or set {env}").format(env=IDENTITY_ENV),
        )
    return [load_x25519_private(Path(chosen))]


def load_signing_key(config: ResguardoConfig):
    """Return the Ed25519 private key that signs manifests and evidence."""
    chosen = os.environ.get(SIGNING_KEY_ENV) or config.resolve(config.signing.private_key)
    if not chosen:
        raise KeyError_(
            _("no signing key is configured"),
            _("set signing.private_key in the config or {env}").format(env=SIGNING_KEY_ENV),
        )
    private = load_ed25519_private(Path(chosen))
    from encryption.signing import public_key_id

    expected = load_verify_key(config)
    if public_key_id(private.public_key()) != public_key_id(expected):
        raise KeyError_(
            _("the signing key {path} does not match signing.public_key (key ids {actual} and {expected})").format(
                path=chosen, actual=public_key_id(private.public_key()), expected=public_key_id(expected)),
            _("configure the two halves of one Ed25519 pair; otherwise nothing signed now could be verified"),
        )
    return private


def load_verify_key(config: ResguardoConfig):
    """Return the Ed25519 public key that verifies manifests and evidence."""
    return load_ed25519_public(config.resolve(config.signing.public_key))
