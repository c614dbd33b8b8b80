"""Logs and artifact downloads: Range answers, HEAD, and the access matrix on both databases."""

from __future__ import annotations

import pytest
from api_helpers import MANIFEST, ORIGIN, WORKER_TOKEN, Account
from fastapi import FastAPI
from fastapi.testclient import TestClient

from buildworker.api.files import ByteRange, RangeNotSatisfiable, parse_range
from buildworker.db.models import Job

WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}
LOG = b"".join(f"line {n}\n".encode() for n in range(1000))


# --- parse_range (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-", 10, ByteRange(0, 10)),
        ("bytes=4-", 10, ByteRange(4, 10)),
        ("bytes=2-5", 10, ByteRange(2, 6)),
        ("bytes=2-500", 10, ByteRange(2, 10)),
        ("bytes=-3", 10, ByteRange(7, 10)),
        ("bytes=-30", 10, ByteRange(0, 10)),
        ("BYTES = 4-", 10, ByteRange(4, 10)),
        ("items=0-3", 10, None),
        ("bytes=0-1,4-5", 10, None),
        ("bytes=5-2", 10, None),
        ("bytes=x-", 10, None),
        ("bytes=-", 10, None),
        ("bytes", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=10-", 10), ("bytes=0-", 0), ("bytes=-0", 5), ("bytes=-5", 0)]
)
def test_ranges_at_or_past_the_end_are_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_content_range_names_the_inclusive_end_and_the_size() -> None:
    assert ByteRange(4, 10).content_range(10) == "bytes 4-9/10"


# --- a running job with logs and an artifact -------------------------------------------------


def _started_job(
    client: TestClient, owner: Account, *, read: list[str] | None = None, artifact: bool = True
) -> tuple[int, str]:
    """A claimed job with a setup log, a `build` log and (optionally) one artifact."""
    body: dict[str, object] = {"manifest": MANIFEST}
    if read is not None:
        body["access:read"] = read
    response = client.post("/api/jobs", json=body, headers=owner.headers())
    assert response.status_code == 200, response.text
    job_id: int = response.json()["id"]
    claimed = client.post(
        f"/api/internal/jobs/{job_id}/claim", json={"worker": "h", "attempt": 1}, headers=WORKER
    )
    assert claimed.status_code == 200
    for name, data in (("setup", b"Booting\n"), ("build", LOG)):
        client.put(
            f"/api/internal/jobs/{job_id}/logs/{name}",
            params={"offset": 0, "attempt": 1},
            content=data,
            headers=WORKER,
        )
    url = ""
    if artifact:
        url = client.put(
            f"/api/internal/jobs/{job_id}/artifacts",
            params={"attempt": 1, "path": "out/report.txt"},
            content=b"report",
            headers=WORKER,
        ).json()["url"]
    return job_id, url.removeprefix(ORIGIN)


def test_a_log_is_served_whole_while_the_job_runs(client: TestClient, alice: Account) -> None:
    job_id, _ = _started_job(client, alice)
    response = client.get(f"/logs/{job_id}/build/log")
    assert response.status_code == 200
    assert response.content == LOG
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(LOG))


