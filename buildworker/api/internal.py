"""The internal worker API: what a build host calls while it runs a job.

Every call is authenticated with ``Authorization: Bearer <[api] worker-token>`` (never a
user token), is idempotent, and is safe to retry:

- ``POST /api/internal/workers`` registers the images a worker serves.
- ``POST /api/internal/jobs/{id}/claim`` turns a queued attempt into a running one, exactly
  once (a conditional UPDATE); a second claim of the same attempt is a 409.
- ``POST .../heartbeat`` renews the lease and answers the cancel flag; 409 once the lease
  is lost (the reaper moved the job on).
- ``PUT .../tasks/{name}`` sets a task's status.
- ``PUT .../logs/{log}?offset=N&attempt=A`` appends raw bytes at byte ``offset`` (``setup`` is
  the setup log, any other name a task's log; ``PUT .../tasks/{name}/log`` addresses a task's
  log unambiguously, for a task that is itself called ``setup``).
- ``PUT .../artifacts?attempt=A&path=P`` streams one artifact, size-capped (413).
- ``POST .../finish`` ends the attempt; ``POST .../release`` gives it back to the queue.

Calls for an attempt that is no longer the job's current one answer 409: the worker has
lost its lease and must stop.
"""

from __future__ import annotations

import base64
import hmac
import posixpath
from collections.abc import Sequence
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from buildworker.api.crypto import SecretsDisabled
from buildworker.api.deps import SessionDep, get_config
from buildworker.api.errors import ApiError
from buildworker.api.public import artifact_url, resolve_secret
from buildworker.api.reaper import end_running, lease_deadline, requeue, settle_tasks
from buildworker.contract import (
    SETUP_LOG_SEGMENT,
    ArtifactAnswer,
    AttemptBody,
    ClaimAnswer,
    ClaimBody,
    ClaimedSecret,
    FinishBody,
    HeartbeatAnswer,
    ImageBody,
    LogAnswer,
    RegisterBody,
    ReleaseBody,
    TaskBody,
)
from buildworker.db.models import TERMINAL_JOB_STATUSES, Artifact, Job, Task, Worker, utcnow
from buildworker.db.transitions import reset_tasks, transition_job, update_job_while
from buildworker.jobstate import (
    IllegalTransition,
    JobStatus,
    TaskStatus,
    check_transition,
)
from buildworker.manifest import ManifestError, parse_manifest
from buildworker.store import ArtifactTooLarge, InvalidName, LogGap, Store
from buildworker.triggers.dispatch import record_job_triggers
from buildworker.web.urls import job_page_url

__all__ = ["router"]

_log = structlog.get_logger(__name__)

#: Largest log chunk accepted in one call (the worker sends far smaller ones).
MAX_LOG_CHUNK = 8 * 1024 * 1024
#: The framework's limit for artifact uploads: none of its own (see upload_artifact).
ARTIFACT_BODY_LIMIT = 2**62
#: Job statuses in which an attempt has been claimed (logs may still be flushed).
_CLAIMED = frozenset({JobStatus.RUNNING, *TERMINAL_JOB_STATUSES})


def require_worker(request: Request) -> None:
    """Dependency: the request carries the configured worker token; 401 otherwise."""
    config = get_config(request)
    expected = config.api.worker_token
    if not expected:
        raise ApiError.reason("the internal API is disabled: [api] worker-token is not set", 401)
    header = request.headers.get("authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token") or not hmac.compare_digest(
        value.strip().encode(), expected.encode()
    ):
        raise ApiError.reason("a valid worker token is required", 401)


router = APIRouter(
    prefix="/api/internal",
    tags=["internal"],
    include_in_schema=False,
    dependencies=[Depends(require_worker)],
)


# --- bodies ---------------------------------------------------------------------------------


AttemptQuery = Annotated[int, Query(ge=1, le=2**31 - 1)]
OffsetQuery = Annotated[int, Query(ge=0, le=2**62)]


# --- helpers --------------------------------------------------------------------------------


def _store(request: Request) -> Store:
    return Store(request.app.state.store)


def _job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id) if 0 < job_id <= 2**31 - 1 else None
    if job is None:
        raise ApiError.reason(f"no job {job_id}", 404)
    return job


