"""Fixtures of the operations tests: the API app on SQLite and PostgreSQL, a user token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from ops_helpers import UNREACHABLE_BROKER, NotifyListener, ops_config
from tcp_proxy import TcpProxy

from buildworker.api.app import create_app


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


@pytest.fixture
def make_app(db_url: str, data_dir: Path) -> Iterator[Callable[..., FastAPI]]:
    """``make_app(**api_fields)``: an app on the test's database (closed after the test)."""
    made: list[FastAPI] = []

    def make(
        broker_url: str = UNREACHABLE_BROKER, database_url: str | None = None, **api: Any
    ) -> FastAPI:
        config = ops_config(database_url or db_url, data_dir, broker_url, **api)
        app = create_app(config)
        made.append(app)
        return app

    yield make
    for app in made:
        app.state.engine.dispose()


@pytest.fixture
def make_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    made: list[TcpProxy] = []

    def make(port: int) -> TcpProxy:
        proxy = TcpProxy(port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    """systemd's end of NOTIFY_SOCKET, in the test's directory."""
    sock = NotifyListener(tmp_path)
    yield sock
    sock.close()
