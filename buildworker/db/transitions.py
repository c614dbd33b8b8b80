"""Job and task status changes as compare-and-set UPDATEs, checked against buildworker.jobstate.

Every job status change of the API tier goes through `transition_job`: one
``UPDATE jobs ... WHERE id = :id AND status IN (:expect) [AND attempt = :attempt]``. Of two
requests racing for the same job (a claim and a cancel, a reaper and a late finish, two API
processes) exactly one matches the row, on SQLite and PostgreSQL alike, and the loser learns
it from the return value instead of overwriting the winner. A move the state machine does not
allow raises `IllegalTransition` before any SQL is sent.

None of these functions commits: the caller does, together with whatever the change entails
(outbox row, triggers, settled tasks).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from buildworker.db.models import Job, Task, utcnow
from buildworker.jobstate import JobStatus, TaskStatus, check_transition

__all__ = ["reset_tasks", "transition_job", "transition_tasks", "update_job_while"]

_S = TypeVar("_S", JobStatus, TaskStatus)


def _statuses(kind: type[_S], expect: str | Collection[str]) -> list[_S]:
    """``expect`` as a sorted list of ``kind`` (a stable IN list keeps SQL statement caching
    useful). Plain strings are accepted: older callers pass the stored values."""
    found = [expect] if isinstance(expect, str) else list(expect)
    if not found:
        raise ValueError("expect names no status: the UPDATE could never match")
    return sorted({kind(status) for status in found})


def _rowcount(result: Any) -> int:
    # An UPDATE's result is a CursorResult, but Session.execute is typed as the generic Result.
    count: int = getattr(result, "rowcount", 0)
    return count


def _update_job(
    session: Session,
    job_id: int,
    where: Iterable[ColumnElement[bool]],
    values: dict[str, Any],
) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, *where)
        .values(**values)
        # The identity map is not updated: callers that go on using the Job refresh it.
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def _guard(
    expect: list[JobStatus], attempt: int | None, extra_where: Iterable[ColumnElement[bool]]
) -> list[ColumnElement[bool]]:
    where = [Job.status.in_([status.value for status in expect]), *extra_where]
    if attempt is not None:
        where.append(Job.attempt == attempt)
    return where


def transition_job(
    session: Session,
    job_id: int,
    *,
    expect: JobStatus | Collection[JobStatus],
    to: JobStatus,
    attempt: int | None = None,
    extra_where: Iterable[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    """Move job ``job_id`` from one of ``expect`` to ``to``, if it is still there.

    ``attempt`` (when given) must also still be the job's current attempt, and every clause
    of ``extra_where`` hold. ``values`` are further columns to set in the same UPDATE;
    ``updated`` defaults to now. Entering ``queued`` always starts a new attempt, so this
    sets ``attempt = attempt + 1`` itself: no caller can forget it.

    Returns whether this call won (the row matched). Raises `IllegalTransition` if any
    ``expect`` → ``to`` pair is not allowed, with nothing sent to the database.
    """
    expected, to = _statuses(JobStatus, expect), JobStatus(to)
    for old in expected:
        check_transition(old, to)
    if "status" in values or "attempt" in values:
        raise TypeError("status and attempt are set by transition_job itself")
    values.setdefault("updated", utcnow())
    if to == JobStatus.QUEUED:
        values["attempt"] = Job.attempt + 1
    return _update_job(
        session, job_id, _guard(expected, attempt, extra_where), {"status": to.value, **values}
    )


def update_job_while(
    session: Session,
    job_id: int,
    *,
    status: JobStatus,
    attempt: int | None = None,
    **values: Any,
) -> bool:
    """Set ``values`` on job ``job_id`` only while it is ``status`` (at ``attempt``), keeping
    the status: a lease renewal or a cancel request, which must not land on a job that has
    moved on. Returns whether the row matched."""
    if "status" in values:
        raise TypeError("a status change is a transition: use transition_job")
    return _update_job(session, job_id, _guard([JobStatus(status)], attempt, ()), values)


def transition_tasks(
    session: Session,
    job_id: int,
    *,
    expect: TaskStatus | Collection[TaskStatus],
    to: TaskStatus,
) -> int:
    """Move every task of job ``job_id`` that is in one of ``expect`` to ``to``; return how
    many moved. Raises `IllegalTransition` (nothing sent) for a pair the table refuses."""
    expected, to = _statuses(TaskStatus, expect), TaskStatus(to)
    for old in expected:
        check_transition(old, to)
    result = session.execute(
        update(Task)
        .where(Task.job_id == job_id, Task.status.in_([status.value for status in expected]))
        .values(status=to.value, updated=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


def reset_tasks(session: Session, job_id: int) -> int:
    """Every task of job ``job_id`` back to ``pending``: a new attempt runs them all again."""
    others = [status for status in TaskStatus if status is not TaskStatus.PENDING]
    return transition_tasks(session, job_id, expect=others, to=TaskStatus.PENDING)
