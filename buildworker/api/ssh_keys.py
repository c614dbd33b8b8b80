"""Users' SSH keys in meta.sr.ht's legacy REST shape (spec §3.4), and the operations behind it.

    GET    /api/user/ssh-keys          keys:read   paginated list of the caller's keys
    POST   /api/user/ssh-keys          keys:write  {"ssh-key": "<type> <base64> [comment]"} → 201
    GET    /api/user/ssh-keys/{id}     keys:read   the key, 404 unless it is the caller's
    PUT    /api/user/ssh-keys/{id}     keys:read   touches last_used (as meta.sr.ht)
    DELETE /api/user/ssh-keys/{id}     keys:write  204; 404 unless it is the caller's

A key resource is meta.sr.ht's: ``id, authorized, comment, fingerprint, key, owner,
last_used``. Unlike meta.sr.ht, the fingerprint is OpenSSH's SHA256 form (meta.sr.ht shows
MD5), and a refused key says why (type, size, encoding) instead of "This is not a valid SSH
key". A fingerprint belongs to one user: a key another account holds is refused. The same
operations back ``buildworker admin ssh-key``.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from buildworker.api.body import OPENAPI_FORM_OR_JSON, read_body
from buildworker.api.deps import SessionDep, current_user, get_config
from buildworker.api.errors import ApiError
from buildworker.api.pagination import MAX_ID, paginate
from buildworker.api.serialize import format_time
from buildworker.db.models import SshKey, User, utcnow
from buildworker.ssh.keys import InvalidKey, PublicKey, parse_public_key

__all__ = [
    "KEY_FIELD",
    "SshKeyRefused",
    "add_ssh_key",
    "delete_ssh_key",
    "find_ssh_key",
    "get_ssh_key",
    "router",
    "ssh_key_dict",
]

log = structlog.get_logger()
router = APIRouter(prefix="/api/user", tags=["ssh-keys"])

ReadUser = Annotated[User, Depends(current_user("keys:read"))]
WriteUser = Annotated[User, Depends(current_user("keys:write"))]
Body = Annotated[dict[str, Any], Depends(read_body)]

#: The body field of POST, as meta.sr.ht names it.
KEY_FIELD = "ssh-key"
DUPLICATE = "We already have this SSH key on file."

SSH_KEY_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [KEY_FIELD],
    "properties": {
        KEY_FIELD: {
            "type": "string",
            "description": "an OpenSSH public key line: '<type> <base64> [comment]'",
        }
    },
}


class SshKeyRefused(ValueError):
    """A key that cannot be added; ``field`` is the body field at fault."""

    def __init__(self, reason: str, field: str = KEY_FIELD) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def ssh_key_dict(key: SshKey, viewer: User | None = None) -> dict[str, Any]:
    """The key resource; ``last_used`` only for its owner, as meta.sr.ht."""
    out: dict[str, Any] = {
        "id": key.id,
        "authorized": format_time(key.created),
        "comment": key.comment,
        "fingerprint": key.fingerprint,
        "key": f"{key.key} {key.comment}" if key.comment else key.key,
        "owner": {"canonical_name": key.user.canonical_name, "name": key.user.username},
    }
    if viewer is not None and viewer.id == key.user_id:
        out["last_used"] = format_time(key.last_used) if key.last_used else None
    return out


def add_ssh_key(session: Session, user: User, text: Any) -> SshKey:
    """Validate ``text`` and store it as ``user``'s key (committed).

    Raises:
        SshKeyRefused: not a key we accept, or a key already on file (any user's).
    """
    if text is None:
        raise SshKeyRefused(f"{KEY_FIELD} is required")
    if not isinstance(text, str):
        raise SshKeyRefused(f"{KEY_FIELD} should be a string: '<type> <base64> [comment]'")
    try:
        parsed: PublicKey = parse_public_key(text)
    except InvalidKey as exc:
        raise SshKeyRefused(str(exc)) from None
    if find_ssh_key(session, parsed.fingerprint) is not None:
        raise SshKeyRefused(DUPLICATE)
    key = SshKey(
        user_id=user.id, key=parsed.text, fingerprint=parsed.fingerprint, comment=parsed.comment
    )
    session.add(key)
    try:
        session.commit()
    except IntegrityError:  # the same key added twice at once: the unique index decides
        session.rollback()
        raise SshKeyRefused(DUPLICATE) from None
    session.refresh(key)
    log.info("ssh_key_added", user=user.username, fingerprint=key.fingerprint, key_id=key.id)
    return key


def find_ssh_key(session: Session, fingerprint: str) -> SshKey | None:
    """The key with this SHA256 fingerprint, whoever holds it."""
    return session.scalars(select(SshKey).where(SshKey.fingerprint == fingerprint)).first()


def get_ssh_key(session: Session, user: User, key_id: int) -> SshKey | None:
    """``user``'s key ``key_id``; None for a missing key and for another user's alike."""
    if not 0 < key_id <= MAX_ID:
        return None
    return session.scalars(
        select(SshKey).where(SshKey.id == key_id, SshKey.user_id == user.id)
    ).first()


def delete_ssh_key(session: Session, user: User, key_id: int) -> bool:
    """Delete ``user``'s key ``key_id`` (committed); False if there is no such key of theirs."""
    key = get_ssh_key(session, user, key_id)
    if key is None:
        return False
    fingerprint = key.fingerprint
    session.delete(key)
    session.commit()
    log.info("ssh_key_deleted", user=user.username, fingerprint=fingerprint, key_id=key_id)
    return True


def _owned(session: Session, user: User, key_id: int) -> SshKey:
    key = get_ssh_key(session, user, key_id)
    if key is None:
        raise ApiError.not_found()
    return key


@router.get("/ssh-keys", summary="List your SSH keys (paginated)")
def list_keys(request: Request, user: ReadUser, session: SessionDep) -> dict[str, Any]:
    config = get_config(request)
    return paginate(
        session,
        request,
        select(SshKey).where(SshKey.user_id == user.id),
        SshKey.id,
        lambda key: ssh_key_dict(key, user),
        config.api.results_per_page,
    )


@router.post(
    "/ssh-keys",
    status_code=201,
    summary="Add an SSH key (one OpenSSH public key line)",
    openapi_extra=OPENAPI_FORM_OR_JSON(SSH_KEY_BODY_SCHEMA),
)
def create_key(user: WriteUser, body: Body, session: SessionDep) -> dict[str, Any]:
    try:
        key = add_ssh_key(session, user, body.get(KEY_FIELD))
    except SshKeyRefused as exc:
        raise ApiError.field(exc.field, exc.reason) from None
    return ssh_key_dict(key, user)


@router.get("/ssh-keys/{key_id}", summary="Get one of your SSH keys")
def get_key(key_id: int, user: ReadUser, session: SessionDep) -> dict[str, Any]:
    return ssh_key_dict(_owned(session, user, key_id), user)


@router.put("/ssh-keys/{key_id}", summary="Record that the key was just used (last_used)")
def touch_key(key_id: int, user: ReadUser, session: SessionDep) -> dict[str, Any]:
    key = _owned(session, user, key_id)
    key.last_used = utcnow()
    session.commit()
    return ssh_key_dict(key, user)


@router.delete(
    "/ssh-keys/{key_id}", status_code=204, response_class=Response, summary="Delete an SSH key"
)
def delete_key(key_id: int, user: WriteUser, session: SessionDep) -> Response:
    if not delete_ssh_key(session, user, key_id):
        raise ApiError.not_found()
    return Response(status_code=204)
