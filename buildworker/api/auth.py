"""User tokens: generation, hashing, the Authorization header variants, scopes.

Tokens are 64 hex characters, stored only as their SHA-256. Header forms accepted
(spec/clients.md): ``token X``, ``Bearer X`` (any case, any whitespace, also with no space
after ``Authorization:``), and a bare ``X`` possibly followed by a newline.
"""

from __future__ import annotations

import hashlib
import re
import secrets

__all__ = [
    "KNOWN_SCOPES",
    "AuthError",
    "generate_token",
    "has_scope",
    "hash_token",
    "normalize_scopes",
    "parse_authorization",
]

#: Scopes a token may carry; "*" grants everything. A write scope implies its read scope.
KNOWN_SCOPES = (
    "jobs:read",
    "jobs:write",
    "secrets:read",
    "secrets:write",
    "keys:read",
    "keys:write",
)

_TOKEN = re.compile(r"^[0-9a-f]{64}$")
_SCHEMES = {"token", "bearer"}


class AuthError(ValueError):
    """A header that cannot be a valid credential; the message is the 401 reason."""


def generate_token() -> str:
    return secrets.token_hex(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_authorization(value: str) -> str:
    """The token carried by an Authorization header value.

    Raises AuthError("Invalid authorization supplied") for any other scheme or shape.
    """
    parts = value.strip().split(None, 1)
    if len(parts) == 2 and parts[0].lower() in _SCHEMES:
        token = parts[1].strip()
    elif len(parts) == 1:
        token = parts[0]
    else:
        raise AuthError("Invalid authorization supplied")
    token = token.lower()
    if not _TOKEN.fullmatch(token):
        raise AuthError("Invalid or expired OAuth token")
    return token


def normalize_scopes(text: str | list[str] | tuple[str, ...]) -> str:
    """Validate scopes given as "a b", "a,b" or a list; returns them space-separated.

    Raises ValueError naming the unknown scope.
    """
    items = re.split(r"[\s,]+", text) if isinstance(text, str) else list(text)
    result: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item != "*" and item not in KNOWN_SCOPES:
            known = ", ".join(("*", *KNOWN_SCOPES))
            raise ValueError(f"unknown scope {item!r} (known: {known})")
        if item not in result:
            result.append(item)
    if not result:
        raise ValueError("at least one scope is required")
    return " ".join(result)


def has_scope(scopes: str, needed: str) -> bool:
    """Whether a token with `scopes` may use an endpoint needing `needed` (write ⊇ read)."""
    granted = set(scopes.split())
    if "*" in granted or needed in granted:
        return True
    resource, _, access = needed.partition(":")
    return access == "read" and f"{resource}:write" in granted
