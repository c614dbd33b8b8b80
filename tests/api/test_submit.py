"""`buildworker submit [--follow]` against a real API served by uvicorn on 127.0.0.1, fed by a
scripted worker that takes the job from RabbitMQ and plays it through the internal API.

The scripted worker is the only stand-in here (the real worker has its own issue): it runs no
VM, it just claims, writes logs in chunks, sets task statuses and finishes.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pika
import pika.exceptions
import pytest
import uvicorn
from api_helpers import MANIFEST, WORKER_TOKEN, make_account

from buildworker.api.app import create_app
from buildworker.commands.submit import Follower
from buildworker.config import BrokerConfig, Config
from buildworker.queue import DEAD_EXCHANGE, queue_name

WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """The CLI does not care which database serves it: SQLite only here (both backends are
    covered by the internal API and file tests)."""
    return sqlite_url


@dataclass
class LiveApi:
    url: str
    token: str
    amqp_url: str
    config_file: Path


@pytest.fixture
def live_api(api_config: Config, amqp_url: str, tmp_path: Path) -> Iterator[LiveApi]:
    """The API under uvicorn on a free loopback port, publishing to a fresh vhost."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    config = replace(
        api_config,
        api=replace(api_config.api, origin=url, reap_interval=60.0),
        broker=BrokerConfig(url=amqp_url, outbox_poll=0.05),
    )
    app = create_app(config)
    token = make_account(app, "alice").tokens["rw"]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    config_file = tmp_path / "client.conf"
    config_file.write_text("")  # an empty config: nothing from /etc leaks into the test
    try:
        yield LiveApi(url, token, amqp_url, config_file)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


