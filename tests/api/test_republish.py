"""Queued jobs whose message the broker lost are republished, same attempt (issue 9, item 3).

Pure planning first; then the monitor against the shared RabbitMQ (a fresh vhost, a queue
purged by hand) on both databases; then the acceptance line against a broker of the test's own
that is killed and comes back with its data wiped (tests/own_broker.py), with jobs played by a
scripted worker pool: every job runs exactly once, and while the workers are busy for several
intervals the queue never holds more than one message per queued job.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pika
import pika.exceptions
import pytest
from api_helpers import MANIFEST, WORKER_TOKEN, make_account, submit, unpublished, wait_until
from own_broker import OwnBroker
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from buildworker.api.publisher import OutboxPublisher
from buildworker.api.republish import Published, RepublishMonitor, plan_republish
from buildworker.config import BrokerConfig, Config
from buildworker.db.models import Job, Outbox
from buildworker.queue import DEAD_EXCHANGE, queue_name

ROUTE = ("debian/bookworm", "amd64")
QUEUE = queue_name(*ROUTE)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(n: int) -> Published:
    return Published(T0 + timedelta(seconds=n), outbox_id=n, job_id=n, attempt=1)


# --- planning (pure) --------------------------------------------------------------------


def test_a_queue_holding_a_message_per_queued_job_is_left_alone() -> None:
    queued = {ROUTE: [row(1), row(2), row(3)]}
    now, suspects = plan_republish(queued, {ROUTE: 3}, set())
    assert now == set() and suspects == set()
    # stale messages (cancelled jobs) on top change nothing either
    assert plan_republish(queued, {ROUTE: 5}, {row(1)}) == (set(), set())


def test_the_oldest_published_are_suspects_first_and_republished_if_still_missing() -> None:
    queued = {ROUTE: [row(3), row(1), row(2)]}
    # Given one message left of three (the newest survived: queues are FIFO)
    now, suspects = plan_republish(queued, {ROUTE: 1}, set())
    # Then the two oldest are suspects, nothing is republished yet
    assert now == set() and suspects == {row(1), row(2)}
    # And at the next check, still missing, they are republished
    now, suspects = plan_republish(queued, {ROUTE: 1}, suspects)
    assert now == {row(1), row(2)}


def test_a_claim_in_flight_is_not_a_loss() -> None:
    # Given job 1's message unacked at a worker that is claiming it (not counted as ready)
    now, suspects = plan_republish({ROUTE: [row(1), row(2)]}, {ROUTE: 1}, set())
    assert suspects == {row(1)}
    # When the next check runs, the claim made job 1 running: it is no longer queued
    now, suspects = plan_republish({ROUTE: [row(2)]}, {ROUTE: 1}, suspects)
    assert now == set() and suspects == set()


def test_a_row_published_again_since_is_a_new_observation() -> None:
    first, _ = plan_republish({ROUTE: [row(1)]}, {ROUTE: 0}, set())
    _, suspects = plan_republish({ROUTE: [row(1)]}, {ROUTE: 0}, set())
    moved = Published(T0 + timedelta(minutes=5), 1, 1, 1)  # republished by another API process
    now, _ = plan_republish({ROUTE: [moved]}, {ROUTE: 0}, suspects)
    assert first == set() and now == set()


def test_a_missing_queue_counts_as_empty() -> None:
    _, suspects = plan_republish({ROUTE: [row(1)]}, {}, set())
    assert suspects == {row(1)}


# --- the monitor on the shared broker (a fresh vhost) -----------------------------------


def depth(amqp_url: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        declared = connection.channel().queue_declare(QUEUE, passive=True)
        return int(declared.method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if connection.is_open:
            connection.close()


def purge(amqp_url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().queue_purge(QUEUE)
    finally:
        connection.close()


def test_a_purged_queue_is_refilled_once_and_a_full_one_never_grows(
    sessions: sessionmaker[Session], amqp_url: str
) -> None:
    # Given three queued jobs, published
    ids = submit(sessions, 3)
    publisher = OutboxPublisher(sessions, amqp_url, poll_s=0.05)
    monitor = RepublishMonitor(sessions, amqp_url, interval_s=3600)
    publisher.start()
    try:
        wait_until(lambda: unpublished(sessions) == 0 and depth(amqp_url) == 3)
        # When nothing is lost, checks (as many as one likes) republish nothing
        assert [monitor.check() for _ in range(4)] == [0, 0, 0, 0]
        assert depth(amqp_url) == 3
        # When an operator purges the queue
        purge(amqp_url)
        # Then the first check only suspects, the second republishes all three, same attempt
        assert monitor.check() == 0
        assert monitor.check() == 3
        wait_until(lambda: unpublished(sessions) == 0 and depth(amqp_url) == 3)
        # And further checks add nothing: one message per queued job
        assert [monitor.check() for _ in range(3)] == [0, 0, 0]
        assert depth(amqp_url) == 3
    finally:
        publisher.stop()
    with sessions() as session:
        attempts = session.scalars(select(Outbox.attempt).where(Outbox.job_id.in_(ids))).all()
        assert sorted(attempts) == [1, 1, 1]  # the same rows, not new attempts


def test_a_job_that_is_no_longer_queued_is_not_republished(
    sessions: sessionmaker[Session], amqp_url: str
) -> None:
    [job_id] = submit(sessions, 1)
    publisher = OutboxPublisher(sessions, amqp_url, poll_s=0.05)
    monitor = RepublishMonitor(sessions, amqp_url, interval_s=3600)
    publisher.start()
    try:
        wait_until(lambda: unpublished(sessions) == 0 and depth(amqp_url) == 1)
        purge(amqp_url)
        assert monitor.check() == 0  # suspected...
        with sessions() as session:  # ...then cancelled before the next check
            session.get_one(Job, job_id).status = "cancelled"
            session.commit()
        assert monitor.check() == 0
        assert unpublished(sessions) == 0 and depth(amqp_url) == 0
    finally:
        publisher.stop()


# --- acceptance: a broker of our own comes back empty ------------------------------------


class ScriptedPool:
    """Scripted workers (no VM): each takes one delivery at a time (prefetch 1), claims over the
    internal API, acks, "runs" for ``hold_s(job)`` with heartbeats, finishes with success."""

    def __init__(self, api_url: str, amqp_url: str, hold_s: dict[int, float], slots: int) -> None:
        self.api_url, self.amqp_url, self.hold_s = api_url, amqp_url, hold_s
        self.deliveries: dict[int, int] = {}
        self.claims: dict[int, int] = {}
        self.refused: dict[int, int] = {}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(slots)]

    def start(self) -> ScriptedPool:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except (pika.exceptions.AMQPError, OSError):
                time.sleep(0.5)  # the broker is away: come back like a worker would
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)
                return

    def _consume(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1)
            channel.queue_declare(
                QUEUE, durable=True, arguments={"x-dead-letter-exchange": DEAD_EXCHANGE}
            )
            while not self._stop.is_set():
                method, _props, body = channel.basic_get(QUEUE)
                if method is None:
                    connection.sleep(0.1)
                    continue
                message = json.loads(body)
                job_id, attempt = message["job_id"], message["attempt"]
                with self._lock:
                    self.deliveries[job_id] = self.deliveries.get(job_id, 0) + 1
                claimed = httpx.post(
                    f"{self.api_url}/api/internal/jobs/{job_id}/claim",
                    json={"worker": "scripted", "attempt": attempt},
                    headers={"Authorization": f"Bearer {WORKER_TOKEN}"},
                    timeout=30,
                )
                if claimed.status_code != 200:
                    with self._lock:
                        self.refused[job_id] = self.refused.get(job_id, 0) + 1
                    channel.basic_reject(method.delivery_tag, requeue=False)
                    continue
                channel.basic_ack(method.delivery_tag)
                with self._lock:
                    self.claims[job_id] = self.claims.get(job_id, 0) + 1
                self._play(job_id, attempt)
        finally:
            if connection.is_open:
                connection.close()

    def _play(self, job_id: int, attempt: int) -> None:
        with httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {WORKER_TOKEN}"}, timeout=30
        ) as client:
            deadline = time.monotonic() + self.hold_s.get(job_id, 0.0)
            while time.monotonic() < deadline:
                client.post(f"/api/internal/jobs/{job_id}/heartbeat", json={"attempt": attempt})
                time.sleep(0.5)
            response = client.post(
                f"/api/internal/jobs/{job_id}/finish",
                json={"attempt": attempt, "status": "success"},
            )
            assert response.status_code == 200, response.text


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    broker = OwnBroker(Path("/tmp") / f"bw-own-rabbit-{tmp_path.name}")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


INTERVAL_S = 4.0


@pytest.fixture
def live(api_config: Config, own_broker: OwnBroker, sqlite_url: str) -> Iterator[tuple[str, str]]:
    """The API under uvicorn with its background threads, on the test's own broker."""
    import socket

    import uvicorn

    from buildworker.api.app import create_app

    config = replace(
        api_config,
        api=replace(api_config.api, lease=30.0, reap_interval=60.0),
        broker=BrokerConfig(
            url=own_broker.url,
            outbox_poll=0.05,
            reconnect_max=1.0,
            republish_interval=INTERVAL_S,
        ),
    )
    app = create_app(config)
    token = make_account(app, "alice").tokens["rw"]
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30)
    try:
        yield url, token
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        app.state.engine.dispose()


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url  # the acceptance runs on SQLite; the monitor tests above run on both


