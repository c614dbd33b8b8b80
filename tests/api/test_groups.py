"""Job groups: create from pending jobs, read, start (pending only), cancel."""

from __future__ import annotations

from api_helpers import MANIFEST, Account
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from buildworker.db.models import Job, Outbox


def pending_job(client: TestClient, account: Account) -> int:
    response = client.post(
        "/api/jobs", json={"manifest": MANIFEST, "execute": False}, headers=account.headers()
    )
    assert response.status_code == 200
    return int(response.json()["id"])


def outbox(app: FastAPI) -> list[tuple[int, int]]:
    with app.state.sessionmaker() as session:
        return [(r.job_id, r.attempt) for r in session.scalars(select(Outbox).order_by(Outbox.id))]


def test_create_get_start_a_group(client: TestClient, app: FastAPI, alice: Account) -> None:
    a, b = pending_job(client, alice), pending_job(client, alice)
    triggers = [{"action": "email", "condition": "failure", "to": "dev@example.org"}]
    response = client.post(
        "/api/job-group",
        json={"jobs": [a, b], "note": "release", "triggers": triggers},
        headers=alice.headers(),
    )
    assert response.status_code == 200, response.text
    group = response.json()
    assert group["note"] == "release"
    assert group["owner"] == {"canonical_name": "~alice", "name": "alice"}
    assert group["jobs"] == [{"id": a, "status": "pending"}, {"id": b, "status": "pending"}]
    assert group["triggers"][0]["to"] == "dev@example.org"
    # execute defaults to false for groups: nothing is enqueued yet
    assert outbox(app) == []
    got = client.get(f"/api/job-group/{group['id']}", headers=alice.headers("ro"))
    assert got.status_code == 200 and got.json()["id"] == group["id"]
    # When started, both jobs are queued once
    start = client.post(f"/api/job-group/{group['id']}/start", headers=alice.headers())
    assert start.status_code == 200 and start.json() == {}
    assert outbox(app) == [(a, 1), (b, 1)]
    # And starting again re-queues nothing (builds.sr.ht re-queued every job)
    assert (
        client.post(f"/api/job-group/{group['id']}/start", headers=alice.headers()).status_code
        == 200
    )
    assert outbox(app) == [(a, 1), (b, 1)]


def test_group_with_execute_starts_at_once_and_cancel_cancels_all(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    a, b = pending_job(client, alice), pending_job(client, alice)
    group = client.post(
        "/api/job-group", data={"jobs": f"{a},{b}", "execute": "true"}, headers=alice.headers()
    ).json()
    assert [j["status"] for j in group["jobs"]] == ["queued", "queued"]
    with app.state.sessionmaker() as session:
        job = session.get(Job, b)
        assert job is not None
        job.status = "running"
        session.commit()
    cancelled = client.post(f"/api/job-group/{group['id']}/cancel", headers=alice.headers())
    assert cancelled.status_code == 200
    assert [j["status"] for j in cancelled.json()["jobs"]] == ["cancelled", "running"]
    with app.state.sessionmaker() as session:
        job = session.get(Job, b)
        assert job is not None and job.cancel_requested


def test_group_jobs_must_be_mine_pending_and_ungrouped(
    client: TestClient, alice: Account, bob: Account
) -> None:
    mine, theirs = pending_job(client, alice), pending_job(client, bob)
    queued = client.post("/api/jobs", json={"manifest": MANIFEST}, headers=alice.headers()).json()[
        "id"
    ]
    for jobs in ([mine, theirs], [mine, queued], [mine, 999999]):
        response = client.post("/api/job-group", json={"jobs": jobs}, headers=alice.headers())
        assert response.status_code == 400
        assert response.json()["errors"][0]["field"] == "jobs"
    assert (
        client.post("/api/job-group", json={"jobs": [mine]}, headers=alice.headers()).status_code
        == 200
    )
    again = client.post("/api/job-group", json={"jobs": [mine]}, headers=alice.headers())
    assert again.status_code == 400


def test_malformed_groups_are_400_naming_the_field(client: TestClient, alice: Account) -> None:
    job = pending_job(client, alice)
    cases = [
        ({}, "jobs"),
        ({"jobs": "abc"}, "jobs"),
        ({"jobs": [True]}, "jobs"),
        ({"jobs": []}, "jobs"),
        ({"jobs": list(range(1, 70000))}, "jobs"),
        ({"jobs": [job], "triggers": "x"}, "triggers"),
        ({"jobs": [job], "triggers": [5]}, "triggers[0]"),
        (
            {"jobs": [job], "triggers": [{"action": "sms", "condition": "always"}]},
            "triggers[0].action",
        ),
        (
            {"jobs": [job], "triggers": [{"action": "email", "condition": "often", "to": "a"}]},
            "triggers[0].condition",
        ),
        (
            {"jobs": [job], "triggers": [{"action": "email", "condition": "always"}]},
            "triggers[0].to",
        ),
        (
            {
                "jobs": [job],
                "triggers": [{"action": "webhook", "condition": "always", "url": "ftp://x"}],
            },
            "triggers[0].url",
        ),
    ]
    for body, field in cases:
        response = client.post("/api/job-group", json=body, headers=alice.headers())
        assert response.status_code == 400, body
        assert response.json()["errors"][0]["field"] == field, body


def test_another_users_group_is_404(client: TestClient, alice: Account, bob: Account) -> None:
    group = client.post(
        "/api/job-group", json={"jobs": [pending_job(client, alice)]}, headers=alice.headers()
    ).json()
    for method, suffix in (("GET", ""), ("POST", "/start"), ("POST", "/cancel")):
        response = client.request(
            method, f"/api/job-group/{group['id']}{suffix}", headers=bob.headers()
        )
        assert response.status_code == 404
    assert client.get(f"/api/job-group/{group['id']}").status_code == 401