class ScriptedWorker(threading.Thread):
    """Takes one job from the queue and plays it: logs in chunks, task statuses, finish."""

    def __init__(
        self,
        api: LiveApi,
        result: str = "success",
        chunks: int = 5,
        payload: list[bytes] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.result = result
        self.chunks = chunks
        #: what each task writes, chunk by chunk, instead of the numbered steps
        self.payload = payload
        self.written: dict[str, bytes] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._play()
        except BaseException as exc:  # reported by the test through self.error
            self.error = exc

    def _take(self) -> dict:
        connection = pika.BlockingConnection(pika.URLParameters(self.api.amqp_url))
        try:
            channel = connection.channel()
            queue = queue_name("debian/bookworm", "amd64")
            channel.queue_declare(
                queue, durable=True, arguments={"x-dead-letter-exchange": DEAD_EXCHANGE}
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                method, _props, body = channel.basic_get(queue)
                if method is not None:
                    message: dict = json.loads(body)
                    self._claim(message)
                    channel.basic_ack(method.delivery_tag)  # ack only after the claim
                    return message
                time.sleep(0.05)
            raise AssertionError("no job was published")
        finally:
            connection.close()

    def _claim(self, message: dict) -> None:
        response = httpx.post(
            f"{self.api.url}/api/internal/jobs/{message['job_id']}/claim",
            json={"worker": "scripted", "attempt": message["attempt"]},
            headers=WORKER,
        )
        assert response.status_code == 200, response.text
        self.claimed = response.json()

    def _log(self, client: httpx.Client, job: int, name: str, data: bytes) -> None:
        offset = len(self.written.get(name, b""))
        url = (
            f"/api/internal/jobs/{job}/logs/{name}"
            if name == "setup"
            else f"/api/internal/jobs/{job}/tasks/{name}/log"
        )
        response = client.put(url, params={"offset": offset, "attempt": 1}, content=data)
        assert response.status_code == 200, response.text
        self.written[name] = self.written.get(name, b"") + data

    def _play(self) -> None:
        message = self._take()
        job = message["job_id"]
        with httpx.Client(base_url=self.api.url, headers=WORKER) as client:
            self._log(client, job, "setup", b"Booting image debian/bookworm\n")
            time.sleep(0.3)
            self._log(client, job, "setup", b"Guest ready\n")
            for task in self.claimed["tasks"]:
                client.put(
                    f"/api/internal/jobs/{job}/tasks/{task}",
                    json={"attempt": 1, "status": "running"},
                )
                for n in range(self.chunks if self.payload is None else 0):
                    # no newline on some chunks: the follower must not invent line breaks
                    self._log(
                        client, job, task, f"{task} step {n}{'' if n % 2 else chr(10)}".encode()
                    )
                    time.sleep(0.1)
                for chunk in self.payload or []:
                    self._log(client, job, task, chunk)
                    time.sleep(0.3)  # separate reads: sequences arrive split
                self._log(client, job, task, b"\n")
                status = "failed" if self.result == "failed" and task == "test" else "success"
                client.put(
                    f"/api/internal/jobs/{job}/tasks/{task}", json={"attempt": 1, "status": status}
                )
            self._log(client, job, "setup", b"Build complete\n")
            client.post(f"/api/internal/jobs/{job}/heartbeat", json={"attempt": 1})
            client.post(
                f"/api/internal/jobs/{job}/finish", json={"attempt": 1, "status": self.result}
            )


def run_submit(
    api: LiveApi, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDWORKER_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "buildworker.cli",
            "--config",
            str(api.config_file),
            "submit",
            *args,
        ],
        capture_output=True,
        timeout=timeout,
        env={**base_env, **(env or {})},
        check=False,
    )


def sections(output: bytes) -> dict[str, bytes]:
    """The followed output regrouped per log: {"setup": ..., "task build": ...}."""
    found: dict[str, bytes] = {}
    title = None
    for part in re.split(rb"^==> (.+?) <==\n", output, flags=re.M)[1:]:
        if title is None:
            title = part.decode()
        else:
            found[title] = found.get(title, b"") + part
            title = None
    return found


@pytest.fixture
def manifest_file(tmp_path: Path) -> Path:
    path = tmp_path / "build.yml"
    path.write_text(MANIFEST)
    return path


@pytest.mark.slow
def test_follow_streams_every_log_and_exits_0_on_success(
    live_api: LiveApi, manifest_file: Path
) -> None:
    worker = ScriptedWorker(live_api)
    worker.start()
    done = run_submit(
        live_api,
        str(manifest_file),
        "--follow",
        "--interval",
        "0.1",
        "--url",
        live_api.url,
        "--token",
        live_api.token,
        "--note",
        "hi",
        "--tag",
        "ci",
    )
    worker.join(30)
    assert worker.error is None, worker.error
    assert done.returncode == 0, done.stderr.decode()
    first, _, rest = done.stdout.partition(b"\n")
    assert re.fullmatch(rf"{live_api.url}/~alice/job/\d+".encode(), first)  # the job's page
    # Every byte of every log arrived, each under its header
    got = sections(rest)
    assert got["setup"].replace(b"\n", b"") == worker.written["setup"].replace(b"\n", b"")
    assert got["task build"].strip() == worker.written["build"].strip()
    assert got["task test"].strip() == worker.written["test"].strip()
    assert list(got)[:3] == ["setup", "task build", "task test"]
    assert b"job " in done.stderr and b"success" in done.stderr


@pytest.mark.slow
def test_follow_exits_1_when_the_job_fails(live_api: LiveApi, manifest_file: Path) -> None:
    worker = ScriptedWorker(live_api, result="failed", chunks=1)
    worker.start()
    env = {"BUILDWORKER_URL": live_api.url, "BUILDWORKER_TOKEN": live_api.token}
    done = run_submit(live_api, str(manifest_file), "-f", "--interval", "0.1", env=env)
    worker.join(30)
    assert worker.error is None, worker.error
    assert done.returncode == 1, done.stderr.decode()
    assert b"failed" in done.stderr


def test_submit_without_follow_prints_the_url_and_leaves_the_job_queued(
    live_api: LiveApi, manifest_file: Path
) -> None:
    done = run_submit(
        live_api,
        str(manifest_file),
        "--url",
        live_api.url,
        "--token",
        live_api.token,
        "--tag",
        "a",
        "--tag",
        "b",
    )
    assert done.returncode == 0, done.stderr.decode()
    url = done.stdout.decode().strip()
    # The printed URL is the job's page, which a person can read; the REST resource stays
    page = httpx.get(url)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    job_id = url.rsplit("/", 1)[1]
    job = httpx.get(
        f"{live_api.url}/api/jobs/{job_id}", headers={"Authorization": f"token {live_api.token}"}
    ).json()
    assert job["status"] == "queued" and job["tags"] == "a/b"


def test_the_token_and_url_can_come_from_the_config_file(
    live_api: LiveApi, manifest_file: Path
) -> None:
    live_api.config_file.write_text(f"[client]\nurl = {live_api.url}\ntoken = {live_api.token}\n")
    done = run_submit(live_api, str(manifest_file))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith(f"{live_api.url}/~alice/job/")


def test_a_refused_manifest_names_the_field_and_exits_1(live_api: LiveApi, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("image: debian/bookworm\ntasks:\n  - Bad Name: echo\n")
    done = run_submit(live_api, str(bad), "--url", live_api.url, "--token", live_api.token)
    assert done.returncode == 1
    assert b"tasks[0]" in done.stderr
    assert b"Traceback" not in done.stderr


def test_usage_errors_exit_2_with_a_message(live_api: LiveApi, manifest_file: Path) -> None:
    no_token = run_submit(live_api, str(manifest_file), "--url", live_api.url)
    assert no_token.returncode == 2 and b"no token" in no_token.stderr
    missing = run_submit(live_api, "/nonexistent.yml", "--url", live_api.url, "--token", "x")
    assert missing.returncode == 2 and b"/nonexistent.yml" in missing.stderr


def test_an_unreachable_api_is_a_clear_error(live_api: LiveApi, manifest_file: Path) -> None:
    done = run_submit(live_api, str(manifest_file), "--url", "http://127.0.0.1:1", "--token", "x")
    assert done.returncode == 1 and b"cannot reach the API" in done.stderr
    assert b"Traceback" not in done.stderr


# --- the follower alone, against the same live API ------------------------------------------


def test_the_follower_puts_a_header_on_its_own_line_after_a_partial_line(
    live_api: LiveApi, manifest_file: Path
) -> None:
    worker = ScriptedWorker(live_api, chunks=3)
    worker.start()
    with httpx.Client(headers={"Authorization": f"token {live_api.token}"}) as client:
        job_id = client.post(f"{live_api.url}/api/jobs", json={"manifest": MANIFEST}).json()["id"]

        class Sink:
            def __init__(self) -> None:
                self.data = b""

            def write(self, data: bytes) -> int:
                self.data += data
                return len(data)

            def flush(self) -> None:
                pass

        sink = Sink()
        status = Follower(
            client,
            f"{live_api.url}/api/jobs/{job_id}",
            sink,  # type: ignore[arg-type]  # write and flush are all Follower uses
            interval_s=0.05,
        ).follow()
    worker.join(30)
    assert status == "success"
    for line in sink.data.split(b"\n"):
        if b"==>" in line:
            assert line.startswith(b"==> ") and line.endswith(b" <==")


# --- what a build writes reaches a terminal defanged -----------------------------------------

#: A task's output in three writes, splitting a window-title sequence and a colour.
HOSTILE = [
    b"start \x1b]0;pwn",
    b"ed title\x07 \x1b[3",
    b"1mred\x1b[0m \x1b[6n\x1b[2J done\n",
]


def submit_on_pty(api: LiveApi, manifest: Path, *extra: str, timeout: float = 90) -> bytes:
    """`buildworker submit --follow` with its stdout on a real pty; everything it wrote there."""
    import pty
    import select

    master, slave = pty.openpty()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDWORKER_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "buildworker.cli",
            "--config",
            str(api.config_file),
            "submit",
            str(manifest),
            "--follow",
            "--interval",
            "0.1",
            "--url",
            api.url,
            "--token",
            api.token,
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=base_env,
    )
    os.close(slave)
    received = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the pty
                    break
                if not data:
                    break
                received += data
            elif proc.poll() is not None:
                break
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else b""
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return received


@pytest.mark.slow
def test_follow_on_a_terminal_keeps_colours_and_drops_the_title_sequence(
    live_api: LiveApi, manifest_file: Path
) -> None:
    worker = ScriptedWorker(live_api, payload=HOSTILE)
    worker.start()
    seen = submit_on_pty(live_api, manifest_file)
    worker.join(30)
    assert worker.error is None, worker.error
    # The colour passes, reassembled across the two writes that split it
    assert b"\x1b[31mred\x1b[0m" in seen
    # The title sequence does not, payload included; nor the cursor query or clear screen
    assert b"\x1b]" not in seen and b"pwned title" not in seen
    assert b"\x1b[6n" not in seen and b"\x1b[2J" not in seen
    assert b"start " in seen and b" done" in seen


@pytest.mark.slow
def test_follow_with_raw_writes_the_bytes_as_they_are(
    live_api: LiveApi, manifest_file: Path
) -> None:
    worker = ScriptedWorker(live_api, payload=HOSTILE)
    worker.start()
    seen = submit_on_pty(live_api, manifest_file, "--raw")
    worker.join(30)
    assert worker.error is None, worker.error
    assert b"\x1b]0;pwned title\x07" in seen and b"\x1b[6n\x1b[2J" in seen


@pytest.mark.slow
def test_follow_into_a_pipe_writes_the_bytes_as_they_are(
    live_api: LiveApi, manifest_file: Path
) -> None:
    worker = ScriptedWorker(live_api, payload=HOSTILE)
    worker.start()
    done = run_submit(
        live_api,
        str(manifest_file),
        "--follow",
        "--interval",
        "0.1",
        "--url",
        live_api.url,
        "--token",
        live_api.token,
    )
    worker.join(30)
    assert done.returncode == 0, done.stderr.decode()
    assert b"".join(HOSTILE) in done.stdout
