"""Constants and helpers shared by the API tests (import as `from api_helpers import ...`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pika
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from buildworker.api.accounts import create_token, create_user
from buildworker.config import Config
from buildworker.db.models import Job, Outbox, User
from buildworker.db.outbox import enqueue

#: Images accepted at submit in tests (no worker registers in most of them).
TEST_IMAGES = ("debian/bookworm@amd64", "debian/bookworm@arm64", "alpine/edge@x86_64")
WORKER_TOKEN = "test-worker-token"
ORIGIN = "http://testserver"
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:9/%2F"

MANIFEST = """\
image: debian/bookworm
tasks:
  - build: |
      echo hello
  - test: |
      echo world
"""


@dataclass(frozen=True)
class Account:
    username: str
    user_id: int
    #: scope set → token
    tokens: dict[str, str]

    def headers(self, scopes: str = "rw") -> dict[str, str]:
        return {"Authorization": f"token {self.tokens[scopes]}"}


#: Named scope sets every test account gets a token for.
SCOPE_SETS = {
    "rw": "jobs:read jobs:write secrets:read secrets:write",
    "ro": "jobs:read",
    "jobs": "jobs:write",
    "secrets": "secrets:read secrets:write",
    "all": "*",
}


def make_account(app: FastAPI, username: str) -> Account:
    with app.state.sessionmaker() as session:
        user = create_user(session, username, f"{username}@example.org")
        tokens = {
            key: create_token(session, user, scopes, name=key).token
            for key, scopes in SCOPE_SETS.items()
        }
        session.commit()
        return Account(username=username, user_id=user.id, tokens=tokens)


def with_api(config: Config, **changes: object) -> Config:
    """A copy of `config` with some [api] keys changed."""
    return replace(config, api=replace(config.api, **changes))  # type: ignore[arg-type]


# --- the outbox and the queue, driven directly ---------------------------------------------


def submit(
    sessions: sessionmaker[Session], count: int, image: str = "debian/bookworm", arch: str = "amd64"
) -> list[int]:
    """Insert `count` queued jobs with their outbox rows, as POST /api/jobs does."""
    with sessions() as session:
        user = session.scalars(select(User).where(User.username == "alice")).first()
        if user is None:
            user = User(username="alice")
            session.add(user)
        ids = []
        for _ in range(count):
            job = Job(owner=user, manifest="image: x\n", image=image, arch=arch, status="queued")
            job.attempt = 1
            session.add(job)
            session.flush()
            enqueue(session, job)
            ids.append(job.id)
        session.commit()
        return ids


def drain(amqp_url: str, queue: str) -> list[tuple[Any, bytes]]:
    """Every message waiting in `queue` (acked)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        messages: list[tuple[Any, bytes]] = []
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return messages
            messages.append((props, body))
    finally:
        connection.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def unpublished(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return len(session.scalars(select(Outbox).where(Outbox.published_at.is_(None))).all())
