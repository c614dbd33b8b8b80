"""The worker's checks against the real services (RabbitMQ through a cuttable proxy, libvirt,
the images of this checkout, a real API), and its /metrics server's health routes."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from ops_helpers import free_port, ops_config, wait_for, with_vhost_path
from tcp_proxy import TcpProxy

from buildworker.api.app import create_app
from buildworker.commands.api import ApiService
from buildworker.guest.images import ImageCatalogue
from buildworker.health import HealthChecks, ok
from buildworker.sdnotify import Notifier
from buildworker.worker.consumer import Consumer
from buildworker.worker.health import (
    api_reachable,
    broker_connected,
    images_present,
    libvirt_answering,
    readiness,
)
from buildworker.worker.metrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"


def test_broker_connected_follows_the_consumers_connection(
    amqp_url: str, make_proxy: Callable[[int], TcpProxy]
) -> None:
    proxy = make_proxy(5672)
    consumer = Consumer(
        with_vhost_path(amqp_url, proxy.port),
        [("debian/bookworm", "amd64")],
        lambda delivery: None,
        capacity=0,
        heartbeat_s=2,
        reconnect_max_s=1,
    ).start()
    try:
        wait_for(lambda: broker_connected(consumer.connected).ok, 20, "connected")
        proxy.cut()
        wait_for(lambda: not broker_connected(consumer.connected).ok, 10, "the cut to be seen")
        result = broker_connected(consumer.connected)
        assert result.detail == "not connected (reconnecting)"
        proxy.restore()
        wait_for(lambda: broker_connected(consumer.connected).ok, 20, "reconnected")
    finally:
        consumer.stop()


def test_broker_connected_accepts_a_predicate() -> None:
    assert broker_connected(lambda: True).ok
    assert not broker_connected(lambda: False).ok


def test_libvirt_answering_on_the_system_daemon() -> None:
    result = libvirt_answering("qemu:///system")
    assert result.ok, result.detail
    assert result.detail.startswith("qemu:///system: libvirt ")


def test_libvirt_not_answering_names_the_uri() -> None:
    uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    result = libvirt_answering(uri)
    assert not result.ok
    assert result.detail.startswith(uri + ": ")


def test_images_present_lists_what_is_built_and_names_what_is_missing(tmp_path: Path) -> None:
    catalogue = ImageCatalogue(IMAGES)
    result = images_present(catalogue, ["debian/bookworm@amd64"])
    assert result.ok and "debian/bookworm@amd64" in result.detail
    missing = images_present(catalogue, ["debian/bookworm@riscv64"])
    assert not missing.ok and missing.detail == "missing: debian/bookworm@riscv64"
    empty = images_present(ImageCatalogue(tmp_path))
    assert not empty.ok and empty.detail == "no image is built"


@pytest.fixture
def live_api(tmp_path: Path, sqlite_url: str, amqp_url: str) -> Iterator[str]:
    app = create_app(ops_config(sqlite_url, tmp_path, amqp_url))
    port = free_port()
    service = ApiService(app, host="127.0.0.1", port=port, notifier=Notifier(None))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: api_reachable(url).ok, 30, "the API")
    yield url
    service.stop()
    thread.join(30)
    app.state.engine.dispose()


def test_api_reachable_against_a_real_api(live_api: str) -> None:
    result = api_reachable(live_api)
    assert result.ok and result.detail.startswith(f"{live_api}: answered 200 in ")
    down = f"http://127.0.0.1:{free_port()}"
    refused = api_reachable(down)
    assert not refused.ok and refused.detail.startswith(f"{down}: ConnectError")


def test_worker_metrics_server_serves_metrics_healthz_and_readyz(
    live_api: str, amqp_url: str
) -> None:
    # Given the worker's readiness bound to real parts, with the broker not yet connected
    connected = threading.Event()
    checks = readiness(
        connected=connected,
        libvirt_uri="qemu:///system",
        catalogue=ImageCatalogue(IMAGES),
        api_url=live_api,
        required_images=["debian/bookworm@amd64"],
    )
    liveness = HealthChecks([("main-loop", ok)])
    server = WorkerMetrics().serve(f"127.0.0.1:{free_port()}", liveness=liveness, readiness=checks)
    base = f"http://127.0.0.1:{server.port}"
    try:
        not_ready = httpx.get(f"{base}/readyz", timeout=10)
        assert not_ready.status_code == 503
        body = not_ready.json()
        assert {k: v["ok"] for k, v in body["checks"].items()} == {
            "broker": False,
            "libvirt": True,
            "images": True,
            "api": True,
        }
        # When the consumer connects, it is ready
        connected.set()
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        assert httpx.get(f"{base}/healthz", timeout=10).json() == {
            "status": "ok",
            "checks": {"main-loop": {"ok": True, "detail": "ok"}},
        }
        metrics = httpx.get(f"{base}/metrics", timeout=10)
        assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "buildworker_build_info{" in metrics.text
        assert httpx.get(f"{base}/nope", timeout=10).status_code == 404
        # promtool is clean on today's worker scrape too
        promtool = shutil.which("promtool")
        assert promtool
        lint = subprocess.run(
            [promtool, "check", "metrics"], input=metrics.text, capture_output=True, text=True
        )
        assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout + lint.stderr
    finally:
        server.close()


def test_without_health_registries_only_metrics_is_served() -> None:
    server = WorkerMetrics().serve(f"127.0.0.1:{free_port()}")
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 200
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 404
    finally:
        server.close()


def test_health_bodies_are_json(live_api: str) -> None:
    body = httpx.get(f"{live_api}/healthz", timeout=10).text
    assert json.loads(body)["status"] == "ok"
