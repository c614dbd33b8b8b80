"""Tokens: every header variant real clients send, 401 vs 403, hashing, revocation."""

from __future__ import annotations

import hashlib
import socket

import pytest
from api_helpers import MANIFEST, Account
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from buildworker.api.accounts import revoke_token
from buildworker.api.auth import AuthError, has_scope, normalize_scopes, parse_authorization
from buildworker.db.models import Token

TOKEN = "ab" * 32


@pytest.mark.parametrize(
    "header",
    [
        f"token {TOKEN}",
        f"Token {TOKEN}",
        f"Bearer {TOKEN}",
        f"bearer  {TOKEN}",
        TOKEN,
        f"{TOKEN}\n",
        f" token {TOKEN} \r\n",
        f"token\t{TOKEN}",
        TOKEN.upper(),
    ],
)
def test_header_variants_carry_the_token(header: str) -> None:
    assert parse_authorization(header) == TOKEN


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (f"Basic {TOKEN}", "Invalid authorization supplied"),
        (f"Internal {TOKEN}", "Invalid authorization supplied"),
        ("token abc", "Invalid or expired OAuth token"),
        ("token", "Invalid or expired OAuth token"),
    ],
)
def test_bad_headers_are_refused_with_a_reason(header: str, reason: str) -> None:
    with pytest.raises(AuthError, match=reason):
        parse_authorization(header)


def test_write_scope_implies_read_and_star_grants_everything() -> None:
    assert has_scope("jobs:write", "jobs:read")
    assert not has_scope("jobs:read", "jobs:write")
    assert not has_scope("jobs:write", "secrets:read")
    assert has_scope("*", "secrets:write")
    assert normalize_scopes("jobs:read, jobs:write jobs:read") == "jobs:read jobs:write"
    with pytest.raises(ValueError, match="unknown scope"):
        normalize_scopes("jobs:admin")


def test_no_token_is_401_with_a_json_reason(client: TestClient, alice: Account) -> None:
    response = client.get("/api/jobs")
    assert response.status_code == 401
    assert response.json() == {
        "errors": [{"reason": "No authorization supplied (expected an OAuth token)"}]
    }


def test_unknown_token_is_401(client: TestClient, alice: Account) -> None:
    response = client.get("/api/jobs", headers={"Authorization": f"token {TOKEN}"})
    assert response.status_code == 401
    assert response.json()["errors"][0]["reason"] == "Invalid or expired OAuth token"


def test_missing_scope_is_403_naming_it(client: TestClient, alice: Account) -> None:
    response = client.post("/api/jobs", json={"manifest": MANIFEST}, headers=alice.headers("ro"))
    assert response.status_code == 403
    assert "needs jobs:write" in response.json()["errors"][0]["reason"]
    # jobs:write alone may read too, "*" may do anything
    assert client.get("/api/jobs", headers=alice.headers("jobs")).status_code == 200
    assert client.get("/api/secrets", headers=alice.headers("all")).status_code == 200
    assert client.get("/api/jobs", headers=alice.headers("secrets")).status_code == 403


@pytest.mark.parametrize("form", ["token {}", "Bearer {}", "{}", "TOKEN {}", "  {}  "])
def test_header_forms_through_the_asgi_app(client: TestClient, alice: Account, form: str) -> None:
    headers = {"Authorization": form.format(alice.tokens["rw"])}
    assert client.get("/api/jobs", headers=headers).status_code == 200


def test_tokens_are_stored_hashed_and_last_used_is_recorded(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    raw = alice.tokens["rw"]
    assert client.get("/api/jobs", headers=alice.headers()).status_code == 200
    with app.state.sessionmaker() as session:
        stored = session.scalars(select(Token).where(Token.name == "rw")).one()
        assert stored.token_hash == hashlib.sha256(raw.encode()).hexdigest()
        assert raw not in {t.token_hash for t in session.scalars(select(Token))}
        assert stored.last_used is not None


def test_a_revoked_token_is_refused(client: TestClient, app: FastAPI, alice: Account) -> None:
    assert client.get("/api/jobs", headers=alice.headers("ro")).status_code == 200
    with app.state.sessionmaker() as session:
        token = session.scalars(select(Token).where(Token.name == "ro")).one()
        revoke_token(session, token.id)
        session.commit()
    response = client.get("/api/jobs", headers=alice.headers("ro"))
    assert response.status_code == 401
    # the user's other tokens still work
    assert client.get("/api/jobs", headers=alice.headers("rw")).status_code == 200


def _raw_get(base_url: str, header_bytes: bytes) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"GET /api/jobs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            + header_bytes
            + b"\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    "template",
    [
        b"Authorization:token %s\r\n",  # no space after the colon
        b"Authorization: token %s\r\n",
        b"Authorization: Bearer %s\r\n",
        b"Authorization: %s\r\n",  # bare token
        b"Authorization: %s\n\r\n",  # bare token with a trailing newline
        b"authorization:%s \r\n",
    ],
)
def test_header_variants_through_a_real_uvicorn_socket(
    live_url: str, alice: Account, template: bytes
) -> None:
    answer = _raw_get(live_url, template % alice.tokens["ro"].encode())
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 200 OK", answer[:300]
    assert b'"results"' in answer


def test_no_header_through_a_real_socket_is_401(live_url: str, alice: Account) -> None:
    answer = _raw_get(live_url, b"")
    assert answer.startswith(b"HTTP/1.1 401")
