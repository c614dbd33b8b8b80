"""Fixtures on real services: a fresh PostgreSQL database and RabbitMQ vhost per test.

These fail rather than skip when a service is missing: CI starts every service the tests
need (scripts/services), so a skip would hide a broken set-up.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_DSN = os.environ.get(
    "BUILDWORKER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_BASE = os.environ.get("BUILDWORKER_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The read-only shared/ folder beside the checkout (CI lays a copy there too)."""
    for candidate in (REPO_ROOT.parent / "shared", Path("/work/shared")):
        if (candidate / "corpus").is_dir():
            return candidate
    raise RuntimeError(f"shared/ not found beside {REPO_ROOT} nor at /work/shared")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A temporary directory for a component's state (store, database file, overlays)."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'buildworker.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped after the test."""
    import psycopg

    name = f"bw_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parsed = urllib.parse.urlsplit(PG_ADMIN_DSN)
    url = f"postgresql+psycopg://{parsed.netloc}/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A fresh RabbitMQ vhost (guest has full rights on it), deleted after the test."""
    vhost = f"bw-test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"{AMQP_BASE}/{urllib.parse.quote(vhost, safe='')}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


# --- guests reaching a host service ------------------------------------------------------


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A bare git repo with a tag, served read-only over dumb HTTP on a loopback port."""
    work, served = tmp_path / "src", tmp_path / "served"
    served.mkdir()
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
        "HOME": str(tmp_path),
    }

    def git(*args: str, cwd: Path) -> str:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)
        return done.stdout.decode().strip()

    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "file.txt").write_text("tagged content\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "one", cwd=work)
    git("tag", "v1", cwd=work)
    (work / "file.txt").write_text("later content\n")
    git("commit", "-q", "-am", "two", cwd=work)
    git("clone", "-q", "--bare", str(work), str(served / "repo.git"), cwd=tmp_path)
    git("update-server-info", cwd=served / "repo.git")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], "tagged content"
    server.shutdown()


@pytest.fixture
def keep_forward() -> Iterator[Any]:
    """Forward a host port to guests for this test, as `[vm] forwards` would, then withdraw it.

    The grant is owned by this test (buildworker.guest.grants), so workers it starts keep it
    while they start and stop.
    """
    import pwd

    from buildworker.guest.grants import EgressGrant
    from buildworker.guest.isolation import Forward

    grants: list[EgressGrant] = []
    uid = pwd.getpwnam("libvirt-qemu").pw_uid

    def add(port: int) -> None:
        grants.append(EgressGrant(uid, [Forward(port)], []).start())

    yield add
    for grant in grants:
        grant.close()
