"""Users' SSH keys in meta.sr.ht's REST shape: add, list, get, delete; refusals name the field."""

from __future__ import annotations

import base64

from api_helpers import Account, make_account
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI
from fastapi.testclient import TestClient

from buildworker.ssh.keys import fingerprint_of_blob


def new_key(comment: str = "me@laptop") -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    text = public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return f"{text} {comment}"


def rsa_key(bits: int) -> str:
    public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def test_add_list_get_delete(client: TestClient, alice: Account) -> None:
    text = new_key("alice@laptop")
    # When alice adds a key
    response = client.post(
        "/api/user/ssh-keys", json={"ssh-key": text}, headers=alice.headers("all")
    )
    # Then it is created with meta.sr.ht's fields and the SHA256 fingerprint of the key
    assert response.status_code == 201, response.text
    key = response.json()
    assert set(key) == {"id", "authorized", "comment", "fingerprint", "key", "owner", "last_used"}
    blob = base64.b64decode(text.split()[1])
    assert key["fingerprint"] == fingerprint_of_blob(blob)
    assert key["fingerprint"].startswith("SHA256:")
    assert key["key"] == text and key["comment"] == "alice@laptop" and key["last_used"] is None
    assert key["owner"] == {"canonical_name": "~alice", "name": "alice"}
    # And it is listed, paginated as the other list endpoints
    listing = client.get("/api/user/ssh-keys", headers=alice.headers("all")).json()
    assert listing["total"] == 1 and listing["next"] is None and "results_per_page" in listing
    assert [k["id"] for k in listing["results"]] == [key["id"]]
    assert client.get(f"/api/user/ssh-keys/{key['id']}", headers=alice.headers("all")).json() == key
    # And deleting it answers 204, after which it is gone
    deleted = client.delete(f"/api/user/ssh-keys/{key['id']}", headers=alice.headers("all"))
    assert deleted.status_code == 204 and deleted.content == b""
    assert (
        client.get(f"/api/user/ssh-keys/{key['id']}", headers=alice.headers("all")).status_code
        == 404
    )
    assert client.get("/api/user/ssh-keys", headers=alice.headers("all")).json()["total"] == 0


def test_form_bodies_work_as_with_meta_sr_ht(client: TestClient, alice: Account) -> None:
    response = client.post(
        "/api/user/ssh-keys", data={"ssh-key": new_key()}, headers=alice.headers("all")
    )
    assert response.status_code == 201, response.text


def test_bad_keys_get_a_400_naming_the_field(client: TestClient, alice: Account) -> None:
    cases = {
        "": "the key is empty",
        "ssh-ed25519 %%%": "not valid base64",
        rsa_key(1024): "RSA keys must have at least 2048 bits (this one has 1024)",
        new_key() + "\n" + new_key(): "one key per request",
    }
    for text, reason in cases.items():
        response = client.post(
            "/api/user/ssh-keys", json={"ssh-key": text}, headers=alice.headers("all")
        )
        assert response.status_code == 400, text
        (error,) = response.json()["errors"]
        assert error["field"] == "ssh-key" and reason in error["reason"], error
    missing = client.post("/api/user/ssh-keys", json={}, headers=alice.headers("all"))
    assert missing.status_code == 400
    assert missing.json()["errors"] == [{"field": "ssh-key", "reason": "ssh-key is required"}]
    wrong_type = client.post(
        "/api/user/ssh-keys", json={"ssh-key": 5}, headers=alice.headers("all")
    )
    assert wrong_type.status_code == 400 and wrong_type.json()["errors"][0]["field"] == "ssh-key"


def test_a_key_belongs_to_one_user(client: TestClient, alice: Account, bob: Account) -> None:
    text = new_key()
    first = client.post("/api/user/ssh-keys", json={"ssh-key": text}, headers=alice.headers("all"))
    assert first.status_code == 201
    # the same key again, from bob or from alice (another comment), is refused
    for account, line in ((bob, text), (alice, text.rsplit(" ", 1)[0] + " other")):
        again = client.post(
            "/api/user/ssh-keys", json={"ssh-key": line}, headers=account.headers("all")
        )
        assert again.status_code == 400
        assert again.json()["errors"] == [
            {"field": "ssh-key", "reason": "We already have this SSH key on file."}
        ]


def test_another_users_key_is_a_404(client: TestClient, alice: Account, bob: Account) -> None:
    created = client.post(
        "/api/user/ssh-keys", json={"ssh-key": new_key()}, headers=alice.headers("all")
    ).json()
    path = f"/api/user/ssh-keys/{created['id']}"
    assert client.get(path, headers=bob.headers("all")).status_code == 404
    assert client.put(path, headers=bob.headers("all")).status_code == 404
    assert client.delete(path, headers=bob.headers("all")).status_code == 404
    assert client.get("/api/user/ssh-keys", headers=bob.headers("all")).json()["total"] == 0
    # and alice's key is still there
    assert client.get(path, headers=alice.headers("all")).status_code == 200
    assert client.get("/api/user/ssh-keys/999999", headers=alice.headers("all")).status_code == 404
    assert client.get("/api/user/ssh-keys/nope", headers=alice.headers("all")).status_code == 404


def test_put_records_last_used(client: TestClient, alice: Account) -> None:
    created = client.post(
        "/api/user/ssh-keys", json={"ssh-key": new_key()}, headers=alice.headers("all")
    ).json()
    touched = client.put(f"/api/user/ssh-keys/{created['id']}", headers=alice.headers("all"))
    assert touched.status_code == 200 and touched.json()["last_used"] is not None


def test_scopes_keys_read_and_keys_write(app: FastAPI, client: TestClient) -> None:
    from buildworker.api.accounts import create_token, get_user

    carol = make_account(app, "carol")
    with app.state.sessionmaker() as session:
        user = get_user(session, "carol")
        reader = create_token(session, user, "keys:read").token
        writer = create_token(session, user, "keys:write").token
        session.commit()
    body = {"ssh-key": new_key()}
    # a token without a keys scope may do nothing
    assert client.get("/api/user/ssh-keys", headers=carol.headers("rw")).status_code == 403
    # keys:read lists but cannot add
    read = {"Authorization": f"token {reader}"}
    assert client.get("/api/user/ssh-keys", headers=read).status_code == 200
    refused = client.post("/api/user/ssh-keys", json=body, headers=read)
    assert refused.status_code == 403 and "keys:write" in refused.text
    # keys:write adds, deletes and (write implies read) lists
    write = {"Authorization": f"token {writer}"}
    created = client.post("/api/user/ssh-keys", json=body, headers=write)
    assert created.status_code == 201
    assert client.get("/api/user/ssh-keys", headers=write).json()["total"] == 1
    assert (
        client.delete(f"/api/user/ssh-keys/{created.json()['id']}", headers=read).status_code == 403
    )
    assert (
        client.delete(f"/api/user/ssh-keys/{created.json()['id']}", headers=write).status_code
        == 204
    )
    assert client.get("/api/user/ssh-keys").status_code == 401
