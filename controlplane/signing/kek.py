"""The key-encryption key (KEK) that seals signing keys at rest with AES-256-GCM."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from controlplane.settings import Settings

__all__ = ["KeyEncryptionKey", "load_kek"]

logger = logging.getLogger("byteor.controlplane.signing")

KEK_FILE = "kek.key"


class KeyEncryptionKey:
    """Seals and unseals secrets; the associated data binds a sealed value to its owner."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the key-encryption key must be 32 bytes")
        self._key = key
        self._aead = AESGCM(key)

    def derive(self, purpose: str) -> KeyEncryptionKey:
        """An independent key for another ``purpose`` (HKDF-SHA256), e.g. sealing login cookies."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
        return KeyEncryptionKey(hkdf.derive(self._key))

    def seal(self, plaintext: bytes, associated: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, associated.encode())
        return base64.urlsafe_b64encode(sealed).decode()

    def unseal(self, sealed: str, associated: str) -> bytes:
        raw = base64.urlsafe_b64decode(sealed.encode())
        return self._aead.decrypt(raw[:12], raw[12:], associated.encode())


def _decode(value: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(value.strip() + "=" * (-len(value.strip()) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("BYTEOR_CLOUD_KEY_ENCRYPTION_KEY must be base64url of 32 bytes") from None
    if len(key) != 32:
        raise ValueError("BYTEOR_CLOUD_KEY_ENCRYPTION_KEY must be base64url of 32 bytes")
    return key


def load_kek(settings: Settings) -> KeyEncryptionKey:
    """The KEK from settings, else from ``<data_dir>/kek.key`` (created 0600 on first use)."""
    if settings.key_encryption_key is not None:
        return KeyEncryptionKey(_decode(settings.key_encryption_key.get_secret_value()))
    path = settings.data_dir / KEK_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded = base64.urlsafe_b64encode(secrets.token_bytes(32))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first; read theirs
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encoded)
                handle.flush()
                os.fsync(handle.fileno())
            logger.info("generated a key-encryption key at %s (mode 0600)", path)
    if not settings.is_sqlite:
        logger.warning(
            "using the key file %s; set BYTEOR_CLOUD_KEY_ENCRYPTION_KEY so every process shares it",
            path,
        )
    return KeyEncryptionKey(_decode(path.read_text()))
