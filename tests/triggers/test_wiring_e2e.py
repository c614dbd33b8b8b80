"""End to end through the real API app: submit → claim → finish/cancel → delivery → receiver.

These exercise the API tier's calls into buildworker.triggers (docs/triggers.md, "wiring").
Each test fails if the API module it goes through stops calling into the triggers package.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from trigger_helpers import HookServer

from buildworker.api.accounts import create_token, create_user
from buildworker.api.app import create_app
from buildworker.config import (
    ApiConfig,
    BrokerConfig,
    Config,
    DatabaseConfig,
    StoreConfig,
    TriggersConfig,
)
from buildworker.db.models import TriggerDelivery
from buildworker.triggers.sender import TriggerSender

WORKER_TOKEN = "trigger-test-worker-token"
WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}
ORIGIN = "http://testserver"


@pytest.fixture
def app(db_url: str, data_dir: Path) -> Iterator[FastAPI]:
    store = data_dir / "store"
    store.mkdir()
    config = Config(
        api=ApiConfig(origin=ORIGIN, worker_token=WORKER_TOKEN, images=("debian/bookworm@amd64",)),
        database=DatabaseConfig(url=db_url),
        store=StoreConfig(path=store),
        # Nothing listens on port 9: the outbox publisher (lifespan only) fails to connect.
        broker=BrokerConfig(url="amqp://guest:guest@127.0.0.1:9/%2F"),
        triggers=TriggersConfig(webhook_allow_private=True, poll=0.05),
    )
    application = create_app(config)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def user_headers(app: FastAPI) -> dict[str, str]:
    with app.state.sessionmaker() as session:
        user = create_user(session, "alice", "alice@example.org")
        token = create_token(session, user, "jobs:read jobs:write", name="t").token
        session.commit()
    return {"Authorization": f"token {token}"}


def manifest(url: str, condition: str = "always") -> str:
    return (
        "image: debian/bookworm\n"
        "tasks:\n  - build: echo hi\n"
        f"triggers:\n  - action: webhook\n    condition: {condition}\n    url: {url}\n"
    )


def submit(client: TestClient, headers: dict[str, str], text: str, **fields: object) -> int:
    response = client.post("/api/jobs", json={"manifest": text, **fields}, headers=headers)
    assert response.status_code == 200, response.text
    job_id: int = response.json()["id"]
    return job_id


def claim_and_finish(client: TestClient, job_id: int, status: str) -> None:
    response = client.post(
        f"/api/internal/jobs/{job_id}/claim", json={"worker": "host1", "attempt": 1}, headers=WORKER
    )
    assert response.status_code == 200, response.text
    response = client.post(
        f"/api/internal/jobs/{job_id}/finish",
        json={"attempt": 1, "status": status, "reason": None, "infrastructure": False},
        headers=WORKER,
    )
    assert response.status_code == 200, response.text


def deliveries(app: FastAPI) -> list[TriggerDelivery]:
    with app.state.sessionmaker() as session:
        return list(session.scalars(select(TriggerDelivery).order_by(TriggerDelivery.id)))


def test_finish_fires_the_webhook(
    app: FastAPI, user_headers: dict[str, str], hook_server: HookServer
) -> None:
    client = TestClient(app)
    job_id = submit(client, user_headers, manifest(hook_server.url, "failure"))
    claim_and_finish(client, job_id, "failed")
    (row,) = deliveries(app)
    assert (row.job_id, row.fired_status, row.status) == (job_id, "failed", "pending")
    # A retried finish records nothing more
    response = client.post(
        f"/api/internal/jobs/{job_id}/finish",
        json={"attempt": 1, "status": "failed", "reason": None, "infrastructure": False},
        headers=WORKER,
    )
    assert response.status_code == 200
    assert len(deliveries(app)) == 1
    assert TriggerSender(app.state.sessionmaker, app.state.config).run_once() == 1
    payload = json.loads(hook_server.requests[0].body)
    assert (payload["id"], payload["status"]) == (job_id, "failed")
    assert payload["tasks"][0]["log"] == f"{ORIGIN}/logs/{job_id}/build/log"


def test_cancelling_a_queued_job_fires(
    app: FastAPI, user_headers: dict[str, str], hook_server: HookServer
) -> None:
    client = TestClient(app)
    job_id = submit(client, user_headers, manifest(hook_server.url, "failure"))
    response = client.post(f"/api/jobs/{job_id}/cancel", json={}, headers=user_headers)
    assert response.status_code == 200, response.text
    assert [(r.job_id, r.fired_status) for r in deliveries(app)] == [(job_id, "cancelled")]


def test_a_group_fires_once_when_its_last_job_finishes(
    app: FastAPI, user_headers: dict[str, str], hook_server: HookServer
) -> None:
    client = TestClient(app)
    plain = "image: debian/bookworm\ntasks:\n  - build: echo hi\n"
    jobs = [submit(client, user_headers, plain, execute=False) for _ in range(2)]
    response = client.post(
        "/api/job-group",
        json={
            "jobs": jobs,
            "execute": True,
            "triggers": [{"action": "webhook", "condition": "success", "url": hook_server.url}],
        },
        headers=user_headers,
    )
    assert response.status_code == 200, response.text
    group_id = response.json()["id"]
    claim_and_finish(client, jobs[0], "success")
    assert deliveries(app) == []
    claim_and_finish(client, jobs[1], "success")
    (row,) = deliveries(app)
    assert (row.group_id, row.job_id, row.fired_status) == (group_id, None, "success")
    assert TriggerSender(app.state.sessionmaker, app.state.config).run_once() == 1
    payload = json.loads(hook_server.requests[0].body)
    assert [job["id"] for job in payload["jobs"]] == jobs


def test_the_app_runs_the_sender(
    app: FastAPI, user_headers: dict[str, str], hook_server: HookServer
) -> None:
    with TestClient(app) as client:  # runs the lifespan: background threads start
        assert isinstance(app.state.trigger_sender, TriggerSender)
        job_id = submit(client, user_headers, manifest(hook_server.url))
        claim_and_finish(client, job_id, "success")
        deadline = time.monotonic() + 15
        while not hook_server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(hook_server.requests) == 1
    assert deliveries(app)[0].status == "sent"
