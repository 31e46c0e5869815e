"""Other roots' public keys this root trusts (issue 14.9; docs/integrity.md, "Imported threads").

A key is trusted when its PEM file is in ``<root>/keys/trusted/`` (``threadloom trust FILE``
puts it there as ``<key id>.pub``) or is named by the ``trusted_keys`` setting (paths to
``.pub`` files; a relative path is relative to the root). Trust only changes what ``verify`` says about an imported thread's
signatures: "signed by key K (known)" instead of "(unknown)".
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import InvalidInputError
from .integrity import KEYS_DIR

TRUSTED_DIR = "trusted"
MAX_KEY_FILE = 16_384

__all__ = ["PublicKey", "parse_public_key", "trusted_keys", "trust_key", "trusted_dir"]


class PublicKey:
    """An Ed25519 public key with its id (first 16 hex of SHA-256 of the raw key) and PEM."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key = key
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]
        self.pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def verify(self, data: bytes, signature: object) -> bool:
        """True when ``signature`` (base64 text) is this key's signature of ``data``."""
        if not isinstance(signature, str):
            return False
        try:
            self.key.verify(base64.b64decode(signature, validate=True), data)
        except (InvalidSignature, ValueError):
            return False
        return True


def parse_public_key(pem: str | bytes, *, where: str = "the key") -> PublicKey:
    """An Ed25519 public key from PEM text. Raises InvalidInputError ``public_key_format``."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"{where} is not a PEM public key ({str(exc)[:200]}); give the ed25519.pub file of another "
            "root's keys/ folder",
            rule="public_key_format",
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInputError(f"{where} is not an Ed25519 public key", rule="public_key_format")
    return PublicKey(key)


def trusted_dir(root: Path) -> Path:
    return Path(root) / KEYS_DIR / TRUSTED_DIR


def _read_key_file(path: Path) -> PublicKey:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read the public key {path}: {exc.strerror or exc}", rule="public_key_format"
        ) from None
    if len(data) > MAX_KEY_FILE:
        raise InvalidInputError(
            f"{path} is over {MAX_KEY_FILE} bytes: not a public key file", rule="public_key_format"
        )
    return parse_public_key(data, where=str(path))


def trusted_keys(root: Path, extra: Iterable[Path] = ()) -> dict[str, PublicKey]:
    """Every trusted key by id: ``<root>/keys/trusted/*.pub`` and the ``trusted_keys`` files.

    Raises:
        InvalidInputError: a file named by the setting cannot be read or is no public key.
            (A bad file in the folder is skipped: the folder is ours, the setting the operator's.)
    """
    out: dict[str, PublicKey] = {}
    folder = trusted_dir(root)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        names = []
    for name in names:
        if name.endswith(".pub"):
            try:
                key = _read_key_file(folder / name)
            except InvalidInputError:
                continue
            out[key.key_id] = key
    for path in extra:
        path = Path(path)
        key = _read_key_file(path if path.is_absolute() else Path(root) / path)
        out[key.key_id] = key
    return out


def trust_key(root: Path, pem: bytes, *, where: str = "the key") -> tuple[PublicKey, bool]:
    """Trust ``pem`` from now on: ``<root>/keys/trusted/<key id>.pub``. Returns the key and
    whether it was new (trusting a key twice changes nothing)."""
    key = parse_public_key(pem, where=where)
    folder = trusted_dir(root)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{key.key_id}.pub"
    if path.exists():
        return key, False
    tmp = folder / f".{key.key_id}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key.pem.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key, True
