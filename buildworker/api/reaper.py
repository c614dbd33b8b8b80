"""The lease reaper, and the job transitions it shares with the internal API.

A claimed job carries a lease (`jobs.lease_expires`) that the worker renews with every
heartbeat. When a worker dies the lease lapses, and `reap` decides what becomes of the job:

- the user had asked to cancel it → ``cancelled`` (nobody is left to stop);
- attempts remain (``attempt < [api] max-attempts``) → back to ``queued`` with attempt + 1 and
  a new outbox row, so another worker picks it up (`requeue`);
- otherwise → ``failed``, with the reason in `jobs.reason`.

Every transition is a compare-and-set UPDATE on (id, attempt, status) through
`buildworker.db.transitions`: of a reaper and a late heartbeat or finish racing for the same
job, exactly one wins, on SQLite and PostgreSQL alike. Several API processes may run reapers
at once for the same reason.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from buildworker.api.metrics import metrics_of
from buildworker.db.models import Job, utcnow
from buildworker.db.outbox import enqueue_attempt
from buildworker.db.transitions import reset_tasks, transition_job, transition_tasks
from buildworker.jobstate import JobStatus, TaskStatus
from buildworker.service import ServiceThread
from buildworker.triggers.dispatch import record_job_triggers

__all__ = [
    "LeaseReaper",
    "end_running",
    "reap",
    "requeue",
    "settle_tasks",
]

_log = structlog.get_logger(__name__)


def settle_tasks(session: Session, job_id: int, status: str) -> None:
    """Give the tasks of a job that ended with ``status`` (a `JobStatus` or its value) a
    final status of their own: pending ones were never run (skipped), a running one ended
    with the job."""
    transition_tasks(session, job_id, expect=TaskStatus.PENDING, to=TaskStatus.SKIPPED)
    ended = TaskStatus.SUCCESS if status == JobStatus.SUCCESS else TaskStatus.FAILED
    transition_tasks(session, job_id, expect=TaskStatus.RUNNING, to=ended)


def requeue(session: Session, job_id: int, attempt: int, reason: str) -> bool:
    """running attempt ``attempt`` → queued attempt + 1, tasks pending again, one outbox row.

    False (and nothing changed) when the job is no longer running that attempt. The caller
    commits.
    """
    requeued = transition_job(
        session,
        job_id,
        expect=JobStatus.RUNNING,
        to=JobStatus.QUEUED,
        attempt=attempt,
        runner=None,
        lease_expires=None,
        reason=reason,
    )
    if not requeued:
        return False
    reset_tasks(session, job_id)
    enqueue_attempt(session, job_id, attempt + 1)
    metrics_of(session).job_requeued()
    _log.info("job.requeued", job_id=job_id, attempt=attempt + 1, reason=reason)
    return True


def end_running(
    session: Session, job_id: int, attempt: int, status: str, reason: str | None
) -> bool:
    """running attempt ``attempt`` → terminal ``status`` (a `JobStatus` or its value) with
    ``reason``; tasks settled.

    False when the job is no longer running that attempt. The caller commits.
    """
    ended = transition_job(
        session,
        job_id,
        expect=JobStatus.RUNNING,
        to=JobStatus(status),
        attempt=attempt,
        lease_expires=None,
        reason=reason,
    )
    if not ended:
        return False
    settle_tasks(session, job_id, status)
    record_job_triggers(session, job_id)
    _log.info("job.ended", job_id=job_id, attempt=attempt, status=status, reason=reason)
    return True


def reap(session: Session, *, max_attempts: int, now: datetime | None = None) -> list[int]:
    """Handle every running job whose lease lapsed before ``now``; return their ids.

    Commits once per job, so one job that cannot be handled does not hold back the rest.
    """
    now = now or utcnow()
    lapsed = session.execute(
        select(Job.id, Job.attempt, Job.runner, Job.cancel_requested)
        .where(Job.status == JobStatus.RUNNING, Job.lease_expires < now)
        .order_by(Job.id)
        .limit(500)
    ).all()
    handled = []
    for job_id, attempt, runner, cancel_requested in lapsed:
        lost = f"worker {runner or '?'} stopped renewing its lease (attempt {attempt})"
        if cancel_requested:
            outcome = "cancelled"
            done = end_running(session, job_id, attempt, JobStatus.CANCELLED, f"cancelled; {lost}")
        elif attempt < max_attempts:
            outcome = "requeued"
            done = requeue(session, job_id, attempt, lost)
        else:
            outcome = "failed"
            done = end_running(
                session,
                job_id,
                attempt,
                JobStatus.FAILED,
                f"{lost}; gave up after {attempt} attempts",
            )
        session.commit()
        if done:
            handled.append(job_id)
            metrics_of(session).lease_reaped(outcome)
    return handled


class LeaseReaper(ServiceThread):
    """Runs `reap` every ``interval_s`` seconds in its own thread until stopped.

    Parameters:
        sessionmaker: sessions on the API's database.
        max_attempts: ``[api] max-attempts``.
        interval_s: seconds between passes.
    """

    def __init__(
        self, sessionmaker: sessionmaker[Session], *, max_attempts: int, interval_s: float
    ) -> None:
        self._sessionmaker = sessionmaker
        self._max_attempts = max_attempts
        self._interval_s = interval_s
        super().__init__()

    thread_name = "lease-reaper"

    def run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                with self._sessionmaker() as session:
                    reap(session, max_attempts=self._max_attempts)
            except Exception:
                # The database went away for a moment: log, and try again next pass.
                _log.exception("reaper.error")


def lease_deadline(lease_s: float, now: datetime | None = None) -> datetime:
    """When a lease taken or renewed ``now`` lapses."""
    return (now or utcnow()) + timedelta(seconds=lease_s)
