"""`arch: aarch64` is builds.sr.ht's other spelling of arm64 (and x86_64 of amd64): accepted,
placed under the spelling the image uses, and queued with that arch's jobs."""

from __future__ import annotations

import json

import pika
import pika.exceptions
import pytest
from api_helpers import Account, drain, unpublished, wait_until
from fastapi import FastAPI
from fastapi.testclient import TestClient

from buildworker.api.publisher import OutboxPublisher
from buildworker.queue import queue_name


def post(client: TestClient, account: Account, manifest: str) -> tuple[int, dict]:
    response = client.post("/api/jobs", headers=account.headers(), json={"manifest": manifest})
    return response.status_code, response.json()


def test_aarch64_is_accepted_as_arm64_and_routed_to_the_arm64_queue(
    client: TestClient, app: FastAPI, alice: Account, amqp_url: str
) -> None:
    ids = {}
    for arch in ("aarch64", "arm64"):
        status, job = post(
            client, alice, f"image: debian/bookworm\narch: {arch}\ntasks:\n  - a: b\n"
        )
        assert status == 200, job
        assert job["arch"] == "arm64"
        ids[arch] = job["id"]
    publisher = OutboxPublisher(app.state.sessionmaker, amqp_url, poll_s=0.05)
    publisher.start()
    try:
        wait_until(lambda: unpublished(app.state.sessionmaker) == 0)
    finally:
        publisher.stop()
    got = drain(amqp_url, queue_name("debian/bookworm", "arm64"))
    assert sorted(json.loads(body)["job_id"] for _, body in got) == sorted(ids.values())
    assert {json.loads(body)["arch"] for _, body in got} == {"arm64"}
    # and no aarch64 queue was ever declared
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
            connection.channel().queue_declare(
                queue_name("debian/bookworm", "aarch64"), passive=True
            )
    finally:
        connection.close()


def test_each_image_keeps_its_own_spelling(client: TestClient, alice: Account) -> None:
    # alpine's directories say x86_64: amd64 finds it, and the job says x86_64
    status, job = post(client, alice, "image: alpine/edge\narch: amd64\ntasks:\n  - a: b\n")
    assert status == 200 and job["arch"] == "x86_64"
    status, answer = post(client, alice, "image: alpine/edge\narch: aarch64\ntasks:\n  - a: b\n")
    assert status == 400 and answer["errors"][0]["field"] == "arch"
    assert "'aarch64'" in answer["errors"][0]["reason"]