def submit_jobs(url: str, token: str, count: int) -> list[int]:
    ids = []
    for _ in range(count):
        response = httpx.post(
            f"{url}/api/jobs",
            json={"manifest": MANIFEST},
            headers={"Authorization": f"token {token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        ids.append(int(response.json()["id"]))
    return ids


def statuses(url: str, token: str, ids: list[int]) -> dict[int, str]:
    out = {}
    for job_id in ids:
        response = httpx.get(
            f"{url}/api/jobs/{job_id}", headers={"Authorization": f"token {token}"}, timeout=30
        )
        out[job_id] = response.json()["status"]
    return out


@pytest.mark.slow
def test_a_broker_back_empty_gets_every_queued_job_again_and_each_runs_once(
    live: tuple[str, str], own_broker: OwnBroker
) -> None:
    url, token = live
    # --- busy workers: the queue holds at most one message per queued job -----------------
    # Given one worker slot taken by a job that runs for three republish intervals
    long_job, *waiting = submit_jobs(url, token, 5)
    pool = ScriptedPool(url, own_broker.url, {long_job: 3 * INTERVAL_S}, slots=1).start()
    try:
        wait_until(lambda: pool.claims.get(long_job) == 1, 60)
        # When the other four wait in the queue meanwhile, sampled every 0.2 s
        samples: list[tuple[int, int]] = []
        while (
            pool.claims.get(long_job) == 1
            and statuses(url, token, [long_job])[long_job] == "running"
        ):
            queued = sum(s == "queued" for s in statuses(url, token, waiting).values())
            samples.append((depth(own_broker.url), queued))
            time.sleep(0.2)
        # Then the queue never held more messages than queued jobs (nothing was republished)
        assert samples and all(ready <= queued for ready, queued in samples), samples
        assert max(ready for ready, _ in samples) == 4
        wait_until(lambda: set(statuses(url, token, waiting).values()) == {"success"}, 120)
        assert pool.deliveries == {job: 1 for job in [long_job, *waiting]}
    finally:
        pool.stop()
    assert not pool.errors, pool.errors

    # --- a broker back with its data wiped -------------------------------------------------
    # Given four jobs queued and published, no worker running
    lost = submit_jobs(url, token, 4)
    wait_until(lambda: depth(own_broker.url) == 4, 60)
    # When the broker is killed and comes back empty (same port, no queues, no messages)
    own_broker.kill_and_wipe()
    own_broker.start()
    back = time.monotonic()
    assert depth(own_broker.url) == 0
    # Then the API republishes them (the monitor's checks, the publisher's reconnect)
    wait_until(lambda: depth(own_broker.url) == 4, 120)
    republished_after = time.monotonic() - back
    # And a worker runs each exactly once
    pool = ScriptedPool(url, own_broker.url, {}, slots=2).start()
    try:
        wait_until(lambda: set(statuses(url, token, lost).values()) == {"success"}, 120)
        # a few more intervals: nothing more arrives
        time.sleep(2 * INTERVAL_S)
        assert depth(own_broker.url) == 0
    finally:
        pool.stop()
    assert not pool.errors, pool.errors
    assert pool.claims == {job: 1 for job in lost}
    assert pool.deliveries == {job: 1 for job in lost}, pool.refused
    print(
        f"\nrepublish: broker back empty → all {len(lost)} jobs in the queue again after "
        f"{republished_after:.1f} s (republish-interval {INTERVAL_S:.0f} s); busy phase "
        f"{len(samples)} samples over {3 * INTERVAL_S:.0f} s, max ready {max(r for r, _ in samples)}"
        " for 4 queued"
    )
