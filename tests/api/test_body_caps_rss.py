"""A 300 MB chunked body costs a real `buildworker api` process less than two caps of memory.

The API runs as its own process (uvicorn, as in production); a raw socket streams the body
with ``Transfer-Encoding: chunked`` while a sampler reads the process's VmRSS from /proc every
few milliseconds. Issue 9 measured 101 → 697 MB before the cap counted multipart file parts.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from api_helpers import MANIFEST

from buildworker.api.accounts import create_token, create_user
from buildworker.api.body import MAX_BODY
from buildworker.api.crypto import generate_key
from buildworker.db.engine import make_engine, make_sessionmaker
from buildworker.db.migrate import upgrade

pytestmark = pytest.mark.slow

STREAM_BYTES = 300 * 1000 * 1000
CHUNK = 64 * 1024
BOUNDARY = "rssboundary"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """The highest VmRSS of `pid` seen while the context is open, sampled every 2 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.002)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


@dataclass
class Streamed:
    status: int
    body: bytes
    sent: int


def stream_chunked(port: int, path: str, token: str, content_type: str, head: bytes) -> Streamed:
    """POST `head` then filler, chunked, up to STREAM_BYTES or until the server answers/closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token {token}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        filler = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"
        sock.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        sent = len(head)
        answer = b""
        sock.setblocking(False)
        while sent < STREAM_BYTES:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            if b"\r\n\r\n" in answer:
                break  # the server has answered: a real client stops sending here
            try:
                sock.setblocking(True)
                sock.settimeout(60)
                sock.sendall(filler)
                sent += CHUNK
            except (BrokenPipeError, ConnectionResetError):
                break
            finally:
                sock.setblocking(False)
        sock.setblocking(True)
        sock.settimeout(60)
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            header, _, rest = answer.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in header.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(rest) < length:
                data = sock.recv(65536)
                if not data:
                    break
                rest += data
        except ConnectionResetError:
            header, rest = answer.partition(b"\r\n\r\n")[::2]
        status = int(header.split(b" ", 2)[1]) if header.startswith(b"HTTP/1.1 ") else 0
        return Streamed(status=status, body=rest, sent=sent)
    finally:
        sock.close()


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, str]]:
    """`buildworker api` as a process on a free loopback port, with a user token."""
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        user = create_user(session, "alice", "alice@example.org")
        token = create_token(session, user, "*", name="all").token
        session.commit()
    engine.dispose()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    (tmp_path / "store").mkdir()
    conf = tmp_path / "api.conf"
    conf.write_text(
        f"[api]\norigin = http://127.0.0.1:{port}\nbind = 127.0.0.1:{port}\n"
        f"secret-key = {generate_key()}\nimages = debian/bookworm@amd64\n"
        f"[database]\nurl = {url}\n[store]\npath = {tmp_path / 'store'}\n"
        # nothing listens on port 9: the publisher retries quietly, nothing is published
        "[broker]\nurl = amqp://guest:guest@127.0.0.1:9/%2F\nreconnect-max = 60s\n"
        "[log]\nlevel = warning\n"
    )
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildworker.cli", "api", "--config", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/jobs", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "api.log").read_text()) from None
                time.sleep(0.1)
        yield proc, port, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def multipart_head() -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="manifest"; '
        'filename="build.yml"\r\nContent-Type: application/x-yaml\r\n\r\n'
    ).encode()


FRAMINGS = {
    "multipart": (f"multipart/form-data; boundary={BOUNDARY}", multipart_head()),
    "json": ("application/json", b'{"manifest": "'),
}


def test_300_mb_chunked_bodies_are_413_and_rss_grows_less_than_two_caps(
    api_process: tuple[subprocess.Popen[bytes], int, str],
) -> None:
    proc, port, token = api_process
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"token {token}"}
    # Given an API that has already served each endpoint and framing once (imports, caches
    # and allocator arenas warmed, so what follows measures the body and nothing else)
    warm = httpx.post(
        f"{base}/api/jobs",
        files={"manifest": ("build.yml", MANIFEST.encode())},
        data={"execute": "false"},
        headers=headers,
        timeout=30,
    )
    assert warm.status_code == 200, warm.text
    for path in ("/api/jobs", "/api/secrets", "/api/job-group"):
        for content_type, head in FRAMINGS.values():
            first = stream_chunked(port, path, token, content_type, head)
            assert first.status == 413, (path, first)
    results = []
    for path in ("/api/jobs", "/api/secrets", "/api/job-group"):
        for framing, (content_type, head) in FRAMINGS.items():
            # When 300 MB are streamed chunked at it
            before = rss_bytes(proc.pid)
            with RssSampler(proc.pid) as sampler:
                answer = stream_chunked(port, path, token, content_type, head)
            growth = sampler.peak - before
            results.append((path, framing, answer.sent, growth))
            # Then it answers 413 in sr.ht's error form, naming the cap
            assert answer.status == 413, (path, framing, answer)
            assert json.loads(answer.body) == {
                "errors": [{"reason": f"request body too large (at most {MAX_BODY} bytes)"}]
            }
            # And its memory grew by less than two caps while the body streamed
            assert growth < 2 * MAX_BODY, results
    print("\nbody caps under uvicorn (path, framing, bytes the server let in, RSS growth):")
    for path, framing, sent, growth in results:
        print(f"  {path:15} {framing:9} sent {sent / 1e6:7.2f} MB  RSS +{growth / 1024:7.0f} KiB")
    # And the API still serves requests afterwards
    assert httpx.get(f"{base}/api/jobs", headers=headers, timeout=10).status_code == 200
