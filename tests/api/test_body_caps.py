"""Request bodies are capped while they stream, whatever their framing (issue 9, item 1).

In-process (TestClient) checks of what is refused and what still passes; the memory bound
under a real uvicorn process is tests/api/test_body_caps_rss.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from api_helpers import MANIFEST, WORKER_TOKEN, Account
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from buildworker.api.body import MAX_BODY
from buildworker.api.internal import MAX_LOG_CHUNK
from buildworker.db.models import Job, Secret

WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}
BOUNDARY = "capsboundary"
#: Endpoints that take a user's body, with the scope set their token needs.
ENDPOINTS = ["/api/jobs", "/api/secrets", "/api/job-group"]


class Counted:
    """A long chunked body. (TestClient buffers it whole before the app sees it, so how much
    the server pulls is measured against a real uvicorn in test_body_caps_rss.py.)"""

    def __init__(self, head: bytes, total: int, chunk: int = 64 * 1024) -> None:
        self.head, self.total, self.chunk, self.sent = head, total, chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        self.sent += len(self.head)
        while self.sent < self.total:
            self.sent += self.chunk
            yield b"x" * self.chunk


def multipart_head(field: str = "manifest", filename: str = "build.yml") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: application/x-yaml\r\n\r\n'
    ).encode()


def count(app: FastAPI, model: type[Job] | type[Secret]) -> int:
    with app.state.sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("framing", ["multipart", "json"])
def test_a_chunked_body_past_the_cap_is_413_before_it_is_read_whole(
    client: TestClient, app: FastAPI, alice: Account, path: str, framing: str
) -> None:
    # Given a body of 40 caps, sent chunked (no Content-Length), as a file part or as JSON
    if framing == "multipart":
        body = Counted(multipart_head(), 40 * MAX_BODY)
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
    else:
        body = Counted(b'{"manifest": "', 40 * MAX_BODY)
        content_type = "application/json"
    # When it is posted
    response = client.post(
        path, content=body, headers={**alice.headers(), "Content-Type": content_type}
    )
    # Then it is refused in sr.ht's error form, naming the cap, and nothing is stored
    assert response.status_code == 413, response.text
    assert response.json() == {
        "errors": [{"reason": f"request body too large (at most {MAX_BODY} bytes)"}]
    }
    assert count(app, Job) == 0 and count(app, Secret) == 0


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_declared_length_past_the_cap_is_413(
    client: TestClient, alice: Account, path: str
) -> None:
    response = client.post(path, content=b"{" + b" " * MAX_BODY + b"}", headers=alice.headers())
    assert response.status_code == 413


def test_a_body_just_under_the_cap_is_read_as_before(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    # A manifest file part plus padding in a note, together just under the cap, chunked
    note = "n" * (MAX_BODY - 4096)
    parts = (
        multipart_head()
        + MANIFEST.encode()
        + f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="execute"\r\n\r\nfalse'
        f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    response = client.post(
        "/api/jobs",
        content=iter([parts]),
        headers={**alice.headers(), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"
    chunked_json = json.dumps({"manifest": MANIFEST, "execute": False, "x": note}).encode()
    assert len(chunked_json) < MAX_BODY
    response = client.post(
        "/api/jobs",
        content=(chunked_json[i : i + 4096] for i in range(0, len(chunked_json), 4096)),
        headers={**alice.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert count(app, Job) == 2


def test_a_malformed_multipart_body_is_400_naming_the_cause(
    client: TestClient, alice: Account
) -> None:
    response = client.post(
        "/api/jobs",
        content=b"no boundary here",
        headers={**alice.headers(), "Content-Type": "multipart/form-data"},
    )
    assert response.status_code == 400
    assert "multipart" in response.json()["errors"][0]["reason"].lower()


def test_internal_json_bodies_are_capped_too(client: TestClient) -> None:
    # Pydantic bodies are read whole by FastAPI: the app's limit stops them while they stream.
    body = Counted(b'{"worker": "', 40 * MAX_BODY)
    response = client.post(
        "/api/internal/workers",
        content=body,
        headers={**WORKER, "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def test_log_chunks_and_artifacts_keep_their_own_larger_caps(
    client: TestClient, alice: Account
) -> None:
    # Given a claimed job
    job_id = client.post("/api/jobs", json={"manifest": MANIFEST}, headers=alice.headers()).json()[
        "id"
    ]
    claimed = client.post(
        f"/api/internal/jobs/{job_id}/claim", json={"worker": "w", "attempt": 1}, headers=WORKER
    )
    assert claimed.status_code == 200, claimed.text
    # Then a log chunk of 3 app caps passes (the log route's cap is MAX_LOG_CHUNK)...
    chunk = b"l" * (3 * MAX_BODY)
    assert len(chunk) < MAX_LOG_CHUNK
    response = client.put(
        f"/api/internal/jobs/{job_id}/logs/setup",
        params={"offset": 0, "attempt": 1},
        content=iter([chunk[: MAX_BODY * 2], chunk[MAX_BODY * 2 :]]),
        headers=WORKER,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"size": len(chunk)}
    # ...and so does an artifact of 5 caps, chunked
    response = client.put(
        f"/api/internal/jobs/{job_id}/artifacts",
        params={"attempt": 1, "path": "/home/build/big.bin"},
        content=(b"a" * MAX_BODY for _ in range(5)),
        headers=WORKER,
    )
    assert response.status_code == 200, response.text
    assert response.json()["size"] == 5 * MAX_BODY
