"""The access matrix (issue 3, Acceptance): owner, another user, no token, a token without
the scope; a public and a private job; every read and write path, logs and artifact
downloads included. A job one may not read answers 404, as if it did not exist.
"""

from __future__ import annotations

import pytest
from api_helpers import MANIFEST, Account
from fastapi import FastAPI
from fastapi.testclient import TestClient

from buildworker.db.models import Artifact, Job
from buildworker.store import Store

READS = ("job", "manifest", "artifacts", "setup_log", "task_log", "artifact_file")
WRITES = ("start", "cancel")


def make_job(
    client: TestClient,
    owner: Account,
    access_read: list[str],
    access_write: list[str] | None = None,
) -> int:
    body: dict[str, object] = {"manifest": MANIFEST, "execute": False, "access:read": access_read}
    if access_write is not None:
        body["access:write"] = access_write
    response = client.post("/api/jobs", json=body, headers=owner.headers())
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def make_started(app: FastAPI, job_id: int) -> str:
    """Mark the job as running on a worker, with logs and one artifact; returns its URL path."""
    store = Store(app.state.store)
    with app.state.sessionmaker() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.runner, job.attempt = "running", "host1", 1
        key = store.artifact_key(job_id, job.artifact_segment, "out.bin")
        with store.artifact_writer(key, 1024) as sink:
            sink.write(b"artifact")
        session.add(
            Artifact(job_id=job_id, path="out.bin", name="out.bin", size=8, storage_key=key)
        )
        session.commit()
    store.append_log(job_id, None, 0, b"setup\n")
    store.append_log(job_id, "build", 0, b"build\n")
    return "/" + key


def statuses(
    client: TestClient,
    headers: dict[str, str],
    read_job: int,
    artifact: str,
    start_job: int,
    cancel_job: int,
) -> dict[str, int]:
    requests = {
        "job": ("GET", f"/api/jobs/{read_job}"),
        "manifest": ("GET", f"/api/jobs/{read_job}/manifest"),
        "artifacts": ("GET", f"/api/jobs/{read_job}/artifacts"),
        "setup_log": ("GET", f"/logs/{read_job}/log"),
        "task_log": ("GET", f"/logs/{read_job}/build/log"),
        "artifact_file": ("GET", artifact),
        "start": ("POST", f"/api/jobs/{start_job}/start"),
        "cancel": ("POST", f"/api/jobs/{cancel_job}/cancel"),
    }
    out = {}
    for name, (method, path) in requests.items():
        response = client.request(method, path, headers=headers)
        out[name] = response.status_code
        if response.status_code >= 400:
            assert response.json()["errors"], (name, response.text)
    return out


# (visibility, actor) → expected status per path
OWNER = dict.fromkeys(READS + WRITES, 200)
NO_SCOPE = dict.fromkeys(READS + WRITES, 403)
EXPECTED = {
    ("public", "owner"): OWNER,
    ("private", "owner"): OWNER,
    ("public", "other"): {**dict.fromkeys(READS, 200), "start": 403, "cancel": 403},
    ("private", "other"): dict.fromkeys(READS + WRITES, 404),
    # the API proper needs a token; manifest, logs and artifacts are readable anonymously
    # when public (as builds.sr.ht's manifest and log URLs), and 404 when private
    ("public", "anonymous"): {
        **dict.fromkeys(READS, 200),
        "job": 401,
        "artifacts": 401,
        "start": 401,
        "cancel": 401,
    },
    ("private", "anonymous"): {
        **dict.fromkeys(READS, 404),
        "job": 401,
        "artifacts": 401,
        "start": 401,
        "cancel": 401,
    },
    ("public", "no_scope"): NO_SCOPE,
    ("private", "no_scope"): NO_SCOPE,
}


@pytest.mark.parametrize(("visibility", "actor"), sorted(EXPECTED))
def test_access_matrix(
    client: TestClient, app: FastAPI, alice: Account, bob: Account, visibility: str, actor: str
) -> None:
    # Given three jobs of alice's with the same access lists: one started, two pending
    access_read = ["*"] if visibility == "public" else []
    read_job = make_job(client, alice, access_read)
    artifact = make_started(app, read_job)
    start_job = make_job(client, alice, access_read)
    cancel_job = make_job(client, alice, access_read)
    headers = {
        "owner": alice.headers(),
        "other": bob.headers(),
        "anonymous": {},
        "no_scope": alice.headers("secrets"),
    }[actor]
    # When the actor tries every path, Then each answers as the matrix says
    assert (
        statuses(client, headers, read_job, artifact, start_job, cancel_job)
        == EXPECTED[(visibility, actor)]
    )


def test_read_and_write_lists_share_a_private_job(
    client: TestClient, app: FastAPI, alice: Account, bob: Account
) -> None:
    # Given private jobs readable by bob, and one writable by bob
    readable = make_job(client, alice, ["bob"])
    artifact = make_started(app, readable)
    start_r, cancel_r = make_job(client, alice, ["bob"]), make_job(client, alice, ["bob"])
    got = statuses(client, bob.headers(), readable, artifact, start_r, cancel_r)
    assert got == {**dict.fromkeys(READS, 200), "start": 403, "cancel": 403}
    writable = make_job(client, alice, [], ["~bob"])
    artifact_w = make_started(app, writable)
    start_w, cancel_w = make_job(client, alice, [], ["bob"]), make_job(client, alice, [], ["bob"])
    assert statuses(
        client, bob.headers(), writable, artifact_w, start_w, cancel_w
    ) == dict.fromkeys(READS + WRITES, 200)


def test_only_the_owners_jobs_are_listed(client: TestClient, alice: Account, bob: Account) -> None:
    make_job(client, alice, ["*"])
    make_job(client, alice, ["bob"])
    assert client.get("/api/jobs", headers=bob.headers()).json()["total"] == 0
    assert client.get("/api/jobs", headers=alice.headers()).json()["total"] == 2
    assert client.get("/api/jobs").status_code == 401
    assert client.get("/api/jobs", headers=alice.headers("secrets")).status_code == 403
