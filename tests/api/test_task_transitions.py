"""PUT /api/internal/jobs/{id}/tasks/{name} follows the task state machine (buildworker.jobstate)."""

from __future__ import annotations

from api_helpers import MANIFEST, WORKER_TOKEN, Account
from fastapi import FastAPI
from fastapi.testclient import TestClient

from buildworker.db.models import Job

WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}


def running_job(client: TestClient, alice: Account) -> int:
    response = client.post("/api/jobs", json={"manifest": MANIFEST}, headers=alice.headers())
    job_id: int = response.json()["id"]
    claimed = client.post(
        f"/api/internal/jobs/{job_id}/claim", json={"worker": "h", "attempt": 1}, headers=WORKER
    )
    assert claimed.status_code == 200, claimed.text
    return job_id


def put_task(client: TestClient, job_id: int, status: str) -> tuple[int, object]:
    response = client.put(
        f"/api/internal/jobs/{job_id}/tasks/build",
        json={"attempt": 1, "status": status},
        headers=WORKER,
    )
    return response.status_code, response.json()


def task_status(app: FastAPI, job_id: int) -> str:
    with app.state.sessionmaker() as session:
        return session.get_one(Job, job_id).tasks[0].status


def test_a_finished_task_cannot_run_again_in_the_same_attempt(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = running_job(client, alice)
    assert put_task(client, job_id, "running") == (200, {})
    assert put_task(client, job_id, "success") == (200, {})
    assert put_task(client, job_id, "success") == (200, {})  # a retried report: no change
    assert put_task(client, job_id, "running") == (
        400,
        {"errors": [{"field": "status", "reason": "task cannot go from success to running"}]},
    )
    assert task_status(app, job_id) == "success"


def test_an_unknown_task_status_is_refused_by_validation(
    client: TestClient, alice: Account
) -> None:
    job_id = running_job(client, alice)
    code, body = put_task(client, job_id, "done")
    assert code == 400
    assert body == {
        "errors": [
            {
                "field": "status",
                "reason": "Input should be 'pending', 'running', 'success', 'failed' or 'skipped'",
            }
        ]
    }
