"""Fixtures of the web tests: the real app on SQLite (TestClient) with two users."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

from web_helpers import add_user
from worker_helpers import api_config

ORIGIN = "http://testserver"


def make_config(data_dir: Path, db_url: str, **api: Any) -> Any:
    config = api_config(data_dir, db_url)
    api.setdefault("origin", ORIGIN)
    return replace(config, api=replace(config.api, **api))


class Site:
    """The app with alice and bob (passwords set), and a client per person."""

    def __init__(self, config: Any) -> None:
        from buildworker.api.app import create_app

        self.config = config
        self.app = create_app(config)
        self.tokens = {name: add_user(self.app, name) for name in ("alice", "bob")}

    def client(self) -> TestClient:
        return TestClient(self.app, base_url=ORIGIN)

    def close(self) -> None:
        self.app.state.engine.dispose()


@pytest.fixture
def site(data_dir: Path, sqlite_url: str) -> Iterator[Site]:
    made = Site(make_config(data_dir, sqlite_url))
    yield made
    made.close()
