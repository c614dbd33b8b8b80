"""`buildworker api` serves the app under uvicorn, migrating the database first."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from api_helpers import UNREACHABLE_BROKER

BIN = Path(sys.executable).parent / "buildworker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_api_command_serves_and_stops_on_sigterm(tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    config = tmp_path / "worker.conf"
    config.write_text(
        f"[api]\nbind = 127.0.0.1:{port}\norigin = http://127.0.0.1:{port}\n"
        f"[database]\nurl = {sqlite_url}\n[store]\npath = {tmp_path / 'store'}\n"
        f"[broker]\nurl = {UNREACHABLE_BROKER}\n"
    )
    proc = subprocess.Popen(
        [str(BIN), "--config", str(config), "api"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/openapi.json", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "the API did not come up within 60 s"
                time.sleep(0.2)
        assert response.status_code == 200
        assert "/api/jobs" in response.json()["paths"]
        # unauthenticated requests are answered in sr.ht's JSON form over the real socket
        denied = httpx.get(f"http://127.0.0.1:{port}/api/jobs", timeout=5)
        assert denied.status_code == 401 and denied.json()["errors"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM (systemd counts
    # death by SIGTERM as a clean stop); SIGKILL from the timeout above would be -9.
    assert proc.returncode in (0, -signal.SIGTERM)
