"""The internal worker API on SQLite and PostgreSQL: auth, register, claim, heartbeat, task
status, log append, artifacts, finish, release."""

from __future__ import annotations

import base64
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from api_helpers import MANIFEST, ORIGIN, WORKER_TOKEN, Account, with_api
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from buildworker.api.app import create_app
from buildworker.config import Config
from buildworker.db.models import Artifact, Job, Outbox, Worker, utcnow

WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}


def submit(client: TestClient, account: Account, manifest: str = MANIFEST, **fields: object) -> int:
    response = client.post(
        "/api/jobs", json={"manifest": manifest, **fields}, headers=account.headers()
    )
    assert response.status_code == 200, response.text
    job_id: int = response.json()["id"]
    return job_id


def claim(client: TestClient, job_id: int, attempt: int = 1, worker: str = "host1") -> dict:
    response = client.post(
        f"/api/internal/jobs/{job_id}/claim",
        json={"worker": worker, "attempt": attempt},
        headers=WORKER,
    )
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


def job_row(app: FastAPI, job_id: int) -> Job:
    with app.state.sessionmaker() as session:
        job = session.get_one(Job, job_id)
        _ = job.tasks
        return job


def outbox(app: FastAPI, job_id: int) -> list[int]:
    with app.state.sessionmaker() as session:
        rows = session.scalars(select(Outbox).where(Outbox.job_id == job_id)).all()
        return sorted(row.attempt for row in rows)


def put_log(
    client: TestClient, job_id: int, log: str, offset: int, data: bytes, attempt: int = 1
) -> object:
    return client.put(
        f"/api/internal/jobs/{job_id}/logs/{log}",
        params={"offset": offset, "attempt": attempt},
        content=data,
        headers=WORKER,
    )


# --- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic dGVzdA=="},
        {"Authorization": f"Bearer {WORKER_TOKEN}x"},
    ],
)
def test_internal_calls_without_the_worker_token_are_401(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = client.post(
        "/api/internal/workers", json={"name": "h", "images": []}, headers=headers
    )
    assert response.status_code == 401
    assert response.json()["errors"][0]["reason"]


def test_a_user_token_is_not_a_worker_token(client: TestClient, alice: Account) -> None:
    job_id = submit(client, alice)
    for headers in (alice.headers("all"), {"Authorization": f"Bearer {alice.tokens['all']}"}):
        response = client.post(
            f"/api/internal/jobs/{job_id}/claim",
            json={"worker": "h", "attempt": 1},
            headers=headers,
        )
        assert response.status_code == 401
    assert job_row(client.app, job_id).status == "queued"  # type: ignore[arg-type]


def test_an_empty_worker_token_disables_the_internal_api(api_config: Config) -> None:
    app = create_app(with_api(api_config, worker_token=""))
    try:
        client = TestClient(app)
        response = client.post(
            "/api/internal/workers",
            json={"name": "h", "images": []},
            headers={"Authorization": "Bearer "},
        )
        assert response.status_code == 401
        assert "worker-token" in response.json()["errors"][0]["reason"]
    finally:
        app.state.engine.dispose()


def test_the_internal_api_is_not_in_the_public_openapi_document(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/api/internal")]


# --- register -------------------------------------------------------------------------------


def test_register_records_the_images_and_submit_then_accepts_them(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    served = [{"image": "fedora/40", "arches": ["amd64", "arm64"], "default_arch": "amd64"}]
    # Given fedora/40 is not served yet
    manifest = "image: fedora/40\ntasks:\n  - a: echo\n"
    refused = client.post("/api/jobs", json={"manifest": manifest}, headers=alice.headers())
    assert refused.status_code == 400
    # When a worker registers it (twice: registration is idempotent)
    for _ in range(2):
        response = client.post(
            "/api/internal/workers", json={"name": "host1", "images": served}, headers=WORKER
        )
        assert response.status_code == 200 and response.json() == {}
    # Then submit accepts it
    assert submit(client, alice, manifest)
    with app.state.sessionmaker() as session:
        assert session.get_one(Worker, "host1").images == served


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"images": []}, "name"),
        ({"name": "h", "images": "debian"}, "images"),
        ({"name": "h", "images": [{"arches": ["amd64"]}]}, "images.0.image"),
        ([], "body"),
    ],
)
def test_register_with_a_bad_body_is_400_naming_the_field(
    client: TestClient, body: object, field: str
) -> None:
    response = client.post("/api/internal/workers", json=body, headers=WORKER)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field


