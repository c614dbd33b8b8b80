"""The SSH entry point's internal endpoints: who holds a key, who may connect to a job."""

from __future__ import annotations

from api_helpers import MANIFEST, ORIGIN, WORKER_TOKEN, Account, make_account
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI
from fastapi.testclient import TestClient

WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}


def new_key() -> tuple[str, str]:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    kind, data = public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode().split()
    return kind, data


def add_key(client: TestClient, account: Account) -> tuple[str, str]:
    kind, data = new_key()
    response = client.post(
        "/api/user/ssh-keys", json={"ssh-key": f"{kind} {data}"}, headers=account.headers("all")
    )
    assert response.status_code == 201, response.text
    return kind, data


def test_key_owner_names_the_user_holding_the_key(
    client: TestClient, alice: Account, bob: Account
) -> None:
    kind, data = add_key(client, alice)
    add_key(client, bob)
    response = client.post(
        "/api/internal/ssh/key-owner", json={"type": kind, "key": data}, headers=WORKER
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["username"] == "alice" and body["canonical_name"] == "~alice"
    assert body["fingerprint"].startswith("SHA256:")
    # the lookup counts as a use of the key
    listing = client.get("/api/user/ssh-keys", headers=alice.headers("all")).json()
    assert listing["results"][0]["last_used"] is not None


def test_key_owner_of_an_unknown_or_bad_key(client: TestClient) -> None:
    kind, data = new_key()
    unknown = client.post(
        "/api/internal/ssh/key-owner", json={"type": kind, "key": data}, headers=WORKER
    )
    assert unknown.status_code == 404
    bad = client.post(
        "/api/internal/ssh/key-owner", json={"type": "ssh-ed25519", "key": "AAAA"}, headers=WORKER
    )
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "key"


def test_the_ssh_endpoints_need_the_worker_token(client: TestClient, alice: Account) -> None:
    kind, data = new_key()
    for headers in ({}, alice.headers("all"), {"Authorization": "Bearer wrong"}):
        assert (
            client.post(
                "/api/internal/ssh/key-owner", json={"type": kind, "key": data}, headers=headers
            ).status_code
            == 401
        )
        assert (
            client.get("/api/internal/ssh/jobs/1/access?user=alice", headers=headers).status_code
            == 401
        )


def test_owner_and_access_write_may_connect_others_may_not(
    app: FastAPI, client: TestClient, alice: Account, bob: Account
) -> None:
    carol = make_account(app, "carol")
    response = client.post(
        "/api/jobs",
        json={"manifest": MANIFEST, "access:write": ["~carol"], "access:read": ["bob"]},
        headers=alice.headers(),
    )
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]

    def access(user: str):  # type: ignore[no-untyped-def]
        return client.get(f"/api/internal/ssh/jobs/{job_id}/access?user={user}", headers=WORKER)

    owner = access("alice")
    assert owner.status_code == 200, owner.text
    assert owner.json() == {
        "job_id": job_id,
        "status": "queued",
        "url": f"{ORIGIN}/~alice/job/{job_id}",
        "runner": None,
        "owner": "alice",
        "access": "owner",
    }
    writer = access(carol.username)
    assert writer.status_code == 200 and writer.json()["access"] == "write"
    # read access is not enough to get a shell in the build
    for user in ("bob", "nobody"):
        refused = access(user)
        assert refused.status_code == 403
        assert refused.json() == {
            "errors": [{"reason": "You are not permitted to connect to this job."}]
        }
    missing = client.get("/api/internal/ssh/jobs/999999/access?user=alice", headers=WORKER)
    assert missing.status_code == 404
    assert missing.json() == {"errors": [{"reason": "No such job found."}]}
