"""Helpers of the operations tests (import as ``from ops_helpers import ...``).

`NotifyListener` plays systemd's side of the notify protocol: a real AF_UNIX datagram
socket (a path, or an abstract ``@name``) that collects what the process sends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from buildworker.api.accounts import create_token, create_user
from buildworker.api.crypto import generate_key
from buildworker.config import ApiConfig, BrokerConfig, Config, DatabaseConfig, StoreConfig

#: Nothing listens on port 9: an app whose lifespan runs without a vhost of its own fails to
#: connect instead of publishing into the shared "/".
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:9/%2F"
MANIFEST = "image: debian/bookworm\ntasks:\n  - build: echo hello\n"


BIN = Path(sys.executable).parent / "buildworker"


def status_code(url: str) -> int:
    """``GET url``'s status; 0 while nothing listens (or the connection breaks)."""
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return 0


def start_worker(
    conf: Path, log: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`buildworker worker` with ``conf``, output to ``log``, without our NOTIFY_SOCKET."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    environ.update(env or {})
    return subprocess.Popen(
        [str(BIN), "--config", str(conf), "worker"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=environ,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_200(url: str) -> bool:
    """``GET url`` is 200; a server not listening yet (connection refused) is just not yet."""
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


class NotifyListener:
    """systemd's end of ``$NOTIFY_SOCKET``: a datagram socket; messages parsed as dicts."""

    def __init__(self, directory: Path | None = None, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"buildworker-test-{uuid.uuid4().hex[:12]}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            assert directory is not None
            path = directory / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.raw.append(data)

    @property
    def messages(self) -> list[dict[str, str]]:
        with self._lock:
            raw = list(self.raw)
        return [dict(line.split("=", 1) for line in m.decode().split("\n")) for m in raw]

    def count(self, key: str, value: str = "1") -> int:
        return sum(1 for m in self.messages if m.get(key) == value)

    def index(self, key: str, value: str = "1") -> int:
        """Position of the first message with ``key=value`` (-1 if none)."""
        for i, message in enumerate(self.messages):
            if message.get(key) == value:
                return i
        return -1

    def statuses(self) -> list[str]:
        return [m["STATUS"] for m in self.messages if "STATUS" in m]

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        self._thread.join(2)


def api_conf(path: Path, *, port: int, db_url: str, amqp_url: str, store: Path) -> Path:
    path.write_text(
        f"""\
[api]
bind = 127.0.0.1:{port}
origin = http://127.0.0.1:{port}
reap-interval = 1s
metrics-cache = 1s
[database]
url = {db_url}
[store]
path = {store}
[broker]
url = {amqp_url}
heartbeat = 2s
reconnect-max = 1s
[log]
format = json
"""
    )
    return path


def start_api(
    conf: Path, log: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    environ.update(env or {})
    return subprocess.Popen(
        [str(BIN), "--config", str(conf), "api"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=environ,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def with_vhost_path(amqp_url: str, port: int) -> str:
    """``amqp_url`` (on 127.0.0.1:5672) redirected to a proxy on ``port``."""
    return amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{port}")


def ops_config(
    db_url: str, data_dir: Path, broker_url: str = UNREACHABLE_BROKER, **api: Any
) -> Config:
    store = data_dir / "store"
    store.mkdir(parents=True, exist_ok=True)
    return Config(
        api=ApiConfig(
            origin="http://testserver",
            worker_token="ops-worker-token",
            secret_key=generate_key(),
            images=("debian/bookworm@amd64",),
            **api,
        ),
        database=DatabaseConfig(url=db_url),
        store=StoreConfig(path=store),
        broker=BrokerConfig(url=broker_url, heartbeat=2.0, reconnect_max=1.0),
    )


def user_headers(app: FastAPI, name: str = "alice") -> dict[str, str]:
    with app.state.sessionmaker() as session:
        user = create_user(session, name, f"{name}@example.org")
        token = create_token(session, user, "*", name="all").token
        session.commit()
    return {"Authorization": f"token {token}"}
