"""Job groups (`/api/job-group`): several pending jobs started, cancelled and reported together.

Fixed relative to builds.sr.ht: `start` queues only the group's *pending* jobs (sr.ht's REST
start raised a NameError, and its GraphQL one re-queued finished jobs), and malformed
triggers are a 400 naming the field instead of a 500.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.orm import Session

from buildworker.api.body import OPENAPI_FORM_OR_JSON, check_text, opt_bool, opt_str, read_body
from buildworker.api.deps import SessionDep, current_user
from buildworker.api.errors import ApiError
from buildworker.api.lifecycle import cancel, start_pending
from buildworker.api.pagination import MAX_ID
from buildworker.api.public import MAX_NOTE
from buildworker.api.serialize import format_time
from buildworker.db.models import Job, JobGroup, User
from buildworker.jobstate import JobStatus

__all__ = ["group_dict", "router", "validate_triggers"]

log = structlog.get_logger()
router = APIRouter(prefix="/api", tags=["job groups"])

ReadUser = Annotated[User, Depends(current_user("jobs:read"))]
WriteUser = Annotated[User, Depends(current_user("jobs:write"))]
Body = Annotated[dict[str, Any], Depends(read_body)]

INVALID_JOBS = (
    "Invalid list of job IDs. All jobs must be owned by you, not assigned to another job "
    "group, and in the pending state."
)
#: Most jobs one group may hold (keeps the IN list well under database parameter limits).
MAX_GROUP_JOBS = 1000
ACTIONS = ("email", "webhook")
CONDITIONS = ("always", "success", "failure")

GROUP_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["jobs"],
    "properties": {
        "jobs": {
            "type": "array",
            "items": {"type": "integer"},
            "minItems": 1,
            "maxItems": MAX_GROUP_JOBS,
        },
        "note": {"type": "string", "maxLength": MAX_NOTE},
        "execute": {"type": "boolean", "default": False},
        "triggers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["action", "condition"],
                "properties": {
                    "action": {"type": "string", "enum": list(ACTIONS)},
                    "condition": {"type": "string", "enum": list(CONDITIONS)},
                    "to": {"type": "string"},
                    "cc": {"type": "string"},
                    "in_reply_to": {"type": "string"},
                    "url": {"type": "string"},
                },
            },
        },
    },
}


def group_dict(group: JobGroup) -> dict[str, Any]:
    return {
        "id": group.id,
        "note": group.note,
        "owner": {"canonical_name": group.owner.canonical_name, "name": group.owner.username},
        "created": format_time(group.created),
        "jobs": [{"id": job.id, "status": job.status} for job in group.jobs],
        "triggers": group.triggers or [],
    }


def _job_ids(body: dict[str, Any]) -> list[int]:
    value = body.get("jobs")
    if value is None:
        raise ApiError.field("jobs", "jobs is required")
    if isinstance(value, str):  # form: "1,2,3" or one id
        value = [part for part in value.replace(" ", ",").split(",") if part]
    if not isinstance(value, list) or not value:
        raise ApiError.field("jobs", "Expected jobs to be an array of integers (job IDs)")
    if len(value) > MAX_GROUP_JOBS:
        raise ApiError.field("jobs", f"a job group holds at most {MAX_GROUP_JOBS} jobs")
    ids: list[int] = []
    for item in value:
        if isinstance(item, bool):
            raise ApiError.field("jobs", "Expected jobs to be an array of integers (job IDs)")
        try:
            job_id = int(item)
        except (TypeError, ValueError):
            raise ApiError.field(
                "jobs", "Expected jobs to be an array of integers (job IDs)"
            ) from None
        if job_id not in ids:
            ids.append(job_id)
    return ids


def validate_triggers(value: Any) -> list[dict[str, Any]]:
    """Job-group triggers as stored: {action, condition, to, cc, in_reply_to} / {.., url}."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError.field("triggers", "triggers should be a list of objects")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"triggers[{i}]"
        if not isinstance(item, dict):
            raise ApiError.field(where, "a trigger should be an object")
        action, condition = item.get("action"), item.get("condition")
        if action not in ACTIONS:
            raise ApiError.field(f"{where}.action", f"action must be one of {', '.join(ACTIONS)}")
        if condition not in CONDITIONS:
            raise ApiError.field(
                f"{where}.condition", f"condition must be one of {', '.join(CONDITIONS)}"
            )
        trigger: dict[str, Any] = {"action": action, "condition": condition}
        keys = ("to", "cc", "in_reply_to") if action == "email" else ("url",)
        for key in keys:
            field_value = item.get(key)
            if field_value is not None and not isinstance(field_value, str):
                raise ApiError.field(f"{where}.{key}", f"{key} should be a string")
            if field_value is not None:
                check_text(f"{where}.{key}", field_value)
            trigger[key] = field_value
        if action == "email" and not trigger.get("to"):
            raise ApiError.field(f"{where}.to", "an email trigger needs 'to'")
        if action == "webhook":
            url = trigger.get("url") or ""
            if not url.startswith(("http://", "https://")):
                raise ApiError.field(f"{where}.url", "a webhook trigger needs an http(s) url")
        out.append(trigger)
    return out


