"""The job lifecycle as a hypothesis state machine, on SQLite and PostgreSQL.

Random sequences of submit (with and without ``execute``), start, cancel (the public API),
claim, heartbeat, task status, finish (every final status, with and without
``infrastructure``) and release (the internal API), lease lapses followed by one reaper
pass (`reap`), and outbox publishing (`OutboxPublisher.publish_pending` on a confirm-mode channel of the real RabbitMQ)
run against the real app and database. A plain model (job id → expected status, attempt,
cancel flag, runner, lease, tasks) predicts every answer (status codes and bodies); after
each step the database must agree with it and these invariants hold:

- a finished job (success, failed, timeout, cancelled) never changes status, attempt,
  runner, reason or task statuses again;
- an attempt is claimed at most once: a second claim of the same (job, attempt) is a 409;
- no job is running without a live lease for longer than the lease plus one reap interval
  (by the model's clock, which only moves in the lapse step, and a reaper pass follows
  every move: so no running job ever has an expired lease);
- every queued job has exactly one outbox row (sent or not) for its current attempt, and
  none for a later one.

The clock is the model's: `utcnow` of the internal API and of the reaper (where leases are
computed) is patched to return it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pika
import pytest
from api_helpers import MANIFEST, WORKER_TOKEN, Account, make_account, with_api
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, select

import buildworker.api.internal as internal_module
import buildworker.api.reaper as reaper_module
from buildworker.api.app import create_app
from buildworker.api.publisher import OutboxPublisher
from buildworker.api.reaper import reap
from buildworker.config import Config
from buildworker.db.models import Job, Outbox, Task, utcnow
from buildworker.jobstate import TASK_TRANSITIONS, JobStatus, TaskStatus, is_terminal

WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}
LEASE_S = 60.0
REAP_INTERVAL_S = 10.0
MAX_ATTEMPTS = 2  # low, so that giving up after the last attempt is reached often
MAX_LIVE_JOBS = 3  # unfinished jobs at once: enough to interleave, few enough to revisit each
MAX_JOBS = 10  # per example

#: Small enough for well under 60 s per database, big enough to reach every status.
STATE_MACHINE_SETTINGS = settings(
    max_examples=80,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

TASKS = ("build", "test")  # the tasks of MANIFEST, in order
FINAL = (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED)
#: Which attempt a worker call names, relative to the job's current one.
WHICH_ATTEMPT = st.sampled_from(["current"] * 6 + ["previous", "next"])
#: Which job a call is about: mostly one the call can move on (calls on finished jobs are
#: refused or no-ops, and a run of them tests little), sometimes any.
PICK = st.integers(0, 7)
_ANY = 6  # a PICK of at least this picks among all the jobs


class Clock:
    """The model's clock: stands still except when a step moves it."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Expected:
    status: JobStatus
    attempt: int
    cancel_requested: bool = False
    runner: bool = False  # a worker claimed the current attempt
    lease: datetime | None = None
    tasks: dict[str, TaskStatus] = field(
        default_factory=lambda: dict.fromkeys(TASKS, TaskStatus.PENDING)
    )


@dataclass(frozen=True)
class Final:
    """What may not change once a job is finished."""

    status: str
    attempt: int
    runner: str | None
    reason: str | None
    lease_expires: datetime | None
    tasks: tuple[str, ...]


@dataclass
class World:
    """What one test run shares across the examples of the state machine."""

    app: FastAPI
    client: TestClient
    owner: Account
    clock: Clock
    #: a confirm-mode channel on the real RabbitMQ (a vhost of this test's own)
    channel: Any
    #: status moves seen (``"queued->running"``), steps and examples run: for the coverage
    #: check at the end, and to read in a debugger
    moves: Counter[str] = field(default_factory=Counter)


