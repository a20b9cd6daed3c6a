"""X25519 encryption keys and Ed25519 signing keys: generate, save and load.

Keys are stored as PEM: private keys as unencrypted PKCS#8
(``-----BEGIN PRIVATE KEY-----``) in files of mode 0600, public keys as
SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``) in files of mode 0644.
The same files are read by ``openssl pkey``. Files are written atomically:
the data goes to a temporary file in the same directory, which is flushed to
disk and then linked or renamed into place, so a crash never leaves a
partial key under the final name.

Loaders accept a path (``str`` or :class:`os.PathLike`) or the PEM text as
``bytes``, for keys that come from a secret store rather than a file. Every
failure raises :class:`resguardo.errors.KeyError_` naming the file and the
problem: missing file, unreadable file, malformed PEM, a passphrase-protected
key, or a key of the wrong type (for example an Ed25519 key given where an
X25519 key is expected).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Literal, Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

from resguardo.errors import KeyError_
from resguardo.i18n import _
from resguardo.log import get_logger

KeySource = Union[str, "os.PathLike[str]", bytes]
KeyKind = Literal["x25519", "ed25519"]
PublicKey = Union[x25519.X25519PublicKey, ed25519.Ed25519PublicKey]
PrivateKey = Union[x25519.X25519PrivateKey, ed25519.Ed25519PrivateKey]

PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644
PRIVATE_PEM_MARKER = "-----BEGIN PRIVATE KEY-----"
PUBLIC_PEM_MARKER = "-----BEGIN PUBLIC KEY-----"

# Key names become file names, so they must not contain path separators or
# start with a dot.
_KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

logger = get_logger("resguardo.encryption.keys")


# --- key ids ---------------------------------------------------------------


def public_key_raw(public_key: PublicKey) -> bytes:
    """Return the raw 32-byte encoding of an X25519 or Ed25519 public key."""
    if not isinstance(public_key, (x25519.X25519PublicKey, ed25519.Ed25519PublicKey)):
        raise TypeError(f"expected an X25519 or Ed25519 public key, got {type(public_key).__name__}")
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: PublicKey) -> str:
    """Return the key id: the first 16 hex digits of SHA-256 over the raw public key.

    The id names a key in stream headers, manifests and messages. It is not
    secret. Two keys share an id with probability about 2**-64 per pair.
    """
    return hashlib.sha256(public_key_raw(public_key)).hexdigest()[:16]


# --- generating and saving -------------------------------------------------


def generate_keypair(
    directory: Path,
    name: str,
    kind: KeyKind,
    *,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Generate a key pair and write ``<name>.key`` (private) and ``<name>.pub`` (public).

    ``kind`` is ``"x25519"`` for encryption or ``"ed25519"`` for signing. The
    directory is created with mode 0700 when missing. Returns the private and
    public key paths.

    Raises KeyError_ when either file exists, unless ``overwrite`` is True,
    because replacing a private key makes every backup encrypted to it
    unreadable.
    """
    if not _KEY_NAME_PATTERN.fullmatch(name):
        raise KeyError_(
            _("invalid key name {name}").format(name=repr(name)),
            _("Use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit."),
        )
    private_key: PrivateKey
    if kind == "x25519":
        private_key = x25519.X25519PrivateKey.generate()
    elif kind == "ed25519":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown key kind {kind!r}; use 'x25519' or 'ed25519'")

    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = directory / f"{name}.key"
    public_path = directory / f"{name}.pub"
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise _key_file_exists_error(path)

    save_private_key(private_key, private_path, overwrite=overwrite)
    try:
        save_public_key(private_key.public_key(), public_path, overwrite=overwrite)
    except BaseException:
        # Without its public half the new private key is useless, and leaving
        # it would make the next attempt fail on an existing file.
        private_path.unlink(missing_ok=True)
        raise
    logger.info(
        "encryption.keypair_generated",
        extra={"key_kind": kind, "key_id": key_id(private_key.public_key()), "path": str(public_path)},
    )
    return private_path, public_path


def save_private_key(private_key: PrivateKey, path: Path, *, overwrite: bool = False) -> None:
    """Write ``private_key`` as unencrypted PKCS#8 PEM to ``path`` with mode 0600, atomically."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(Path(path), pem, PRIVATE_KEY_MODE, overwrite=overwrite)


def save_public_key(public_key: PublicKey, path: Path, *, overwrite: bool = False) -> None:
    """Write ``public_key`` as SubjectPublicKeyInfo PEM to ``path`` with mode 0644, atomically."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_atomically(Path(path), pem, PUBLIC_KEY_MODE, overwrite=overwrite)


