"""Request dependencies: the database session and the authenticated user.

``app.state`` holds ``config`` (buildworker.config.Config), ``engine``, ``sessionmaker``,
``store`` (Path of the store directory) and ``secret_box`` (buildworker.api.crypto).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from buildworker.api.auth import AuthError, has_scope, hash_token, parse_authorization
from buildworker.api.errors import ApiError
from buildworker.config import Config
from buildworker.db.models import Token, User, utcnow
from buildworker.web.session import session_user

__all__ = [
    "SessionDep",
    "current_user",
    "get_config",
    "get_session",
    "get_store",
    "optional_user",
    "optional_user_or_session",
]

#: last_used is written at most this often per token, so reads stay reads.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_config(request: Request) -> Config:
    """The app's config: the one reader of ``app.state.config`` for routes and pages alike
    (a call or a ``Depends``), so where it lives can change in one place."""
    config: Config = request.app.state.config
    return config


def get_store(request: Request) -> Path:
    store: Path = request.app.state.store
    return store


SessionDep = Annotated[Session, Depends(get_session)]


def _unauthorized(reason: str) -> ApiError:
    return ApiError(401, [{"reason": reason}], headers={"WWW-Authenticate": "token"})


def _authenticate(request: Request, session: Session) -> Token | None:
    """The token of the request, None when no Authorization header was sent."""
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        return None
    try:
        raw = parse_authorization(header)
    except AuthError as exc:
        raise _unauthorized(str(exc)) from None
    token = session.scalars(select(Token).where(Token.token_hash == hash_token(raw))).first()
    if token is None or token.revoked:
        raise _unauthorized("Invalid or expired OAuth token")
    now = utcnow()
    if token.last_used is None or now - token.last_used > LAST_USED_RESOLUTION:
        token.last_used = now
        session.commit()
    request.state.token = token
    return token


def current_user(scope: str) -> Callable[[Request, Session], User]:
    """Dependency: the user of a valid token carrying `scope`; 401 or 403 otherwise."""

    def dependency(request: Request, session: SessionDep) -> User:
        token = _authenticate(request, session)
        if token is None:
            raise _unauthorized("No authorization supplied (expected an OAuth token)")
        if not has_scope(token.scopes, scope):
            raise ApiError.reason(
                f"Your OAuth token is not permitted to use this endpoint (needs {scope})", 403
            )
        return token.user

    return dependency


def optional_user(scope: str) -> Callable[[Request, Session], User | None]:
    """Like current_user, but no Authorization header means an anonymous reader (None).

    A header that is present must still be valid (401) and carry the scope (403).
    """

    def dependency(request: Request, session: SessionDep) -> User | None:
        token = _authenticate(request, session)
        if token is None:
            return None
        if not has_scope(token.scopes, scope):
            raise ApiError.reason(
                f"Your OAuth token is not permitted to use this endpoint (needs {scope})", 403
            )
        return token.user

    return dependency


def optional_user_or_session(scope: str) -> Callable[[Request, Session], User | None]:
    """Like optional_user, but without an Authorization header the web session's user (if
    signed in) reads: the log and artifact links of a private job open in the browser of
    someone who may read it. Only for GET/HEAD routes (a cookie is no CSRF-proof write)."""
    by_token = optional_user(scope)

    def dependency(request: Request, session: SessionDep) -> User | None:
        user = by_token(request, session)
        if user is None and request.method in ("GET", "HEAD"):
            return session_user(request, session)
        return user

    return dependency
