"""Encryption of secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) under `[api] secret-key`."""

from __future__ import annotations

import base64
import hashlib

import structlog
from cryptography.fernet import Fernet, InvalidToken

__all__ = ["SecretBox", "SecretsDisabled", "generate_key"]

log = structlog.get_logger()


class SecretsDisabled(RuntimeError):
    """No `[api] secret-key` is configured, so secrets can be neither stored nor read."""


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def _fernet_for(key: str) -> Fernet:
    try:
        return Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        # Not a Fernet key: derive one, so a passphrase still works (weaker; warned).
        log.warning("secret_key_not_fernet", hint="generate one with `buildworker admin gen-key`")
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        return Fernet(base64.urlsafe_b64encode(digest))


class SecretBox:
    """encrypt/decrypt secret material; raises SecretsDisabled when no key is configured."""

    def __init__(self, key: str) -> None:
        self._fernet = _fernet_for(key) if key else None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def encrypt(self, plaintext: bytes) -> bytes:
        if self._fernet is None:
            raise SecretsDisabled("secrets are disabled: [api] secret-key is not set")
        return self._fernet.encrypt(plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Raises SecretsDisabled, or ValueError when the key does not match the data."""
        if self._fernet is None:
            raise SecretsDisabled("secrets are disabled: [api] secret-key is not set")
        try:
            return self._fernet.decrypt(ciphertext)
        except InvalidToken:
            raise ValueError("secret cannot be decrypted with the configured secret-key") from None
