"""Web sessions: who is signed in, and the CSRF token every form carries.

The session lives in a signed cookie (Starlette's SessionMiddleware, itsdangerous): HttpOnly,
SameSite=Lax, Secure when ``[api] origin`` is https. It holds the user id, a fingerprint
of the user's password hash (so setting a new password ends every session) and a random
CSRF token. Nothing secret is in it; the signature makes it unforgeable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import structlog
from fastapi import Request
from sqlalchemy.orm import Session

from buildworker.config import Config
from buildworker.db.models import User
from buildworker.web.passwords import password_fingerprint

__all__ = [
    "COOKIE",
    "CsrfError",
    "check_csrf",
    "csrf_token",
    "session_secret",
    "session_user",
    "sign_in",
    "sign_out",
]

log = structlog.get_logger()

COOKIE = "bw_session"
#: The form field (and header, for scripts) that carries the CSRF token.
CSRF_FIELD = "csrf"


class CsrfError(Exception):
    """A form posted without this session's CSRF token."""


def session_secret(config: Config) -> str:
    """The key signing session cookies: ``[web] session-key``, else one derived from
    ``[api] secret-key`` (so several API processes agree), else random for this process."""
    if config.web.session_key:
        return config.web.session_key
    if config.api.secret_key:
        return hmac.new(
            config.api.secret_key.encode(), b"buildworker web session", hashlib.sha256
        ).hexdigest()
    log.warning(
        "web_session_key_random",
        hint="set [web] session-key or [api] secret-key; sign-ins end when the API restarts",
    )
    return secrets.token_hex(32)


def _data(request: Request) -> dict[str, Any]:
    data: dict[str, Any] | None = request.scope.get("session")
    return data if data is not None else {}


def session_user(request: Request, db: Session) -> User | None:
    """The signed-in user of this request, or None (no session, or an outdated one)."""
    data = _data(request)
    uid = data.get("uid")
    if not isinstance(uid, int):
        return None
    user = db.get(User, uid)
    if user is None or user.password_hash is None:
        return None
    if not hmac.compare_digest(str(data.get("pw", "")), password_fingerprint(user)):
        return None
    return user


def sign_in(request: Request, user: User) -> None:
    data = _data(request)
    data.clear()  # a fresh session: nothing from before the sign-in carries over
    data.update(uid=user.id, pw=password_fingerprint(user), csrf=secrets.token_urlsafe(24))


def sign_out(request: Request) -> None:
    data = _data(request)
    data.clear()
    data["csrf"] = secrets.token_urlsafe(24)


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use, so signed-out forms have one too)."""
    data = _data(request)
    token = data.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(24)
        data["csrf"] = token
    return token


def check_csrf(request: Request, submitted: object) -> None:
    """Raise CsrfError unless ``submitted`` is this session's token."""
    expected = _data(request).get("csrf")
    if (
        not isinstance(expected, str)
        or not isinstance(submitted, str)
        or not hmac.compare_digest(expected.encode(), submitted.encode())
    ):
        raise CsrfError("the form's CSRF token is missing or wrong; reload the page and retry")
