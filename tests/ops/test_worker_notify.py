"""`buildworker worker` under a real NOTIFY_SOCKET listener, against the real API, RabbitMQ
(through a cuttable proxy) and libvirt: READY=1 only once the broker answers, STATUS= with
the slots, periodic WATCHDOG=1, /readyz following a broker cut, STOPPING=1 on SIGTERM; and,
in this process, watchdog pings withheld while the main loop is wedged."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from ops_helpers import (
    NotifyListener,
    answers_200,
    free_port,
    ops_config,
    start_worker,
    status_code,
    stop,
    wait_for,
    with_vhost_path,
)
from tcp_proxy import TcpProxy

from buildworker.api.app import create_app
from buildworker.commands.api import ApiService
from buildworker.config import VmConfig, WorkerConfig
from buildworker.exitcodes import EXIT_OK
from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageCatalogue
from buildworker.health import HealthChecks, ok
from buildworker.sdnotify import Notifier, WatchdogPinger
from buildworker.worker.apiclient import InternalApi
from buildworker.worker.daemon import Daemon
from buildworker.worker.supervisor import Supervisor

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORKER_TOKEN = "ops-worker-token"  # ops_config's [api] worker-token
IMAGES = (REPO / "images" / "debian" / "bookworm").resolve().parents[1]


@pytest.fixture
def api(tmp_path: Path, sqlite_url: str, amqp_url: str) -> Iterator[str]:
    app = create_app(ops_config(sqlite_url, tmp_path / "api", amqp_url))
    port = free_port()
    service = ApiService(app, host="127.0.0.1", port=port, notifier=Notifier(None))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers_200(f"{url}/readyz"), 30, "API ready")
    yield url
    service.stop()
    thread.join(30)
    app.state.engine.dispose()


def test_worker_notifies_ready_only_when_the_broker_answers_pings_and_says_stopping(
    tmp_path: Path,
    api: str,
    amqp_url: str,
    listener: NotifyListener,
    make_proxy: Callable[[int], TcpProxy],
) -> None:
    broker = make_proxy(5672)
    broker.cut()  # Given a broker that cannot be reached at start
    metrics_port = free_port()
    base = f"http://127.0.0.1:{metrics_port}"
    conf = tmp_path / "worker.conf"
    conf.write_text(
        f"[broker]\nurl = {with_vhost_path(amqp_url, broker.port)}\nheartbeat = 2s\n"
        "reconnect-max = 1s\n"
        f"[worker]\nname = notify-{uuid.uuid4().hex[:6]}\napi-url = {api}\n"
        f"token = {WORKER_TOKEN}\nslots = 2\nimages = {IMAGES}\n"
        f"metrics-bind = 127.0.0.1:{metrics_port}\n"
        f"[vm]\nssh-key = {REPO / '.state/id_ed25519'}\nwork-dir = {tmp_path / 'vms'}\n"
    )
    log = tmp_path / "worker.log"
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"}
    proc = start_worker(conf, log, env=env)
    try:
        # When the worker is up, it answers /healthz but is not ready, and says why
        wait_for(lambda: status_code(f"{base}/healthz") == 200, 60, "the worker to serve")
        wait_for(
            lambda: any(s.startswith("not ready: broker") for s in listener.statuses()),
            20,
            "STATUS not ready",
        )
        time.sleep(2)
        assert listener.count("READY") == 0, listener.messages
        readyz = httpx.get(f"{base}/readyz", timeout=10)
        assert readyz.status_code == 503
        body = readyz.json()
        assert body["checks"]["broker"]["ok"] is False, body
        assert {"broker", "libvirt", "images", "api"} <= set(body["checks"]), body
        assert listener.statuses()[0] == "starting: connecting to libvirt"
        # Then READY=1 comes once the broker answers, with the slots in its STATUS
        broker.restore()
        wait_for(lambda: listener.count("READY") == 1, 30, "READY=1")
        ready = listener.messages[listener.index("READY")]
        assert ready["STATUS"] == "ready; 0/2 slots busy, broker connected"
        assert status_code(f"{base}/readyz") == 200
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert "buildworker_worker_ready 1.0" in metrics
        # And the watchdog is pinged at half of WATCHDOG_USEC
        pings = listener.count("WATCHDOG")
        wait_for(lambda: listener.count("WATCHDOG") >= pings + 3, 10, "watchdog pings")
        # When the broker is cut, /readyz turns 503 within seconds and STATUS says so
        broker.cut()
        cut_at = time.monotonic()
        wait_for(lambda: status_code(f"{base}/readyz") == 503, 15, "/readyz 503")
        print(f"/readyz turned 503 {time.monotonic() - cut_at:.1f} s after the cut")
        wait_for(lambda: "not ready: broker" in listener.statuses()[-1], 10, "STATUS not ready")
        # but the process is alive, so the watchdog keeps being fed (a restart fixes nothing)
        pings = listener.count("WATCHDOG")
        wait_for(lambda: listener.count("WATCHDOG") >= pings + 2, 10, "pings while not ready")
        # And back to 200 when it returns
        broker.restore()
        wait_for(lambda: status_code(f"{base}/readyz") == 200, 30, "/readyz 200 again")
        wait_for(lambda: listener.statuses()[-1].startswith("ready;"), 10, "STATUS ready")
        assert listener.count("READY") == 1  # READY=1 is sent once
        # When SIGTERM arrives, STOPPING=1 is sent and the process ends cleanly
        code = stop(proc)
        assert listener.count("STOPPING") == 1
        stopping = listener.messages[listener.index("STOPPING")]
        assert stopping["STATUS"] == "draining: 0/2 slots busy"
        assert code == 0, log.read_text()[-3000:]
    finally:
        stop(proc)
    # The worker's stderr is a file: `[log] format = auto` wrote JSON lines
    lines = log.read_text().splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), lines[:5]


def test_watchdog_pings_stop_while_the_main_loop_is_wedged(
    tmp_path: Path, api: str, amqp_url: str, listener: NotifyListener
) -> None:
    # Given a daemon in this process, its supervisor and a pinger at 0.2 s
    work_dir = Path(tempfile.mkdtemp(prefix="bw-ops-vms-", dir="/tmp"))
    base = ops_config("sqlite://", tmp_path / "cfg", amqp_url)
    config = replace(
        base,
        worker=WorkerConfig(
            name=f"wedge-{uuid.uuid4().hex[:6]}", api_url=api, token=WORKER_TOKEN, images=IMAGES
        ),
        vm=replace(VmConfig(), ssh_key=REPO / ".state/id_ed25519", work_dir=work_dir),
    )
    vms = Hypervisor(config.vm, worker_name=config.worker.name)
    daemon = Daemon(config, ImageCatalogue(IMAGES), vms, InternalApi(api, WORKER_TOKEN))
    daemon.start()
    notifier = Notifier(listener.address, watchdog_s=0.4)
    always = HealthChecks([("always", lambda: ok())])
    supervisor = Supervisor(daemon, notifier, always, daemon.metrics, stall_s=1.0)
    pinger = WatchdogPinger(notifier, supervisor.alive).start()
    result: dict[str, int] = {}
    loop = threading.Thread(
        target=lambda: result.setdefault(
            "code",
            daemon.run_until_stopped(on_tick=supervisor.tick, on_drain=supervisor.draining),
        ),
        daemon=True,
    )
    loop.start()
    try:
        wait_for(lambda: listener.count("READY") == 1, 30, "READY=1")
        wait_for(lambda: listener.count("WATCHDOG") >= 3, 10, "pings")
        assert supervisor.liveness().run().ok
        # When the main loop is wedged (it blocks on the daemon's lock, which we hold)
        with daemon._lock:
            time.sleep(1.5)  # the stall threshold (1 s) has passed
            during = listener.count("WATCHDOG")
            wedged = supervisor.liveness().run()
            time.sleep(1.0)
            # Then no ping is sent while it stays wedged, and /healthz says why
            assert listener.count("WATCHDOG") == during
            assert not wedged.ok and wedged.failing() == ["main-loop"], wedged.body()
        # And pings resume once it ticks again
        wait_for(lambda: listener.count("WATCHDOG") >= during + 2, 10, "pings to resume")
        # And the drain says STOPPING=1 once and the loop ends with 0
        daemon.drain()
        loop.join(30)
        assert result.get("code") == EXIT_OK
        assert listener.count("STOPPING") == 1
    finally:
        pinger.stop()
        daemon.stop_now()
        loop.join(30)
        vms.close()