def _conflict(reason: str) -> ApiError:
    return ApiError(409, [{"reason": reason}])


class _GapConflict(ApiError):
    """409 for a log chunk past the end; the answer carries the log's current size."""

    def __init__(self, gap: LogGap) -> None:
        super().__init__(409, [{"field": "offset", "reason": str(gap)}])
        self.size = gap.size


def _lease_lost(job: Job, attempt: int) -> ApiError:
    return _conflict(
        f"attempt {attempt} of job {job.id} is not current "
        f"(job is {job.status} at attempt {job.attempt}): the lease was lost"
    )


def _require_claimed(job: Job, attempt: int) -> None:
    """The attempt is the job's current one and was claimed (running or just ended)."""
    if job.attempt != attempt or job.status not in _CLAIMED or job.runner is None:
        raise _lease_lost(job, attempt)


def _require_running(job: Job, attempt: int) -> None:
    if job.attempt != attempt or job.status != JobStatus.RUNNING:
        raise _lease_lost(job, attempt)


# --- registration ---------------------------------------------------------------------------


@router.post("/workers")
def register_worker(body: RegisterBody, session: SessionDep) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    for entry in body.images:
        item: dict[str, Any] = {
            "image": entry.image,
            "arches": entry.arches,
            "default_arch": entry.default_arch or (entry.arches[0] if entry.arches else None),
        }
        if entry.release is not None:  # an older worker sends none: no alias known
            item["release"] = entry.release
        images.append(item)
    for _ in range(2):  # two workers registering the same new name race on the INSERT
        worker = session.get(Worker, body.name)
        if worker is None:
            session.add(Worker(name=body.name, images=images, last_seen=utcnow()))
        else:
            worker.images = images
            worker.last_seen = utcnow()
        try:
            session.commit()
            break
        except IntegrityError:
            session.rollback()
    _log.info("worker.registered", worker=body.name, images=len(images))
    return {}


# --- claim ----------------------------------------------------------------------------------


def _secrets_for(
    request: Request, session: Session, job: Job
) -> tuple[list[ClaimedSecret], list[dict[str, str]]]:
    """(decrypted secrets, problems) for the secrets the job's manifest references."""
    refs: Sequence[str]
    if job.secret_refs is not None:
        refs = job.secret_refs  # parsed at submit
    else:
        # A job from before revision 0006: parse its manifest once more. The limits were
        # checked at submit; they may have been lowered since.
        try:
            refs = parse_manifest(
                job.manifest, max_size=len(job.manifest.encode()) + 1, max_artifacts=2**31
            ).secrets
        except ManifestError:
            refs = ()  # accepted at submit; a parser change since must not strand the job
    box = request.app.state.secret_box
    found: list[ClaimedSecret] = []
    problems: list[dict[str, str]] = []
    for i, ref in enumerate(refs):
        secret = resolve_secret(session, job.owner_id, ref)
        if secret is None:
            problems.append({"field": f"secrets[{i}]", "reason": f"secret {ref!r} not found"})
            continue
        try:
            data = box.decrypt(secret.data)
        except (SecretsDisabled, ValueError) as exc:
            problems.append({"field": f"secrets[{i}]", "reason": f"secret {ref!r}: {exc}"})
            continue
        found.append(
            ClaimedSecret(
                uuid=secret.uuid,
                name=secret.name,
                type=secret.type,
                data_b64=base64.b64encode(data).decode("ascii"),
                path=secret.path,
                mode=secret.mode,
                ref=ref,
            )
        )
    return found, problems


def _claim_refusal(job: Job, attempt: int) -> ApiError | None:
    if job.cancel_requested or job.status == JobStatus.CANCELLED:
        return _conflict(f"job {job.id} was cancelled")
    if attempt != job.attempt:
        return _conflict(f"attempt {attempt} of job {job.id} is stale (current: {job.attempt})")
    if job.status != JobStatus.QUEUED:
        return _conflict(f"attempt {attempt} of job {job.id} was already claimed ({job.status})")
    return None


