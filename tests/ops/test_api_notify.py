"""`buildworker api` under a real NOTIFY_SOCKET listener: READY=1 only once the database and
the broker answer, STATUS= lines, watchdog pings, STOPPING=1 on SIGTERM, /readyz following a
broker cut; and pings withheld while the event loop is wedged."""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from ops_helpers import (
    NotifyListener,
    api_conf,
    free_port,
    ops_config,
    start_api,
    status_code,
    stop,
    wait_for,
    with_vhost_path,
)
from tcp_proxy import TcpProxy

from buildworker.api.app import create_app
from buildworker.commands.api import ApiService
from buildworker.sdnotify import Notifier

pytestmark = pytest.mark.slow


def test_api_process_notifies_ready_only_when_ready_pings_and_says_stopping(
    tmp_path: Path,
    sqlite_url: str,
    amqp_url: str,
    listener: NotifyListener,
    make_proxy: Callable[[int], TcpProxy],
) -> None:
    broker = make_proxy(5672)
    broker.cut()  # Given a broker that cannot be reached at start
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    conf = api_conf(
        tmp_path / "worker.conf",
        port=port,
        db_url=sqlite_url,
        amqp_url=with_vhost_path(amqp_url, broker.port),
        store=tmp_path / "store",
    )
    log = tmp_path / "api.log"
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"}
    proc = start_api(conf, log, env=env)
    try:
        # When the server is up, it answers but is not ready, and says why
        wait_for(lambda: status_code(f"{base}/healthz") == 200, 60, "the API to serve")
        wait_for(lambda: any("not ready: broker (" in s for s in listener.statuses()), 10, "STATUS")
        time.sleep(2)
        assert listener.count("READY") == 0, listener.messages
        assert status_code(f"{base}/readyz") == 503
        assert listener.statuses()[0] == "starting: migrating the database"
        # Then READY=1 comes once the broker answers, and /readyz agrees
        broker.restore()
        wait_for(lambda: listener.count("READY") == 1, 20, "READY=1")
        ready = listener.messages[listener.index("READY")]
        assert ready["STATUS"] == f"ready; serving on 127.0.0.1:{port}"
        assert status_code(f"{base}/readyz") == 200
        # And the watchdog is pinged at half of WATCHDOG_USEC
        pings = listener.count("WATCHDOG")
        wait_for(lambda: listener.count("WATCHDOG") >= pings + 3, 10, "watchdog pings")
        # When the broker is cut, /readyz turns 503 within seconds and STATUS says so
        broker.cut()
        wait_for(lambda: status_code(f"{base}/readyz") == 503, 10, "/readyz 503")
        wait_for(lambda: "not ready: broker" in listener.statuses()[-1], 5, "STATUS not ready")
        # but the process is alive, so the watchdog keeps being fed (a restart fixes nothing)
        pings = listener.count("WATCHDOG")
        wait_for(lambda: listener.count("WATCHDOG") >= pings + 2, 10, "pings while not ready")
        # And back to 200 when it returns
        broker.restore()
        wait_for(lambda: status_code(f"{base}/readyz") == 200, 20, "/readyz 200 again")
        wait_for(lambda: listener.statuses()[-1].startswith("ready;"), 5, "STATUS ready")
        assert listener.count("READY") == 1  # READY=1 is sent once
        # When SIGTERM arrives, STOPPING=1 is sent and the process ends cleanly
        code = stop(proc)
        assert listener.count("STOPPING") == 1
        assert code in (0, -15), log.read_text()[-2000:]
    finally:
        stop(proc)


def test_ready_waits_for_the_database_too(
    tmp_path: Path,
    pg_url: str,
    amqp_url: str,
    listener: NotifyListener,
    make_proxy: Callable[[int], TcpProxy],
) -> None:
    broker, database = make_proxy(5672), make_proxy(5432)
    broker.cut()
    parts = urllib.parse.urlsplit(pg_url)
    proxied_db = parts._replace(netloc=f"postgres@127.0.0.1:{database.port}").geturl()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    conf = api_conf(
        tmp_path / "worker.conf",
        port=port,
        db_url=proxied_db,
        amqp_url=with_vhost_path(amqp_url, broker.port),
        store=tmp_path / "store",
    )
    proc = start_api(conf, tmp_path / "api.log", env={"NOTIFY_SOCKET": listener.address})
    try:
        wait_for(lambda: status_code(f"{base}/healthz") == 200, 60, "the API to serve")
        # Given the database gone after start-up, when the broker comes back
        database.cut()
        broker.restore()
        # (the broker watch reconnects within its backoff, at most 5 s)
        wait_for(
            lambda: "database" in (last := listener.statuses()[-1]) and "broker" not in last,
            30,
            "STATUS naming only the database",
        )
        time.sleep(2)
        assert listener.count("READY") == 0
        assert "database" in listener.statuses()[-1]
        # Then READY=1 only once the database answers as well
        database.restore()
        wait_for(lambda: listener.count("READY") == 1, 20, "READY=1")
        assert status_code(f"{base}/readyz") == 200
    finally:
        stop(proc)


def test_watchdog_pings_stop_while_the_event_loop_is_wedged(
    tmp_path: Path, sqlite_url: str, amqp_url: str, listener: NotifyListener
) -> None:
    # Given the API in this process with a route that blocks its event loop for 3 s
    app = create_app(ops_config(sqlite_url, tmp_path, amqp_url))

    async def wedge() -> dict[str, str]:
        time.sleep(3)  # a synchronous call in async code: the classic way to wedge a loop
        return {}

    app.add_api_route("/wedge", wedge)
    port = free_port()
    notifier = Notifier(listener.address, watchdog_s=0.4)
    service = ApiService(app, host="127.0.0.1", port=port, notifier=notifier, loop_stall_s=1.0)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: listener.count("READY") == 1, 30, "READY=1")
        wait_for(lambda: listener.count("WATCHDOG") >= 3, 10, "pings")
        # When the loop is wedged
        blocker = threading.Thread(
            target=lambda: httpx.get(f"http://127.0.0.1:{port}/wedge", timeout=30), daemon=True
        )
        blocker.start()
        time.sleep(1.5)  # the stall threshold (1 s) has passed
        during = listener.count("WATCHDOG")
        time.sleep(1.0)
        # Then no ping is sent while it stays wedged
        assert listener.count("WATCHDOG") == during
        blocker.join(30)
        # And pings resume once it ticks again
        wait_for(lambda: listener.count("WATCHDOG") >= during + 2, 10, "pings to resume")
    finally:
        service.stop()
        thread.join(30)
        app.state.engine.dispose()
    assert listener.count("STOPPING") == 1


def test_a_database_that_does_not_answer_at_start_is_a_clear_error_and_no_ready(
    tmp_path: Path, amqp_url: str, listener: NotifyListener
) -> None:
    url = f"postgresql+psycopg://postgres:hunter22@127.0.0.1:{free_port()}/none"
    conf = api_conf(
        tmp_path / "worker.conf",
        port=free_port(),
        db_url=url,
        amqp_url=amqp_url,
        store=tmp_path / "store",
    )
    log = tmp_path / "api.log"
    proc = start_api(conf, log, env={"NOTIFY_SOCKET": listener.address})
    assert proc.wait(60) == 1
    text = log.read_text()
    assert f"buildworker: database: {url.replace('hunter22', '***')}: connection failed" in text
    assert "hunter22" not in text  # the password is never printed
    assert listener.count("READY") == 0
    assert listener.statuses() == ["starting: migrating the database"]
