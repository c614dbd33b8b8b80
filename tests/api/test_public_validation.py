"""Bad input of any shape is a 400 naming the field, never a 500 (issue 3, Errors)."""

from __future__ import annotations

import json

import pytest
from api_helpers import MANIFEST, Account
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from buildworker.db.models import Job, Worker


def post(client: TestClient, account: Account, **kwargs: object) -> tuple[int, dict]:
    headers = {**account.headers(), **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    response = client.post("/api/jobs", headers=headers, **kwargs)  # type: ignore[arg-type]
    return response.status_code, response.json()


def fields(body: dict) -> list[str | None]:
    return [error.get("field") for error in body["errors"]]


def job_count(app: FastAPI) -> int:
    with app.state.sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "manifest"),
        ({"manifest": 42}, "manifest"),
        ({"manifest": ["image: x"]}, "manifest"),
        ({"manifest": "   "}, "manifest"),
        ({"manifest": MANIFEST, "note": 5}, "note"),
        ({"manifest": MANIFEST, "note": "x" * 4097}, "note"),
        ({"manifest": MANIFEST, "note": "nul\x00byte"}, "note"),
        ({"manifest": MANIFEST + "# \x00\n"}, "manifest"),
        ({"manifest": MANIFEST, "tags": "UPPER"}, "tags"),
        ({"manifest": MANIFEST, "tags": ["ok", "has space"]}, "tags"),
        ({"manifest": MANIFEST, "tags": [1, 2]}, "tags"),
        ({"manifest": MANIFEST, "tags": {"a": 1}}, "tags"),
        ({"manifest": MANIFEST, "access:read": "bad name!"}, "access:read"),
        ({"manifest": MANIFEST, "access:write": [3]}, "access:write"),
        ({"manifest": MANIFEST, "execute": 7}, "execute"),
        ({"manifest": MANIFEST, "secrets": []}, "secrets"),
        ({"manifest": "image: debian/bookworm\ntasks: 5\n"}, "tasks"),
        ({"manifest": "tasks:\n  - a: b\n"}, "image"),
        ({"manifest": "image: [unclosed\n"}, None),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    client: TestClient, app: FastAPI, alice: Account, body: dict, field: str | None
) -> None:
    status, answer = post(client, alice, json=body)
    assert status == 400, answer
    assert answer["errors"] and all(e["reason"] for e in answer["errors"])
    if field is not None:
        assert field in fields(answer), answer
    assert job_count(app) == 0


def test_several_bad_fields_are_all_named(client: TestClient, alice: Account) -> None:
    status, answer = post(client, alice, json={"manifest": MANIFEST, "note": 1, "tags": ["A B"]})
    assert status == 400
    assert {"note", "tags"} <= set(fields(answer))


@pytest.mark.parametrize(
    ("raw", "content_type", "reason"),
    [
        (b"[1, 2]", "application/json", "Expected JSON dictionary"),
        (b'"manifest"', "application/json", "Expected JSON dictionary"),
        (b"{not json", "application/json", "Invalid JSON provided"),
        (b"\xff\xfe", "application/x-www-form-urlencoded", "Invalid form body"),
        (b"[" * 100000, "application/json", "Invalid JSON provided"),
    ],
)
def test_bodies_that_are_not_objects_are_400(
    client: TestClient, alice: Account, raw: bytes, content_type: str, reason: str
) -> None:
    status, answer = post(
        client, alice, content=raw, headers={**alice.headers(), "Content-Type": content_type}
    )
    assert status == 400
    assert reason in answer["errors"][0]["reason"]


def test_manifest_over_16_kib_is_refused_naming_manifest(
    client: TestClient, alice: Account
) -> None:
    big = MANIFEST + "#" + "x" * 16384 + "\n"
    status, answer = post(client, alice, json={"manifest": big})
    assert status == 400 and fields(answer) == ["manifest"]
    assert "16384" in answer["errors"][0]["reason"]
    # exactly at the cap is fine
    exact = MANIFEST + "#" + "x" * (16384 - len(MANIFEST) - 2) + "\n"
    assert len(exact.encode()) == 16384
    status, _ = post(client, alice, json={"manifest": exact})
    assert status == 200


