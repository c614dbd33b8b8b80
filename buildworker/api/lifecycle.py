"""Job state changes shared by the job and job-group endpoints: start and cancel.

Both are compare-and-set UPDATEs (buildworker.db.transitions), so concurrent requests cannot
both succeed: of two starts only one finds the job still pending, and only that one writes
an outbox row.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from buildworker.api.metrics import metrics_of
from buildworker.db.models import Job, utcnow
from buildworker.db.outbox import enqueue
from buildworker.db.transitions import transition_job, update_job_while
from buildworker.jobstate import JobStatus
from buildworker.triggers.dispatch import record_job_triggers

__all__ = ["cancel", "queue_pending", "start_pending"]


def queue_pending(session: Session, job: Job) -> bool:
    """pending → queued with the next attempt and one outbox row, atomically; `job` is
    refreshed. The caller commits. False (nothing changed) if the job is not pending."""
    if not transition_job(session, job.id, expect=JobStatus.PENDING, to=JobStatus.QUEUED):
        return False
    session.refresh(job)
    enqueue(session, job)
    return True


def start_pending(session: Session, job: Job) -> bool:
    """`queue_pending`, counted as a submitted job. The caller commits."""
    if not queue_pending(session, job):
        return False
    metrics_of(session).job_submitted()
    return True


def cancel(session: Session, job: Job, reason: str) -> str:
    """Cancel `job`: pending/queued → cancelled now, running → cancel_requested.

    Returns the resulting state: "cancelled", "requested", or the terminal status the job
    already had. The caller commits.
    """
    now = utcnow()
    if transition_job(
        session,
        job.id,
        expect={JobStatus.PENDING, JobStatus.QUEUED},
        to=JobStatus.CANCELLED,
        reason=reason,
        lease_expires=None,
        updated=now,
    ):
        session.refresh(job)
        record_job_triggers(session, job)
        return JobStatus.CANCELLED.value
    # A running job is stopped by its worker, which learns of the request from its next
    # heartbeat; it stays running until the worker reports the end.
    requested = update_job_while(
        session, job.id, status=JobStatus.RUNNING, cancel_requested=True, updated=now
    )
    session.refresh(job)
    if requested:
        return "requested"
    return job.status