def test_an_open_ended_range_is_206_with_content_range(client: TestClient, alice: Account) -> None:
    job_id, _ = _started_job(client, alice)
    response = client.get(f"/logs/{job_id}/build/log", headers={"Range": "bytes=100-"})
    assert response.status_code == 206
    assert response.content == LOG[100:]
    assert response.headers["content-range"] == f"bytes 100-{len(LOG) - 1}/{len(LOG)}"
    suffix = client.get(f"/logs/{job_id}/build/log", headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == LOG[-10:]


def test_a_range_at_the_end_is_416_with_the_size(client: TestClient, alice: Account) -> None:
    job_id, _ = _started_job(client, alice)
    response = client.get(f"/logs/{job_id}/build/log", headers={"Range": f"bytes={len(LOG)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(LOG)}"


def test_a_tail_sees_the_log_grow(client: TestClient, alice: Account) -> None:
    # Given a reader that has read the whole setup log
    job_id, _ = _started_job(client, alice)
    seen = client.get(f"/logs/{job_id}/log").content
    # When the worker appends more
    client.put(
        f"/api/internal/jobs/{job_id}/logs/setup",
        params={"offset": len(seen), "attempt": 1},
        content=b"more\n",
        headers=WORKER,
    )
    # Then asking from where it stopped returns just the new bytes
    response = client.get(f"/logs/{job_id}/log", headers={"Range": f"bytes={len(seen)}-"})
    assert response.status_code == 206 and response.content == b"more\n"


def test_head_gives_the_size_without_the_body(client: TestClient, alice: Account) -> None:
    job_id, url = _started_job(client, alice)
    head = client.head(f"/logs/{job_id}/build/log")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(LOG))
    assert head.content == b""
    ranged = client.head(f"/logs/{job_id}/build/log", headers={"Range": "bytes=10-"})
    assert ranged.status_code == 206 and ranged.headers["content-length"] == str(len(LOG) - 10)
    artifact = client.head(url)
    assert artifact.status_code == 200 and artifact.headers["content-length"] == "6"


def test_a_started_task_without_output_has_an_empty_log(client: TestClient, alice: Account) -> None:
    job_id, _ = _started_job(client, alice)
    response = client.get(f"/logs/{job_id}/test/log")
    assert response.status_code == 200 and response.content == b""
    assert client.get(f"/logs/{job_id}/test/log", headers={"Range": "bytes=0-"}).status_code == 416


def test_logs_of_a_job_not_started_or_of_unknown_tasks_are_404(
    client: TestClient, alice: Account
) -> None:
    queued = client.post("/api/jobs", json={"manifest": MANIFEST}, headers=alice.headers()).json()
    response = client.get(f"/logs/{queued['id']}/log")
    assert response.status_code == 404
    assert response.json()["errors"][0]["reason"] == "This build job has not been started yet"
    job_id, _ = _started_job(client, alice)
    assert client.get(f"/logs/{job_id}/nope/log").status_code == 404
    assert client.get(f"/logs/{job_id}/..%2F..%2Fetc/log").status_code == 404
    assert client.get("/logs/999999/log").status_code == 404
    assert client.get("/logs/abc/log").status_code == 404


def test_an_artifact_downloads_at_its_url_and_nowhere_else(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    job_id, url = _started_job(client, alice)
    response = client.get(url)
    assert response.status_code == 200 and response.content == b"report"
    assert response.headers["content-type"] == "application/octet-stream"
    assert "report.txt" in response.headers["content-disposition"]
    assert client.get(url, headers={"Range": "bytes=2-"}).content == b"port"
    # A wrong segment, name or job is a 404
    with app.state.sessionmaker() as session:
        segment = session.get_one(Job, job_id).artifact_segment
    assert url == f"/artifacts/{job_id}/{segment}/report.txt"
    assert client.get(f"/artifacts/{job_id}/{'0' * 16}/report.txt").status_code == 404
    assert client.get(f"/artifacts/{job_id}/{segment}/other.txt").status_code == 404
    assert client.get(f"/artifacts/{job_id + 1}/{segment}/report.txt").status_code == 404


# --- access matrix --------------------------------------------------------------------------


def _headers(viewer: str, alice: Account, bob: Account) -> dict[str, str]:
    return {
        "owner": alice.headers("ro"),
        "other": bob.headers("ro"),
        "anonymous": {},
        "no-scope": alice.headers("secrets"),
    }[viewer]


@pytest.mark.parametrize("visibility", ["public", "private", "shared-with-bob"])
def test_access_matrix_for_logs_and_artifacts(
    client: TestClient, alice: Account, bob: Account, visibility: str
) -> None:
    read = {"public": ["*"], "private": [], "shared-with-bob": ["bob"]}[visibility]
    job_id, artifact_url = _started_job(client, alice, read=read)
    paths = [f"/logs/{job_id}/log", f"/logs/{job_id}/build/log", artifact_url]
    for viewer in ("owner", "other", "anonymous", "no-scope"):
        if viewer == "no-scope":
            expected = 403  # a token is presented but lacks jobs:read
        elif (
            visibility == "public"
            or viewer == "owner"
            or (visibility == "shared-with-bob" and viewer == "other")
        ):
            expected = 200
        else:
            expected = 404  # a job one may not read does not exist
        for path in paths:
            response = client.get(path, headers=_headers(viewer, alice, bob))
            assert response.status_code == expected, (viewer, path, response.text)
            if expected == 404:
                assert response.json() == {"errors": [{"reason": "404 not found"}]}


def test_a_bad_token_on_a_public_log_is_401(client: TestClient, alice: Account) -> None:
    job_id, _ = _started_job(client, alice, artifact=False)
    response = client.get(f"/logs/{job_id}/log", headers={"Authorization": "token " + "0" * 64})
    assert response.status_code == 401