class JobLifecycle(RuleBasedStateMachine):
    world: World  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[int, Expected] = {}
        self.claimed: set[tuple[int, int]] = set()
        self.finals: dict[int, Final] = {}
        self.previous: dict[int, tuple[JobStatus, int]] = {}
        w = self.world
        self.client, self.sessions, self.clock = w.client, w.app.state.sessionmaker, w.clock
        self.world.moves["examples"] += 1
        with self.sessions() as session:  # every example starts from an empty queue
            session.execute(delete(Job))
            session.commit()

    # --- helpers --------------------------------------------------------------------------

    def _live(self) -> list[int]:
        return sorted(job_id for job_id, m in self.model.items() if not is_terminal(m.status))

    def _some(self, status: JobStatus) -> bool:
        """Whether some job is ``status``: a call that needs one is only made then (a call
        that cannot succeed is still made often, on another attempt or another job)."""
        return any(m.status == status for m in self.model.values())

    def _job(self, pick: int, prefer: JobStatus | None = None) -> int:
        """Mostly a job in status ``prefer`` (where the call can succeed), else an unfinished
        one; sometimes any job at all."""
        candidates = sorted(self.model)
        if pick < _ANY:
            live = self._live()
            preferred = [job_id for job_id in live if self.model[job_id].status == prefer]
            candidates = preferred or live or candidates
        return candidates[pick % len(candidates)]

    def _attempt(self, job_id: int, which: str) -> int:
        current = self.model[job_id].attempt
        attempt = {"current": current, "previous": current - 1, "next": current + 1}[which]
        return max(1, attempt)

    def _expect(self, response: Any, code: int, what: str) -> None:
        assert response.status_code == code, f"{what}: {response.status_code} {response.text}"

    def _internal(self, job_id: int, call: str, body: dict[str, Any]) -> Any:
        return self.client.post(f"/api/internal/jobs/{job_id}/{call}", json=body, headers=WORKER)

    def _requeue(self, m: Expected) -> None:
        """A new attempt: queued, unclaimed, every task to run again."""
        m.status, m.attempt, m.runner, m.lease = JobStatus.QUEUED, m.attempt + 1, False, None
        m.tasks = dict.fromkeys(TASKS, TaskStatus.PENDING)

    def _end(self, m: Expected, status: JobStatus) -> None:
        """The running attempt ended ``status``: tasks never run are skipped, a running one
        ended with the job."""
        m.status, m.lease = status, None
        ended = TaskStatus.SUCCESS if status == JobStatus.SUCCESS else TaskStatus.FAILED
        settled = {TaskStatus.PENDING: TaskStatus.SKIPPED, TaskStatus.RUNNING: ended}
        m.tasks = {name: settled.get(task, task) for name, task in m.tasks.items()}

    # --- the public API -------------------------------------------------------------------

    @initialize(execute=st.booleans())
    def first_submit(self, execute: bool) -> None:
        # Hypothesis turns random rules off per example (swarm testing): a job at the start
        # keeps the examples where submit is off from only moving the clock.
        self.submit(execute)

    @precondition(lambda self: len(self._live()) < MAX_LIVE_JOBS and len(self.model) < MAX_JOBS)
    @rule(execute=st.sampled_from([True, True, False]))
    def submit(self, execute: bool) -> None:
        response = self.client.post(
            "/api/jobs",
            json={"manifest": MANIFEST, "execute": execute},
            headers=self.world.owner.headers(),
        )
        self._expect(response, 200, "submit")
        job_id: int = response.json()["id"]
        assert response.json()["status"] == ("queued" if execute else "pending")
        self.model[job_id] = (
            Expected(JobStatus.QUEUED, 1) if execute else Expected(JobStatus.PENDING, 0)
        )

    @precondition(lambda self: self._some(JobStatus.PENDING))
    @rule(pick=PICK)
    def start(self, pick: int) -> None:
        job_id = self._job(pick, JobStatus.PENDING)
        m = self.model[job_id]
        response = self.client.post(f"/api/jobs/{job_id}/start", headers=self.world.owner.headers())
        if m.status == JobStatus.PENDING:
            self._expect(response, 200, "start of a pending job")
            self._requeue(m)
        else:
            self._expect(response, 400, f"start of a {m.status} job")

    @precondition(lambda self: self._some(JobStatus.RUNNING))
    @rule(pick=PICK, live=st.integers(0, 2))
    def cancel(self, pick: int, live: int) -> None:
        """Cancel a finished job (2 times in 3, when there is one: the job must stay as it
        is), else a picked one: cancelling every job soon would leave little to test."""
        finished = sorted(set(self.model) - set(self._live()))
        job_id = finished[pick % len(finished)] if live and finished else self._job(pick)
        m = self.model[job_id]
        response = self.client.post(
            f"/api/jobs/{job_id}/cancel", headers=self.world.owner.headers()
        )
        if m.status in (JobStatus.PENDING, JobStatus.QUEUED):
            self._expect(response, 200, f"cancel of a {m.status} job")
            m.status, m.lease = JobStatus.CANCELLED, None
        elif m.status == JobStatus.RUNNING:
            self._expect(response, 200, "cancel of a running job")
            m.cancel_requested = True
        elif m.status == JobStatus.CANCELLED:
            self._expect(response, 200, "cancel of a cancelled job")  # idempotent, no change
        else:
            self._expect(response, 400, f"cancel of a {m.status} job")

    # --- the internal (worker) API --------------------------------------------------------

    @precondition(lambda self: self._some(JobStatus.QUEUED))
    @rule(pick=PICK, which=WHICH_ATTEMPT)
    def claim(self, pick: int, which: str) -> None:
        job_id = self._job(pick, JobStatus.QUEUED)
        m = self.model[job_id]
        attempt = self._attempt(job_id, which)
        response = self._internal(job_id, "claim", {"worker": "host1", "attempt": attempt})
        claimable = m.status == JobStatus.QUEUED and attempt == m.attempt and not m.cancel_requested
        if claimable:
            self._expect(response, 200, f"claim of attempt {attempt} of {m}")
            assert (job_id, attempt) not in self.claimed, f"attempt {attempt} claimed twice"
            self.claimed.add((job_id, attempt))
            assert response.json()["attempt"] == attempt
            m.status, m.runner = JobStatus.RUNNING, True
            m.lease = self.clock.now + timedelta(seconds=LEASE_S)
        else:
            self._expect(response, 409, f"claim of attempt {attempt} of {m}")
        # Whatever happened since, an attempt once claimed is never handed out again.
        for claimed_id, done in sorted(self.claimed):
            if claimed_id == job_id:
                again = self._internal(job_id, "claim", {"worker": "host2", "attempt": done})
                self._expect(again, 409, f"second claim of attempt {done} of {m}")

    @precondition(lambda self: self._some(JobStatus.RUNNING))
    @rule(pick=PICK, which=WHICH_ATTEMPT)
    def heartbeat(self, pick: int, which: str) -> None:
        job_id = self._job(pick, JobStatus.RUNNING)
        m = self.model[job_id]
        attempt = self._attempt(job_id, which)
        response = self._internal(job_id, "heartbeat", {"attempt": attempt})
        if attempt == m.attempt and m.status == JobStatus.CANCELLED and m.runner:
            self._expect(response, 200, "heartbeat of a cancelled attempt")
            assert response.json() == {"cancelled": True}
        elif attempt == m.attempt and m.status == JobStatus.RUNNING:
            self._expect(response, 200, "heartbeat of the running attempt")
            assert response.json() == {"cancelled": m.cancel_requested}
            m.lease = self.clock.now + timedelta(seconds=LEASE_S)
        else:
            self._expect(response, 409, f"heartbeat of attempt {attempt} of {m}")

    @precondition(lambda self: self.model)
    @rule(
        pick=PICK,
        which=WHICH_ATTEMPT,
        status=st.sampled_from(FINAL),
        infrastructure=st.booleans(),
    )
    def finish(self, pick: int, which: str, status: JobStatus, infrastructure: bool) -> None:
        job_id = self._job(pick, JobStatus.RUNNING)
        m = self.model[job_id]
        attempt = self._attempt(job_id, which)
        response = self._internal(
            job_id,
            "finish",
            {"attempt": attempt, "status": status.value, "infrastructure": infrastructure},
        )
        if attempt == m.attempt and is_terminal(m.status):
            self._expect(response, 200, "a repeated finish")
            return
        if not (attempt == m.attempt and m.status == JobStatus.RUNNING):
            self._expect(response, 409, f"finish of attempt {attempt} of {m}")
            return
        self._expect(response, 200, "finish of the running attempt")
        if m.cancel_requested and status != JobStatus.SUCCESS:
            status = JobStatus.CANCELLED
        if (
            infrastructure
            and status in (JobStatus.FAILED, JobStatus.TIMEOUT)
            and attempt < MAX_ATTEMPTS
        ):
            self._requeue(m)
        else:
            self._end(m, status)

    @precondition(lambda self: self._some(JobStatus.RUNNING))
    @rule(
        pick=PICK,
        which=WHICH_ATTEMPT,
        task=st.sampled_from(TASKS),
        status=st.sampled_from(TaskStatus),
    )
    def set_task(self, pick: int, which: str, task: str, status: TaskStatus) -> None:
        job_id = self._job(pick, JobStatus.RUNNING)
        m = self.model[job_id]
        attempt = self._attempt(job_id, which)
        response = self.client.put(
            f"/api/internal/jobs/{job_id}/tasks/{task}",
            json={"attempt": attempt, "status": status.value},
            headers=WORKER,
        )
        if not (attempt == m.attempt and m.status == JobStatus.RUNNING):
            self._expect(response, 409, f"task status for attempt {attempt} of {m}")
        elif status == m.tasks[task] or status in TASK_TRANSITIONS[m.tasks[task]]:
            self._expect(response, 200, f"task {task} {m.tasks[task]} -> {status}")
            m.tasks[task] = status
        else:
            self._expect(response, 400, f"task {task} {m.tasks[task]} -> {status}")

    @precondition(lambda self: self._some(JobStatus.RUNNING))
    @rule(pick=PICK, which=WHICH_ATTEMPT)
    def release(self, pick: int, which: str) -> None:
        """The worker gives the attempt back: requeued as the next attempt (or cancelled)."""
        job_id = self._job(pick, JobStatus.RUNNING)
        m = self.model[job_id]
        attempt = self._attempt(job_id, which)
        response = self._internal(job_id, "release", {"attempt": attempt})
        self._expect(response, 200, "release")  # a no-op unless that attempt is running
        if attempt == m.attempt and m.status == JobStatus.RUNNING:
            if m.cancel_requested:
                self._end(m, JobStatus.CANCELLED)
            else:
                self._requeue(m)

    # --- time, the reaper, the publisher --------------------------------------------------

    @precondition(lambda self: self._some(JobStatus.RUNNING))
    @rule(seconds=st.sampled_from([1.0, REAP_INTERVAL_S, LEASE_S / 2, LEASE_S + REAP_INTERVAL_S]))
    def lapse(self, seconds: float) -> None:
        """Time passes (at most a reap interval, or long enough for every lease to lapse),
        then the reaper runs once."""
        self.clock.advance(seconds)
        now = self.clock.now
        expected = []
        for job_id, m in sorted(self.model.items()):
            if m.status != JobStatus.RUNNING:
                continue
            assert m.lease is not None
            if m.lease >= now:
                continue
            expected.append(job_id)
            if m.cancel_requested:
                self._end(m, JobStatus.CANCELLED)
            elif m.attempt < MAX_ATTEMPTS:
                self._requeue(m)
            else:
                self._end(m, JobStatus.FAILED)
        with self.sessions() as session:
            reaped = reap(session, max_attempts=MAX_ATTEMPTS, now=now)
        assert reaped == expected

    @precondition(lambda self: self._some(JobStatus.QUEUED))
    @rule()
    def publish(self) -> None:
        publisher = OutboxPublisher(self.sessions, "amqp://unused")
        while publisher.publish_pending(self.world.channel):
            pass
        with self.sessions() as session:
            assert not session.scalars(select(Outbox).where(Outbox.published_at.is_(None))).all()

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def the_database_agrees_with_the_model(self) -> None:
        now = self.clock.now
        with self.sessions() as session:
            jobs = {job.id: job for job in session.scalars(select(Job))}
            tasks: dict[int, list[str]] = {}
            for task in session.scalars(select(Task).order_by(Task.job_id, Task.position)):
                tasks.setdefault(task.job_id, []).append(task.status)
            outbox: dict[int, list[int]] = {}
            for row in session.scalars(select(Outbox)):
                outbox.setdefault(row.job_id, []).append(row.attempt)
        assert sorted(jobs) == sorted(self.model)
        seen = {job_id: (m.status, m.attempt) for job_id, m in self.model.items()}
        for job_id, (status, attempt) in seen.items():
            before = self.previous.get(job_id)
            if before is not None and before != (status, attempt):
                self.world.moves[f"{before[0]}->{status}"] += 1
        self.previous = seen
        self.world.moves["steps"] += 1
        for job_id, m in self.model.items():
            job = jobs[job_id]
            found = (job.status, job.attempt, job.cancel_requested, job.runner is not None)
            assert found == (m.status, m.attempt, m.cancel_requested, m.runner), (job_id, m)
            assert tasks.get(job_id) == list(m.tasks.values()), (job_id, m)

            # A finished job never changes again.
            final = Final(
                job.status,
                job.attempt,
                job.runner,
                job.reason,
                job.lease_expires,
                tuple(tasks.get(job_id, ())),
            )
            if is_terminal(JobStatus(job.status)):
                assert self.finals.setdefault(job_id, final) == final, f"job {job_id} changed"
            else:
                assert job_id not in self.finals, f"finished job {job_id} is {job.status} again"

            # Running means a live lease (a reaper pass follows every move of the clock);
            # nothing else holds one.
            if job.status == JobStatus.RUNNING:
                assert job.lease_expires is not None and m.lease is not None
                assert abs(job.lease_expires - m.lease) < timedelta(milliseconds=1)
                assert job.lease_expires >= now, f"job {job_id} runs on a lapsed lease"
            else:
                assert job.lease_expires is None, f"{job.status} job {job_id} holds a lease"

            # One outbox row per queued attempt: exactly one for the current attempt of a
            # queued job, never one for an attempt that was not queued.
            rows = outbox.get(job_id, [])
            assert len(rows) == len(set(rows))
            assert all(1 <= attempt <= job.attempt for attempt in rows), (job_id, rows)
            if job.status == JobStatus.QUEUED:
                assert rows.count(job.attempt) == 1, (job_id, job.attempt, rows)
            assert sorted(rows) == list(range(1, job.attempt + 1)), (job_id, rows)


