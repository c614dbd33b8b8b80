"""Helpers of the worker tests (import as `from worker_helpers import ...`).

The loopback TCP proxy the resilience tests cut lives in tests/tcp_proxy.py (shared with the
API suite).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageCatalogue
from buildworker.guest.pool import WarmPool, vm_host_for
from buildworker.worker.apiclient import InternalApi
from buildworker.worker.daemon import Daemon
from buildworker.worker.metrics import WorkerMetrics

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


def job_dirs(work_dir: Path) -> list[Path]:
    """The overlay directories of jobs' guests in ``work_dir`` (not the warm pool's, which
    belong to job 0 and stay until their worker stops)."""
    return [p for p in work_dir.iterdir() if p.name.split("-")[-2:-1] != ["0"]]


def write_run_config(path: Path, work_dir: Path, **worker: str) -> Path:
    """A worker.conf for `buildworker run` on this checkout's images and key."""
    lines = ["[worker]", f"images = {IMAGES}"]
    lines += [f"{key.replace('_', '-')} = {value}" for key, value in worker.items()]
    lines += ["[vm]", f"ssh-key = {SSH_KEY}", f"work-dir = {work_dir}"]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- a whole stack: API, broker vhost, one daemon in this process, real guests ---------------

SECRET = "e2e-S3cret-token-value-42"
TERMINAL = ("success", "failed", "timeout", "cancelled")


class Stack:
    """API + broker vhost + one daemon (in this process) + helpers to watch jobs."""

    def __init__(self, config: Any, live: LiveApi) -> None:
        self.config = config
        self.live = live
        self.daemon: Daemon | None = None
        self.vms: Hypervisor | None = None
        self.thread: threading.Thread | None = None
        self.exit_code: int | None = None
        self.pool: WarmPool | None = None

    def start_daemon(self, broker_url: str | None = None, *, pool: bool = False) -> Daemon:
        """Start the worker daemon; with ``pool``, behind a warm pool sized by its config
        (as `buildworker worker` does), filled before the daemon takes jobs."""
        config = self.config
        if broker_url is not None:
            config = replace(config, broker=replace(config.broker, url=broker_url))
        vms = Hypervisor(config.vm, worker_name=config.worker.name)
        self.vms = vms
        api = InternalApi(self.live.url, WORKER_TOKEN)
        catalogue = ImageCatalogue(IMAGES)
        metrics = WorkerMetrics()
        host: Any = vms
        if pool:
            self.pool = vm_host_for(
                config,
                catalogue,
                vms,
                on_ready=lambda i, a, n: metrics.pool_ready.labels(image=i, arch=a).set(n),
            )
            assert self.pool is not None, "the config gives this worker no pool"
            host = self.pool.start()
            assert self.pool.wait_filled(300), "the warm pool did not fill"
        self.daemon = Daemon(config, catalogue, host, api, metrics=metrics)
        self.daemon.start()

        def run() -> None:
            assert self.daemon is not None
            self.exit_code = self.daemon.run_until_stopped()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self.daemon

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.thread is not None:
            self.daemon.stop_now()
            self.thread.join(120)
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.vms is not None:
            self.vms.close()  # withdraws its forwards, as `buildworker worker` does on exit
            self.vms = None

    def wait(self, job_id: int, statuses: tuple[str, ...] = TERMINAL, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.live.job(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.25)
        tail = self.log(job_id)[-1500:].decode(errors="replace")
        raise AssertionError(
            f"job {job_id} still {self.live.job(job_id)['status']}; setup log ends:\n{tail}"
        )

    def log(self, job_id: int, task: str | None = None) -> bytes:
        path = f"/logs/{job_id}/{task}/log" if task else f"/logs/{job_id}/log"
        response = self.live.get(path)
        return response.content if response.status_code in (200, 206) else b""

    def wait_log(
        self, job_id: int, needle: bytes, task: str | None = None, timeout: float = 240
    ) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log(job_id, task):
                return time.monotonic()
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} never appeared in job {job_id}'s {task or 'setup'} log")


def make_stack(
    data_dir: Path,
    db_url: str,
    amqp_url: str,
    forwards: tuple[str, ...] = (),
    vm: dict[str, Any] | None = None,
    **api: Any,
) -> tuple[Stack, Path]:
    work_dir = vm_work_dir()
    config = api_config(data_dir, db_url, amqp_url)
    config = replace(
        config,
        api=replace(config.api, **api),
        worker=replace(config.worker, name=f"e2e-{uuid.uuid4().hex[:6]}", drain_timeout=120.0),
        vm=replace(config.vm, ssh_key=SSH_KEY, work_dir=work_dir, forwards=forwards, **(vm or {})),
    )
    return Stack(config, LiveApi(config, lifespan="on")), work_dir