def _load_group(session: Session, group_id: int, user: User) -> JobGroup:
    group = session.get(JobGroup, group_id) if 0 < group_id <= MAX_ID else None
    if group is None or group.owner_id != user.id:
        raise ApiError.not_found()
    return group


@router.post(
    "/job-group",
    summary="Create a job group from pending jobs",
    openapi_extra=OPENAPI_FORM_OR_JSON(GROUP_BODY_SCHEMA),
)
def create_group(user: WriteUser, body: Body, session: SessionDep) -> dict[str, Any]:
    ids = _job_ids(body)
    triggers = validate_triggers(body.get("triggers"))
    note = opt_str(body, "note", max_length=MAX_NOTE)
    execute = opt_bool(body, "execute", False)
    valid_ids = [i for i in ids if 0 < i <= MAX_ID]
    jobs = list(
        session.scalars(
            select(Job).where(
                Job.id.in_(valid_ids),
                Job.owner_id == user.id,
                Job.status == JobStatus.PENDING,
                Job.group_id.is_(None),
            )
        )
    )
    if len(jobs) != len(ids):
        raise ApiError.field("jobs", INVALID_JOBS)
    group = JobGroup(owner_id=user.id, note=note, triggers=triggers)
    group.owner = user
    session.add(group)
    session.flush()
    for job in jobs:
        job.group_id = group.id
    session.flush()
    if execute:
        for job in jobs:
            start_pending(session, job)
    session.commit()
    session.refresh(group)
    log.info("group_created", group_id=group.id, jobs=ids, execute=execute)
    return group_dict(group)


@router.get("/job-group/{group_id}", summary="Get a job group")
def get_group(group_id: int, user: ReadUser, session: SessionDep) -> dict[str, Any]:
    return group_dict(_load_group(session, group_id, user))


@router.post("/job-group/{group_id}/start", summary="Start a group's pending jobs")
def start_group(group_id: int, user: WriteUser, session: SessionDep) -> dict[str, Any]:
    group = _load_group(session, group_id, user)
    started = [job.id for job in group.jobs if start_pending(session, job)]
    session.commit()
    log.info("group_started", group_id=group.id, jobs=started)
    return {}


@router.post("/job-group/{group_id}/cancel", summary="Cancel a group's jobs")
def cancel_group(group_id: int, user: WriteUser, session: SessionDep) -> dict[str, Any]:
    group = _load_group(session, group_id, user)
    for job in group.jobs:
        cancel(session, job, f"group cancelled by {user.canonical_name}")
    session.commit()
    session.refresh(group)
    return group_dict(group)
