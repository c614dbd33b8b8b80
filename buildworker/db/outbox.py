"""Transactional outbox: a job is enqueued by a row committed with the job itself.

The publisher (buildworker.api.publisher) sends unpublished rows to RabbitMQ and stamps
`published_at`; the unique (job_id, attempt) pair keeps one start from being published twice.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from buildworker.db.models import Job, Outbox

__all__ = ["enqueue", "enqueue_attempt"]


def enqueue(session: Session, job: Job) -> Outbox:
    """Add an outbox row for (job.id, job.attempt) in the caller's transaction.

    The caller has already set `job.attempt` for this enqueue and commits; nothing is
    published until that commit succeeds.
    """
    if job.id is None:
        session.flush()
    return enqueue_attempt(session, job.id, job.attempt)


def enqueue_attempt(session: Session, job_id: int, attempt: int) -> Outbox:
    """Add an outbox row for attempt ``attempt`` of job ``job_id`` in the caller's transaction.

    For callers that moved the job with a bulk UPDATE (the reaper's requeue) and so hold no
    up-to-date `Job`; the caller commits.
    """
    row = Outbox(job_id=job_id, attempt=attempt)
    session.add(row)
    return row