@pytest.fixture
def broker_channel(amqp_url: str) -> Iterator[Any]:
    """A confirm-mode channel on the real broker, as the publisher's own loop opens one."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    yield channel
    connection.close()


@pytest.fixture
def world(api_config: Config, monkeypatch: pytest.MonkeyPatch, broker_channel: Any) -> World:
    config = with_api(
        api_config, lease=LEASE_S, reap_interval=REAP_INTERVAL_S, max_attempts=MAX_ATTEMPTS
    )
    tuned = create_app(config)
    clock = Clock()
    # Leases are computed in the internal API (claim) and by reaper.lease_deadline
    # (heartbeat): both read the model's clock.
    monkeypatch.setattr(internal_module, "utcnow", clock)
    monkeypatch.setattr(reaper_module, "utcnow", clock)
    return World(tuned, TestClient(tuned), make_account(tuned, "alice"), clock, broker_channel)


def test_random_job_lifecycles_keep_the_invariants(world: World) -> None:
    machine = type("Machine", (JobLifecycle,), {"world": world})
    try:
        run_state_machine_as_test(machine, settings=STATE_MACHINE_SETTINGS)
    finally:
        world.app.state.engine.dispose()
    # The run went through the lifecycle, not only refusals (each of these happens dozens
    # of times in a run; see `moves` for the counts).
    reached = {move for move, count in world.moves.items() if count}
    assert {"pending->queued", "queued->running", "running->queued"} <= reached, world.moves
    assert reached & {f"running->{status}" for status in FINAL}, world.moves


def test_the_model_clock_is_what_leases_are_computed_from(world: World) -> None:
    """Guards the patching above: were `utcnow` no longer read where leases are set, the
    state machine would silently test real time."""
    world.clock.advance(3600)
    job_id = world.client.post(
        "/api/jobs", json={"manifest": MANIFEST}, headers=world.owner.headers()
    ).json()["id"]
    response = world.client.post(
        f"/api/internal/jobs/{job_id}/claim",
        json={"worker": "host1", "attempt": 1},
        headers=WORKER,
    )
    assert response.status_code == 200, response.text
    with world.app.state.sessionmaker() as session:
        lease = session.get_one(Job, job_id).lease_expires
    assert lease is not None
    assert abs(lease - (world.clock.now + timedelta(seconds=LEASE_S))) < timedelta(milliseconds=1)
    world.app.state.engine.dispose()
