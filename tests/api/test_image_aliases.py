"""Aliases resolved at submit (debian/stable → the release it means), routing by the release,
and the image a worker reports into the job record; on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from api_helpers import Account, drain, make_account, unpublished, wait_until, with_api
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from buildworker.api.app import create_app
from buildworker.api.images import _worker_aliases, parse_aliases, resolve_alias
from buildworker.api.publisher import OutboxPublisher
from buildworker.config import Config
from buildworker.db.models import Job, User
from buildworker.db.outbox import enqueue
from buildworker.queue import queue_name

WORKER_HEADERS = {"Authorization": "Bearer test-worker-token"}
DIGEST = "sha256:" + "ab" * 32


def manifest(image: str) -> str:
    return f"image: {image}\ntasks:\n  - a: echo\n"


def register(client: TestClient, name: str, images: list[dict[str, object]]) -> None:
    response = client.post(
        "/api/internal/workers", json={"name": name, "images": images}, headers=WORKER_HEADERS
    )
    assert response.status_code == 200, response.text


def served(release: str, *aliases: str, arches: tuple[str, ...] = ("amd64",)) -> list[dict]:
    """What ImageCatalogue.served() registers for a release and its alias symlinks."""
    entries: list[dict] = [{"image": release, "arches": list(arches), "release": release}]
    entries += [{"image": a, "arches": list(arches), "release": release} for a in aliases]
    return entries


def post_job(client: TestClient, account: Account, image: str) -> dict:
    response = client.post(
        "/api/jobs", json={"manifest": manifest(image)}, headers=account.headers()
    )
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


# --- the pure parts ---------------------------------------------------------------------------


def test_an_alias_is_followed_to_its_release_and_a_release_is_itself() -> None:
    table = {"debian/stable": "debian/bookworm", "debian/latest": "debian/stable"}
    assert resolve_alias("debian/stable", table) == "debian/bookworm"
    assert resolve_alias("debian/latest", table) == "debian/bookworm"  # an alias of an alias
    assert resolve_alias("debian/sid", table) == "debian/sid"


def test_an_alias_loop_stops_instead_of_hanging() -> None:
    assert resolve_alias("a/x", {"a/x": "a/y", "a/y": "a/x"}) == "a/y"


@pytest.mark.parametrize("entry", ["debian/stable", "=debian/bookworm", "a/b=a/b", "a/b="])
def test_a_bad_config_alias_names_the_entry(entry: str) -> None:
    with pytest.raises(ValueError, match="image-aliases"):
        parse_aliases((entry,))


def test_the_newest_worker_names_an_alias_when_workers_disagree() -> None:
    newest_first = [
        served("debian/trixie", "debian/stable"),
        served("debian/bookworm", "debian/stable"),
    ]
    assert _worker_aliases(newest_first) == {"debian/stable": "debian/trixie"}


# --- submit ----------------------------------------------------------------------------------


def test_an_alias_is_resolved_at_submit_and_the_record_keeps_both_names(
    client: TestClient, alice: Account
) -> None:
    # Given a worker serving bookworm, with debian/stable a symlink to it
    register(client, "host1", served("debian/bookworm", "debian/stable"))
    # When a manifest asks for debian/stable
    job = post_job(client, alice, "debian/stable")
    # Then the record says what was asked and the release it means
    assert job["image"] == "debian/stable"
    assert job["image_release"] == "debian/bookworm"
    assert job["arch"] == "amd64"
    assert job["image_digest"] is None  # no worker booted it yet
    got = client.get(f"/api/jobs/{job['id']}", headers=alice.headers()).json()
    assert (got["image"], got["image_release"]) == ("debian/stable", "debian/bookworm")


def test_a_release_resolves_to_itself(client: TestClient, alice: Account) -> None:
    job = post_job(client, alice, "debian/bookworm")  # served by [api] images in the tests
    assert job["image_release"] == "debian/bookworm"


def test_the_config_alias_wins_over_the_workers_symlinks(api_config: Config) -> None:
    app = create_app(with_api(api_config, image_aliases=("debian/stable=debian/trixie",)))
    try:
        client = TestClient(app)
        alice = make_account(app, "alice")
        register(client, "host1", served("debian/bookworm", "debian/stable"))
        register(client, "host2", served("debian/trixie"))
        assert post_job(client, alice, "debian/stable")["image_release"] == "debian/trixie"
    finally:
        app.state.engine.dispose()


def test_an_alias_whose_release_nobody_serves_is_refused_naming_both(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    # Given a worker that says debian/testing is trixie, and then registers without trixie
    register(client, "host1", served("debian/trixie", "debian/testing"))
    register(
        client,
        "host1",
        [{"image": "debian/testing", "arches": ["amd64"], "release": "debian/trixie"}],
    )
    response = client.post(
        "/api/jobs", json={"manifest": manifest("debian/testing")}, headers=alice.headers()
    )
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["field"] == "image"
    assert "'debian/testing' (an alias of 'debian/trixie')" in error["reason"]


def test_an_older_worker_without_releases_keeps_the_alias_as_its_own_queue(
    client: TestClient, alice: Account
) -> None:
    # A worker from before releases were registered: its alias is served under that name
    register(client, "old", [{"image": "debian/stable", "arches": ["amd64"]}])
    assert post_job(client, alice, "debian/stable")["image_release"] == "debian/stable"


# --- the image the worker booted -------------------------------------------------------------


def test_the_worker_reports_the_image_it_booted_into_the_record(
    client: TestClient, alice: Account
) -> None:
    register(client, "host1", served("debian/bookworm", "debian/stable"))
    job_id = post_job(client, alice, "debian/stable")["id"]
    claimed = client.post(
        f"/api/internal/jobs/{job_id}/claim",
        json={"worker": "host1", "attempt": 1},
        headers=WORKER_HEADERS,
    ).json()
    # The claim tells the worker which release to boot
    assert (claimed["image"], claimed["image_release"]) == ("debian/stable", "debian/bookworm")
    before = client.get(f"/api/jobs/{job_id}", headers=alice.headers()).json()["updated"]
    body = {"attempt": 1, "release": "debian/bookworm", "arch": "amd64", "digest": DIGEST}
    response = client.post(f"/api/internal/jobs/{job_id}/image", json=body, headers=WORKER_HEADERS)
    assert response.status_code == 200, response.text
    got = client.get(f"/api/jobs/{job_id}", headers=alice.headers()).json()
    assert (got["image_release"], got["image_digest"]) == ("debian/bookworm", DIGEST)
    assert got["updated"] == before  # not a status change
    # A stale attempt is refused like any other call of a lost lease
    stale = client.post(
        f"/api/internal/jobs/{job_id}/image", json={**body, "attempt": 2}, headers=WORKER_HEADERS
    )
    assert stale.status_code == 409


def test_a_malformed_digest_is_refused_naming_the_field(client: TestClient, alice: Account) -> None:
    job_id = post_job(client, alice, "debian/bookworm")["id"]
    body = {"attempt": 1, "release": "debian/bookworm", "arch": "amd64", "digest": "md5:00"}
    response = client.post(f"/api/internal/jobs/{job_id}/image", json=body, headers=WORKER_HEADERS)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "digest"


# --- routing ---------------------------------------------------------------------------------


def test_a_job_is_published_to_its_releases_queue(
    sessions: sessionmaker[Session], amqp_url: str
) -> None:
    # Given a queued job asked as debian/stable and resolved to bookworm, and one from before
    # the resolution (no release recorded)
    with sessions() as session:
        user = User(username="alice")
        session.add(user)
        resolved = Job(
            owner=user,
            manifest="image: debian/stable\n",
            image="debian/stable",
            image_release="debian/bookworm",
            arch="amd64",
            status="queued",
            attempt=1,
        )
        legacy = Job(
            owner=user,
            manifest="image: debian/stable\n",
            image="debian/stable",
            arch="amd64",
            status="queued",
            attempt=1,
        )
        session.add_all([resolved, legacy])
        session.flush()
        enqueue(session, resolved)
        enqueue(session, legacy)
        session.commit()
        ids = resolved.id, legacy.id
        assert session.scalars(select(Job.id)).all()
    publisher = OutboxPublisher(sessions, amqp_url, poll_s=0.05)
    publisher.start()
    try:
        wait_until(lambda: unpublished(sessions) == 0)
    finally:
        publisher.stop()
    # Then the resolved one is in the release's queue, named so in its message
    got = drain(amqp_url, queue_name("debian/bookworm", "amd64"))
    assert [json.loads(body) for _, body in got] == [
        {"job_id": ids[0], "attempt": 1, "image": "debian/bookworm", "arch": "amd64"}
    ]
    # and the legacy one where it always went, which workers still consume
    got_alias = drain(amqp_url, queue_name("debian/stable", "amd64"))
    assert [json.loads(body)["job_id"] for _, body in got_alias] == [ids[1]]
