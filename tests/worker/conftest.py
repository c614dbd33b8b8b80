"""Fixtures of the worker tests: loopback proxies and a live API tier."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tcp_proxy import TcpProxy
from worker_helpers import LiveApi, api_config


@pytest.fixture
def make_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    """Factory of loopback proxies to a port; all closed after the test."""
    made: list[TcpProxy] = []

    def make(port: int) -> TcpProxy:
        proxy = TcpProxy(port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def live_api(data_dir: Path, sqlite_url: str) -> Iterator[LiveApi]:
    api = LiveApi(api_config(data_dir, sqlite_url))
    yield api
    api.close()
