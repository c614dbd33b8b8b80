"""Helpers of the worker tests (import as `from worker_helpers import ...`).

The loopback TCP proxy the resilience tests cut lives in tests/tcp_proxy.py (shared with the
API suite).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Literal

# --- a real API tier, served by uvicorn on a loopback port ---------------------------------

WORKER_TOKEN = "worker-test-token"


def free_port() -> int:
    """A loopback port nothing listens on now (for a server whose URL must be known first)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


class LiveApi:
    """The real API app (SQLite, a store in tmp) under uvicorn on 127.0.0.1; restartable."""

    def __init__(
        self,
        config: Any,
        lifespan: Literal["auto", "on", "off"] = "off",
        port: int | None = None,
    ) -> None:
        from buildworker.api.accounts import create_token, create_user
        from buildworker.api.app import create_app

        self.config = config
        self.app = create_app(config)
        self._lifespan = lifespan
        with self.app.state.sessionmaker() as session:
            user = create_user(session, "alice", "alice@example.org")
            self.user_token = create_token(session, user, "*", name="all").token
            session.commit()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, log_config=None, lifespan=self._lifespan, access_log=False)
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start within 15 s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server = self._thread = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.user_token}"}

    def submit(self, manifest: str, **fields: Any) -> int:
        import httpx

        response = httpx.post(
            f"{self.url}/api/jobs",
            json={"manifest": manifest, **fields},
            headers=self.headers(),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return int(response.json()["id"])

    def get(self, path: str, **kwargs: Any) -> Any:
        import httpx

        return httpx.get(f"{self.url}{path}", headers=self.headers(), timeout=30, **kwargs)

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def close(self) -> None:
        self.stop()
        self.app.state.engine.dispose()


def api_config(data_dir: Path, db_url: str, amqp_url: str | None = None, **worker: Any) -> Any:
    from buildworker.api.crypto import generate_key
    from buildworker.config import (
        ApiConfig,
        BrokerConfig,
        Config,
        DatabaseConfig,
        StoreConfig,
        WorkerConfig,
    )

    store = data_dir / "store"
    store.mkdir(exist_ok=True)
    return Config(
        api=ApiConfig(
            origin="http://127.0.0.1",
            worker_token=WORKER_TOKEN,
            secret_key=generate_key(),
            images=("debian/bookworm@amd64",),
        ),
        database=DatabaseConfig(url=db_url),
        store=StoreConfig(path=store),
        broker=BrokerConfig(url=amqp_url) if amqp_url else BrokerConfig(),
        worker=WorkerConfig(name="test-worker", token=WORKER_TOKEN, **worker),
    )


# --- real VMs ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
#: A worktree whose images/debian/bookworm is a symlink to another checkout points this at
#: that checkout's images/ (the catalogue refuses images that resolve outside its root).
IMAGES = Path(os.environ.get("BUILDWORKER_TEST_IMAGES", REPO / "images"))
SSH_KEY = REPO / ".state" / "id_ed25519"


def vm_work_dir() -> Path:
    """A directory for overlays that the qemu user can reach (pytest's tmp dirs are 0700)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="bw-worker-vms-", dir="/tmp"))
    path.chmod(0o755)
    return path


def write_run_config(path: Path, work_dir: Path, **worker: str) -> Path:
    """A worker.conf for `buildworker run` on this checkout's images and key."""
    lines = ["[worker]", f"images = {IMAGES}"]
    lines += [f"{key.replace('_', '-')} = {value}" for key, value in worker.items()]
    lines += ["[vm]", f"ssh-key = {SSH_KEY}", f"work-dir = {work_dir}"]
    path.write_text("\n".join(lines) + "\n")
    return path
