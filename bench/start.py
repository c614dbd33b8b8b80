#!/usr/bin/env python3
"""Time to a first task: dequeue → first task byte, VM included, four ways (issue 11).

    .venv/bin/python bench/start.py [--methods srht,cold,restore,pool] [--jobs 10]
        [--sections latency,throughput,idle] [--throughput-jobs 16] [--throughput-slots 4]
        [--idle-seconds 10] [--warmup 1] [--images DIR] [--ssh-key FILE] [--keep]

    # a quick check on a busy machine:
    .venv/bin/python bench/start.py --methods srht,cold --jobs 2 --throughput-jobs 4

Everything is real and in this process: RabbitMQ on 127.0.0.1:5672 (guest/guest, a
throw-away vhost made with rabbitmqctl), the API on SQLite under uvicorn with its outbox
publisher, and one worker daemon per method, wired as ``buildworker worker`` wires it
(``start_worker`` below mirrors buildworker/commands/worker.py: Hypervisor, Daemon, the
metrics endpoint on ``[worker] metrics-bind``). The manifest is trivial: image
debian/bookworm, one task ``echo hi``. Jobs go one at a time (``slots = 1``); a warm-up job
per method (``--warmup``) is not counted.

Methods (worker config in ``worker_conf``):
  srht     builds.sr.ht's method, through the same broker, API and daemon: a cold boot, then
           ``ssh … echo 'hello world'`` with the OpenSSH client once a second until it
           answers, then one ``ssh`` process per guest command (``SrhtMethodHost``, a
           bench-only VmHost: our one-archive task upload is replayed as builds.sr.ht's
           mkdir/tee/chmod per task file, a file upload as tee + chmod), the first task as
           ``ssh -tt … ./.tasks/<name>``.
  cold     ``[vm] warm-start = no``, ``pool-size = 0``.
  restore  ``[vm] warm-start = yes``, ``pool-size = 0``; warm-up jobs run until one was
           restored (at most ``--warmup + 2``), so making the snapshot is never a sample.
  pool     ``[vm] warm-start = yes``, ``pool-size = 1``; before every job the bench polls
           ``buildworker_pool_ready{image,arch}`` on the worker's /metrics until the pool is
           full again, so each sample takes a pooled guest.
While the worker does not know ``warm-start``/``pool-size`` yet (config error "unknown
key"), the bench says so and falls back: cold = the defaults, restore = ``snapshot-boot =
yes`` (the older in-process snapshot, made by the first job), pool = skipped.

What is measured (all ``time.monotonic()`` in this process):
  dequeue     the worker has no structlog event for a delivery (the consumer logs none, the
              first job-bound event comes after the claim), so ``BenchDaemon`` timestamps
              ``Daemon._on_delivery``: the consumer thread's callback with the delivery, the
              moment the worker receives it from RabbitMQ. (Submit → dequeue is printed too.)
  first byte  the first byte of the first task's output on the host: the first chunk the
              worker's SSH session hands the log (``TimedSession`` wraps the sessions the
              VmHost returns, whoever calls it; the job is the slot thread's bound
              ``job_id``). builds.sr.ht's is the first byte out of its ``ssh`` pipe. Also
              printed: when that first chunk was stored by the API (adds the log flush,
              ``[worker] log-flush`` = 0.25 s).
  phases      claim (dequeue → claim answered), boot/restore (``VmHost.boot``), settle
              (→ ``wait_ready`` returned a session), setup (→ the first task's command
              starts), first byte (→ its first byte); plus the medians of every duration the
              worker itself logged for those jobs (``event.field_s``), so new events (a
              restore, a pool take) show up without changing the bench. Which path a job took
              (cold/restored, from the guest's ``restored`` and the setup log's lines that
              mention pool/snapshot/restore/cold) is counted per method.
Throughput: ``--throughput-jobs`` trivial jobs submitted at once to one worker with
``slots = --throughput-slots``, cold (warm-start no, pool 0) and warm (warm-start + pool 1),
jobs per minute from the first submit to the last job finished; failures are counted.
Idle cost: host CPU % (of one core) and RSS of a pooled guest's qemu process while it
waits, sampled from /proc for ``--idle-seconds`` (without a pool: an idle settled guest the
bench boots itself, labelled so).

Prints medians, p95s (nearest rank) and ratios against builds.sr.ht's method; nothing is
asserted. The worker's JSON log lines go to a file named at the end.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import structlog

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import TOKEN, Api, rabbitmqctl  # noqa: E402

from buildworker.config import Config, ConfigError, parse_config  # noqa: E402
from buildworker.guest.domain import domain_prefix  # noqa: E402
from buildworker.guest.errors import (  # noqa: E402
    CommandCancelled,
    CommandTimeout,
    FileTooLarge,
    GuestError,
    GuestFileError,
    SettleTimeout,
)
from buildworker.guest.hypervisor import Hypervisor  # noqa: E402
from buildworker.guest.images import ImageCatalogue  # noqa: E402
from buildworker.guest.ssh import guest_path_expr  # noqa: E402
from buildworker.log import configure_logging  # noqa: E402
from buildworker.worker.apiclient import InternalApi  # noqa: E402
from buildworker.worker.consumer import Delivery  # noqa: E402
from buildworker.worker.daemon import Daemon  # noqa: E402
from buildworker.worker.logs import SETUP_LOG  # noqa: E402

MANIFEST = "image: debian/bookworm\ntasks:\n  - hi: echo hi\n"
IMAGE = "debian/bookworm"
METHODS = ("srht", "cold", "restore", "pool")
SECTIONS = ("latency", "throughput", "idle")
TERMINAL = ("success", "failed", "timeout", "cancelled")
#: the keys being added to [vm] (issue 11); snapshot-dir may come later than the others
NEW_KEYS = ("warm-start", "pool-size")
OPTIONAL_KEYS = ("snapshot-dir",)
#: how long one job (or the pool refilling) may take before the bench gives up, in seconds
JOB_TIMEOUT_S = 900.0
POOL_TIMEOUT_S = 300.0
#: builds.sr.ht's settle: an attempt a second, 120 s in all (worker/tasks.go)
SRHT_SETTLE_INTERVAL_S = 1.0
#: a line of the setup log that says which start path a job took
PATH_LINE = re.compile(rb"[^\n]*(?:pool|snapshot|restor|cold)[^\n]*", re.IGNORECASE)
#: our task upload: one inlined .tar.gz (buildworker/worker/steps/task_files.py)
TASK_ARCHIVE = re.compile(r"printf %s ([A-Za-z0-9+/=]+) \| base64 -d \| tar -xzmf - -C (\S+)")
POOL_GAUGE = re.compile(r"^buildworker_pool_ready(\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..1 (p95 of 10 values is the largest)."""
    ordered = sorted(values)
    rank = max(1, -(-int(q * 1000) * len(ordered) // 1000))
    return ordered[rank - 1]


def default_images() -> Path:
    """This checkout's images/, or the checkout its debian/bookworm links to (a worktree's
    images are symlinks; the catalogue refuses images that resolve outside its root)."""
    if os.environ.get("BUILDWORKER_TEST_IMAGES"):
        return Path(os.environ["BUILDWORKER_TEST_IMAGES"])
    image = REPO / "images" / IMAGE
    return image.resolve().parents[1] if image.is_symlink() else REPO / "images"


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


# --- what is recorded per job ----------------------------------------------------------------


class Timeline:
    """Monotonic instants per job id (the first mark of a name wins) and the worker's events."""

    def __init__(self, events_path: Path) -> None:
        self._lock = threading.Lock()
        self.marks: dict[int, dict[str, float]] = {}
        self.paths: dict[int, list[str]] = {}
        self.events: dict[int, list[tuple[float, dict[str, Any]]]] = {}
        self._out = events_path.open("w")

    def mark(self, job_id: int | None, name: str, at: float | None = None) -> None:
        if job_id is None:
            return
        with self._lock:
            self.marks.setdefault(job_id, {}).setdefault(name, at or time.monotonic())

    def note_path(self, job_id: int | None, path: str) -> None:
        if job_id is not None:
            with self._lock:
                self.paths.setdefault(job_id, []).append(path)

    def get(self, job_id: int) -> dict[str, float]:
        with self._lock:
            return dict(self.marks.get(job_id, {}))

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor (passed as configure_logging's ``masker``): keeps every
        event with the instant it was logged and writes it as a JSON line."""
        now = time.monotonic()
        record = {k: v for k, v in event_dict.items() if isinstance(v, (str, int, float, bool))}
        job = event_dict.get("job_id")
        with self._lock:
            if isinstance(job, int):
                self.events.setdefault(job, []).append((now, record))
            self._out.write(json.dumps({"mono": round(now, 4), **record}) + "\n")
            self._out.flush()
        return event_dict

    def close(self) -> None:
        with self._lock:
            self._out.close()


def current_job(default: int | None = None) -> int | None:
    """The job the calling thread works for (the daemon binds it in each slot thread)."""
    job = structlog.contextvars.get_contextvars().get("job_id")
    return job if isinstance(job, int) else default


# --- bench-only wrappers of the worker's seams ------------------------------------------------


class TimedSession:
    """Wraps a guest session: marks the first task's start and its first byte of output."""

    def __init__(self, inner: Any, timeline: Timeline, job_id: int | None) -> None:
        self._inner = inner
        self._timeline = timeline
        self._job_id = job_id

    def run(self, command: str, **kwargs: Any) -> int:
        job = current_job(self._job_id)
        if "./.tasks/" in command and "tar -x" not in command:
            marks = self._timeline.get(job) if job is not None else {}
            if "task_started" not in marks:
                self._timeline.mark(job, "task_started")
                sink: Callable[[bytes], None] | None = kwargs.get("on_output")

                def first(data: bytes) -> None:
                    if data:
                        self._timeline.mark(job, "first_byte")
                    if sink is not None:
                        sink(data)

                kwargs["on_output"] = first
        result: int = self._inner.run(command, **kwargs)
        return result

    def upload(self, path: str, data: bytes, mode: int = 0o644, **kwargs: Any) -> None:
        self._inner.upload(path, data, mode, **kwargs)

    def download(self, path: str, sink: BinaryIO, max_size: int) -> int:
        written: int = self._inner.download(path, sink, max_size)
        return written

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TimedGuest:
    """Wraps a booted guest: marks when it answered, and whether it was restored."""

    def __init__(self, inner: Any, timeline: Timeline, job_id: int) -> None:
        self._inner = inner
        self._timeline = timeline
        self._job_id = job_id

    @property
    def domain_name(self) -> str:
        name: str = self._inner.domain_name
        return name

    def wait_ready(self, timeout: float, cancel: threading.Event | None = None) -> TimedSession:
        session = self._inner.wait_ready(timeout, cancel=cancel)
        job = current_job(self._job_id)
        self._timeline.mark(job, "ready")
        restored = getattr(self._inner, "restored", None)
        if restored is not None:
            self._timeline.note_path(job, "restored" if restored else "cold boot")
        return TimedSession(session, self._timeline, job)

    def destroy(self) -> None:
        self._inner.destroy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TimedHost:
    """Wraps the worker's VmHost: marks the boot call and its return. Anything else the
    worker asks of its host (a pool, snapshots) goes to the wrapped one untouched."""

    def __init__(self, inner: Any, timeline: Timeline) -> None:
        self._inner = inner
        self._timeline = timeline

    def boot(self, image: Any, *, job_id: int, attempt: int) -> TimedGuest:
        job = current_job(job_id)
        self._timeline.mark(job, "boot_called")
        guest = self._inner.boot(image, job_id=job_id, attempt=attempt)
        self._timeline.mark(job, "boot_returned")
        return TimedGuest(guest, self._timeline, job_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def ssh_argv(port: int, key: Path, user: str, *, tty: bool = False) -> list[str]:
    """builds.sr.ht's ssh invocation (no host key check, a new process each time)."""
    return [
        "ssh", *(["-tt"] if tty else []), "-q", "-p", str(port), "-i", str(key),
        "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
        "-o", "LogLevel=quiet", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
        f"{user}@127.0.0.1",
    ]  # fmt: skip


class SrhtSession:
    """A guest session the way builds.sr.ht's worker talks to guests: one ``ssh`` process
    per command (``tee`` for a file), nothing kept open."""

    def __init__(self, port: int, key: Path, user: str) -> None:
        self._port, self._key, self._user = port, key, user

    def _ssh(self, command: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*ssh_argv(self._port, self._key, self._user), command],
            input=data if data is not None else b"",
            capture_output=True,
            timeout=300,
            check=False,
        )

    def _ssh_ok(self, command: str, data: bytes | None = None) -> None:
        result = self._ssh(command, data)
        if result.returncode != 0:
            raise GuestFileError(
                f"ssh {command!r}: exit {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()}"
            )

    def run(
        self,
        command: str,
        *,
        pty: bool = True,
        on_output: Callable[[bytes], None] | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        archive = TASK_ARCHIVE.search(command)
        if archive is not None:
            return self._send_tasks(base64.b64decode(archive.group(1)), archive.group(2))
        proc = subprocess.Popen(
            [*ssh_argv(self._port, self._key, self._user, tty=pty), command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        stopped: list[str] = []
        deadline = None if timeout is None else time.monotonic() + timeout

        def watch() -> None:
            while proc.poll() is None:
                if cancel is not None and cancel.is_set():
                    stopped.append("cancel")
                elif deadline is not None and time.monotonic() > deadline:
                    stopped.append("timeout")
                if stopped:
                    proc.kill()
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        while chunk := os.read(proc.stdout.fileno(), 65536):
            if on_output is not None:
                on_output(chunk)
        status = proc.wait()
        watcher.join()
        proc.stdout.close()
        if stopped and stopped[0] == "cancel":
            raise CommandCancelled(f"ssh {command!r}: cancelled")
        if stopped:
            raise CommandTimeout(f"ssh {command!r}: timed out")
        if status == 255:
            raise GuestError(f"ssh {command!r}: the connection failed")
        return status

    def _send_tasks(self, archive: bytes, root: str) -> int:
        """builds.sr.ht's SendTasks: per task file ``mkdir -p``, ``tee``, ``chmod``."""
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                source = tar.extractfile(member)
                assert source is not None
                path = f"{root}/{member.name}"
                self._ssh_ok(f"mkdir -p {root}/{os.path.dirname(member.name)}")
                self._ssh_ok(f"tee {path} >/dev/null", source.read())
                self._ssh_ok(f"chmod {member.mode & 0o7777:o} {path}")
        return 0

    def upload(self, path: str, data: bytes, mode: int = 0o644, *, sudo: bool = False) -> None:
        """builds.sr.ht's SendEnv/SendSecrets: (``mkdir -p`` for a subdirectory), ``tee``,
        ``chmod``, each its own ssh process."""
        target = guest_path_expr(path)
        sudo_ = "sudo " if sudo else ""
        parent = os.path.dirname(path)
        if parent not in ("", "~", "."):
            self._ssh_ok(f'{sudo_}mkdir -p "$(dirname {target})"')
        self._ssh_ok(f"{sudo_}tee {target} >/dev/null", data)
        self._ssh_ok(f"{sudo_}chmod {mode & 0o7777:o} {target}")

    def download(self, path: str, sink: BinaryIO, max_size: int) -> int:
        result = self._ssh(f"cat -- {guest_path_expr(path)}")
        if result.returncode != 0:
            raise GuestFileError(f"{path}: cannot read (exit {result.returncode})")
        if len(result.stdout) > max_size:
            raise FileTooLarge(f"{path}: over {max_size} bytes")
        sink.write(result.stdout)
        return len(result.stdout)

    def close(self) -> None:
        pass


class SrhtGuest:
    """A cold-booted guest settled builds.sr.ht's way (worker/tasks.go, spec §2.2 step 7)."""

    def __init__(self, inner: Any, key: Path) -> None:
        self._inner = inner
        self._key = key

    @property
    def domain_name(self) -> str:
        name: str = self._inner.domain_name
        return name

    def wait_ready(self, timeout: float, cancel: threading.Event | None = None) -> SrhtSession:
        """``ssh … echo 'hello world'`` once a second until it prints ``hello world``."""
        user = self._inner.image.login_user
        argv = [*ssh_argv(self._inner.ssh_port, self._key, user), "echo 'hello world'"]
        deadline = time.monotonic() + timeout
        attempts = 0
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise CommandCancelled(f"{self.domain_name}: stopped while settling")
            attempts += 1
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                continue
            if result.returncode == 0 and result.stdout == b"hello world\n":
                return SrhtSession(self._inner.ssh_port, self._key, user)
            time.sleep(SRHT_SETTLE_INTERVAL_S)
        raise SettleTimeout(f"Settle timed out after {attempts} attempts")

    def destroy(self) -> None:
        self._inner.destroy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class SrhtMethodHost:
    """builds.sr.ht's method as a VmHost: our cold boot (same image, same QEMU flags), their
    settle and their one-ssh-process-per-command session."""

    def __init__(self, inner: Any, key: Path) -> None:
        self._inner = inner
        self._key = key

    def boot(self, image: Any, *, job_id: int, attempt: int) -> SrhtGuest:
        return SrhtGuest(self._inner.boot(image, job_id=job_id, attempt=attempt), self._key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class BenchApi(InternalApi):
    """The worker's internal API client, marking the claim's answer and the moment the first
    chunk of a task log (not the setup log) was stored by the API."""

    timeline: Timeline | None = None

    def claim(self, job_id: int, worker: str, attempt: int) -> Any:
        answer = super().claim(job_id, worker, attempt)
        if self.timeline is not None:
            self.timeline.mark(job_id, "claimed")
        return answer

    def append_log(self, job_id: int, attempt: int, log: str, offset: int, data: bytes) -> int:
        stored = super().append_log(job_id, attempt, log, offset, data)
        if self.timeline is not None and log != SETUP_LOG and data:
            self.timeline.mark(job_id, "first_byte_api")
        return stored


class BenchDaemon(Daemon):
    """The daemon, timestamping each delivery as the consumer hands it over (dequeue)."""

    timeline: Timeline | None = None

    def _on_delivery(self, delivery: Delivery) -> None:
        if self.timeline is not None and delivery.message is not None:
            self.timeline.mark(delivery.message.job_id, "dequeued")
        super()._on_delivery(delivery)


# --- the stack ----------------------------------------------------------------------------


@dataclass
class Env:
    """What every worker of this run shares."""

    api: Api
    amqp_url: str
    workdir: Path
    images: Path
    ssh_key: Path
    timeline: Timeline
    run_id: str
    #: None until the first worker config is parsed; then whether [vm] has the new keys
    new_keys: bool | None = None
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Worker:
    name: str
    daemon: BenchDaemon
    hypervisor: Hypervisor
    metrics_url: str
    server: Any
    thread: threading.Thread
    config: Config


def worker_conf(env: Env, name: str, *, slots: int, warm: bool, pool: int) -> Config:
    """The worker's config for one method, as a worker.conf would say it. Falls back to
    ``snapshot-boot`` while [vm] has no ``warm-start``/``pool-size`` (the caller learns it
    from ``env.new_keys``)."""
    metrics = f"127.0.0.1:{free_port()}"
    head = [
        "[worker]",
        f"name = {name}",
        f"api-url = {env.api.url}",
        f"token = {TOKEN}",
        f"images = {env.images}",
        f"slots = {slots}",
        f"metrics-bind = {metrics}",
        "standby = 0",
        "[broker]",
        f"url = {env.amqp_url}",
        "[vm]",
        f"ssh-key = {env.ssh_key}",
        f"work-dir = {env.workdir / 'vms'}",
    ]
    new = {
        "warm-start": "yes" if warm else "no",
        "pool-size": str(pool),
        "snapshot-dir": str(env.workdir / "snapshots"),
    }
    for key in env.dropped:
        new.pop(key, None)
    if env.new_keys is not False:
        while True:
            text = "\n".join(head + [f"{k} = {v}" for k, v in new.items()]) + "\n"
            try:
                config = parse_config(text)
            except ConfigError as exc:
                unknown = re.search(r"vm\.([\w-]+): unknown key", str(exc))
                if unknown is None:
                    raise
                key = unknown.group(1)
                if key in OPTIONAL_KEYS:
                    new.pop(key)
                    env.dropped.append(key)
                    env.notes.append(f"[vm] {key} is unknown to this worker: left at its default")
                    continue
                env.new_keys = False
                env.notes.append(
                    f"[vm] {key} is unknown to this worker ({exc}): the warm-start/pool keys "
                    "are not merged yet, so cold = defaults, restore = snapshot-boot = yes "
                    "(older in-process snapshot), pool = skipped"
                )
                break
            else:
                env.new_keys = True
                return config
    text = "\n".join([*head, f"snapshot-boot = {'yes' if warm else 'no'}"]) + "\n"
    return parse_config(text)


def start_worker(env: Env, config: Config, *, srht: bool = False) -> Worker:
    """The daemon as `buildworker worker` starts it (buildworker/commands/worker.py), with
    the bench's timing wrappers around its VmHost and API client."""
    hypervisor = Hypervisor(config.vm, worker_name=config.worker.name)
    hypervisor.reap_leftovers()
    host: Any = SrhtMethodHost(hypervisor, config.vm.ssh_key) if srht else hypervisor
    api = BenchApi(config.worker.api_url, config.worker.token)
    api.timeline = env.timeline
    daemon = BenchDaemon(
        config, ImageCatalogue(config.worker.images), TimedHost(host, env.timeline), api
    )
    daemon.timeline = env.timeline
    daemon.start()
    server = daemon.metrics.serve(config.worker.metrics_bind)
    thread = threading.Thread(target=daemon.run_until_stopped, name="bench-daemon", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not daemon.broker_connected():
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not connect to RabbitMQ within 30 s")
        time.sleep(0.05)
    return Worker(
        config.worker.name,
        daemon,
        hypervisor,
        f"http://{config.worker.metrics_bind}/metrics",
        server,
        thread,
        config,
    )


def stop_worker(worker: Worker) -> None:
    worker.daemon.stop_now()
    worker.thread.join(180)
    worker.server.close()
    worker.hypervisor.close()


def wait_job(env: Env, job_id: int, timeout: float = JOB_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(env.api.http.get(f"/api/jobs/{job_id}").json()["status"])
        if status in TERMINAL:
            return status
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} did not finish within {timeout:.0f} s")


def setup_path_lines(env: Env, job_id: int) -> list[str]:
    """The setup log's lines about the start path (pool, snapshot, restore, cold)."""
    response = env.api.http.get(f"/logs/{job_id}/log")
    if response.status_code not in (200, 206):
        return []
    lines = []
    for match in PATH_LINE.finditer(response.content):
        text = match.group(0).decode(errors="replace").strip()
        lines.append(re.sub(r"^\[#\d+\] \S+ \S+ ", "", text))
    return lines


def pool_ready(metrics_url: str) -> float | None:
    """``buildworker_pool_ready`` for debian/bookworm (None: no such gauge)."""
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return None
    values = [(labels or "", float(value)) for labels, value in POOL_GAUGE.findall(text)]
    ours = [v for labels, v in values if IMAGE in labels] or [v for _, v in values]
    return max(ours) if ours else None


def wait_pool_full(worker: Worker, size: int) -> None:
    deadline = time.monotonic() + POOL_TIMEOUT_S
    seen: float | None = None
    while time.monotonic() < deadline:
        seen = pool_ready(worker.metrics_url)
        if seen is not None and seen >= size:
            return
        time.sleep(0.25)
    raise RuntimeError(
        f"the pool did not fill within {POOL_TIMEOUT_S:.0f} s (buildworker_pool_ready = {seen}"
        f" on {worker.metrics_url}; None: the gauge is not exported: is the pool wired into the "
        "daemon the way start_worker builds it?)"
    )


# --- 1. latency -----------------------------------------------------------------------------


@dataclass
class Sample:
    job_id: int
    status: str
    submitted: float
    marks: dict[str, float]
    paths: list[str]

    def span(self, start: str, end: str) -> float | None:
        if start == "submitted":
            t0: float | None = self.submitted
        else:
            t0 = self.marks.get(start)
        t1 = self.marks.get(end)
        return None if t0 is None or t1 is None else t1 - t0


PHASES = (
    ("claim", "dequeued", "claimed"),
    ("boot/restore", "boot_called", "boot_returned"),
    ("settle", "boot_returned", "ready"),
    ("setup", "ready", "task_started"),
    ("first byte", "task_started", "first_byte"),
)


def run_one(env: Env, worker: Worker, pool: int) -> Sample:
    if pool:
        wait_pool_full(worker, pool)
    submitted = time.monotonic()
    job_id = env.api.submit(MANIFEST)
    status = wait_job(env, job_id)
    marks = env.timeline.get(job_id)
    paths = list(env.timeline.paths.get(job_id, [])) + setup_path_lines(env, job_id)
    return Sample(job_id, status, submitted, marks, paths)


def measure_method(env: Env, method: str, jobs: int, warmup: int) -> list[Sample] | None:
    pool = 1 if method == "pool" else 0
    config = worker_conf(
        env, f"bench{env.run_id}{method}", slots=1, warm=method in ("restore", "pool"), pool=pool
    )
    if not env.new_keys and method == "pool":
        print("  pool: skipped (the worker has no [vm] pool-size yet)", flush=True)
        return None
    worker = start_worker(env, config, srht=method == "srht")
    try:
        # A restore's first job may still make the snapshot: warm up until one restored.
        tries = warmup + (2 if method == "restore" and warmup else 0)
        for done in range(1, tries + 1):
            sample = run_one(env, worker, pool)
            print(
                f"  {method} warm-up job {sample.job_id}: {sample.status}, "
                f"{_fmt(sample.span('dequeued', 'first_byte'))} "
                f"({', '.join(sample.paths) or 'no path noted'})",
                flush=True,
            )
            if done >= warmup and (method != "restore" or "restored" in sample.paths):
                break
        samples = []
        for n in range(jobs):
            sample = run_one(env, worker, pool)
            samples.append(sample)
            print(
                f"  {method} {n + 1}/{jobs} job {sample.job_id}: {sample.status}, dequeue → "
                f"first byte {_fmt(sample.span('dequeued', 'first_byte'))}"
                f" ({', '.join(sample.paths) or 'no path noted'})",
                flush=True,
            )
        return samples
    finally:
        stop_worker(worker)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _stats(values: Iterable[float | None]) -> tuple[float, float, int] | None:
    got = [v for v in values if v is not None]
    if not got:
        return None
    return statistics.median(got), pct(got, 0.95), len(got)


def report_latency(results: dict[str, list[Sample]], env: Env) -> None:
    print()
    print("1. dequeue → first task byte, VM included (one job at a time, warm-up excluded)")
    header = f"   {'method':8s} {'n':>3s} {'ok':>3s} {'p50':>8s} {'p95':>8s}   srht/this p50  p95"
    print(header)
    base = _stats(s.span("dequeued", "first_byte") for s in results.get("srht", []))
    goals = {"restore": "goal p50 ≤ 2.0 s", "pool": "goal p50 ≤ 0.5 s and ≥ 40x srht"}
    for method, samples in results.items():
        st = _stats(s.span("dequeued", "first_byte") for s in samples)
        ok = sum(1 for s in samples if s.status == "success")
        if st is None:
            print(f"   {method:8s} {len(samples):3d} {ok:3d}   no first byte seen")
            continue
        ratio = ""
        if base is not None:
            ratio = f"   {base[0] / st[0]:9.1f}x  {base[1] / st[1]:5.1f}x"
        print(
            f"   {method:8s} {len(samples):3d} {ok:3d} {st[0]:7.2f}s {st[1]:7.2f}s{ratio}"
            f"   {goals.get(method, '')}"
        )
    print()
    print("   the same, to the first task chunk stored by the API (adds [worker] log-flush):")
    for method, samples in results.items():
        st = _stats(s.span("dequeued", "first_byte_api") for s in samples)
        if st is not None:
            print(f"   {method:8s} p50 {st[0]:6.2f}s  p95 {st[1]:6.2f}s")
    print()
    print("   phases, median (p95) in seconds; '-': the worker did not go through that seam")
    names = [name for name, _, _ in PHASES]
    print("   " + f"{'method':8s}" + "".join(f"{n:>16s}" for n in names) + f"{'sum':>9s}")
    for method, samples in results.items():
        cells = []
        total = 0.0
        for _, start, end in PHASES:
            st = _stats(s.span(start, end) for s in samples)
            if st is None:
                cells.append(f"{'-':>16s}")
            else:
                total += st[0]
                cells.append(f"{st[0]:8.2f} ({st[1]:5.2f})")
        print(f"   {method:8s}" + "".join(cells) + f"{total:9.2f}")
    sub = [(m, _stats(s.span("submitted", "dequeued") for s in v)) for m, v in results.items()]
    print(
        "   submit → dequeue (API outbox → RabbitMQ → consumer, not in the numbers above): "
        + ", ".join(f"{m} {st[0] * 1000:.0f} ms" for m, st in sub if st is not None)
    )
    print()
    print("   durations the worker logged for these jobs (median, event.field):")
    for method, samples in results.items():
        logged: dict[str, list[float]] = {}
        for s in samples:
            for _, event in env.timeline.events.get(s.job_id, []):
                for key, value in event.items():
                    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                    if numeric and (key.endswith("_s") or key == "seconds"):
                        logged.setdefault(f"{event.get('event')}.{key}", []).append(value)
        text = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in sorted(logged.items()))
        print(f"   {method:8s} {text or '-'}")
    print()
    print("   start path per method (guest.restored, setup-log lines):")
    for method, samples in results.items():
        counts: dict[str, int] = {}
        for s in samples:
            key = " | ".join(dict.fromkeys(s.paths)) or "no path noted"
            counts[key] = counts.get(key, 0) + 1
        for key, count in counts.items():
            print(f"   {method:8s} {count:3d} x {key}")


# --- 2. throughput --------------------------------------------------------------------------


def measure_throughput(env: Env, label: str, jobs: int, slots: int) -> tuple[float, int, int]:
    """(jobs per minute, succeeded, failed) of ``jobs`` trivial jobs submitted at once."""
    warm = label == "warm"
    pool = 1 if warm and env.new_keys else 0
    config = worker_conf(env, f"bench{env.run_id}tp{label}", slots=slots, warm=warm, pool=pool)
    worker = start_worker(env, config)
    try:
        if warm:  # the snapshot is made before the clock starts
            warm_up = run_one(env, worker, pool)
            print(f"  throughput {label}: warm-up job {warm_up.job_id} {warm_up.status}")
        if pool:
            wait_pool_full(worker, pool)
        t0 = time.monotonic()
        ids = [env.api.submit(MANIFEST) for _ in range(jobs)]
        statuses = [wait_job(env, job_id) for job_id in ids]
        elapsed = time.monotonic() - t0
    finally:
        stop_worker(worker)
    ok = statuses.count("success")
    print(f"  throughput {label}: {jobs} jobs in {elapsed:.1f}s, {ok} succeeded", flush=True)
    return jobs * 60.0 / elapsed, ok, jobs - ok


# --- 3. idle cost of a pooled guest ---------------------------------------------------------


def qemu_pids(worker_name: str) -> dict[str, int]:
    """Running qemu processes of this worker's domains (libvirt's pid files)."""
    pids = {}
    for pidfile in Path("/run/libvirt/qemu").glob(f"{domain_prefix(worker_name)}*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{pid}").exists():
            pids[pidfile.stem] = pid
    return pids


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def sample_idle(pid: int, seconds: float) -> tuple[float, int]:
    """(CPU % of one core, median RSS bytes) of ``pid`` over ``seconds``."""
    hz = os.sysconf("SC_CLK_TCK")
    rss = [_rss(pid)]
    t0, c0 = time.monotonic(), _cpu_ticks(pid)
    while time.monotonic() - t0 < seconds:
        time.sleep(0.5)
        rss.append(_rss(pid))
    wall, ticks = time.monotonic() - t0, _cpu_ticks(pid) - c0
    return 100.0 * ticks / hz / wall, int(statistics.median(rss))


def measure_idle(env: Env, seconds: float) -> tuple[str, float, int] | None:
    if env.new_keys:
        config = worker_conf(env, f"bench{env.run_id}idle", slots=1, warm=True, pool=1)
        worker = start_worker(env, config)
        try:
            wait_pool_full(worker, 1)
            time.sleep(2.0)  # the refill's own work is over
            pids = qemu_pids(worker.name)
            if not pids:
                print("  idle: the pool is full but no qemu process of this worker was found")
                return None
            name, pid = next(iter(pids.items()))
            cpu, rss = sample_idle(pid, seconds)
            return f"pooled guest {name}", cpu, rss
        finally:
            stop_worker(worker)
    # No pool yet: an idle settled guest with its SSH connection open, booted here.
    config = worker_conf(env, f"bench{env.run_id}idle", slots=1, warm=False, pool=0)
    hypervisor = Hypervisor(config.vm, worker_name=config.worker.name)
    guest = None
    try:
        image = ImageCatalogue(env.images).resolve(IMAGE, None)
        guest = hypervisor.boot(image, job_id=1, attempt=1)
        guest.wait_ready(180)
        time.sleep(5.0)  # the guest's own boot tail (timers, journald) settles
        pids = qemu_pids(config.worker.name)
        found = pids.get(guest.domain_name)
        if found is None:
            return None
        cpu, rss = sample_idle(found, seconds)
        return "no pool: an idle settled guest (SSH open) booted by the bench", cpu, rss
    finally:
        if guest is not None:
            guest.destroy()
        hypervisor.close()


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="srht,cold,restore,pool")
    parser.add_argument("--jobs", type=int, default=10, help="measured jobs per method")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted jobs per method")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="latency,throughput,idle")
    parser.add_argument("--throughput-jobs", type=int, default=16)
    parser.add_argument("--throughput-slots", type=int, default=4)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--images", type=Path, default=default_images())
    parser.add_argument("--ssh-key", type=Path, default=REPO / ".state" / "id_ed25519")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown method or section: {', '.join(unknown)}")

    run_id = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="bw-start-", dir="/tmp"))
    workdir.chmod(0o755)
    events_path = Path(tempfile.gettempdir()) / f"bw-start-{run_id}-events.jsonl"
    timeline = Timeline(events_path)
    configure_logging(True, "info", masker=timeline, stream=open(os.devnull, "w"))  # noqa: SIM115
    vhost = f"bw-start-{run_id}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    amqp_url = f"amqp://guest:guest@127.0.0.1:5672/{urllib.parse.quote(vhost, safe='')}"
    api = Api(workdir, amqp_url)
    env = Env(api, amqp_url, workdir, args.images, args.ssh_key, timeline, run_id)
    results: dict[str, list[Sample]] = {}
    throughput: dict[str, tuple[float, int, int]] = {}
    idle: tuple[str, float, int] | None = None
    try:
        worker_conf(env, f"bench{run_id}probe", slots=1, warm=True, pool=1)  # sets new_keys
        if "latency" in sections:
            for method in methods:
                print(f"latency: {method}, {args.jobs} jobs (+ warm-up) ...", flush=True)
                samples = measure_method(env, method, args.jobs, args.warmup)
                if samples is not None:
                    results[method] = samples
        if "throughput" in sections:
            for label in ("cold", "warm"):
                print(
                    f"throughput: {label}, {args.throughput_jobs} jobs, "
                    f"slots = {args.throughput_slots} ...",
                    flush=True,
                )
                throughput[label] = measure_throughput(
                    env, label, args.throughput_jobs, args.throughput_slots
                )
        if "idle" in sections:
            print(f"idle: sampling a waiting guest for {args.idle_seconds:.0f}s ...", flush=True)
            idle = measure_idle(env, args.idle_seconds)
    finally:
        api.close()
        rabbitmqctl("delete_vhost", vhost)
        timeline.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    for note in dict.fromkeys(env.notes):
        print(f"note: {note}")
    if results:
        report_latency(results, env)
    if throughput:
        print()
        print(
            f"2. throughput: {args.throughput_jobs} trivial jobs, slots = {args.throughput_slots}"
        )
        for label, (per_min, ok, failed) in throughput.items():
            what = "warm-start + pool 1" if env.new_keys else "snapshot-boot = yes, no pool"
            kind = "warm-start no, pool 0" if label == "cold" else what
            print(f"   {label:5s} ({kind}): {per_min:5.1f} jobs/min, {ok} ok, {failed} failed")
        if "cold" in throughput and "warm" in throughput:
            print(f"   ratio warm/cold: {throughput['warm'][0] / throughput['cold'][0]:.2f}")
    if idle is not None:
        label, cpu, rss = idle
        print()
        print(f"3. idle cost ({label}), {args.idle_seconds:.0f}s from /proc:")
        print(f"   qemu CPU {cpu:.1f} % of one core, RSS {rss / 2**20:.0f} MiB")
    print()
    print(f"worker events (JSON lines): {events_path}")
    if args.keep:
        print(f"work directory kept: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
