"""Trigger fixtures: a migrated database (SQLite and PostgreSQL), a real SMTP server
(aiosmtpd on loopback), a real HTTP server (stdlib, loopback) that records webhooks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from trigger_helpers import HookRequest, HookServer, SmtpServer, SmtpSink, free_port

from buildworker.db.engine import make_engine, make_sessionmaker
from buildworker.db.migrate import upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a database migrated to head (so the migration is exercised too)."""
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


# --- SMTP ---------------------------------------------------------------------------------


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server on a free loopback port (started by the test: it may start it
    late, to show that mail waits for it)."""
    server = SmtpServer(SmtpSink(), free_port())
    try:
        yield server
    finally:
        server.stop()


# --- HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    """A real HTTP server on loopback that records every POST and answers `answers`."""
    requests: list[HookRequest] = []
    answers: list[int] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with lock:
                requests.append(HookRequest(self.path, dict(self.headers.items()), body))
                code = answers.pop(0) if answers else 200
            payload = b"boom" if code >= 400 else b"thanks"
            self.send_response(code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HookServer(f"http://127.0.0.1:{server.server_address[1]}/hook", requests, answers)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
