"""Recording deliveries in the transaction that ends a job; group triggers fire once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from trigger_helpers import add_job, add_user, manifest_with

from buildworker.db.engine import make_engine, make_sessionmaker
from buildworker.db.migrate import upgrade
from buildworker.db.models import Job, JobGroup, TriggerDelivery
from buildworker.triggers.dispatch import record_group_triggers, record_job_triggers

THREE_TRIGGERS = """\
  - action: email
    condition: always
    to: Alice <alice@example.org>
    in_reply_to: <thread@example.org>
  - action: webhook
    condition: success
    url: http://127.0.0.1:9/hook
  - action: email
    condition: failure
    cc: oncall@example.org
"""


def end_job(session: Session, job_id: int, status: str) -> None:
    """What the API tier does: a conditional UPDATE (no ORM sync), then record, same txn."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(status=status)
        .execution_options(synchronize_session=False)
    )
    record_job_triggers(session, job_id)


def deliveries(session: Session) -> list[TriggerDelivery]:
    return list(session.scalars(select(TriggerDelivery).order_by(TriggerDelivery.id)))


@pytest.mark.parametrize(
    "status,expected",
    [("success", [0, 1]), ("failed", [0, 2]), ("timeout", [0, 2]), ("cancelled", [0, 2])],
)
def test_records_the_triggers_whose_condition_matches(
    sessions: sessionmaker[Session], status: str, expected: list[int]
) -> None:
    with sessions() as session:
        job = add_job(session, add_user(session), manifest=manifest_with(THREE_TRIGGERS))
        session.commit()
        end_job(session, job.id, status)
        session.commit()
    with sessions() as session:
        rows = deliveries(session)
        assert [row.index for row in rows] == expected
        assert {row.fired_status for row in rows} == {status}
        assert all(row.status == "pending" and row.attempts == 0 for row in rows)
        first = rows[0]
        assert (first.action, first.condition, first.job_id, first.group_id) == (
            "email",
            "always",
            job.id,
            None,
        )
        assert first.details == {
            "to": "Alice <alice@example.org>",
            "in_reply_to": "<thread@example.org>",
        }


def test_recording_twice_records_nothing_new(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        job = add_job(session, add_user(session), manifest=manifest_with(THREE_TRIGGERS))
        end_job(session, job.id, "failed")
        session.commit()
        assert record_job_triggers(session, job) == []
        session.commit()
        assert len(deliveries(session)) == 2


def test_rolled_back_status_change_records_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        job = add_job(session, add_user(session), manifest=manifest_with(THREE_TRIGGERS))
        session.commit()
        end_job(session, job.id, "failed")
        session.rollback()
        assert deliveries(session) == []


def test_a_job_that_is_not_terminal_records_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        job = add_job(session, add_user(session), manifest=manifest_with(THREE_TRIGGERS))
        assert record_job_triggers(session, job) == []
        session.commit()
        assert deliveries(session) == []


def _group(session: Session, triggers: list[dict[str, Any]], statuses: list[str]) -> JobGroup:
    owner = add_user(session)
    group = JobGroup(owner_id=owner.id, note="release", triggers=triggers)
    session.add(group)
    session.flush()
    for status in statuses:
        add_job(session, owner, manifest=manifest_with("  []"), status=status, group=group)
    session.commit()
    return group


GROUP_TRIGGERS: list[dict[str, Any]] = [
    {"action": "email", "condition": "success", "to": "team@example.org"},
    {"action": "webhook", "condition": "failure", "url": "http://127.0.0.1:9/g"},
    {"action": "email", "condition": "always", "to": "log@example.org", "cc": None},
]


def test_group_triggers_fire_once_when_the_last_job_ends(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        group = _group(session, GROUP_TRIGGERS, ["running", "running", "running"])
        ids = [job.id for job in group.jobs]
        # When the first two jobs end, nothing fires for the group
        for job_id in ids[:2]:
            end_job(session, job_id, "success")
            session.commit()
            assert deliveries(session) == []
        # When the last one ends, the group's success triggers fire
        end_job(session, ids[2], "success")
        session.commit()
        rows = deliveries(session)
        assert [(r.group_id, r.job_id, r.index, r.fired_status) for r in rows] == [
            (group.id, None, 0, "success"),
            (group.id, None, 2, "success"),
        ]
        assert rows[1].details == {"to": "log@example.org"}
        # And asking again (another path, a retry) adds nothing
        assert record_group_triggers(session, group.id) == []


def test_group_success_condition_uses_the_group_status(sessions: sessionmaker[Session]) -> None:
    # sr.ht [BUG]: a group whose *last* job succeeded fired "success" though another failed.
    with sessions() as session:
        group = _group(session, GROUP_TRIGGERS, ["running", "running"])
        first, last = (job.id for job in group.jobs)
        end_job(session, first, "failed")
        session.commit()
        end_job(session, last, "success")
        session.commit()
        rows = deliveries(session)
        assert [(r.index, r.action, r.fired_status) for r in rows] == [
            (1, "webhook", "failed"),
            (2, "email", "failed"),
        ]


def test_concurrent_last_jobs_fire_the_group_exactly_once(pg_url: str) -> None:
    """PostgreSQL, READ COMMITTED: two jobs of one group end in overlapping transactions."""
    upgrade(pg_url)
    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session:
            group = _group(session, GROUP_TRIGGERS, ["running", "running"])
            first, second = (job.id for job in group.jobs)
        one, two = sessions(), sessions()
        # Given both status updates in flight, neither committed
        for session, job_id in ((one, first), (two, second)):
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status="success")
                .execution_options(synchronize_session=False)
            )
        # When the first records its triggers (the second job still looks running to it)
        assert record_job_triggers(one, first) == []
        # and the second records concurrently, before the first commits
        recorded: list[list[TriggerDelivery]] = []
        errors: list[BaseException] = []

        def second_finisher() -> None:
            try:
                recorded.append(record_job_triggers(two, second))
                two.commit()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=second_finisher)
        thread.start()
        time.sleep(0.5)  # without the group lock, the second would read (and miss) by now
        one.commit()
        thread.join(30)
        assert errors == [] and not thread.is_alive()
        # Then the group's triggers were recorded once: not twice (sr.ht's race), not never
        assert sorted(row.index for row in recorded[0]) == [0, 2]
        with sessions() as session:
            assert sorted(r.index for r in deliveries(session)) == [0, 2]
        one.close()
        two.close()
    finally:
        engine.dispose()
