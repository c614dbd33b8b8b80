"""Fixtures of the worker tests: loopback proxies and a live API tier."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tcp_proxy import TcpProxy
from worker_helpers import LiveApi, Stack, api_config, make_stack


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


@pytest.fixture
def stack_factory(data_dir: Path, sqlite_url: str, amqp_url: str) -> Iterator[Any]:
    made: list[tuple[Stack, Path]] = []

    def make(**kwargs: Any) -> Stack:
        made.append(make_stack(data_dir, sqlite_url, amqp_url, **kwargs))
        return made[-1][0]

    yield make
    for stack, work_dir in made:
        stack.stop_daemon()
        stack.live.close()
        leftovers = list(work_dir.iterdir())
        shutil.rmtree(work_dir, ignore_errors=True)
        assert leftovers == [], f"VM directories left behind: {leftovers}"
