"""Benchmark of the build pipeline against builds.sr.ht's method, measured in the same run.

    .venv/bin/python bench/pipeline.py [--config worker.conf] [--rounds 3] [--ticks 40]

Needs libvirt, the images of this checkout, RabbitMQ on 127.0.0.1 (a throw-away vhost is
created through rabbitmqctl) and runs the API in-process on SQLite. One guest is booted and
shared by both methods (boot time is excluded from both, as the issue asks).

1. Setup: dequeue → first task byte, minus boot.
   ours      = delivery → claim → ack (real broker, real API) + settled guest → first task
               byte: task files, ~/.buildenv and a plaintext secret in one archive on one
               command's stdin (steps/setup.py), then the first task, all channels on one
               SSH connection;
   baseline  = builds.sr.ht's method from the settled guest: a new ``ssh`` process per setup
               command (mkdir/tee/chmod per task file, tee/chmod for ~/.buildenv,
               mkdir/tee/chmod for the secret), then ``ssh -t`` for the first task. The
               baseline gets no claim (builds.sr.ht has none), so the comparison is
               conservative.
2. Log latency: a task prints a line every 100 ms. For each line, from the moment its bytes
   reach the host (our SSH channel, or the baseline's ssh pipe) until a client polling the
   log URL with ``Range: bytes=N-`` sees it.
   ours      = redactor → LogStreamer (≤ 250 ms flush) → PUT to the API → API log URL;
   baseline  = builds.sr.ht: the ssh pipe copied into a local file, served over HTTP by the
               worker (here: http.server on loopback).

Prints medians and p95s and the ratio ours / baseline. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import os
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from buildworker.api.accounts import create_token, create_user  # noqa: E402
from buildworker.api.app import create_app  # noqa: E402
from buildworker.api.crypto import generate_key  # noqa: E402
from buildworker.config import (  # noqa: E402
    ApiConfig,
    BrokerConfig,
    Config,
    DatabaseConfig,
    StoreConfig,
    load_config,
)
from buildworker.guest.hypervisor import Hypervisor  # noqa: E402
from buildworker.guest.images import ImageCatalogue  # noqa: E402
from buildworker.log import configure_logging  # noqa: E402
from buildworker.manifest import parse_manifest  # noqa: E402
from buildworker.render import render_buildenv, render_task_script  # noqa: E402
from buildworker.worker.apiclient import InternalApi  # noqa: E402
from buildworker.worker.consumer import Consumer, Delivery  # noqa: E402
from buildworker.worker.context import (  # noqa: E402
    BuildContext,
    CancelToken,
    JobSpec,
    SecretMaterial,
)
from buildworker.worker.logs import LogStreamer  # noqa: E402
from buildworker.worker.redact import NeedleSet  # noqa: E402
from buildworker.worker.report import ApiReporter  # noqa: E402
from buildworker.worker.steps import setup  # noqa: E402

TOKEN = "bench-worker-token"
MANIFEST = """\
image: debian/bookworm
environment:
  A: one
  B: 2
  C: true
  D: some words
  E: [x, y]
secrets: [bench]
tasks:
  - first: echo first-byte
  - second: echo two
  - third: echo three
  - ticker: |
      set +x
      for i in $(seq 1 {ticks}); do echo tick-$i; sleep 0.1; done
