"""The public REST API of builds.sr.ht: /api/jobs and its sub-resources (spec §3.1).

Fixed relative to builds.sr.ht: the access lists are enforced on every path (a job one may
not read is a 404), a job submitted with execute is `queued` (not `pending`) so `start`
cannot enqueue it twice, pending and queued jobs can be cancelled, and the image and arch
are checked at submit.
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from buildworker.api.access import can_read, can_write
from buildworker.api.body import (
    OPENAPI_FORM_OR_JSON,
    check_text,
    opt_bool,
    opt_str,
    opt_str_list,
    read_body,
)
from buildworker.api.deps import SessionDep, current_user, get_config, optional_user
from buildworker.api.errors import ApiError
from buildworker.api.images import check_image
from buildworker.api.lifecycle import cancel, queue_pending, start_pending
from buildworker.api.metrics import metrics_of
from buildworker.api.pagination import MAX_ID, paginate
from buildworker.api.serialize import artifact_dict, artifact_url, format_time, job_dict
from buildworker.db.models import Artifact, Job, Secret, Task, User
from buildworker.jobstate import JobStatus, TaskStatus
from buildworker.manifest import ManifestError, parse_manifest

# artifact_url, format_time, job_dict, cancel and start_pending are re-exported: other
# modules imported them from here before they moved to serialize.py and lifecycle.py.
__all__ = [
    "MAX_NOTE",
    "artifact_dict",
    "artifact_url",
    "cancel",
    "format_time",
    "job_dict",
    "load_job",
    "load_job_for_write",
    "resolve_secret",
    "router",
    "start_pending",
]

log = structlog.get_logger()
router = APIRouter(prefix="/api", tags=["jobs"])

ReadUser = Annotated[User, Depends(current_user("jobs:read"))]
WriteUser = Annotated[User, Depends(current_user("jobs:write"))]
MaybeReader = Annotated[User | None, Depends(optional_user("jobs:read"))]
Body = Annotated[dict[str, Any], Depends(read_body)]

#: The seed's tag rule: lowercase alphanumerics and "-_.".
TAG = re.compile(r"^[a-z0-9_.-]+$")
TAG_REASON = (
    "Invalid tag name, tags must use lowercase alphanumeric characters, underscores, "
    "dashes, or dots"
)
#: A username in an access list, with or without sr.ht's "~".
USERNAME = re.compile(r"^~?[A-Za-z0-9_.-]{1,256}$")
MAX_NOTE = 4096
_STATUS_WORD: dict[str, str] = {JobStatus.QUEUED: "queued", JobStatus.RUNNING: "running"}

JOB_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["manifest"],
    "properties": {
        "manifest": {"type": "string", "description": "the build manifest (YAML or JSON)"},
        "note": {"type": "string", "maxLength": MAX_NOTE},
        "tags": {"type": "array", "items": {"type": "string", "pattern": TAG.pattern}},
        "access:read": {"type": "array", "items": {"type": "string"}},
        "access:write": {"type": "array", "items": {"type": "string"}},
        "execute": {"type": "boolean", "default": True},
        "secrets": {"type": "boolean", "default": True},
    },
}


def load_job(session: Session, job_id: int, user: User | None) -> Job:
    """The job if `user` may read it; 404 otherwise (also for ids that cannot exist)."""
    job = session.get(Job, job_id) if 0 < job_id <= MAX_ID else None
    if job is None or not can_read(job, user):
        raise ApiError.not_found()
    return job


def load_job_for_write(session: Session, job_id: int, user: User) -> Job:
    job = load_job(session, job_id, user)
    if not can_write(job, user):
        raise ApiError.reason("You do not have write access to this job", 403)
    return job


# --- submit -----------------------------------------------------------------------------


class _Errors:
    """Collects every field error of a request, so one 400 names them all."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            self.items.extend(exc.errors)
            return None

    def raise_if_any(self) -> None:
        if self.items:
            raise ApiError(400, self.items)


def _manifest_text(body: dict[str, Any], max_size: int) -> str:
    value = body.get("manifest")
    if value is None:
        raise ApiError.field("manifest", "manifest is required")
    if isinstance(value, dict):
        # A manifest given as a JSON object: JSON is YAML, keep it as readable text.
        value = json.dumps(value, indent=2)
    if not isinstance(value, str):
        raise ApiError.field("manifest", "manifest should be a string")
    if not value.strip():
        raise ApiError.field("manifest", "manifest is required")
    check_text("manifest", value)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_size:
        raise ApiError.field(
            "manifest", f"Manifest must be at most {max_size} bytes (got {size} bytes)"
        )
    return value


def _tags(body: dict[str, Any]) -> list[str]:
    tags = opt_str_list(body, "tags", separators="/,") or []
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise ApiError.field("tags", f"{TAG_REASON} (got {tag!r})")
    return tags


def _access_list(body: dict[str, Any], name: str, default: list[str]) -> list[str]:
    names = opt_str_list(body, name, separators=", ")
    if names is None:
        return list(default)
    result: list[str] = []
    for item in names:
        item = item.strip()
        if item != "*" and not USERNAME.fullmatch(item):
            raise ApiError.field(name, f"{name} entries must be usernames or '*' (got {item!r})")
        item = item.removeprefix("~")
        if item not in result:
            result.append(item)
    return result


def resolve_secret(session: Session, owner_id: int, ref: str) -> Secret | None:
    """A manifest secret reference: a UUID if it parses as one, else a name; owner-scoped."""
    try:
        as_uuid = str(uuidlib.UUID(ref))
    except ValueError:
        as_uuid = None
    query = select(Secret).where(Secret.owner_id == owner_id)
    if as_uuid is not None:
        query = query.where(or_(Secret.uuid == as_uuid, Secret.name == ref))
    else:
        query = query.where(Secret.name == ref)
    return session.scalars(query.order_by(Secret.id)).first()


