"""API-tier fixtures: an app on SQLite and on PostgreSQL, users with tokens, a client.

`db_url` is parametrized, so every test using `app`/`client` runs once per backend. The
`client` does not enter the ASGI lifespan: no outbox publisher or reaper threads run
(tests that want them use `with TestClient(app)` themselves, on their own vhost).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import (
    ORIGIN,
    TEST_IMAGES,
    UNREACHABLE_BROKER,
    WORKER_TOKEN,
    Account,
    make_account,
)
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from buildworker.api.app import create_app
from buildworker.api.crypto import generate_key
from buildworker.config import ApiConfig, BrokerConfig, Config, DatabaseConfig, StoreConfig
from buildworker.db.engine import make_engine, make_sessionmaker
from buildworker.db.migrate import upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def api_config(db_url: str, data_dir: Path) -> Config:
    store = data_dir / "store"
    store.mkdir()
    return Config(
        api=ApiConfig(
            origin=ORIGIN,
            worker_token=WORKER_TOKEN,
            secret_key=generate_key(),
            images=TEST_IMAGES,
            results_per_page=50,
        ),
        database=DatabaseConfig(url=db_url),
        store=StoreConfig(path=store),
        # Nothing listens on port 9: if a test runs the lifespan without choosing its own
        # vhost, the publisher fails to connect instead of publishing into the shared "/".
        broker=BrokerConfig(url=UNREACHABLE_BROKER),
    )


@pytest.fixture
def app(api_config: Config) -> Iterator[FastAPI]:
    application = create_app(api_config)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app)


@pytest.fixture
def alice(app: FastAPI) -> Account:
    return make_account(app, "alice")


@pytest.fixture
def bob(app: FastAPI) -> Account:
    return make_account(app, "bob")


@pytest.fixture
def live_url(app: FastAPI) -> Iterator[str]:
    """`app` served by a real uvicorn on a loopback port; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 10 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    """A migrated database on each backend, for tests that drive the outbox directly."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    upgrade(url)
    engine = make_engine(url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()