"""
SECRET_PATH = "~/.config/bench-secret"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- the API, the broker vhost ----------------------------------------------------------


class Api:
    def __init__(self, workdir: Path, amqp_url: str) -> None:
        import uvicorn

        store = workdir / "store"
        store.mkdir()
        self.config = Config(
            api=ApiConfig(
                origin="http://127.0.0.1",
                worker_token=TOKEN,
                secret_key=generate_key(),
                images=("debian/bookworm@amd64",),
            ),
            database=DatabaseConfig(url=f"sqlite:///{workdir / 'bench.db'}"),
            store=StoreConfig(path=store),
            broker=BrokerConfig(url=amqp_url),
        )
        self.app = create_app(self.config)
        with self.app.state.sessionmaker() as session:
            user = create_user(session, "bench", "bench@example.org")
            self.user_token = create_token(session, user, "*", name="bench").token
            session.commit()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_config=None, lifespan="on", access_log=False)
        )
        threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True).start()
        while not self.server.started:
            time.sleep(0.02)
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {self.user_token}"}, timeout=30
        )

    def submit(self, manifest: str) -> int:
        response = self.http.post("/api/jobs", json={"manifest": manifest, "secrets": False})
        response.raise_for_status()
        return int(response.json()["id"])

    def close(self) -> None:
        self.server.should_exit = True


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


# --- 1a. delivery → claim → ack ------------------------------------------------------------


def measure_dequeue(api: Api, amqp_url: str, jobs: int) -> list[float]:
    """Seconds from a delivery reaching the consumer to its ack being handed to pika."""
    client = InternalApi(api.url, TOKEN)
    client.register("bench", [{"image": "debian/bookworm", "arches": ["amd64"]}])
    times: queue.Queue[float] = queue.Queue()
    holder: dict[str, Consumer] = {}

    def on_delivery(delivery: Delivery) -> None:
        def slot() -> None:
            t0 = time.monotonic()
            assert delivery.message is not None
            client.claim(delivery.message.job_id, "bench", delivery.message.attempt)
            holder["c"].ack(delivery)
            times.put(time.monotonic() - t0)
            holder["c"].set_capacity(1)

        threading.Thread(target=slot, daemon=True).start()

    consumer = Consumer(amqp_url, [("debian/bookworm", "amd64")], on_delivery, capacity=1)
    holder["c"] = consumer
    consumer.start()
    consumer.connected.wait(10)
    for _ in range(jobs):
        api.submit("image: debian/bookworm\ntasks:\n  - a: echo\n")
    out = [times.get(timeout=60) for _ in range(jobs)]
    consumer.stop()
    return out


# --- 1b. setup → first task byte ------------------------------------------------------------


class NullReporter:
    def send_chunk(self, log: str, offset: int, data: bytes) -> None:
        pass

    def task_status(self, name: str, status: str) -> None:
        pass

    def upload_artifact(self, guest_path: str, source: Any, size: int) -> str:
        return ""


def ours_setup(conn: Any, image: Any, spec: JobSpec) -> float:
    logs = LogStreamer(NullReporter(), NeedleSet()).start()
    ctx = BuildContext(
        spec=spec,
        image=image,
        conn=conn,
        logs=logs,
        reporter=NullReporter(),
        cancel=CancelToken(),
        deadline=time.monotonic() + 600,
    )
    first: list[float] = []
    t0 = time.monotonic()
    setup.run(ctx)

    def on_output(data: bytes) -> None:
        if not first:
            first.append(time.monotonic())

    conn.run("./.tasks/first", pty=True, on_output=on_output, timeout=120)
    logs.close()
    return first[0] - t0


def ssh_argv(port: int, key: Path, tty: bool = False) -> list[str]:
    return [
        "ssh",
        *(["-tt"] if tty else []),
        "-q",
        "-p",
        str(port),
        "-i",
        str(key),
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "LogLevel=quiet",
        "build@127.0.0.1",
    ]


def baseline_setup(port: int, key: Path, image: Any, spec: JobSpec) -> float:
    """builds.sr.ht's SendTasks/SendEnv/SendSecrets/RunTasks shape: one ssh per command."""
    home = image.homedir
    base = ssh_argv(port, key)

    def ssh(command: str, data: bytes | None = None) -> None:
        subprocess.run([*base, command], input=data, check=True, capture_output=True)

    t0 = time.monotonic()
    for task in spec.manifest.tasks:
        path = f"{home}/.tasks/{task.name}"
        ssh(f"mkdir -p {home}/.tasks")
        ssh(f"tee {path}", render_task_script(task.script).encode())
        ssh(f"chmod 755 {path}")
    extra = {"CI_NAME": "sourcehut", "JOB_ID": str(spec.job_id), "JOB_URL": spec.job_url}
    ssh(f"tee {home}/.buildenv", render_buildenv(spec.manifest.environment, extra).encode())
    ssh(f"chmod 755 {home}/.buildenv")
    for secret in spec.secrets:
        ssh(f"mkdir -p $(dirname {secret.path})")
        ssh(f"tee {secret.path}", secret.data)
        ssh(f"chmod {secret.mode or 0o600:o} {secret.path}")
    proc = subprocess.Popen(
        [*ssh_argv(port, key, tty=True), "./.tasks/first"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    proc.stdout.read(1)
    elapsed = time.monotonic() - t0
    proc.wait(60)
    return elapsed


# --- 2. log latency --------------------------------------------------------------------------


TICK = re.compile(rb"\ntick-(\d+)\r?(?=\n)")


class Arrivals:
    """Time each ``tick-N`` line is complete in a growing byte stream."""

    def __init__(self) -> None:
        self.buf = b"\n"
        self.at: dict[int, float] = {}

    def feed(self, data: bytes) -> None:
        now = time.monotonic()
        self.buf += data
        for match in TICK.finditer(self.buf):
            self.at.setdefault(int(match.group(1)), now)


def poll_url(url: str, headers: dict[str, str], stop: threading.Event, seen: Arrivals) -> None:
    offset = 0
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            response = client.get(url, headers={**headers, "Range": f"bytes={offset}-"})
            if response.status_code in (200, 206) and response.content:
                if response.status_code == 200:
                    seen.buf, offset = b"\n", 0
                seen.feed(response.content)
                offset += len(response.content)
            time.sleep(0.01)


def latencies(sent: Arrivals, seen: Arrivals) -> list[float]:
    return [seen.at[i] - sent.at[i] for i in sent.at if i in seen.at]


def ours_log_latency(conn: Any, api: Api, ticks: int) -> list[float]:
    job_id = api.submit(MANIFEST.format(ticks=ticks).replace("secrets: [bench]\n", ""))
    client = InternalApi(api.url, TOKEN)
    client.claim(job_id, "bench", 1)
    reporter = ApiReporter(client, job_id, 1)
    logs = LogStreamer(reporter, NeedleSet(), flush_interval_s=0.25).start()
    stream = logs.open("ticker")
    sent, seen, stop = Arrivals(), Arrivals(), threading.Event()
    poller = threading.Thread(
        target=poll_url,
        args=(f"{api.url}/logs/{job_id}/ticker/log", dict(api.http.headers), stop, seen),
        daemon=True,
    )
    poller.start()

    def on_output(data: bytes) -> None:
        sent.feed(data)
        stream.write(data)

    conn.run("./.tasks/ticker", pty=True, on_output=on_output, timeout=300)
    logs.close()
    time.sleep(0.5)
    stop.set()
    poller.join()
    client.finish(job_id, 1, "success")
    return latencies(sent, seen)


def baseline_log_latency(port: int, key: Path, workdir: Path) -> list[float]:
    served = workdir / "worker-logs"
    served.mkdir(exist_ok=True)
    log_file = served / "ticker.log"
    log_file.write_bytes(b"")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ticker.log"
    sent, seen, stop = Arrivals(), Arrivals(), threading.Event()
    poller = threading.Thread(target=poll_url, args=(url, {}, stop, seen), daemon=True)
    poller.start()
    proc = subprocess.Popen(
        [*ssh_argv(port, key, tty=True), "./.tasks/ticker"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    with log_file.open("ab") as sink:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sent.feed(chunk)
            sink.write(chunk)
            sink.flush()
    proc.wait(30)
    time.sleep(0.5)
    stop.set()
    poller.join()
    server.shutdown()
    return latencies(sent, seen)


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="worker.conf ([vm], [worker] images)")
    parser.add_argument("--images", type=Path, default=REPO / "images")
    parser.add_argument("--ssh-key", type=Path, default=REPO / ".state" / "id_ed25519")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ticks", type=int, default=40)
    args = parser.parse_args()
    configure_logging(False, "warning")
    config = load_config(args.config) if args.config else Config()
    workdir = Path(tempfile.mkdtemp(prefix="bw-bench-", dir="/tmp"))
    workdir.chmod(0o755)
    vm_config = replace(config.vm, ssh_key=args.ssh_key, work_dir=workdir / "vms")
    vhost = f"bw-bench-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    amqp_url = f"amqp://guest:guest@127.0.0.1:5672/{urllib.parse.quote(vhost, safe='')}"
    api = Api(workdir, amqp_url)
    guest = None
    try:
        print(f"dequeue: {args.rounds * 2} jobs through RabbitMQ → claim → ack ...", flush=True)
        dequeue = measure_dequeue(api, amqp_url, args.rounds * 2)
        image = ImageCatalogue(args.images).resolve("debian/bookworm", None)
        hypervisor = Hypervisor(vm_config, worker_name=f"bench-{uuid.uuid4().hex[:4]}")
        print("booting one guest (excluded from every number) ...", flush=True)
        guest = hypervisor.boot(image, job_id=1, attempt=1)
        conn = guest.wait_ready(180)
        secret = SecretMaterial(
            "bench",
            "bench",
            "plaintext_file",
            base64.b64decode("c2VjcmV0LXZhbHVl"),
            SECRET_PATH,
            0o600,
        )
        spec = JobSpec(
            job_id=1,
            attempt=1,
            manifest=parse_manifest(MANIFEST.format(ticks=args.ticks)),
            secrets=(secret,),
            job_url="http://127.0.0.1/api/jobs/1",
        )
        clean = f"rm -rf {image.homedir}/.tasks {image.homedir}/.buildenv {image.homedir}/.config"
        ours_s: list[float] = []
        base_s: list[float] = []
        for round_no in range(args.rounds):
            # Alternate the order so neither method always runs on a warmer guest.
            order = ("ours", "base") if round_no % 2 == 0 else ("base", "ours")
            for which in order:
                conn.run(clean, pty=False, timeout=60)
                if which == "ours":
                    ours_s.append(ours_setup(conn, image, spec))
                else:
                    base_s.append(baseline_setup(guest.ssh_port, args.ssh_key, image, spec))
            print(f"  round {round_no + 1}: ours {ours_s[-1]:.2f}s, baseline {base_s[-1]:.2f}s")
        print("log latency: ticker task, both methods ...", flush=True)
        ours_lat = ours_log_latency(conn, api, args.ticks)
        base_lat = baseline_log_latency(guest.ssh_port, args.ssh_key, workdir)
    finally:
        if guest is not None:
            guest.destroy()
        api.close()
        rabbitmqctl("delete_vhost", vhost)
        shutil.rmtree(workdir, ignore_errors=True)

    deq = statistics.median(dequeue)
    ours_total = [deq + s for s in ours_s]
    print()
    print("1. dequeue → first task byte, minus boot (median of rounds)")
    print(
        f"   ours:     delivery→claim→ack {deq * 1000:.0f} ms (median of {len(dequeue)})"
        f" + setup→first byte {statistics.median(ours_s):.2f} s"
        f" = {statistics.median(ours_total):.2f} s"
    )
    print(f"   baseline: ssh process per command → first byte {statistics.median(base_s):.2f} s")
    print(
        f"   ratio ours/baseline: {statistics.median(ours_total) / statistics.median(base_s):.2f}"
    )
    print()
    print("2. log latency, bytes on the host → visible at the log URL")
    for label, values in (("ours", ours_lat), ("baseline", base_lat)):
        print(
            f"   {label:9s} p50 {pct(values, 0.5) * 1000:6.0f} ms   p95 "
            f"{pct(values, 0.95) * 1000:6.0f} ms   ({len(values)} lines)"
        )
    print(
        f"   ratio ours/baseline: p50 {pct(ours_lat, 0.5) / max(pct(base_lat, 0.5), 1e-6):.1f}"
        f"  p95 {pct(ours_lat, 0.95) / max(pct(base_lat, 0.95), 1e-6):.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