def _secret_refs(session: Session, owner_id: int, refs: tuple[str, ...]) -> None:
    errors = [
        {"field": f"secrets[{i}]", "reason": f"no secret {ref!r} exists for your account"}
        for i, ref in enumerate(refs)
        if resolve_secret(session, owner_id, ref) is None
    ]
    if errors:
        raise ApiError(400, errors)


@router.post(
    "/jobs",
    summary="Submit a job",
    openapi_extra=OPENAPI_FORM_OR_JSON(JOB_BODY_SCHEMA),
)
def submit_job(
    request: Request, user: WriteUser, body: Body, session: SessionDep
) -> dict[str, Any]:
    config = get_config(request)
    errors = _Errors()
    text = errors.run(_manifest_text, body, config.api.max_manifest_size)
    note = errors.run(opt_str, body, "note", max_length=MAX_NOTE)
    tags = errors.run(_tags, body) or []
    read = errors.run(_access_list, body, "access:read", ["*"])
    write = errors.run(_access_list, body, "access:write", [])
    execute = errors.run(opt_bool, body, "execute", True)
    with_secrets = errors.run(opt_bool, body, "secrets", True)
    manifest = None
    if text is not None:
        try:
            manifest = parse_manifest(
                text,
                max_size=config.api.max_manifest_size,
                max_artifacts=config.api.max_artifacts,
            )
        except ManifestError as exc:
            errors.items.extend({"field": e.field, "reason": e.reason} for e in exc.errors)
    errors.raise_if_any()
    assert manifest is not None and text is not None
    placement = errors.run(
        check_image,
        session,
        config.api.images,
        manifest.image,
        manifest.arch,
        config.api.image_aliases,
    )
    if with_secrets:
        errors.run(_secret_refs, session, user.id, manifest.secrets)
    errors.raise_if_any()
    assert placement is not None  # raise_if_any raised otherwise

    job = Job(
        owner_id=user.id,
        manifest=text,
        note=note,
        tags=tags,
        image=manifest.image,
        image_release=placement.release,
        arch=placement.arch,
        status=JobStatus.PENDING.value,
        secrets=bool(with_secrets),
        secret_refs=list(manifest.secrets),
        access_read=read if read is not None else ["*"],
        access_write=write or [],
        attempt=0,
    )
    job.owner = user
    job.tasks = [
        Task(position=i, name=task.name, status=TaskStatus.PENDING.value)
        for i, task in enumerate(manifest.tasks)
    ]
    session.add(job)
    session.flush()
    if execute:
        queue_pending(session, job)
    session.commit()
    if execute:
        metrics_of(session).job_submitted()
    log.info("job_submitted", job_id=job.id, owner=user.username, status=job.status)
    return job_dict(job, config.api.origin, at_submit=True)


# --- reads ------------------------------------------------------------------------------


@router.get("/jobs", summary="List your jobs (paginated)")
def list_jobs(request: Request, user: ReadUser, session: SessionDep) -> dict[str, Any]:
    config = get_config(request)
    query = select(Job).where(Job.owner_id == user.id)
    return paginate(
        session,
        request,
        query,
        Job.id,
        lambda job: job_dict(job, config.api.origin),
        config.api.results_per_page,
    )


@router.get("/jobs/{job_id}", summary="Get a job")
def get_job(request: Request, job_id: int, user: ReadUser, session: SessionDep) -> dict[str, Any]:
    job = load_job(session, job_id, user)
    return job_dict(job, get_config(request).api.origin)


@router.get(
    "/jobs/{job_id}/manifest",
    summary="Get a job's manifest (text/plain)",
    response_class=PlainTextResponse,
)
def get_manifest(job_id: int, user: MaybeReader, session: SessionDep) -> PlainTextResponse:
    # Like builds.sr.ht, no token is needed, but only public jobs are readable without one.
    job = load_job(session, job_id, user)
    return PlainTextResponse(job.manifest, media_type="text/plain; charset=utf-8")


@router.get("/jobs/{job_id}/artifacts", summary="List a job's artifacts (paginated)")
def list_artifacts(
    request: Request, job_id: int, user: ReadUser, session: SessionDep
) -> dict[str, Any]:
    config = get_config(request)
    job = load_job(session, job_id, user)
    query = select(Artifact).where(Artifact.job_id == job.id)
    return paginate(
        session,
        request,
        query,
        Artifact.id,
        lambda artifact: artifact_dict(artifact, config.api.origin),
        config.api.results_per_page,
    )


# --- lifecycle --------------------------------------------------------------------------


def _already(status: str) -> str:
    return f"This job is already {_STATUS_WORD.get(status, 'complete')}"


@router.post("/jobs/{job_id}/start", summary="Start a pending job")
def start_job(job_id: int, user: WriteUser, session: SessionDep) -> dict[str, Any]:
    job = load_job_for_write(session, job_id, user)
    if not start_pending(session, job):
        session.rollback()
        session.refresh(job)
        raise ApiError.reason(_already(job.status))
    session.commit()
    log.info("job_started", job_id=job.id, attempt=job.attempt, by=user.username)
    return {}


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job")
def cancel_job(job_id: int, user: WriteUser, session: SessionDep) -> dict[str, Any]:
    job = load_job_for_write(session, job_id, user)
    outcome = cancel(session, job, f"cancelled by {user.canonical_name}")
    session.commit()
    if outcome not in (JobStatus.CANCELLED, "requested"):
        raise ApiError.reason(f"This job is already complete ({outcome})")
    log.info("job_cancel", job_id=job.id, outcome=outcome, by=user.username)
    return {}
