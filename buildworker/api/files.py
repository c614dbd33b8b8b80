"""Logs and artifacts over HTTP, access-checked like every other read of a job.

- ``GET|HEAD /logs/<job>/log`` (setup log) and ``/logs/<job>/<task>/log``: readable while
  the job runs; ``Range: bytes=N-`` (and ``N-M``, ``-N``) answered ``206`` with
  ``Content-Range``, a range starting at or past the end ``416`` with ``bytes */<size>``
  (RFC 9110 §14), a malformed or multi-part range ignored (the whole log, ``200``).
- ``GET|HEAD /artifacts/<job>/<segment>/<name>``: an artifact at the ``url`` the API lists;
  ``segment`` is the job's random ``artifact_segment``, so URLs cannot be enumerated.

A job the caller may not read answers 404, as if it did not exist; so does a job whose logs
do not exist yet because no worker has started it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from buildworker.api.access import can_read
from buildworker.api.deps import SessionDep, optional_user_or_session
from buildworker.api.errors import ApiError
from buildworker.db.models import Artifact, Job, Task, User
from buildworker.jobstate import JobStatus
from buildworker.store import InvalidName, Store, read_range

__all__ = ["ByteRange", "RangeNotSatisfiable", "parse_range", "router"]

router = APIRouter(tags=["logs and artifacts"])
MaybeReader = Annotated[User | None, Depends(optional_user_or_session("jobs:read"))]


class RangeNotSatisfiable(ValueError):
    """A byte range that starts at or past the end of the file."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    #: exclusive
    end: int

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a ``Range`` header asks of a ``size``-byte file, or None to
    send it whole (no header, another unit, several ranges, or syntax we do not know,
    which RFC 9110 lets a server ignore). Raises `RangeNotSatisfiable`."""
    if header is None:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:  # suffix: the last N bytes
        if not last:
            return None
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - length), size)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range-spec: ignored
    if start >= size:
        raise RangeNotSatisfiable
    end = size if not last else min(int(last) + 1, size)
    return ByteRange(start, end)


def _serve(
    request: Request, path: Path | None, size: int, media_type: str, extra: dict[str, str]
) -> Response:
    """Answer GET/HEAD for the first ``size`` bytes of ``path`` (None: an empty file)."""
    headers = {"Accept-Ranges": "bytes", **extra}
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except RangeNotSatisfiable:
        return Response(
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{size}"},
            media_type=media_type,
        )
    status, start, end = 200, 0, size
    if wanted is not None:
        status, start, end = 206, wanted.start, wanted.end
        headers["Content-Range"] = wanted.content_range(size)
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD" or path is None or end == start:
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        read_range(path, start, end), status_code=status, headers=headers, media_type=media_type
    )


def _readable_job(session: Session, job_id: int, user: User | None) -> Job:
    job = session.get(Job, job_id) if 0 < job_id <= 2**31 - 1 else None
    if job is None or not can_read(job, user):
        raise ApiError.not_found()
    return job


def _log_response(
    request: Request, session: Session, job_id: int, task: str | None, user: User | None
) -> Response:
    job = _readable_job(session, job_id, user)
    if task is not None:
        found = session.scalars(
            select(Task.id).where(Task.job_id == job.id, Task.name == task)
        ).first()
        if found is None:
            raise ApiError.not_found()
    if job.runner is None and job.status != JobStatus.RUNNING:
        raise ApiError.reason("This build job has not been started yet", 404)
    store = Store(request.app.state.store)
    try:
        path = store.log_path(job.id, task)
    except InvalidName:
        raise ApiError.not_found() from None
    size = store.log_size(job.id, task)
    # The log of a job not yet ended may still grow: no cached copy may stand in for it.
    growing = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    # Logs are text, but a build may print anything: say UTF-8 and let clients cope.
    return _serve(
        request,
        path if size else None,
        size or 0,
        "text/plain; charset=utf-8",
        {"Cache-Control": "no-store" if growing else "no-cache"},
    )


# HEAD is served by the same function but left out of the schema (one operation per path).
@router.get("/logs/{job_id}/log", summary="A job's setup log")
@router.head("/logs/{job_id}/log", include_in_schema=False)
def setup_log(request: Request, job_id: int, user: MaybeReader, session: SessionDep) -> Response:
    return _log_response(request, session, job_id, None, user)


@router.get("/logs/{job_id}/{task}/log", summary="A task's log")
@router.head("/logs/{job_id}/{task}/log", include_in_schema=False)
def task_log(
    request: Request, job_id: int, task: str, user: MaybeReader, session: SessionDep
) -> Response:
    return _log_response(request, session, job_id, task, user)


@router.get("/artifacts/{job_id}/{segment}/{name}", summary="An artifact")
@router.head("/artifacts/{job_id}/{segment}/{name}", include_in_schema=False)
def artifact(
    request: Request,
    job_id: int,
    segment: str,
    name: str,
    user: MaybeReader,
    session: SessionDep,
) -> Response:
    job = _readable_job(session, job_id, user)
    if not hmac.compare_digest(segment.encode(), job.artifact_segment.encode()):
        raise ApiError.not_found()
    row = session.scalars(
        select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name)
    ).first()
    if row is None:
        raise ApiError.not_found()
    try:
        path = Store(request.app.state.store).artifact_path(row.storage_key)
        size = path.stat().st_size
    except (InvalidName, FileNotFoundError):
        raise ApiError.not_found() from None
    return _serve(
        request, path, size, "application/octet-stream", {"Content-Disposition": _disposition(name)}
    )


def _disposition(name: str) -> str:
    """An attachment header safe for any name: an ASCII fallback plus RFC 5987's UTF-8 form."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
