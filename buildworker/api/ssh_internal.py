"""Internal endpoints for the SSH entry point of build hosts (worker token, like internal.py).

- ``POST /api/internal/ssh/key-owner`` ``{"type": "ssh-ed25519", "key": "<base64>"}``: which
  user holds this public key (sshd's ``AuthorizedKeysCommand`` asks, through
  ``buildworker ssh authorized-keys``). 200 ``{"username", "canonical_name", "key_id",
  "fingerprint"}``; 404 when nobody does; 400 naming ``type`` or ``key`` when it is no key.
- ``GET /api/internal/ssh/jobs/{id}/access?user=NAME``: may ``NAME`` connect to job ``id``?
  The owner and the users in ``access:write`` may (builds.sr.ht lets only the owner in).
  200 ``{"job_id", "status", "url", "runner", "owner", "access": "owner"|"write"}``; 404
  "No such job found."; 403 "You are not permitted to connect to this job." — builds.sr.ht's
  texts, which the forced command shows as they are.

The deadline of a job is not answered here: the worker holding the job owns it (it moves when
standby begins or a user connects), so the worker's control socket reports it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from buildworker.api.access import can_write
from buildworker.api.deps import SessionDep, get_config
from buildworker.api.errors import ApiError
from buildworker.api.internal import require_worker
from buildworker.api.pagination import MAX_ID
from buildworker.api.ssh_keys import find_ssh_key
from buildworker.db.models import Job, User, utcnow
from buildworker.ssh.keys import InvalidKey, parse_public_key
from buildworker.ssh.texts import NO_SUCH_JOB, NOT_PERMITTED
from buildworker.web.urls import job_page_url

__all__ = ["router"]

_log = structlog.get_logger(__name__)

#: last_used of a key is written at most this often (sshd asks twice per login).
LAST_USED_RESOLUTION = timedelta(minutes=1)

router = APIRouter(
    prefix="/api/internal/ssh",
    tags=["internal"],
    include_in_schema=False,
    dependencies=[Depends(require_worker)],
)


class KeyOwnerBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(min_length=1, max_length=64)
    key: str = Field(min_length=1, max_length=8192)


@router.post("/key-owner")
def key_owner(body: KeyOwnerBody, session: SessionDep) -> dict[str, Any]:
    try:
        parsed = parse_public_key(f"{body.type} {body.key}")
    except InvalidKey as exc:
        raise ApiError.field("key", str(exc)) from None
    key = find_ssh_key(session, parsed.fingerprint)
    if key is None:
        _log.info("ssh.key_unknown", fingerprint=parsed.fingerprint)
        raise ApiError.reason("no user has this key", 404)
    now = utcnow()
    if key.last_used is None or now - key.last_used > LAST_USED_RESOLUTION:
        key.last_used = now
        session.commit()
    return {
        "username": key.user.username,
        "canonical_name": key.user.canonical_name,
        "key_id": key.id,
        "fingerprint": key.fingerprint,
    }


@router.get("/jobs/{job_id}/access")
def job_access(
    request: Request,
    job_id: int,
    session: SessionDep,
    user: Annotated[str, Query(min_length=1, max_length=256)],
) -> dict[str, Any]:
    config = get_config(request)
    job = session.get(Job, job_id) if 0 < job_id <= MAX_ID else None
    if job is None:
        raise ApiError.reason(NO_SUCH_JOB, 404)
    person = session.scalars(select(User).where(User.username == user.removeprefix("~"))).first()
    if person is None or not can_write(job, person):
        _log.info("ssh.connect_refused", job_id=job_id, user=user)
        raise ApiError.reason(NOT_PERMITTED, 403)
    return {
        "job_id": job.id,
        "status": job.status,
        "url": job_page_url(config.api.origin, job.owner.username, job.id),
        "runner": job.runner,
        "owner": job.owner.username,
        "access": "owner" if person.id == job.owner_id else "write",
    }