# --- claim ----------------------------------------------------------------------------------


def test_claim_returns_the_job_and_makes_it_running_with_a_lease(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = submit(client, alice, note="n", tags=["t"])
    before = utcnow()
    got = claim(client, job_id, worker="host1")
    assert got["job_id"] == job_id and got["attempt"] == 1
    assert got["manifest"] == MANIFEST
    assert got["secrets"] == []
    assert got["job_url"] == f"{ORIGIN}/~alice/job/{job_id}"  # the page, as JOB_URL
    assert got["owner"] == "alice"
    assert got["tasks"] == ["build", "test"]
    assert got["lease_seconds"] == 60.0
    assert got["timeout_seconds"] == 45 * 60.0
    row = job_row(app, job_id)
    assert row.status == "running" and row.runner == "host1"
    assert row.lease_expires is not None
    assert before + timedelta(seconds=55) < row.lease_expires < utcnow() + timedelta(seconds=65)
    # The public view now shows the runner and the log URLs
    public = client.get(f"/api/jobs/{job_id}", headers=alice.headers("ro")).json()
    assert public["runner"] == "host1"
    assert public["setup_log"] == f"{ORIGIN}/logs/{job_id}/log"


def test_a_second_claim_of_the_same_attempt_is_409(client: TestClient, alice: Account) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    for worker in ("host1", "host2"):
        response = client.post(
            f"/api/internal/jobs/{job_id}/claim",
            json={"worker": worker, "attempt": 1},
            headers=WORKER,
        )
        assert response.status_code == 409
        assert "already claimed" in response.json()["errors"][0]["reason"]


def test_concurrent_claims_of_one_attempt_let_exactly_one_through(
    client: TestClient, alice: Account
) -> None:
    job_id = submit(client, alice)
    codes: list[int] = []

    def claimer(n: int) -> None:
        response = client.post(
            f"/api/internal/jobs/{job_id}/claim",
            json={"worker": f"host{n}", "attempt": 1},
            headers=WORKER,
        )
        codes.append(response.status_code)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [409] * 5


def test_claims_of_stale_unknown_pending_or_cancelled_jobs_are_refused(
    client: TestClient, alice: Account
) -> None:
    queued = submit(client, alice)
    pending = submit(client, alice, execute=False)
    cancelled = submit(client, alice)
    assert client.post(f"/api/jobs/{cancelled}/cancel", headers=alice.headers()).status_code == 200

    def status(job_id: int, attempt: int) -> int:
        return client.post(
            f"/api/internal/jobs/{job_id}/claim",
            json={"worker": "h", "attempt": attempt},
            headers=WORKER,
        ).status_code

    assert status(queued, 2) == 409
    assert status(pending, 1) == 409
    assert status(cancelled, 1) == 409
    assert status(999_999, 1) == 404
    bad = client.post(
        f"/api/internal/jobs/{queued}/claim", json={"worker": "", "attempt": 0}, headers=WORKER
    )
    assert bad.status_code == 400
    assert {e["field"] for e in bad.json()["errors"]} == {"worker", "attempt"}


def _secret(client: TestClient, account: Account, **body: object) -> str:
    response = client.post("/api/secrets", json=body, headers=account.headers("secrets"))
    assert response.status_code == 200, response.text
    uuid: str = response.json()["uuid"]
    return uuid


SECRET_MANIFEST = """\
image: debian/bookworm
secrets:
  - {uuid}
  - deploy-config
tasks:
  - build: echo
"""


def test_claim_returns_decrypted_secrets_when_the_job_has_them_on(
    client: TestClient, alice: Account
) -> None:
    key = _secret(client, alice, type="ssh_key", data="-----KEY-----\n")
    _secret(
        client,
        alice,
        type="plaintext_file",
        name="deploy-config",
        data="x=1",
        path="~/c",
        mode="600",
    )
    manifest = SECRET_MANIFEST.format(uuid=key)
    with_secrets = submit(client, alice, manifest)
    without = submit(client, alice, manifest, secrets=False)

    got = claim(client, with_secrets)["secrets"]
    assert [(s["type"], base64.b64decode(s["data_b64"])) for s in got] == [
        ("ssh_key", b"-----KEY-----\n"),
        ("plaintext_file", b"x=1"),
    ]
    assert got[0]["uuid"] == key
    assert (got[1]["name"], got[1]["path"], got[1]["mode"]) == ("deploy-config", "~/c", 0o600)
    assert claim(client, without)["secrets"] == []


def test_the_claim_uses_the_references_parsed_at_submit_and_parses_older_jobs(
    app: FastAPI, client: TestClient, alice: Account
) -> None:
    key = _secret(client, alice, type="ssh_key", data="k\n")
    manifest = f"image: debian/bookworm\nsecrets: [{key}]\ntasks:\n  - build: echo\n"
    stored, older = submit(client, alice, manifest), submit(client, alice, manifest)
    with app.state.sessionmaker() as session:
        # Given the references stored at submit, and a manifest the claim could not parse
        job = session.get_one(Job, stored)
        assert job.secret_refs == [key]
        job.manifest = "image: [this no longer parses"
        # and a job from before the references were stored (revision 0006)
        session.get_one(Job, older).secret_refs = None
        session.commit()
    # Then the claim resolves the stored references without parsing the manifest
    assert [s["uuid"] for s in claim(client, stored)["secrets"]] == [key]
    # and parses the manifest of the older job
    assert [s["uuid"] for s in claim(client, older)["secrets"]] == [key]


def test_a_job_whose_secret_vanished_fails_at_claim_saying_why(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    key = _secret(client, alice, type="ssh_key", data="k\n")
    _secret(client, alice, type="pgp_key", name="deploy-config", data="p\n")
    job_id = submit(client, alice, SECRET_MANIFEST.format(uuid=key))
    assert client.delete(f"/api/secrets/{key}", headers=alice.headers("secrets")).status_code in (
        200,
        204,
    )
    response = client.post(
        f"/api/internal/jobs/{job_id}/claim", json={"worker": "h", "attempt": 1}, headers=WORKER
    )
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "secrets[0]"
    row = job_row(app, job_id)
    assert row.status == "failed" and key in (row.reason or "")
    log = client.get(f"/logs/{job_id}/log", headers=alice.headers("ro"))
    assert log.status_code == 200 and b"not found" in log.content


# --- heartbeat and tasks --------------------------------------------------------------------


def test_heartbeat_renews_the_lease_and_reports_a_cancel(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    with app.state.sessionmaker() as session:
        session.get_one(Job, job_id).lease_expires = utcnow() + timedelta(seconds=1)
        session.commit()
    updated = job_row(app, job_id).updated
    beat = client.post(
        f"/api/internal/jobs/{job_id}/heartbeat", json={"attempt": 1}, headers=WORKER
    )
    assert beat.status_code == 200 and beat.json() == {"cancelled": False}
    assert job_row(app, job_id).updated == updated  # a heartbeat is not a status change
    lease = job_row(app, job_id).lease_expires
    assert lease is not None and lease > utcnow() + timedelta(seconds=50)
    # When the owner cancels the running job, the next heartbeat says so
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=alice.headers()).status_code == 200
    beat = client.post(
        f"/api/internal/jobs/{job_id}/heartbeat", json={"attempt": 1}, headers=WORKER
    )
    assert beat.json() == {"cancelled": True}
    # A heartbeat for another attempt has lost its lease
    stale = client.post(
        f"/api/internal/jobs/{job_id}/heartbeat", json={"attempt": 2}, headers=WORKER
    )
    assert stale.status_code == 409


def test_task_status_is_recorded_and_shown(client: TestClient, alice: Account) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    url = f"/api/internal/jobs/{job_id}/tasks"
    assert (
        client.put(f"{url}/build", json={"attempt": 1, "status": "running"}, headers=WORKER).json()
        == {}
    )
    assert (
        client.put(
            f"{url}/build", json={"attempt": 1, "status": "success"}, headers=WORKER
        ).status_code
        == 200
    )
    tasks = client.get(f"/api/jobs/{job_id}", headers=alice.headers("ro")).json()["tasks"]
    assert [(t["name"], t["status"]) for t in tasks] == [("build", "success"), ("test", "pending")]
    assert (
        client.put(
            f"{url}/nope", json={"attempt": 1, "status": "running"}, headers=WORKER
        ).status_code
        == 404
    )
    bad = client.put(f"{url}/test", json={"attempt": 1, "status": "done"}, headers=WORKER)
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "status"
    stale = client.put(f"{url}/test", json={"attempt": 2, "status": "running"}, headers=WORKER)
    assert stale.status_code == 409


# --- logs -----------------------------------------------------------------------------------


def test_log_chunks_append_at_their_offset_and_retries_are_harmless(
    client: TestClient, alice: Account
) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    assert put_log(client, job_id, "setup", 0, b"Booting\n").json() == {"size": 8}  # type: ignore[attr-defined]
    assert put_log(client, job_id, "setup", 0, b"Booting\n").json() == {"size": 8}  # type: ignore[attr-defined]
    assert put_log(client, job_id, "setup", 8, b"Ready\n").json() == {"size": 14}  # type: ignore[attr-defined]
    assert put_log(client, job_id, "build", 0, b"hello\n").json() == {"size": 6}  # type: ignore[attr-defined]
    gap = put_log(client, job_id, "setup", 100, b"lost")
    assert gap.status_code == 409  # type: ignore[attr-defined]
    assert gap.json()["size"] == 14  # type: ignore[attr-defined]
    assert gap.json()["errors"][0]["field"] == "offset"  # type: ignore[attr-defined]
    assert client.get(f"/logs/{job_id}/log").content == b"Booting\nReady\n"
    assert client.get(f"/logs/{job_id}/build/log").content == b"hello\n"


def test_a_task_named_setup_has_its_own_log_apart_from_the_setup_log(
    client: TestClient, alice: Account
) -> None:
    manifest = "image: debian/bookworm\ntasks:\n  - setup: echo\n  - log: echo\n"
    job_id = submit(client, alice, manifest)
    claim(client, job_id)
    put_log(client, job_id, "setup", 0, b"the setup log\n")
    response = client.put(
        f"/api/internal/jobs/{job_id}/tasks/setup/log",
        params={"offset": 0, "attempt": 1},
        content=b"task setup\n",
        headers=WORKER,
    )
    assert response.json() == {"size": 11}
    put_log(client, job_id, "log", 0, b"task log\n")
    assert client.get(f"/logs/{job_id}/log").content == b"the setup log\n"
    assert client.get(f"/logs/{job_id}/setup/log").content == b"task setup\n"
    assert client.get(f"/logs/{job_id}/log/log").content == b"task log\n"


def test_log_chunks_for_unknown_tasks_or_lost_leases_are_refused(
    client: TestClient, alice: Account
) -> None:
    job_id = submit(client, alice)
    assert put_log(client, job_id, "setup", 0, b"x").status_code == 409  # type: ignore[attr-defined]
    claim(client, job_id)
    assert put_log(client, job_id, "nope", 0, b"x").status_code == 404  # type: ignore[attr-defined]
    assert put_log(client, job_id, "setup", 0, b"x", attempt=2).status_code == 409  # type: ignore[attr-defined]
    bad = put_log(client, job_id, "setup", -1, b"x")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "offset"  # type: ignore[attr-defined]


# --- artifacts ------------------------------------------------------------------------------


def upload(client: TestClient, job_id: int, path: str, data: bytes, attempt: int = 1) -> object:
    return client.put(
        f"/api/internal/jobs/{job_id}/artifacts",
        params={"attempt": attempt, "path": path},
        content=data,
        headers=WORKER,
    )


def test_an_uploaded_artifact_is_listed_and_downloadable_at_its_url(
    client: TestClient, app: FastAPI, alice: Account, api_config: Config
) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    data = b"\x00binary\xff" * 10_000
    got = upload(client, job_id, "/home/build/out/app.tar.gz", data).json()  # type: ignore[attr-defined]
    segment = job_row(app, job_id).artifact_segment
    assert got == {
        "name": "app.tar.gz",
        "url": f"{ORIGIN}/artifacts/{job_id}/{segment}/app.tar.gz",
        "size": len(data),
    }
    stored = Path(api_config.store.path) / "artifacts" / str(job_id) / segment / "app.tar.gz"
    assert stored.read_bytes() == data
    listed = client.get(f"/api/jobs/{job_id}/artifacts", headers=alice.headers("ro")).json()
    assert [(a["path"], a["name"], a["size"], a["url"]) for a in listed["results"]] == [
        ("/home/build/out/app.tar.gz", "app.tar.gz", len(data), got["url"])
    ]
    assert client.get(got["url"].removeprefix(ORIGIN)).content == data
    # A retried upload replaces the first rather than adding a second
    upload(client, job_id, "/home/build/out/app.tar.gz", b"again")
    with app.state.sessionmaker() as session:
        rows = session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()
        assert [(r.name, r.size) for r in rows] == [("app.tar.gz", 5)]


def test_artifacts_over_the_size_or_count_cap_are_refused(
    api_config: Config, alice_token_app: tuple[TestClient, Account]
) -> None:
    client, alice = alice_token_app
    job_id = submit(client, alice)
    claim(client, job_id)
    too_big = upload(client, job_id, "big.bin", b"x" * 1025)
    assert too_big.status_code == 413  # type: ignore[attr-defined]
    assert too_big.json()["errors"][0]["field"] == "path"  # type: ignore[attr-defined]
    assert upload(client, job_id, "a", b"x").status_code == 200  # type: ignore[attr-defined]
    assert upload(client, job_id, "b", b"x").status_code == 200  # type: ignore[attr-defined]
    third = upload(client, job_id, "c", b"x")
    assert third.status_code == 400  # type: ignore[attr-defined]
    assert "no more than 2" in third.json()["errors"][0]["reason"]  # type: ignore[attr-defined]
    assert upload(client, job_id, "..", b"x").status_code == 400  # type: ignore[attr-defined]
    assert upload(client, job_id, "a", b"x", attempt=2).status_code == 409  # type: ignore[attr-defined]
    store = Path(api_config.store.path) / "artifacts" / str(job_id)
    assert sorted(p.name for p in store.rglob("*") if p.is_file()) == ["a", "b"]


@pytest.fixture
def alice_token_app(api_config: Config) -> object:
    from api_helpers import make_account

    app = create_app(with_api(api_config, max_artifact_size=1024, max_artifacts=2))
    try:
        yield TestClient(app), make_account(app, "alice")
    finally:
        app.state.engine.dispose()


# --- finish and release ---------------------------------------------------------------------


def finish(client: TestClient, job_id: int, attempt: int = 1, **body: object) -> object:
    return client.post(
        f"/api/internal/jobs/{job_id}/finish", json={"attempt": attempt, **body}, headers=WORKER
    )


def test_finish_sets_the_terminal_status_and_settles_the_tasks(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    client.put(
        f"/api/internal/jobs/{job_id}/tasks/build",
        json={"attempt": 1, "status": "running"},
        headers=WORKER,
    )
    response = finish(client, job_id, status="failed", reason="build exited 2")
    assert response.status_code == 200 and response.json() == {}  # type: ignore[attr-defined]
    row = job_row(app, job_id)
    assert (row.status, row.reason, row.lease_expires) == ("failed", "build exited 2", None)
    assert [(t.name, t.status) for t in row.tasks] == [("build", "failed"), ("test", "skipped")]
    # Finishing again is a no-op, whatever it says
    assert finish(client, job_id, status="success").status_code == 200  # type: ignore[attr-defined]
    assert job_row(app, job_id).status == "failed"
    # And a finish for another attempt is refused
    assert finish(client, job_id, attempt=2, status="success").status_code == 409  # type: ignore[attr-defined]


def test_finish_success_keeps_finished_tasks_and_skips_the_rest(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    client.put(
        f"/api/internal/jobs/{job_id}/tasks/build",
        json={"attempt": 1, "status": "success"},
        headers=WORKER,
    )
    finish(client, job_id, status="success")
    row = job_row(app, job_id)
    assert row.status == "success" and row.reason is None
    assert [(t.name, t.status) for t in row.tasks] == [("build", "success"), ("test", "skipped")]


def test_a_failure_after_a_cancel_request_ends_cancelled(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    client.post(f"/api/jobs/{job_id}/cancel", headers=alice.headers())
    finish(client, job_id, status="failed", reason="killed")
    assert job_row(app, job_id).status == "cancelled"


def test_an_infrastructure_failure_is_retried_while_attempts_remain(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = submit(client, alice)
    for attempt in (1, 2):
        claim(client, job_id, attempt=attempt)
        finish(
            client,
            job_id,
            attempt=attempt,
            status="failed",
            reason="VM did not boot",
            infrastructure=True,
        )
        row = job_row(app, job_id)
        assert (row.status, row.attempt, row.runner) == ("queued", attempt + 1, None)
    assert outbox(app, job_id) == [1, 2, 3]
    # The last attempt (max-attempts = 3) fails for good
    claim(client, job_id, attempt=3)
    finish(
        client, job_id, attempt=3, status="failed", reason="VM did not boot", infrastructure=True
    )
    row = job_row(app, job_id)
    assert (row.status, row.reason) == ("failed", "VM did not boot")


def test_a_new_attempt_starts_with_fresh_logs_tasks_and_artifacts(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    put_log(client, job_id, "setup", 0, b"attempt one\n")
    client.put(
        f"/api/internal/jobs/{job_id}/tasks/build",
        json={"attempt": 1, "status": "running"},
        headers=WORKER,
    )
    upload(client, job_id, "old.txt", b"old")
    assert (
        client.post(
            f"/api/internal/jobs/{job_id}/release",
            json={"attempt": 1, "reason": "draining"},
            headers=WORKER,
        ).json()
        == {}
    )
    claim(client, job_id, attempt=2, worker="host2")
    row = job_row(app, job_id)
    assert [t.status for t in row.tasks] == ["pending", "pending"]
    assert row.runner == "host2"
    assert client.get(f"/logs/{job_id}/log").content == b""
    assert (
        client.get(f"/api/jobs/{job_id}/artifacts", headers=alice.headers("ro")).json()["results"]
        == []
    )


def test_release_requeues_the_job_with_the_next_attempt_once(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    for _ in range(2):  # a retried release changes nothing more
        response = client.post(
            f"/api/internal/jobs/{job_id}/release",
            json={"attempt": 1, "reason": "draining"},
            headers=WORKER,
        )
        assert response.status_code == 200 and response.json() == {}
    row = job_row(app, job_id)
    assert (row.status, row.attempt, row.runner, row.lease_expires) == ("queued", 2, None, None)
    assert outbox(app, job_id) == [1, 2]
    # the old attempt can no longer be claimed, the new one can
    old = client.post(
        f"/api/internal/jobs/{job_id}/claim", json={"worker": "h", "attempt": 1}, headers=WORKER
    )
    assert old.status_code == 409
    assert claim(client, job_id, attempt=2)["attempt"] == 2


def test_releasing_a_job_the_user_cancelled_ends_it_cancelled(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    client.post(f"/api/jobs/{job_id}/cancel", headers=alice.headers())
    client.post(f"/api/internal/jobs/{job_id}/release", json={"attempt": 1}, headers=WORKER)
    row = job_row(app, job_id)
    assert row.status == "cancelled" and outbox(app, job_id) == [1]


def test_an_oversized_log_chunk_is_413_and_not_stored(client: TestClient, alice: Account) -> None:
    job_id = submit(client, alice)
    claim(client, job_id)
    response = put_log(client, job_id, "setup", 0, b"x" * (8 * 1024 * 1024 + 1))
    assert response.status_code == 413  # type: ignore[attr-defined]
    assert client.get(f"/logs/{job_id}/log").content == b""
