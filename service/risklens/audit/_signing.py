"""Ed25519 keys and signed checkpoints of the chain head."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from risklens.errors import ManifestError
from risklens.v1 import risklens_pb2

from ._canonical import checkpoint_payload, format_time

SIGNING_KEY_ENV = "RISKLENS_AUDIT_SIGNING_KEY"
log = logging.getLogger(__name__)


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8, unencrypted) file."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ManifestError(f"cannot read the audit signing key {path}: {error}", field=SIGNING_KEY_ENV) from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ManifestError(f"audit signing key {path} is not an Ed25519 key", field=SIGNING_KEY_ENV)
    return key


def configured_signing_key(configured: str | os.PathLike[str] | None,
                           development: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The key the settings name (it must exist: a mistyped path is an error, not a new key), else
    the development key at ``development`` (generated on first use)."""
    return load_signing_key(configured) if configured else load_or_create_signing_key(development)


def load_or_create_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load the key, or generate a development key there (mode 0600) when the file is absent."""
    key_path = Path(path)
    if key_path.exists():
        return load_signing_key(key_path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    key_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    log.warning("generated a development audit signing key at %s; set %s for production", key_path,
                SIGNING_KEY_ENV)
    return key


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def sign_checkpoint(key: Ed25519PrivateKey, sequence: int, head_hash: str,
                    created_at: datetime | None = None) -> risklens_pb2.Checkpoint:
    checkpoint = risklens_pb2.Checkpoint(sequence=sequence, head_hash=head_hash,
                                         created_at=format_time(created_at or datetime.now(UTC)))
    checkpoint.signature = key.sign(checkpoint_payload(checkpoint)).hex()
    checkpoint.public_key = public_key_hex(key)
    return checkpoint