def _write_atomically(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    # mkstemp creates the file with mode 0600, so the private key is never
    # readable by others, not even between creation and the chmod below.
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary_path = Path(temporary_name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary_path, path)
        else:
            # link() fails when the target exists, so two concurrent writers
            # cannot replace each other's key.
            try:
                os.link(temporary_path, path)
            except FileExistsError:
                raise _key_file_exists_error(path) from None
            temporary_path.unlink()
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _key_file_exists_error(path: Path) -> KeyError_:
    return KeyError_(
        _("key file already exists: {path}").format(path=path),
        _(
            "Resguardo does not replace existing keys, because backups encrypted to the old key "
            "could no longer be decrypted. Choose another name, or move the old key away first."
        ),
    )


# --- loading ---------------------------------------------------------------


def load_x25519_private(source: KeySource) -> x25519.X25519PrivateKey:
    """Load an X25519 private key (a decryption identity) from a PEM file or PEM bytes."""
    return _load_private(source, x25519.X25519PrivateKey, "X25519")


def load_x25519_public(source: KeySource) -> x25519.X25519PublicKey:
    """Load an X25519 public key (an encryption recipient) from a PEM file or PEM bytes."""
    return _load_public(source, x25519.X25519PublicKey, "X25519")


def load_ed25519_private(source: KeySource) -> ed25519.Ed25519PrivateKey:
    """Load an Ed25519 private key (a signing key) from a PEM file or PEM bytes."""
    return _load_private(source, ed25519.Ed25519PrivateKey, "Ed25519")


def load_ed25519_public(source: KeySource) -> ed25519.Ed25519PublicKey:
    """Load an Ed25519 public key (a signature verification key) from a PEM file or PEM bytes."""
    return _load_public(source, ed25519.Ed25519PublicKey, "Ed25519")


def _load_private(source: KeySource, expected_type: type, algorithm: str):
    data, label = _read_source(source, private=True)
    expected = _private_label(algorithm)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography raises TypeError when the PEM is encrypted and no
        # password was given.
        raise KeyError_(
            _("the private key in {source} is encrypted with a passphrase").format(source=label),
            _(
                "Resguardo reads only unencrypted PKCS#8 PEM keys. Write a decrypted copy to a file "
                "with mode 0600, for example with `openssl pkey -in KEY -out KEY.plain`."
            ),
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        found_public = _try_load_public(data)
        if found_public is not None:
            raise _wrong_type_error(label, _describe_key(found_public), expected) from None
        raise _malformed_error(label, expected, PRIVATE_PEM_MARKER) from None
    if not isinstance(key, expected_type):
        raise _wrong_type_error(label, _describe_key(key), expected)
    return key


def _load_public(source: KeySource, expected_type: type, algorithm: str):
    data, label = _read_source(source, private=False)
    expected = _public_label(algorithm)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        found_private = _try_load_private(data)
        if found_private is not None:
            raise KeyError_(
                _("wrong key type in {source}: found {found}, expected {expected}").format(
                    source=label, found=_describe_key(found_private), expected=expected
                ),
                _(
                    "Give the public key file (.pub). Hosts that only encrypt or verify must not "
                    "hold the private key."
                ),
            ) from None
        raise _malformed_error(label, expected, PUBLIC_PEM_MARKER) from None
    if not isinstance(key, expected_type):
        raise _wrong_type_error(label, _describe_key(key), expected)
    return key


def _read_source(source: KeySource, *, private: bool) -> tuple[bytes, str]:
    """Return the PEM bytes of ``source`` and the label that messages use for it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), _("the PEM data given in memory")
    path = Path(source)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyError_(
            _("key file not found: {path}").format(path=path),
            _("Check the key path in the configuration and that the file is present on this host."),
        ) from None
    except PermissionError:
        raise KeyError_(
            _("cannot read key file {path}: permission denied").format(path=path),
            _("Run Resguardo as the user that owns the key file, or give that user read access."),
        ) from None
    except OSError as error:
        raise KeyError_(
            _("cannot read key file {path}: {error}").format(path=path, error=error.strerror or error),
            _("Check the key path in the configuration."),
        ) from None
    if private:
        _warn_if_readable_by_others(path)
    return data, str(path)


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        # A warning, not an error, because Kubernetes mounts secret volumes
        # with mode 0644 unless the pod sets defaultMode, and the key is still
        # protected by the mount. Only the path and mode are logged.
        logger.warning("encryption.private_key_file_mode", extra={"path": str(path), "mode": f"{mode:04o}"})


def _try_load_public(data: bytes):
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        return None


def _try_load_private(data: bytes):
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return None


_ALGORITHM_NAMES: tuple[tuple[tuple[type, ...], str], ...] = (
    ((x25519.X25519PrivateKey, x25519.X25519PublicKey), "X25519"),
    ((ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey), "Ed25519"),
    ((x448.X448PrivateKey, x448.X448PublicKey), "X448"),
    ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "Ed448"),
    ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "RSA"),
    ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "EC"),
    ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "DSA"),
)


def _describe_key(key: object) -> str:
    """Return a label such as "Ed25519 private key" for messages."""
    algorithm = type(key).__name__
    for types, name in _ALGORITHM_NAMES:
        if isinstance(key, types):
            algorithm = name
            break
    # Every private key class of cryptography has private_bytes(), and no
    # public key class has it.
    if hasattr(key, "private_bytes"):
        return _private_label(algorithm)
    return _public_label(algorithm)


def _private_label(algorithm: str) -> str:
    return _("{algorithm} private key").format(algorithm=algorithm)


def _public_label(algorithm: str) -> str:
    return _("{algorithm} public key").format(algorithm=algorithm)


def _wrong_type_error(label: str, found: str, expected: str) -> KeyError_:
    return KeyError_(
        _("wrong key type in {source}: found {found}, expected {expected}").format(
            source=label, found=found, expected=expected
        ),
        _(
            "Encryption uses X25519 keys and signing uses Ed25519 keys. Check that each key setting "
            "in the configuration points at the right file."
        ),
    )


def _malformed_error(label: str, expected: str, marker: str) -> KeyError_:
    return KeyError_(
        _("{source} does not contain a valid PEM {expected}").format(source=label, expected=expected),
        _("The key must be one PEM block that starts with {marker}, as written by generate_keypair.").format(
            marker=marker
        ),
    )
