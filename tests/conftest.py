"""Fixtures on real services: a fresh PostgreSQL database and RabbitMQ vhost per test.

These fail rather than skip when a service is missing: CI starts every service the tests
need (scripts/services), so a skip would hide a broken set-up.
"""

from __future__ import annotations

import os
import subprocess
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

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
