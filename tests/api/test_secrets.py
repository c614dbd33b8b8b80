"""The secrets API: create, list metadata, delete; encrypted at rest, never returned."""

from __future__ import annotations

import base64

import pytest
from api_helpers import Account
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from buildworker.api.crypto import SecretBox, SecretsDisabled
from buildworker.api.secret_routes import decrypt_secret
from buildworker.db.models import Secret

KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\r\nAAAAsecretmaterial\r\n-----END OPENSSH PRIVATE KEY-----"
)


def test_create_list_delete_and_never_return_the_data(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    response = client.post(
        "/api/secrets",
        json={"name": "deploy", "type": "ssh_key", "data": KEY},
        headers=alice.headers(),
    )
    assert response.status_code == 200, response.text
    created = response.json()
    assert set(created) == {"uuid", "name", "type", "path", "mode", "created"}
    assert created["name"] == "deploy" and created["type"] == "ssh_key"
    # Stored encrypted, with CRLF made LF and a trailing newline, as builds.sr.ht's form does
    with app.state.sessionmaker() as session:
        row = session.scalars(select(Secret)).one()
        assert b"secretmaterial" not in row.data
        plain = decrypt_secret(app.state.secret_box, row)
        assert plain == KEY.replace("\r\n", "\n").encode() + b"\n"
    listing = client.get("/api/secrets", headers=alice.headers("secrets"))
    assert listing.status_code == 200
    body = listing.json()
    assert body["total"] == 1 and body["results"][0]["uuid"] == created["uuid"]
    assert "secretmaterial" not in listing.text
    one = client.get(f"/api/secrets/{created['uuid']}", headers=alice.headers())
    assert one.status_code == 200 and "data" not in one.json()
    deleted = client.delete(f"/api/secrets/{created['uuid']}", headers=alice.headers())
    assert deleted.status_code == 200 and deleted.json() == {}
    assert client.get("/api/secrets", headers=alice.headers()).json()["total"] == 0
    assert (
        client.delete(f"/api/secrets/{created['uuid']}", headers=alice.headers()).status_code == 404
    )


def test_plaintext_file_from_base64_with_path_and_octal_mode(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    blob = bytes(range(256))
    response = client.post(
        "/api/secrets",
        data={
            "type": "plaintext_file",
            "data_b64": base64.b64encode(blob).decode(),
            "path": "~/.netrc",
            "mode": "600",
        },
        headers=alice.headers(),
    )
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == 0o600 and response.json()["path"] == "~/.netrc"
    with app.state.sessionmaker() as session:
        row = session.scalars(select(Secret)).one()
        assert decrypt_secret(app.state.secret_box, row) == blob


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"data": "x"}, "type"),
        ({"type": "gpg", "data": "x"}, "type"),
        ({"type": "ssh_key"}, "data"),
        ({"type": "ssh_key", "data": 5}, "data"),
        ({"type": "ssh_key", "data": "   "}, "data"),
        ({"type": "ssh_key", "data": "x" * 20000}, "data"),
        ({"type": "ssh_key", "data_b64": "!!notbase64"}, "data_b64"),
        ({"type": "ssh_key", "data": "x", "name": "ab"}, "name"),
        ({"type": "ssh_key", "data": "x", "name": "nul\x00name"}, "name"),
        ({"type": "ssh_key", "data": "x", "name": "0b3e6c4e-5f6a-4c1d-9a53-6f0e7a5d2b11"}, "name"),
        ({"type": "plaintext_file", "data": "x", "mode": "600"}, "path"),
        ({"type": "plaintext_file", "data": "x", "path": "/etc/x"}, "mode"),
        ({"type": "plaintext_file", "data": "x", "path": "/etc/x", "mode": "9"}, "mode"),
        ({"type": "plaintext_file", "data": "x", "path": "/etc/x", "mode": 644}, "mode"),
    ],
)
def test_bad_secrets_are_400_naming_the_field(
    client: TestClient, alice: Account, body: dict, field: str
) -> None:
    response = client.post("/api/secrets", json=body, headers=alice.headers())
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["field"] == field


def test_names_are_unique_per_owner_and_secrets_are_private(
    client: TestClient, alice: Account, bob: Account
) -> None:
    body = {"name": "token", "type": "plaintext_file", "data": "t", "path": "x", "mode": "400"}
    made = client.post("/api/secrets", json=body, headers=alice.headers()).json()
    dup = client.post("/api/secrets", json=body, headers=alice.headers())
    assert dup.status_code == 400 and dup.json()["errors"][0]["field"] == "name"
    assert client.post("/api/secrets", json=body, headers=bob.headers()).status_code == 200
    assert client.get("/api/secrets", headers=bob.headers()).json()["total"] == 1
    assert client.get(f"/api/secrets/{made['uuid']}", headers=bob.headers()).status_code == 404
    assert client.delete(f"/api/secrets/{made['uuid']}", headers=bob.headers()).status_code == 404


def test_secret_scopes(client: TestClient, alice: Account) -> None:
    body = {"type": "pgp_key", "data": "PGP"}
    assert client.post("/api/secrets", json=body, headers=alice.headers("ro")).status_code == 403
    assert client.get("/api/secrets", headers=alice.headers("jobs")).status_code == 403
    assert client.post("/api/secrets", json=body).status_code == 401
    assert (
        client.post("/api/secrets", json=body, headers=alice.headers("secrets")).status_code == 200
    )


def test_secret_box_without_a_key_refuses_and_a_passphrase_works() -> None:
    with pytest.raises(SecretsDisabled):
        SecretBox("").encrypt(b"x")
    box = SecretBox("not a fernet key")
    assert box.decrypt(box.encrypt(b"hello")) == b"hello"
    with pytest.raises(ValueError, match="cannot be decrypted"):
        SecretBox("another passphrase").decrypt(box.encrypt(b"hello"))
