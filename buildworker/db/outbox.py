"""Transactional outbox: a job is enqueued by a row committed with the job itself.

The publisher (buildworker.api.publisher) sends unpublished rows to RabbitMQ and stamps
`published_at`; the unique (job_id, attempt) pair keeps one start from being published twice.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from buildworker.db.models import Job, Outbox

__all__ = ["enqueue"]


def enqueue(session: Session, job: Job) -> Outbox:
    """Add an outbox row for (job.id, job.attempt) in the caller's transaction.

    The caller has already set `job.attempt` for this enqueue and commits; nothing is
    published until that commit succeeds.
    """
    if job.id is None:
        session.flush()
    row = Outbox(job_id=job.id, attempt=job.attempt)
    session.add(row)
    return row
