"""The public job endpoints, shaped as builds.sr.ht answers them (spec §3.1)."""

from __future__ import annotations

import json
import re

from api_helpers import MANIFEST, ORIGIN, Account
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from buildworker.db.models import Job, Outbox

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")


def submit(client: TestClient, account: Account, **fields: object) -> dict:
    body = {"manifest": MANIFEST, **fields}
    response = client.post("/api/jobs", json=body, headers=account.headers())
    assert response.status_code == 200, response.text
    return response.json()


def outbox_rows(app: FastAPI, job_id: int) -> list[tuple[int, int]]:
    with app.state.sessionmaker() as session:
        rows = session.scalars(select(Outbox).where(Outbox.job_id == job_id)).all()
        return [(row.job_id, row.attempt) for row in rows]


def test_submit_returns_the_job_without_setup_log_and_enqueues_it(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    # When alice submits a manifest with a note and tags
    job = submit(client, alice, note="first build", tags=["ci", "main.x"])
    # Then the answer is sr.ht's job resource, setup_log omitted at submit
    assert "setup_log" not in job
    assert job["status"] == "queued"
    assert job["tasks"] == [
        {"name": "build", "status": "pending", "log": None},
        {"name": "test", "status": "pending", "log": None},
    ]
    assert job["note"] == "first build"
    assert job["tags"] == "ci/main.x"
    assert job["runner"] is None
    assert job["owner"] == {"canonical_name": "~alice", "name": "alice"}
    assert job["image"] == "debian/bookworm" and job["arch"] == "amd64"
    assert TIME.match(job["created"]) and TIME.match(job["updated"])
    # And exactly one outbox row exists for attempt 1
    assert outbox_rows(app, job["id"]) == [(job["id"], 1)]


def test_get_job_has_null_logs_until_started_then_origin_urls(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = submit(client, alice)["id"]
    got = client.get(f"/api/jobs/{job_id}", headers=alice.headers("ro")).json()
    assert got["setup_log"] is None
    assert [t["log"] for t in got["tasks"]] == [None, None]
    # When a worker has claimed it (runner set, running)
    with app.state.sessionmaker() as session:
        row = session.get(Job, job_id)
        assert row is not None
        row.runner, row.status = "host1", "running"
        session.commit()
    got = client.get(f"/api/jobs/{job_id}", headers=alice.headers("ro")).json()
    assert got["setup_log"] == f"{ORIGIN}/logs/{job_id}/log"
    assert got["tasks"][0]["log"] == f"{ORIGIN}/logs/{job_id}/build/log"
    assert got["runner"] == "host1" and got["status"] == "running"


def test_execute_false_is_pending_and_start_queues_it_once(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job = submit(client, alice, execute=False)
    assert job["status"] == "pending"
    assert outbox_rows(app, job["id"]) == []
    # When it is started
    response = client.post(f"/api/jobs/{job['id']}/start", headers=alice.headers())
    assert response.status_code == 200 and response.json() == {}
    assert (
        client.get(f"/api/jobs/{job['id']}", headers=alice.headers()).json()["status"] == "queued"
    )
    assert outbox_rows(app, job["id"]) == [(job["id"], 1)]
    # And a second start is refused without a second outbox row
    again = client.post(f"/api/jobs/{job['id']}/start", headers=alice.headers())
    assert again.status_code == 400
    assert again.json() == {"errors": [{"reason": "This job is already queued"}]}
    assert outbox_rows(app, job["id"]) == [(job["id"], 1)]


def test_start_of_an_executed_job_is_refused(client: TestClient, alice: Account) -> None:
    job = submit(client, alice)
    response = client.post(f"/api/jobs/{job['id']}/start", headers=alice.headers())
    assert response.status_code == 400
    assert "already queued" in response.json()["errors"][0]["reason"]


def test_cancel_pending_queued_running_and_finished(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    pending = submit(client, alice, execute=False)["id"]
    queued = submit(client, alice)["id"]
    running = submit(client, alice)["id"]
    done = submit(client, alice)["id"]
    with app.state.sessionmaker() as session:
        for job_id, status in ((running, "running"), (done, "success")):
            row = session.get(Job, job_id)
            assert row is not None
            row.status, row.runner = status, "host1"
        session.commit()
    for job_id in (pending, queued, running):
        response = client.post(f"/api/jobs/{job_id}/cancel", headers=alice.headers())
        assert response.status_code == 200 and response.json() == {}
    statuses = {
        j: client.get(f"/api/jobs/{j}", headers=alice.headers()).json()["status"]
        for j in (pending, queued, running)
    }
    # pending and queued are cancelled at once; running waits for the worker's heartbeat
    assert statuses == {pending: "cancelled", queued: "cancelled", running: "running"}
    with app.state.sessionmaker() as session:
        row = session.get(Job, running)
        assert row is not None and row.cancel_requested is True
    # A cancelled job cancels again idempotently, a finished one is refused
    assert client.post(f"/api/jobs/{pending}/cancel", headers=alice.headers()).status_code == 200
    finished = client.post(f"/api/jobs/{done}/cancel", headers=alice.headers())
    assert finished.status_code == 400
    assert "already complete" in finished.json()["errors"][0]["reason"]
    # And a cancelled job cannot be started
    assert client.post(f"/api/jobs/{pending}/start", headers=alice.headers()).status_code == 400


def test_manifest_is_returned_as_text_plain(client: TestClient, alice: Account) -> None:
    job_id = submit(client, alice)["id"]
    response = client.get(f"/api/jobs/{job_id}/manifest", headers=alice.headers())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == MANIFEST


def test_artifacts_list_is_paginated_and_empty_before_a_build(
    client: TestClient, alice: Account
) -> None:
    job_id = submit(client, alice)["id"]
    response = client.get(f"/api/jobs/{job_id}/artifacts", headers=alice.headers())
    assert response.status_code == 200
    assert response.json() == {"next": None, "results": [], "total": 0, "results_per_page": 50}


def test_artifacts_are_listed_with_their_urls(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    from buildworker.db.models import Artifact

    job_id = submit(client, alice)["id"]
    with app.state.sessionmaker() as session:
        job = session.get(Job, job_id)
        assert job is not None
        key = f"artifacts/{job_id}/{job.artifact_segment}/out.tar.gz"
        session.add(
            Artifact(
                job_id=job_id, path="build/out.tar.gz", name="out.tar.gz", size=42, storage_key=key
            )
        )
        session.commit()
    body = client.get(f"/api/jobs/{job_id}/artifacts", headers=alice.headers()).json()
    assert body["total"] == 1
    (item,) = body["results"]
    assert item["name"] == "out.tar.gz" and item["path"] == "build/out.tar.gz"
    assert item["size"] == 42 and TIME.match(item["created"])
    assert item["url"] == f"{ORIGIN}/{key}"


def test_list_paginates_newest_first_with_start_inclusive(
    client: TestClient, app: FastAPI, alice: Account, bob: Account
) -> None:
    from api_helpers import with_api

    # Given a page size of 2 (a fresh app on the same database)
    from buildworker.api.app import create_app

    small = TestClient(create_app(with_api(app.state.config, results_per_page=2)))
    ids = [submit(client, alice, execute=False)["id"] for _ in range(5)]
    submit(client, bob)  # bob's job never shows in alice's list
    first = small.get("/api/jobs", headers=alice.headers("ro")).json()
    assert [j["id"] for j in first["results"]] == ids[::-1][:2]
    assert first["total"] == 5 and first["results_per_page"] == 2
    assert first["next"] == str(ids[2])
    second = small.get(f"/api/jobs?start={first['next']}", headers=alice.headers("ro")).json()
    assert [j["id"] for j in second["results"]] == [ids[2], ids[1]]
    third = small.get(f"/api/jobs?start={second['next']}", headers=alice.headers("ro")).json()
    assert [j["id"] for j in third["results"]] == [ids[0]] and third["next"] is None
    bad = small.get("/api/jobs?start=abc", headers=alice.headers("ro"))
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "start"
    small.app.state.engine.dispose()  # type: ignore[attr-defined]


def test_form_encoded_submit_with_string_booleans_and_misspelled_keys(
    client: TestClient, alice: Account
) -> None:
    # libfido2 posts a form; others send "false" strings and typos such as "secrtets"
    response = client.post(
        "/api/jobs",
        data={
            "manifest": MANIFEST,
            "execute": "false",
            "Note": "ignored",
            "secrtets": "x",
            "tags": "a/b",
        },
        headers=alice.headers(),
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "pending" and job["note"] is None and job["tags"] == "a/b"


def test_json_string_booleans(client: TestClient, alice: Account) -> None:
    job = submit(client, alice, execute="false", secrets="true")
    assert job["status"] == "pending"
    bad = client.post(
        "/api/jobs", json={"manifest": MANIFEST, "execute": "maybe"}, headers=alice.headers()
    )
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "execute"


def test_manifest_written_as_json_text_or_object(client: TestClient, alice: Account) -> None:
    as_obj = {"image": "alpine/edge", "tasks": [{"hello": "echo hi"}]}
    job = submit(client, alice, manifest=json.dumps(as_obj))
    assert job["image"] == "alpine/edge" and job["arch"] == "x86_64"
    job2 = submit(client, alice, manifest=as_obj)
    assert job2["tasks"] == [{"name": "hello", "status": "pending", "log": None}]


def test_body_without_content_type_is_understood(client: TestClient, alice: Account) -> None:
    raw = json.dumps({"manifest": MANIFEST, "execute": False}).encode()
    response = client.post("/api/jobs", content=raw, headers=alice.headers())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"


def test_get_with_a_json_body_is_fine(client: TestClient, alice: Account) -> None:
    job_id = submit(client, alice)["id"]
    response = client.request(
        "GET",
        f"/api/jobs/{job_id}",
        content=b'""',
        headers={**alice.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 200 and response.json()["id"] == job_id
    listing = client.request(
        "GET",
        "/api/jobs",
        content=b'""',
        headers={**alice.headers(), "Content-Type": "application/json"},
    )
    assert listing.status_code == 200


def test_start_and_cancel_accept_empty_or_empty_object_bodies(
    client: TestClient, alice: Account
) -> None:
    a = submit(client, alice, execute=False)["id"]
    b = submit(client, alice, execute=False)["id"]
    assert client.post(f"/api/jobs/{a}/start", json={}, headers=alice.headers()).status_code == 200
    assert client.post(f"/api/jobs/{b}/start", headers=alice.headers()).status_code == 200
    assert client.post(f"/api/jobs/{a}/cancel", content=b"", headers=alice.headers()).json() == {}


def test_concurrent_starts_enqueue_exactly_once(
    live_url: str, app: FastAPI, client: TestClient, alice: Account
) -> None:
    import concurrent.futures

    import httpx

    # Given a pending job, When eight clients start it at the same moment through uvicorn
    job_id = submit(client, alice, execute=False)["id"]

    def start() -> int:
        with httpx.Client(base_url=live_url, timeout=30) as http:
            return http.post(f"/api/jobs/{job_id}/start", headers=alice.headers()).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        codes = sorted(pool.map(lambda _: start(), range(8)))
    # Then one wins, the others are told it is already queued, and one row is enqueued
    assert codes == [200] + [400] * 7
    assert outbox_rows(app, job_id) == [(job_id, 1)]


def test_multipart_submit_as_curl_dash_f_sends_it(client: TestClient, alice: Account) -> None:
    # curl -F manifest=@build.yml -F execute=false ...
    response = client.post(
        "/api/jobs",
        files={"manifest": ("build.yml", MANIFEST.encode(), "application/x-yaml")},
        data={"execute": "false", "tags": ["x", "y"]},
        headers=alice.headers(),
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "pending" and job["tags"] == "x/y"
    manifest = client.get(f"/api/jobs/{job['id']}/manifest", headers=alice.headers())
    assert manifest.text == MANIFEST


def test_json_with_a_charset_parameter(client: TestClient, alice: Account) -> None:
    response = client.post(
        "/api/jobs",
        content=json.dumps({"manifest": MANIFEST, "note": "héllo"}).encode(),
        headers={**alice.headers(), "Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200 and response.json()["note"] == "héllo"