def test_unknown_image_lists_the_images_that_exist(client: TestClient, alice: Account) -> None:
    status, answer = post(client, alice, json={"manifest": "image: plan9/4e\ntasks:\n  - a: b\n"})
    assert status == 400 and fields(answer) == ["image"]
    reason = answer["errors"][0]["reason"]
    assert "plan9/4e" in reason
    assert "debian/bookworm (amd64, arm64)" in reason and "alpine/edge (x86_64)" in reason


def test_unserved_arch_is_refused_naming_arch(client: TestClient, alice: Account) -> None:
    manifest = "image: alpine/edge\narch: riscv64\ntasks:\n  - a: b\n"
    status, answer = post(client, alice, json={"manifest": manifest})
    assert status == 400 and fields(answer) == ["arch"]
    assert "x86_64" in answer["errors"][0]["reason"]


def test_images_registered_by_workers_are_accepted(
    client: TestClient, app: FastAPI, alice: Account
) -> None:
    manifest = "image: fedora/40\ntasks:\n  - a: b\n"
    assert post(client, alice, json={"manifest": manifest})[0] == 400
    with app.state.sessionmaker() as session:
        session.add(
            Worker(
                name="host1",
                images=[{"image": "fedora/40", "arches": ["x86_64"], "default_arch": "x86_64"}],
            )
        )
        session.commit()
    status, job = post(client, alice, json={"manifest": manifest})
    assert status == 200 and job["arch"] == "x86_64"


def test_secret_references_must_exist_for_the_owner(
    client: TestClient, alice: Account, bob: Account
) -> None:
    made = client.post(
        "/api/secrets",
        json={"name": "deploy-key", "type": "ssh_key", "data": "KEY"},
        headers=bob.headers(),
    )
    assert made.status_code == 200
    bob_uuid = made.json()["uuid"]
    manifest = MANIFEST + f"secrets:\n  - {bob_uuid}\n  - deploy-key\n"
    # alice cannot reference bob's secrets, by uuid or by name
    status, answer = post(client, alice, json={"manifest": manifest})
    assert status == 400 and fields(answer) == ["secrets[0]", "secrets[1]"]
    # bob can
    response = client.post("/api/jobs", json={"manifest": manifest}, headers=bob.headers())
    assert response.status_code == 200
    # and with secrets disabled the references are not needed
    status, _ = post(client, alice, json={"manifest": manifest, "secrets": False})
    assert status == 200


def test_unknown_paths_and_methods_answer_json(client: TestClient, alice: Account) -> None:
    for path in ("/api/nope", "/nothing/here", "/api/jobs/abc", "/api/jobs/99999999999999"):
        response = client.get(path, headers=alice.headers())
        assert response.status_code == 404, path
        assert response.json() == {"errors": [{"reason": "404 not found"}]}
    response = client.delete("/api/jobs", headers=alice.headers())
    assert response.status_code == 405 and response.json()["errors"][0]["reason"]


def test_a_job_that_does_not_exist_is_404(client: TestClient, alice: Account) -> None:
    for path in ("/api/jobs/12345", "/api/jobs/12345/manifest", "/api/jobs/12345/artifacts"):
        assert client.get(path, headers=alice.headers()).status_code == 404
    for path in ("/api/jobs/12345/start", "/api/jobs/12345/cancel", "/api/jobs/0/start"):
        assert client.post(path, headers=alice.headers()).status_code == 404


def test_an_oversized_body_is_413_not_read_whole(
    client: TestClient, alice: Account, app: FastAPI
) -> None:
    # A declared Content-Length past the cap is refused before the body is read (FastAPI's
    # body limit answers these itself, in plain text); tests/api/test_body_caps.py streams.
    response = client.post("/api/jobs", headers=alice.headers(), content=b"x" * (2 * 1024 * 1024))
    assert response.status_code == 413
    assert job_count(app) == 0


def test_text_that_is_not_unicode_is_400(client: TestClient, alice: Account) -> None:
    # JSON may escape a lone surrogate, which no database can store as UTF-8
    raw = json.dumps({"manifest": MANIFEST, "note": "lone \ud800 surrogate"}).encode()
    status, answer = post(client, alice, content=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and fields(answer) == ["note"]
