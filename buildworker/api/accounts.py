"""Users and tokens in the database: what `buildworker admin` and the tests call."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from buildworker.api.auth import generate_token, hash_token, normalize_scopes
from buildworker.db.models import Token, User

__all__ = [
    "AccountError",
    "CreatedToken",
    "create_token",
    "create_user",
    "get_user",
    "list_tokens",
    "revoke_token",
]

#: Usernames as sr.ht allows them (lowercase first letter, then [a-z0-9_-]).
USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{1,29}$")


class AccountError(ValueError):
    """A refused account operation; the message says why."""


@dataclass(frozen=True)
class CreatedToken:
    id: int
    token: str  # shown once, never stored
    scopes: str


def create_user(session: Session, username: str, email: str | None = None) -> User:
    if not USERNAME.fullmatch(username):
        raise AccountError(
            f"invalid username {username!r}: 2-30 characters, [a-z0-9_-], starting with a letter"
        )
    if session.scalars(select(User).where(User.username == username)).first() is not None:
        raise AccountError(f"user {username!r} already exists")
    user = User(username=username, email=email)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, username: str) -> User:
    user = session.scalars(select(User).where(User.username == username.removeprefix("~"))).first()
    if user is None:
        raise AccountError(f"no user {username!r}")
    return user


def create_token(
    session: Session, user: User, scopes: str | list[str], name: str | None = None
) -> CreatedToken:
    try:
        normal = normalize_scopes(scopes)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    raw = generate_token()
    token = Token(user_id=user.id, name=name, token_hash=hash_token(raw), scopes=normal)
    session.add(token)
    session.flush()
    return CreatedToken(id=token.id, token=raw, scopes=normal)


def list_tokens(session: Session, user: User) -> list[Token]:
    return list(session.scalars(select(Token).where(Token.user_id == user.id).order_by(Token.id)))


def revoke_token(session: Session, token_id: int) -> Token:
    token = session.get(Token, token_id)
    if token is None:
        raise AccountError(f"no token with id {token_id}")
    token.revoked = True
    session.flush()
    return token
