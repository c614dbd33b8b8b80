"""Web sign-in passwords: argon2id hashes (argon2-cffi), set with `buildworker admin user password`.

Only the hash is stored (``users.password_hash``). A user without one cannot sign in on
the web; API tokens work as before.
"""

from __future__ import annotations

import hashlib

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from buildworker.db.models import User

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "PasswordError",
    "check_password",
    "password_fingerprint",
    "set_password",
]

#: Shorter passwords are refused when set.
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
_HASHER = PasswordHasher()


class PasswordError(ValueError):
    """A password that may not be set; the message says why."""


def set_password(user: User, password: str) -> None:
    """Hash and store ``password`` for ``user`` (the caller commits). Every web session of
    the user ends, since sessions carry a fingerprint of the hash."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordError(f"a password may have at most {MAX_PASSWORD_LENGTH} characters")
    user.password_hash = _HASHER.hash(password)


def check_password(user: User | None, password: str) -> bool:
    """Whether ``password`` is the user's. A missing user or hash still costs a hash, so
    the answer time does not tell which usernames exist."""
    stored = user.password_hash if user is not None else None
    if stored is None:
        _HASHER.hash(password[:MAX_PASSWORD_LENGTH])
        return False
    try:
        return _HASHER.verify(stored, password[:MAX_PASSWORD_LENGTH])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_fingerprint(user: User) -> str:
    """A short digest of the stored hash: a session is valid while it matches."""
    return hashlib.sha256((user.password_hash or "").encode()).hexdigest()[:16]
