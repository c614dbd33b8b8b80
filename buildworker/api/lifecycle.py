"""Job state changes shared by the job and job-group endpoints: start and cancel.

Both are conditional UPDATEs, so concurrent requests cannot both succeed: of two starts
only one matches `status = 'pending'`, and only that one writes an outbox row.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from buildworker.api.metrics import metrics_of
from buildworker.db.models import Job, utcnow
from buildworker.db.outbox import enqueue
from buildworker.triggers.dispatch import record_job_triggers

__all__ = ["cancel", "start_pending"]


def start_pending(session: Session, job: Job) -> bool:
    """pending → queued with the next attempt and one outbox row, atomically.

    The conditional UPDATE is what makes a start happen once: of two concurrent starts
    only one matches `status = 'pending'`. The caller commits. False if not pending.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "pending")
        .values(status="queued", attempt=Job.attempt + 1, updated=utcnow())
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    session.refresh(job)
    enqueue(session, job)
    metrics_of(session).job_submitted()
    return True


def cancel(session: Session, job: Job, reason: str) -> str:
    """Cancel `job`: pending/queued → cancelled now, running → cancel_requested.

    Returns the resulting state: "cancelled", "requested", or the terminal status the job
    already had. The caller commits.
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_(("pending", "queued")))
        .values(status="cancelled", reason=reason, lease_expires=None, updated=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) == 1:
        session.refresh(job)
        record_job_triggers(session, job)
        return "cancelled"
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "running")
        .values(cancel_requested=True, updated=now)
        .execution_options(synchronize_session=False)
    )
    session.refresh(job)
    if getattr(result, "rowcount", 0) == 1:
        return "requested"
    return job.status
