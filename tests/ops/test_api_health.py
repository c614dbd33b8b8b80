"""The API's /healthz and /readyz with real services: background loops, database (cut
through a proxy), store, broker."""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ops_helpers import wait_for, with_vhost_path
from tcp_proxy import TcpProxy

from buildworker.api.health import database_answers, store_writable


def test_without_the_background_loops_the_api_is_neither_alive_nor_ready(
    make_app: Callable[..., FastAPI],
) -> None:
    client = TestClient(make_app())  # no lifespan: no publisher, reaper, sender, watch
    alive = client.get("/healthz")
    assert alive.status_code == 503
    assert alive.json()["checks"]["background"] == {
        "ok": False,
        "detail": "not running: publisher, reaper, trigger_sender, broker_watch, republisher",
    }
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "failing"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["store"]["ok"] is True
    assert body["checks"]["broker"] == {
        "ok": False,
        "detail": "not watched (background not started)",
    }
    assert ready.headers["cache-control"] == "no-store"


def test_alive_and_ready_with_the_services_up(
    make_app: Callable[..., FastAPI], amqp_url: str
) -> None:
    with TestClient(make_app(broker_url=amqp_url)) as client:
        assert client.get("/healthz").status_code == 200
        ready = wait_for(
            lambda: (r := client.get("/readyz")).status_code == 200 and r, 20, "/readyz 200"
        )
        checks = ready.json()["checks"]
        assert set(checks) == {"database", "store", "broker"}
        assert checks["broker"]["detail"].startswith("connected to 127.0.0.1:5672")
        assert "answered in" in checks["database"]["detail"]


def test_a_store_that_cannot_be_written_is_not_ready(tmp_path: Path) -> None:
    assert store_writable(tmp_path).ok
    assert list(tmp_path.iterdir()) == []  # the probe file is removed
    # a store not made yet is made, as the store's first write would
    assert store_writable(tmp_path / "new").ok and (tmp_path / "new").is_dir()
    blocked = tmp_path / "file" / "store"
    (tmp_path / "file").write_text("")
    result = store_writable(blocked)
    assert not result.ok and result.detail == f"{blocked}: Not a directory"


def test_the_readyz_store_check_fails_when_the_store_is_replaced_by_a_file(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app()
    store = Path(app.state.store)
    shutil.rmtree(store)
    store.write_text("not a directory")
    body = TestClient(app).get("/readyz").json()
    assert body["checks"]["store"]["ok"] is False
    assert str(store) in body["checks"]["store"]["detail"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_readyz_follows_the_database_and_the_broker_cut_through_proxies(
    make_app: Callable[..., FastAPI],
    make_proxy: Callable[[int], TcpProxy],
    pg_url: str,
    amqp_url: str,
) -> None:
    db_proxy, broker_proxy = make_proxy(5432), make_proxy(5672)
    parts = urllib.parse.urlsplit(pg_url)
    proxied_db = parts._replace(netloc=f"postgres@127.0.0.1:{db_proxy.port}").geturl()
    app = make_app(broker_url=with_vhost_path(amqp_url, broker_proxy.port), database_url=proxied_db)

    def ready() -> dict[str, bool]:
        return {k: v["ok"] for k, v in client.get("/readyz").json()["checks"].items()}

    with TestClient(app) as client:
        wait_for(lambda: all(ready().values()), 20, "ready")
        # When the database goes away, only the database check fails, within seconds
        db_proxy.cut()
        wait_for(
            lambda: ready() == {"database": False, "store": True, "broker": True}, 10, "db down"
        )
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200  # alive: nothing to restart for
        db_proxy.restore()
        wait_for(lambda: all(ready().values()), 20, "db back")
        # And the same for the broker
        broker_proxy.cut()
        wait_for(lambda: ready()["broker"] is False, 10, "broker down")
        broker_proxy.restore()
        wait_for(lambda: all(ready().values()), 20, "broker back")


def test_database_check_names_the_error() -> None:
    from sqlalchemy import create_engine

    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:9/none")
    result = database_answers(engine)
    assert not result.ok and result.detail.startswith("OperationalError: ")
    engine.dispose()
