"""The lease reaper: a job whose worker vanished is requeued, then failed; never left running.

Also the background threads end to end: the app's lifespan publishes a submitted job to a
fresh RabbitMQ vhost and reaps a lapsed lease.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import timedelta

import pika
import pika.exceptions
from api_helpers import MANIFEST, WORKER_TOKEN, Account, make_account, wait_until
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from buildworker.api.app import create_app
from buildworker.api.reaper import LeaseReaper, reap
from buildworker.config import BrokerConfig, Config
from buildworker.db.models import Job, Outbox, utcnow
from buildworker.queue import queue_name

WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}


def running_job(client: TestClient, alice: Account, attempt: int = 1) -> int:
    job_id: int = client.post(
        "/api/jobs", json={"manifest": MANIFEST}, headers=alice.headers()
    ).json()["id"]
    claim(client, job_id, attempt)
    return job_id


def claim(client: TestClient, job_id: int, attempt: int) -> None:
    response = client.post(
        f"/api/internal/jobs/{job_id}/claim",
        json={"worker": "gone", "attempt": attempt},
        headers=WORKER,
    )
    assert response.status_code == 200, response.text


def lapse(app: FastAPI, job_id: int) -> None:
    with app.state.sessionmaker() as session:
        session.get_one(Job, job_id).lease_expires = utcnow() - timedelta(seconds=1)
        session.commit()


def reap_now(app: FastAPI, max_attempts: int = 3) -> list[int]:
    with app.state.sessionmaker() as session:
        return reap(session, max_attempts=max_attempts)


def row(app: FastAPI, job_id: int) -> Job:
    with app.state.sessionmaker() as session:
        job = session.get_one(Job, job_id)
        _ = job.tasks
        return job


def outbox(app: FastAPI, job_id: int) -> list[int]:
    with app.state.sessionmaker() as session:
        return sorted(session.scalars(select(Outbox.attempt).where(Outbox.job_id == job_id)))


def test_a_job_with_a_live_lease_is_left_alone(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = running_job(client, alice)
    assert reap_now(app) == []
    assert row(app, job_id).status == "running"


def test_a_lapsed_lease_requeues_the_job_with_the_next_attempt(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    # Given a running job whose worker stopped heartbeating, with one task running
    job_id = running_job(client, alice)
    client.put(
        f"/api/internal/jobs/{job_id}/tasks/build",
        json={"attempt": 1, "status": "running"},
        headers=WORKER,
    )
    lapse(app, job_id)
    # When the reaper runs
    assert reap_now(app) == [job_id]
    # Then the job is queued again at attempt 2, with a new outbox row and fresh tasks
    job = row(app, job_id)
    assert (job.status, job.attempt, job.runner, job.lease_expires) == ("queued", 2, None, None)
    assert "gone stopped renewing its lease" in (job.reason or "")
    assert [t.status for t in job.tasks] == ["pending", "pending"]
    assert outbox(app, job_id) == [1, 2]
    # And the old worker's calls are refused from now on
    beat = client.post(
        f"/api/internal/jobs/{job_id}/heartbeat", json={"attempt": 1}, headers=WORKER
    )
    assert beat.status_code == 409
    fin = client.post(
        f"/api/internal/jobs/{job_id}/finish",
        json={"attempt": 1, "status": "success"},
        headers=WORKER,
    )
    assert fin.status_code == 409
    assert row(app, job_id).status == "queued"


def test_after_the_last_attempt_the_job_fails_with_the_reason(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = running_job(client, alice)
    for attempt in (1, 2, 3):
        if attempt > 1:
            claim(client, job_id, attempt)
        lapse(app, job_id)
        assert reap_now(app, max_attempts=3) == [job_id]
    job = row(app, job_id)
    assert job.status == "failed"
    assert job.reason is not None and "gave up after 3 attempts" in job.reason
    assert [t.status for t in job.tasks] == ["skipped", "skipped"]
    assert outbox(app, job_id) == [1, 2, 3]
    # And a reaper pass later has nothing left to do
    assert reap_now(app) == []


def test_a_cancelled_job_whose_worker_vanished_becomes_cancelled(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = running_job(client, alice)
    client.post(f"/api/jobs/{job_id}/cancel", headers=alice.headers())
    lapse(app, job_id)
    assert reap_now(app) == [job_id]
    job = row(app, job_id)
    assert job.status == "cancelled" and outbox(app, job_id) == [1]


def test_the_reaper_thread_reaps_on_its_own(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = running_job(client, alice)
    lapse(app, job_id)
    reaper = LeaseReaper(app.state.sessionmaker, max_attempts=3, interval_s=0.05)
    reaper.start()
    try:
        wait_until(lambda: row(app, job_id).status == "queued")
    finally:
        reaper.stop()
    assert row(app, job_id).attempt == 2


def test_the_app_lifespan_publishes_submitted_jobs_and_reaps_leases(
    api_config: Config, amqp_url: str
) -> None:
    # Given the API running with its background threads, on a fresh vhost
    config = Config(
        api=replace(api_config.api, reap_interval=0.1),
        database=api_config.database,
        store=api_config.store,
        broker=BrokerConfig(url=amqp_url, outbox_poll=0.05),
    )
    app = create_app(config)
    with TestClient(app) as client:
        alice = make_account(app, "alice")
        # When a job is submitted
        job_id = client.post(
            "/api/jobs", json={"manifest": MANIFEST}, headers=alice.headers()
        ).json()["id"]
        # Then it reaches its image@arch queue
        body = wait_for_message(amqp_url, queue_name("debian/bookworm", "amd64"))
        assert json.loads(body) == {
            "job_id": job_id,
            "attempt": 1,
            "image": "debian/bookworm",
            "arch": "amd64",
        }
        # And when its worker claims it and then vanishes, it is published again as attempt 2
        claim(client, job_id, 1)
        lapse(app, job_id)
        body = wait_for_message(amqp_url, queue_name("debian/bookworm", "amd64"))
        assert json.loads(body)["attempt"] == 2
    assert not app.state.publisher._thread.is_alive()
    assert not app.state.reaper._thread.is_alive()


def wait_for_message(amqp_url: str, queue: str, timeout_s: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout_s
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        while time.monotonic() < deadline:
            try:
                method, _props, body = channel.basic_get(queue, auto_ack=True)
            except pika.exceptions.ChannelClosedByBroker:  # queue not declared yet
                channel = connection.channel()
                method = None
            if method is not None:
                assert isinstance(body, bytes)
                return body
            time.sleep(0.05)
    finally:
        connection.close()
    raise AssertionError(f"no message in {queue}")
