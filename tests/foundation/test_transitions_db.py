"""buildworker.db.transitions on a real database: compare-and-set, one winner, no illegal write.

Runs on SQLite and on a fresh PostgreSQL database (the fixtures of tests/conftest.py).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from buildworker.db.engine import make_engine, make_sessionmaker
from buildworker.db.migrate import upgrade
from buildworker.db.models import Job, Task, User
from buildworker.db.transitions import (
    reset_tasks,
    transition_job,
    transition_tasks,
    update_job_while,
)
from buildworker.jobstate import IllegalTransition, JobStatus, TaskStatus


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    engine = make_engine(url)
    upgrade(url, engine=engine)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def make_job(
    sessions: sessionmaker[Session], status: JobStatus = JobStatus.QUEUED, attempt: int = 1
) -> int:
    with sessions() as session:
        user = User(username=f"user-{uuid.uuid4().hex[:8]}")
        session.add(user)
        session.flush()
        job = Job(
            owner_id=user.id,
            manifest="image: debian/bookworm\n",
            image="debian/bookworm",
            arch="amd64",
            status=status.value,
            attempt=attempt,
            tasks=[Task(position=0, name="build"), Task(position=1, name="test")],
        )
        session.add(job)
        session.commit()
        return job.id


def job_row(sessions: sessionmaker[Session], job_id: int) -> tuple[str, int, str | None]:
    with sessions() as session:
        job = session.get_one(Job, job_id)
        return job.status, job.attempt, job.runner


def claim(sessions: sessionmaker[Session], job_id: int, runner: str) -> bool:
    with sessions() as session:
        won = transition_job(
            session,
            job_id,
            expect=JobStatus.QUEUED,
            to=JobStatus.RUNNING,
            attempt=1,
            runner=runner,
        )
        session.commit()
        return won


def test_of_two_claims_seen_from_the_same_state_exactly_one_wins(
    sessions: sessionmaker[Session],
) -> None:
    job_id = make_job(sessions)
    # Both callers read (queued, attempt 1) before either writes
    assert job_row(sessions, job_id)[:2] == ("queued", 1)
    assert job_row(sessions, job_id)[:2] == ("queued", 1)
    assert claim(sessions, job_id, "host1") is True
    assert claim(sessions, job_id, "host2") is False
    assert job_row(sessions, job_id) == ("running", 1, "host1")


def test_concurrent_compare_and_sets_on_one_attempt_let_exactly_one_through(
    sessions: sessionmaker[Session],
) -> None:
    job_id = make_job(sessions)
    barrier = threading.Barrier(4)
    results: dict[str, bool] = {}

    def racer(name: str) -> None:
        barrier.wait()
        results[name] = claim(sessions, job_id, name)

    threads = [threading.Thread(target=racer, args=(f"host{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [name for name, won in results.items() if won]
    assert len(results) == 4 and len(winners) == 1
    assert job_row(sessions, job_id) == ("running", 1, winners[0])


def test_a_stale_attempt_does_not_match(sessions: sessionmaker[Session]) -> None:
    job_id = make_job(sessions, JobStatus.RUNNING, attempt=2)
    with sessions() as session:
        assert not transition_job(
            session, job_id, expect=JobStatus.RUNNING, to=JobStatus.SUCCESS, attempt=1
        )
        assert not update_job_while(session, job_id, status=JobStatus.RUNNING, attempt=1, note="x")
        session.commit()
    assert job_row(sessions, job_id) == ("running", 2, None)


@pytest.mark.parametrize(
    ("status", "expect", "to"),
    [
        (JobStatus.SUCCESS, JobStatus.SUCCESS, JobStatus.RUNNING),
        (JobStatus.PENDING, JobStatus.PENDING, JobStatus.RUNNING),
        # one illegal pair among legal ones is enough to refuse the whole call
        (JobStatus.QUEUED, {JobStatus.QUEUED, JobStatus.FAILED}, JobStatus.CANCELLED),
    ],
)
def test_an_illegal_transition_raises_and_leaves_the_row_unchanged(
    sessions: sessionmaker[Session],
    status: JobStatus,
    expect: JobStatus | set[JobStatus],
    to: JobStatus,
) -> None:
    job_id = make_job(sessions, status)
    with sessions() as session:
        with pytest.raises(IllegalTransition, match=f"job cannot go from .* to {to}"):
            transition_job(session, job_id, expect=expect, to=to, attempt=1, runner="host1")
        session.commit()
    assert job_row(sessions, job_id) == (status.value, 1, None)


def test_entering_queued_starts_the_next_attempt(sessions: sessionmaker[Session]) -> None:
    started = make_job(sessions, JobStatus.PENDING, attempt=0)
    requeued = make_job(sessions, JobStatus.RUNNING, attempt=1)
    with sessions() as session:
        assert transition_job(session, started, expect=JobStatus.PENDING, to=JobStatus.QUEUED)
        assert transition_job(
            session, requeued, expect=JobStatus.RUNNING, to=JobStatus.QUEUED, attempt=1
        )
        session.commit()
    assert job_row(sessions, started)[:2] == ("queued", 1)
    assert job_row(sessions, requeued)[:2] == ("queued", 2)


def test_status_and_attempt_cannot_be_smuggled_in_as_values(
    sessions: sessionmaker[Session],
) -> None:
    job_id = make_job(sessions)
    with sessions() as session:
        with pytest.raises(TypeError):
            transition_job(
                session, job_id, expect=JobStatus.QUEUED, to=JobStatus.RUNNING, status="failed"
            )
        smuggled: dict[str, Any] = {"status": "failed"}
        with pytest.raises(TypeError):
            update_job_while(session, job_id, status=JobStatus.QUEUED, **smuggled)
        with pytest.raises(ValueError, match="names no status"):
            transition_job(session, job_id, expect=set(), to=JobStatus.RUNNING)
    assert job_row(sessions, job_id) == ("queued", 1, None)


def task_statuses(sessions: sessionmaker[Session], job_id: int) -> list[str]:
    with sessions() as session:
        return [task.status for task in session.get_one(Job, job_id).tasks]


def test_task_transitions_move_only_the_tasks_in_the_expected_status(
    sessions: sessionmaker[Session],
) -> None:
    job_id = make_job(sessions, JobStatus.RUNNING)
    with sessions() as session:
        moved = transition_tasks(session, job_id, expect=TaskStatus.PENDING, to=TaskStatus.RUNNING)
        session.commit()
    assert moved == 2 and task_statuses(sessions, job_id) == ["running", "running"]
    with sessions() as session:
        with pytest.raises(IllegalTransition, match="task cannot go from running to skipped"):
            transition_tasks(session, job_id, expect=TaskStatus.RUNNING, to=TaskStatus.SKIPPED)
        session.commit()
    assert task_statuses(sessions, job_id) == ["running", "running"]
    with sessions() as session:
        assert reset_tasks(session, job_id) == 2
        session.commit()
    assert task_statuses(sessions, job_id) == ["pending", "pending"]