@router.post("/jobs/{job_id}/claim")
def claim(request: Request, job_id: int, body: ClaimBody, session: SessionDep) -> ClaimAnswer:
    config = get_config(request)
    job = _job(session, job_id)
    refusal = _claim_refusal(job, body.attempt)
    if refusal is not None:
        raise refusal
    log = _log.bind(job_id=job_id, attempt=body.attempt, worker=body.worker)

    secrets: list[ClaimedSecret] = []
    if job.secrets:
        secrets, problems = _secrets_for(request, session, job)
        if problems:
            # builds.sr.ht aborts a job whose secret is missing; say why in its setup log.
            _end_unclaimable(request, session, job, body, problems)
            raise ApiError(409, problems)

    # A queued job's `updated` is when it was (re)queued (the API's queue-age gauge reads
    # it the same way): the worker's queue-wait histogram starts there.
    queued_since = job.updated
    now = utcnow()
    claimed = transition_job(
        session,
        job_id,
        expect=JobStatus.QUEUED,
        to=JobStatus.RUNNING,
        attempt=body.attempt,
        # a cancel that lands between the read above and this UPDATE must win
        extra_where=[Job.cancel_requested.is_(False)],
        runner=body.worker,
        lease_expires=lease_deadline(config.api.lease, now),
        updated=now,
    )
    if not claimed:
        session.rollback()
        session.refresh(job)
        raise _claim_refusal(job, body.attempt) or _conflict("claim lost a race")
    if body.attempt > 1:
        # A new attempt starts from scratch: no logs or artifacts of the one before.
        reset_tasks(session, job_id)
        session.execute(delete(Artifact).where(Artifact.job_id == job_id))
        store = _store(request)
        store.reset_logs(job_id)
        store.remove_artifacts(job_id)
    session.execute(
        update(Worker)
        .where(Worker.name == body.worker)
        .values(last_seen=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(job)
    log.info("job.claimed")
    origin = config.api.origin
    return ClaimAnswer(
        job_id=job.id,
        attempt=job.attempt,
        manifest=job.manifest,
        secrets=secrets,
        job_url=job_page_url(origin, job.owner.username, job.id),
        owner=job.owner.username,
        owner_canonical_name=job.owner.canonical_name,
        owner_email=job.owner.email,
        image=job.image,
        image_release=job.image_release,
        arch=job.arch,
        note=job.note,
        tags=list(job.tags or []),
        tasks=[task.name for task in job.tasks],
        secrets_enabled=job.secrets,
        lease_seconds=config.api.lease,
        timeout_seconds=config.api.job_timeout,
        queued_at=queued_since.isoformat(),
    )


def _end_unclaimable(
    request: Request, session: Session, job: Job, body: ClaimBody, problems: list[dict[str, str]]
) -> None:
    reason = "; ".join(p["reason"] for p in problems)
    failed = transition_job(
        session,
        job.id,
        expect=JobStatus.QUEUED,
        to=JobStatus.FAILED,
        attempt=body.attempt,
        runner=body.worker,
        reason=reason,
    )
    if failed:
        settle_tasks(session, job.id, JobStatus.FAILED)
        record_job_triggers(session, job.id)
        store = _store(request)
        size = store.log_size(job.id) or 0
        store.append_log(job.id, None, size, f"Error: {reason}\n".encode())
    session.commit()
    _log.warning("job.unclaimable", job_id=job.id, attempt=body.attempt, reason=reason)


# --- heartbeat, tasks -----------------------------------------------------------------------


@router.post("/jobs/{job_id}/heartbeat")
def heartbeat(
    request: Request, job_id: int, body: AttemptBody, session: SessionDep
) -> HeartbeatAnswer:
    config = get_config(request)
    job = _job(session, job_id)
    if job.attempt == body.attempt and job.status == JobStatus.CANCELLED and job.runner is not None:
        return HeartbeatAnswer(cancelled=True)  # cancelled while running: keep telling it
    renewed = update_job_while(
        session,
        job_id,
        status=JobStatus.RUNNING,
        attempt=body.attempt,
        lease_expires=lease_deadline(config.api.lease),
        # `updated` stays: it marks status changes (sr.ht shows updated - created as the
        # duration), and a heartbeat is not one; without it, onupdate would bump it.
        updated=Job.updated,
    )
    if not renewed:
        session.rollback()
        session.refresh(job)
        raise _lease_lost(job, body.attempt)
    session.commit()
    session.refresh(job)
    return HeartbeatAnswer(cancelled=bool(job.cancel_requested))


@router.post("/jobs/{job_id}/image")
def report_image(job_id: int, body: ImageBody, session: SessionDep) -> dict[str, Any]:
    """The image the worker booted: its release and digest go into the job record."""
    job = _job(session, job_id)
    recorded = update_job_while(
        session,
        job_id,
        status=JobStatus.RUNNING,
        attempt=body.attempt,
        image_release=body.release,
        image_digest=body.digest,
        updated=Job.updated,  # `updated` marks status changes (see heartbeat); not one
    )
    if not recorded:
        session.rollback()
        session.refresh(job)
        raise _lease_lost(job, body.attempt)
    session.commit()
    _log.info("job.image", job_id=job_id, release=body.release, digest=body.digest)
    return {}


def _task(session: Session, job: Job, name: str) -> Task:
    task = session.scalars(select(Task).where(Task.job_id == job.id, Task.name == name)).first()
    if task is None:
        raise ApiError.reason(f"job {job.id} has no task {name!r}", 404)
    return task


@router.put("/jobs/{job_id}/tasks/{name}")
def set_task_status(job_id: int, name: str, body: TaskBody, session: SessionDep) -> dict[str, Any]:
    job = _job(session, job_id)
    _require_running(job, body.attempt)
    task = _task(session, job, name)
    if task.status != body.status:
        try:
            check_transition(TaskStatus(task.status), body.status)
        except IllegalTransition as exc:
            raise ApiError.field("status", str(exc)) from None
        task.status = body.status.value
        task.updated = utcnow()
        session.commit()
    return {}


# --- logs -----------------------------------------------------------------------------------


def _append(
    request: Request,
    job_id: int,
    task: str | None,
    attempt: int,
    offset: int,
    data: bytes,
) -> int:
    with request.app.state.sessionmaker() as session:
        job = _job(session, job_id)
        _require_claimed(job, attempt)
        if task is not None:
            _task(session, job, task)
    try:
        return _store(request).append_log(job_id, task, offset, data)
    except LogGap as gap:
        raise _GapConflict(gap) from None
    except InvalidName as exc:
        raise ApiError.reason(str(exc), 404) from None


def _size_response(size: int) -> LogAnswer:
    return LogAnswer(size=size)


async def _append_request(
    request: Request, job_id: int, task: str | None, attempt: int, offset: int
) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_LOG_CHUNK:
        raise ApiError.reason(f"log chunks are limited to {MAX_LOG_CHUNK} bytes", 413)
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > MAX_LOG_CHUNK:
            raise ApiError.reason(f"log chunks are limited to {MAX_LOG_CHUNK} bytes", 413)
    try:
        size = await run_in_threadpool(_append, request, job_id, task, attempt, offset, bytes(data))
    except _GapConflict as exc:
        # The gap answer carries the current size, so the worker resends from there.
        return JSONResponse({"errors": exc.errors, "size": exc.size}, status_code=409)
    return _size_response(size)


@router.put("/jobs/{job_id}/logs/{log}", max_body_size=MAX_LOG_CHUNK)
async def append_log(
    request: Request, job_id: int, log: str, offset: OffsetQuery, attempt: AttemptQuery
) -> Any:
    task = None if log == SETUP_LOG_SEGMENT else log
    return await _append_request(request, job_id, task, attempt, offset)


@router.put("/jobs/{job_id}/tasks/{name}/log", max_body_size=MAX_LOG_CHUNK)
async def append_task_log(
    request: Request, job_id: int, name: str, offset: OffsetQuery, attempt: AttemptQuery
) -> Any:
    return await _append_request(request, job_id, name, attempt, offset)


# --- artifacts ------------------------------------------------------------------------------


def _artifact_target(
    request: Request, job_id: int, attempt: int, path: str
) -> tuple[str, str, int]:
    """(storage key, name, max size) for an upload, after checking the job and the count."""
    config = get_config(request)
    name = posixpath.basename(path.rstrip("/"))
    with request.app.state.sessionmaker() as session:
        job = _job(session, job_id)
        _require_running(job, attempt)
        names = set(session.scalars(select(Artifact.name).where(Artifact.job_id == job_id)))
        if name not in names and len(names) >= config.api.max_artifacts:
            raise ApiError.field(
                "path", f"no more than {config.api.max_artifacts} artifacts per job are accepted"
            )
        try:
            key = _store(request).artifact_key(job_id, job.artifact_segment, name)
        except InvalidName as exc:
            raise ApiError.field("path", str(exc)) from None
    return key, name, config.api.max_artifact_size


def _record_artifact(
    request: Request, job_id: int, attempt: int, path: str, name: str, key: str, size: int
) -> ArtifactAnswer:
    with request.app.state.sessionmaker() as session:
        job = _job(session, job_id)
        _require_running(job, attempt)
        artifact = session.scalars(
            select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
        ).first()
        if artifact is None:
            artifact = Artifact(job_id=job_id, path=path, name=name, storage_key=key, size=size)
            session.add(artifact)
        else:  # a retried upload replaces the earlier copy
            artifact.path, artifact.size, artifact.storage_key = path, size, key
            artifact.created = utcnow()
        session.commit()
        return ArtifactAnswer(
            name=name, url=artifact_url(get_config(request).api.origin, artifact), size=size
        )


# The handler streams to disk under [api] max-artifact-size (known only at run time).
@router.put("/jobs/{job_id}/artifacts", max_body_size=ARTIFACT_BODY_LIMIT)
async def upload_artifact(
    request: Request,
    job_id: int,
    attempt: AttemptQuery,
    path: Annotated[str, Query(min_length=1, max_length=4096)],
) -> Any:
    key, name, max_size = await run_in_threadpool(_artifact_target, request, job_id, attempt, path)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_size:
        raise ApiError.field("path", f"artifact exceeds the maximum size of {max_size} bytes", 413)
    store = _store(request)
    try:
        with store.artifact_writer(key, max_size) as sink:
            async for chunk in request.stream():
                if chunk:
                    await run_in_threadpool(sink.write, chunk)
    except ArtifactTooLarge as exc:
        raise ApiError.field("path", str(exc), 413) from None
    result = await run_in_threadpool(
        _record_artifact, request, job_id, attempt, path, name, key, sink.size
    )
    _log.info("artifact.stored", job_id=job_id, attempt=attempt, name=name, size=sink.size)
    return result


# --- the end of an attempt ------------------------------------------------------------------


@router.post("/jobs/{job_id}/finish")
def finish(request: Request, job_id: int, body: FinishBody, session: SessionDep) -> dict[str, Any]:
    config = get_config(request)
    job = _job(session, job_id)
    if job.attempt == body.attempt and job.status in TERMINAL_JOB_STATUSES:
        return {}  # a retried finish, or the attempt already ended another way
    _require_running(job, body.attempt)
    log = _log.bind(job_id=job_id, attempt=body.attempt)
    status = JobStatus(body.status)
    if job.cancel_requested and status != JobStatus.SUCCESS:
        status = JobStatus.CANCELLED  # the user asked; how the build died on the way is secondary
    retry = (
        body.infrastructure
        and status in (JobStatus.FAILED, JobStatus.TIMEOUT)
        and body.attempt < config.api.max_attempts
    )
    reason = body.reason
    if retry:
        done = requeue(session, job_id, body.attempt, f"infrastructure failure: {reason}")
    else:
        done = end_running(session, job_id, body.attempt, status, reason)
    session.commit()
    if not done:
        session.refresh(job)
        if not (job.attempt == body.attempt and job.status in TERMINAL_JOB_STATUSES):
            raise _lease_lost(job, body.attempt)
    log.info("job.finished", status=status, requeued=retry, reason=reason)
    return {}


@router.post("/jobs/{job_id}/release")
def release(
    request: Request, job_id: int, body: ReleaseBody, session: SessionDep
) -> dict[str, Any]:
    job = _job(session, job_id)
    if job.attempt != body.attempt or job.status != JobStatus.RUNNING:
        return {}  # already released, requeued by the reaper, or ended: nothing to give back
    reason = body.reason or "released by the worker"
    if job.cancel_requested:
        end_running(session, job_id, body.attempt, JobStatus.CANCELLED, f"cancelled; {reason}")
    else:
        requeue(session, job_id, body.attempt, reason)
    session.commit()
    _log.info("job.released", job_id=job_id, attempt=body.attempt, reason=reason)
    return {}
