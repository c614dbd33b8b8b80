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
           bench-only VmHost). Our setup is one command with a tar on its stdin
           (worker/steps/setup.py); the bench's session decodes that archive and replays it
           as builds.sr.ht's commands: per task file ``mkdir -p``, ``tee``, ``chmod``;
           ``tee`` + ``chmod`` for ~/.buildenv; per secret ``tee`` + ``chmod`` of the staged
           file, then each of the bundle's install lines for it (one ssh each). A command
           with stdin it cannot replay fails the run (never one command silently). The
           first task runs as ``ssh -tt … ./.tasks/<name>``.
  cold     ``[vm] warm-start = no``, ``pool-size = 0``.
  restore  ``[vm] warm-start = yes``, ``pool-size = 0``; the snapshot is made ahead
           (``Hypervisor.ensure_snapshot``), and warm-up jobs (at least one) run until one
           was restored (at most ``--warmup + 2``): the first job is never a sample.
  pool     ``[vm] warm-start = yes``, ``pool-size = 1`` (the pool as buildworker/commands/
           worker.py wires it: ``vm_host_for``, ``pool.start()`` after the daemon);
           before every job the bench polls ``buildworker_pool_ready{image,arch}`` on the
           worker's /metrics until the pool is full again (a take refills ~2 s later plus
           the restore), so each sample takes a pooled guest.
Snapshots: a private ``[vm] snapshot-dir`` per bench run, /var/lib/buildworker/
bench-start-<run>/snapshots (mode 0755, reachable by libvirt-qemu; the VMs' work-dir is
beside it), removed at the end unless ``--keep``: the snapshot is made by this run, for
this build of QEMU and the images, before any sample, and no other process's snapshot is
measured or disturbed.

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
              (the guest's ``start_path``: cold, snapshot or pool) is counted per method,
              checked against the setup log's "Guest settled in Xs (…)" line, with an
              example of its "Warm start: …" line.
Throughput: ``--throughput-jobs`` trivial jobs submitted at once to one worker with
``slots = --throughput-slots``, cold (warm-start no, pool 0) and warm (warm-start + pool 1),
jobs per minute from the first submit to the last job finished; failures are counted.
Idle cost: host CPU % (of one core) and RSS of a pooled guest's qemu process while it
waits (niceness 15), sampled from /proc for ``--idle-seconds``.

Prints medians, p95s (nearest rank) and ratios against builds.sr.ht's method; nothing is
asserted. The worker's JSON log lines go to a file named at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
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

from buildworker.config import Config, parse_config  # noqa: E402
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
from buildworker.guest.pool import WarmPool, vm_host_for  # noqa: E402
from buildworker.guest.ssh import guest_path_expr  # noqa: E402
from buildworker.log import configure_logging  # noqa: E402
from buildworker.worker.apiclient import InternalApi  # noqa: E402
from buildworker.worker.consumer import Delivery  # noqa: E402
from buildworker.worker.daemon import Daemon  # noqa: E402
from buildworker.worker.logs import SETUP_LOG  # noqa: E402
from buildworker.worker.metrics import WorkerMetrics  # noqa: E402
from buildworker.worker.steps.setup_bundle import MARK, STAGING  # noqa: E402

MANIFEST = "image: debian/bookworm\ntasks:\n  - hi: echo hi\n"
IMAGE = "debian/bookworm"
METHODS = ("srht", "cold", "restore", "pool")
SECTIONS = ("latency", "throughput", "idle")
TERMINAL = ("success", "failed", "timeout", "cancelled")
#: where the run's snapshots and VM directories go (reachable by libvirt-qemu)
STATE_ROOT = Path("/var/lib/buildworker")
#: how long one job (or the pool refilling) may take before the bench gives up, in seconds
JOB_TIMEOUT_S = 900.0
POOL_TIMEOUT_S = 300.0
#: builds.sr.ht's settle: an attempt a second, 120 s in all (worker/tasks.go)
SRHT_SETTLE_INTERVAL_S = 1.0
#: the setup log's lines about the start path (worker/runner.py: _boot)
PATH_LINE = re.compile(rb"(?:Warm start: |Guest settled in )[^\n]*")
SETTLED_WORDS = re.compile(r"Guest settled in [0-9.]+s \((.*)\)")
#: runner.py's _PATH_WORDS, the other way round
PATH_OF_WORDS = {"cold boot": "cold", "restored from snapshot": "snapshot", "warm pool": "pool"}
#: the lines of the setup script (worker/steps/setup_bundle.py: build_bundle) the srht
#: method's session knows how to replay
SETUP_TAR = re.compile(r"tar -xmf - -C (.+) \|\| exit \$\?")
SETUP_MARK = re.compile(r"printf '\\036buildworker-setup %s\\n' (\d+)")
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
        #: the guest's start_path per job ("cold", "snapshot", "pool")
        self.start_paths: dict[int, str] = {}
        #: ssh processes the srht method's setup replay started, per job
        self.setup_ssh: dict[int, int] = {}
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
                self.start_paths.setdefault(job_id, path)

    def count_ssh(self, job_id: int | None, n: int = 1) -> None:
        if job_id is not None:
            with self._lock:
                self.setup_ssh[job_id] = self.setup_ssh.get(job_id, 0) + n

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
        if command.startswith("./.tasks/"):  # worker/steps/run_tasks.py
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
    """Wraps a booted guest (``Guest``, ``PooledGuest``, ``SrhtGuest``): marks when it
    answered (a pooled guest's ``wait_ready`` hands over its open connection at once) and
    notes its ``start_path``."""

    def __init__(self, inner: Any, timeline: Timeline, job_id: int) -> None:
        self._inner = inner
        self._timeline = timeline
        self._job_id = job_id

    @property
    def domain_name(self) -> str:
        name: str = self._inner.domain_name
        return name

    @property
    def start_path(self) -> str:
        path: str = self._inner.start_path
        return path

    @property
    def start_note(self) -> str:
        note: str = self._inner.start_note
        return note

    def wait_ready(self, timeout: float, cancel: threading.Event | None = None) -> TimedSession:
        session = self._inner.wait_ready(timeout, cancel=cancel)
        job = current_job(self._job_id)
        self._timeline.mark(job, "ready")
        self._timeline.note_path(job, self.start_path)
        return TimedSession(session, self._timeline, job)

    def destroy(self) -> None:
        self._inner.destroy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TimedHost:
    """Wraps the worker's VmHost (the WarmPool, the Hypervisor or the srht method's host):
    marks the boot call and its return. Anything else goes to the wrapped one untouched."""

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


class SrhtReplayError(RuntimeError):
    """The srht method's session got a command with stdin that it cannot replay as
    builds.sr.ht's commands. The bench stops on it: it never runs one command instead."""


@dataclass
class SetupPlan:
    """Our setup command (worker/steps/setup_bundle.py: build_bundle), taken apart."""

    home: str
    staging: str | None
    #: per secret, in order: its index (the marker's) and the script lines that install it
    secrets: list[tuple[int, list[str]]]


def parse_setup_script(script: str) -> SetupPlan:
    """``exec 2>&1``, [``bw_staging=…``, ``trap …``], ``tar -xmf - -C HOME || exit $?``,
    per secret a marker ``printf`` and its lines, ``exit 0``; anything else raises."""
    lines = script.rstrip("\n").split("\n")
    if len(lines) < 3 or lines[0] != "exec 2>&1" or lines[-1] != "exit 0":
        raise SrhtReplayError(f"not our setup script (first/last line): {script[:200]!r}")
    staging: str | None = None
    at = 1
    while at < len(lines) - 1 and SETUP_TAR.fullmatch(lines[at]) is None:
        line = lines[at]
        if line.startswith("bw_staging="):
            words = shlex.split(line.removeprefix("bw_staging="))
            if len(words) != 1:
                raise SrhtReplayError(f"setup script: cannot read {line!r}")
            staging = words[0]
        elif not line.startswith("trap "):  # the trap's rm -rf: the replay removes it too
            raise SrhtReplayError(f"setup script line {at + 1} is unknown to the bench: {line!r}")
        at += 1
    tar = SETUP_TAR.fullmatch(lines[at]) if at < len(lines) - 1 else None
    if tar is None:
        raise SrhtReplayError("setup script: no 'tar -xmf - -C HOME' line")
    home = shlex.split(tar.group(1))
    if len(home) != 1:
        raise SrhtReplayError(f"setup script: cannot read the home in {lines[at]!r}")
    secrets: list[tuple[int, list[str]]] = []
    for line in lines[at + 1 : -1]:
        mark = SETUP_MARK.fullmatch(line)
        if mark is not None:
            secrets.append((int(mark.group(1)), []))
        elif secrets:
            secrets[-1][1].append(line)
        else:
            raise SrhtReplayError(f"setup script: a line before any secret's marker: {line!r}")
    if secrets and staging != f"{home[0].rstrip('/')}/{STAGING}":
        raise SrhtReplayError(f"setup script: secrets, but the staging folder is {staging!r}")
    return SetupPlan(home[0], staging, secrets)


#: one member of the setup archive: its name, its bytes (None: a folder), its mode
ArchiveEntry = tuple[str, bytes | None, int]


def read_setup_archive(data: bytes) -> list[ArchiveEntry]:
    """The members of the setup command's stdin (a tar), in order."""
    entries: list[ArchiveEntry] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar.getmembers():
                if member.isdir():
                    entries.append((member.name, None, member.mode))
                elif member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    entries.append((member.name, source.read(), member.mode))
                else:
                    raise SrhtReplayError(f"setup archive: {member.name} is neither file nor dir")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SrhtReplayError(f"the setup command's stdin is not a tar: {exc}") from exc
    return entries


class SrhtSession:
    """A guest session the way builds.sr.ht's worker talks to guests: one ``ssh`` process
    per command (``tee`` for a file), nothing kept open."""

    def __init__(
        self, port: int, key: Path, user: str, timeline: Timeline, failures: list[str]
    ) -> None:
        self._port, self._key, self._user = port, key, user
        self._timeline = timeline
        self._failures = failures

    def _ssh(
        self, command: str, data: bytes | None = None, *, merge: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        self._timeline.count_ssh(current_job())
        return subprocess.run(
            [*ssh_argv(self._port, self._key, self._user), command],
            input=data if data is not None else b"",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge else subprocess.PIPE,
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
        stdin: bytes | None = None,
    ) -> int:
        if stdin is not None:
            try:
                return self._replay_setup(command, stdin, on_output, cancel)
            except SrhtReplayError as exc:
                self._failures.append(str(exc))
                raise
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

    def _replay_setup(
        self,
        script: str,
        archive: bytes,
        on_output: Callable[[bytes], None] | None,
        cancel: threading.Event | None,
    ) -> int:
        """Our one setup command, as builds.sr.ht's SendTasks, SendEnv and SendSecrets
        would do it: one ssh process per command. Returns the first failing command's exit
        status (0: all went), so steps/setup.py reports it as it reports its own."""
        plan = parse_setup_script(script)
        entries = read_setup_archive(archive)
        home = plan.home.rstrip("/") or "/"
        tasks: list[tuple[str, bytes, int]] = []
        buildenv: tuple[bytes, int] | None = None
        staged: dict[int, tuple[bytes, int]] = {}
        for name, data, mode in entries:
            if data is None:
                if name not in (".tasks", STAGING):
                    raise SrhtReplayError(f"setup archive: unknown folder {name!r}")
            elif name.startswith(".tasks/") and "/" not in name.removeprefix(".tasks/"):
                tasks.append((name, data, mode))
            elif name == ".buildenv":
                buildenv = (data, mode)
            elif name.startswith(f"{STAGING}/") and name.removeprefix(f"{STAGING}/").isdigit():
                staged[int(name.removeprefix(f"{STAGING}/"))] = (data, mode)
            else:
                raise SrhtReplayError(f"setup archive: unknown member {name!r}")
        if buildenv is None:
            raise SrhtReplayError("setup archive: no .buildenv")
        if set(staged) - {index for index, _ in plan.secrets}:
            raise SrhtReplayError("setup archive: a staged secret the script does not install")

        def step(command: str, data: bytes | None = None) -> int:
            if cancel is not None and cancel.is_set():
                raise CommandCancelled(f"ssh {command!r}: cancelled")
            try:
                result = self._ssh(command, data, merge=True)
            except subprocess.TimeoutExpired as exc:
                raise CommandTimeout(f"ssh {command!r}: timed out") from exc
            if result.stdout and on_output is not None:
                on_output(result.stdout)
            if result.returncode == 255:
                raise GuestError(f"ssh {command!r}: the connection failed")
            return result.returncode

        def send(path: str, data: bytes, mode: int, *, mkdir: bool) -> int:
            quoted = shlex.quote(path)
            commands = [f"mkdir -p {shlex.quote(os.path.dirname(path))}"] if mkdir else []
            commands += [f"tee {quoted} >/dev/null", f"chmod {mode & 0o7777:o} {quoted}"]
            for command in commands:
                status = step(command, data if command.startswith("tee ") else None)
                if status != 0:
                    return status
            return 0

        # SendTasks: per task file mkdir -p, tee, chmod
        for name, data, mode in tasks:
            status = send(f"{home}/{name}", data, mode, mkdir=True)
            if status != 0:
                return status
        # SendEnv: ~/.buildenv
        status = send(f"{home}/.buildenv", buildenv[0], buildenv[1], mkdir=False)
        if status != 0:
            return status
        # SendSecrets: each secret's file, then the bundle's lines that install it
        staging = plan.staging
        made = False
        try:
            for index, lines in plan.secrets:
                if on_output is not None:
                    on_output(MARK + f"{index}\n".encode())  # the "Installing secret" line
                assert staging is not None  # parse_setup_script checked it
                if index in staged:
                    if not made:
                        made = True
                        status = step(f"mkdir -p -m 700 {shlex.quote(staging)}")
                        if status != 0:
                            return status
                    data, mode = staged[index]
                    status = send(f"{staging}/{index}", data, mode, mkdir=False)
                    if status != 0:
                        return status
                for line in lines:
                    status = step(f"bw_staging={shlex.quote(staging)}; {line}")
                    if status != 0:
                        return status
            return 0
        finally:
            if made and staging is not None:  # the bundle's trap
                with contextlib.suppress(GuestError):
                    step(f"rm -rf {shlex.quote(staging)}")

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

    def __init__(self, inner: Any, key: Path, timeline: Timeline, failures: list[str]) -> None:
        self._inner = inner
        self._key = key
        self._timeline = timeline
        self._failures = failures

    @property
    def domain_name(self) -> str:
        name: str = self._inner.domain_name
        return name

    start_path = "cold"
    start_note = ""  # builds.sr.ht's setup log says nothing of how the VM started

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
                return SrhtSession(
                    self._inner.ssh_port, self._key, user, self._timeline, self._failures
                )
            time.sleep(SRHT_SETTLE_INTERVAL_S)
        raise SettleTimeout(f"Settle timed out after {attempts} attempts")

    def destroy(self) -> None:
        self._inner.destroy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class SrhtMethodHost:
    """builds.sr.ht's method as a VmHost: our cold boot (same image, same QEMU flags), their
    settle and their one-ssh-process-per-command session. A setup it could not replay is
    appended to ``failures`` (the bench stops on it)."""

    def __init__(self, inner: Any, key: Path, timeline: Timeline, failures: list[str]) -> None:
        self._inner = inner
        self._key = key
        self._timeline = timeline
        self._failures = failures

    def boot(self, image: Any, *, job_id: int, attempt: int) -> SrhtGuest:
        guest = self._inner.boot(image, job_id=job_id, attempt=attempt)
        return SrhtGuest(guest, self._key, self._timeline, self._failures)

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
    #: this run's [vm] snapshot-dir and work-dir live here (STATE_ROOT/bench-start-<run>)
    vmroot: Path
    notes: list[str] = field(default_factory=list)
    #: setups the srht method could not replay (the run stops on the first)
    failures: list[str] = field(default_factory=list)
    #: whether this run's snapshot of IMAGE was made (ensure_snapshot)
    snapshot_ready: bool = False


@dataclass
class Worker:
    name: str
    daemon: BenchDaemon
    hypervisor: Hypervisor
    pool: WarmPool | None
    api: BenchApi
    metrics_url: str
    server: Any
    thread: threading.Thread
    config: Config


def worker_conf(env: Env, name: str, *, slots: int, warm: bool, pool: int) -> Config:
    """The worker's config for one method, as a worker.conf would say it."""
    metrics = f"127.0.0.1:{free_port()}"
    lines = [
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
        f"work-dir = {env.vmroot / 'vms'}",
        f"warm-start = {'yes' if warm else 'no'}",
        f"snapshot-dir = {env.vmroot / 'snapshots'}",
        f"pool-size = {pool}",
    ]
    return parse_config("\n".join(lines) + "\n")


def ensure_snapshot(env: Env) -> None:
    """Make this run's snapshot of IMAGE before any warm worker starts (so no sample, and no
    pool refill, waits for it). The shape is the same for every method: [vm] vcpus, memory,
    accel and the image are the defaults everywhere."""
    if env.snapshot_ready:
        return
    config = worker_conf(env, f"bench{env.run_id}snap", slots=1, warm=True, pool=0)
    hypervisor = Hypervisor(config.vm, worker_name=config.worker.name)
    try:
        image = ImageCatalogue(config.worker.images).resolve(IMAGE, None)
        t0 = time.monotonic()
        snapshot, made = hypervisor.ensure_snapshot(image)
        took = time.monotonic() - t0
    finally:
        hypervisor.close()
    what = f"made in {took:.1f}s" if made else "already there"
    print(f"snapshot {snapshot.directory} {what}", flush=True)
    env.notes.append(f"snapshot of {IMAGE}: {snapshot.directory} ({what}, before any sample)")
    env.snapshot_ready = True


def start_worker(env: Env, config: Config, *, srht: bool = False) -> Worker:
    """The daemon as `buildworker worker` starts it (buildworker/commands/worker.py: the
    Hypervisor, ``vm_host_for``'s warm pool feeding ``buildworker_pool_ready``, the Daemon
    on ``pool or vms``, ``pool.start()`` once the daemon is up), with the bench's timing
    wrappers around its VmHost and API client."""
    catalogue = ImageCatalogue(config.worker.images)
    hypervisor = Hypervisor(config.vm, worker_name=config.worker.name)
    hypervisor.reap_leftovers()
    metrics = WorkerMetrics()
    pool = vm_host_for(
        config,
        catalogue,
        hypervisor,
        on_ready=lambda image, arch, n: metrics.pool_ready.labels(image=image, arch=arch).set(n),
    )
    if config.vm.warm_start and config.vm.pool_size and pool is None:
        hypervisor.close()
        raise RuntimeError(f"{config.worker.name}: pool-size {config.vm.pool_size} but no pool")
    if pool is not None and [t.image.name for t in pool.targets] != [IMAGE]:
        sized = {f"{t.image.name}@{t.image.arch}": t.size for t in pool.targets}
        env.notes.append(f"{config.worker.name}: the pool keeps {sized}, not only {IMAGE}")
    vms: Any = pool or hypervisor
    host: Any = SrhtMethodHost(vms, config.vm.ssh_key, env.timeline, env.failures) if srht else vms
    api = BenchApi(config.worker.api_url, config.worker.token)
    api.timeline = env.timeline
    daemon = BenchDaemon(config, catalogue, TimedHost(host, env.timeline), api, metrics=metrics)
    daemon.timeline = env.timeline
    daemon.start()
    server = daemon.metrics.serve(config.worker.metrics_bind)
    thread = threading.Thread(target=daemon.run_until_stopped, name="bench-daemon", daemon=True)
    thread.start()
    if pool is not None:
        pool.start()  # after the daemon is up, as the worker does
    deadline = time.monotonic() + 30
    while not daemon.broker_connected():
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not connect to RabbitMQ within 30 s")
        time.sleep(0.05)
    return Worker(
        config.worker.name,
        daemon,
        hypervisor,
        pool,
        api,
        f"http://{config.worker.metrics_bind}/metrics",
        server,
        thread,
        config,
    )


def stop_worker(worker: Worker) -> None:
    """In the order of buildworker/commands/worker.py: the daemon, its server and API
    client, the pool (its waiting guests go), then the hypervisor."""
    worker.daemon.stop_now()
    worker.thread.join(180)
    worker.server.close()
    worker.api.close()
    if worker.pool is not None:
        worker.pool.close()
    worker.hypervisor.close()


def wait_job(env: Env, job_id: int, timeout: float = JOB_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if env.failures:
            raise SrhtReplayError(f"job {job_id}: builds.sr.ht's method: {env.failures[0]}")
        status = str(env.api.http.get(f"/api/jobs/{job_id}").json()["status"])
        if status in TERMINAL:
            return status
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} did not finish within {timeout:.0f} s")


def setup_path_lines(env: Env, job_id: int) -> list[str]:
    """The setup log's "Warm start: …" and "Guest settled in Xs (…)" lines."""
    response = env.api.http.get(f"/logs/{job_id}/log")
    if response.status_code not in (200, 206):
        return []
    return [
        match.group(0).decode(errors="replace").strip()
        for match in PATH_LINE.finditer(response.content)
    ]


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
    #: the guest's start_path ("cold", "snapshot", "pool"; None: no guest answered)
    start_path: str | None
    #: the setup log's "Warm start: …" and "Guest settled in …" lines
    lines: list[str]
    #: ssh processes of the srht method's setup replay
    setup_ssh: int = 0

    def span(self, start: str, end: str) -> float | None:
        if start == "submitted":
            t0: float | None = self.submitted
        else:
            t0 = self.marks.get(start)
        t1 = self.marks.get(end)
        return None if t0 is None or t1 is None else t1 - t0

    @property
    def logged_path(self) -> str | None:
        """The start path the setup log's "Guest settled in Xs (…)" line names."""
        for line in self.lines:
            words = SETTLED_WORDS.match(line)
            if words is not None:
                return PATH_OF_WORDS.get(words.group(1), words.group(1))
        return None

    @property
    def warm_note(self) -> str | None:
        return next((line for line in self.lines if line.startswith("Warm start: ")), None)

    def describe(self) -> str:
        path = self.start_path or "no guest"
        if self.logged_path not in (None, self.start_path):
            path += f" (setup log says {self.logged_path}!)"
        ssh = f", setup in {self.setup_ssh} ssh processes" if self.setup_ssh else ""
        return path + ssh


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
    return Sample(
        job_id,
        status,
        submitted,
        env.timeline.get(job_id),
        env.timeline.start_paths.get(job_id),
        setup_path_lines(env, job_id),
        env.timeline.setup_ssh.get(job_id, 0),
    )


#: the start path every sample of a method must have taken
EXPECTED_PATH = {"srht": "cold", "cold": "cold", "restore": "snapshot", "pool": "pool"}


def measure_method(env: Env, method: str, jobs: int, warmup: int) -> list[Sample]:
    pool = 1 if method == "pool" else 0
    warm = method in ("restore", "pool")
    if warm:
        ensure_snapshot(env)
    config = worker_conf(env, f"bench{env.run_id}{method}", slots=1, warm=warm, pool=pool)
    worker = start_worker(env, config, srht=method == "srht")
    expected = EXPECTED_PATH[method]
    try:
        # The first job of a worker is never a sample; a restore's warm-up goes on until one
        # was restored (the snapshot is made ahead, so that is the first one).
        least = max(warmup, 1) if warm else warmup
        tries = least + (2 if method == "restore" else 0)
        for done in range(1, tries + 1):
            sample = run_one(env, worker, pool)
            print(
                f"  {method} warm-up job {sample.job_id}: {sample.status}, "
                f"{_fmt(sample.span('dequeued', 'first_byte'))} ({sample.describe()})",
                flush=True,
            )
            if done >= least and (method != "restore" or sample.start_path == expected):
                break
        samples = []
        for n in range(jobs):
            sample = run_one(env, worker, pool)
            samples.append(sample)
            print(
                f"  {method} {n + 1}/{jobs} job {sample.job_id}: {sample.status}, dequeue → "
                f"first byte {_fmt(sample.span('dequeued', 'first_byte'))} "
                f"({sample.describe()})",
                flush=True,
            )
            if sample.start_path != expected:
                env.notes.append(
                    f"{method}: job {sample.job_id} started {sample.start_path}, not {expected}"
                    f" ({sample.warm_note or 'no Warm start line'})"
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
    print("   start path per method (guest.start_path; the setup log's line for one of them):")
    for method, samples in results.items():
        counts: dict[str, list[Sample]] = {}
        for s in samples:
            counts.setdefault(s.describe().partition(",")[0], []).append(s)
        for key, those in counts.items():
            note = those[0].warm_note or "no 'Warm start:' line"
            print(f"   {method:8s} {len(those):3d} x {key:10s}  e.g. {note}")
        ssh = [s.setup_ssh for s in samples if s.setup_ssh]
        if ssh:
            print(f"   {method:8s} setup: {statistics.median(ssh):.0f} ssh processes per job")


# --- 2. throughput --------------------------------------------------------------------------


def measure_throughput(env: Env, label: str, jobs: int, slots: int) -> tuple[float, int, int]:
    """(jobs per minute, succeeded, failed) of ``jobs`` trivial jobs submitted at once."""
    warm = label == "warm"
    pool = 1 if warm else 0
    if warm:  # the snapshot is made before the clock starts
        ensure_snapshot(env)
    config = worker_conf(env, f"bench{env.run_id}tp{label}", slots=slots, warm=warm, pool=pool)
    worker = start_worker(env, config)
    try:
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
    ensure_snapshot(env)
    config = worker_conf(env, f"bench{env.run_id}idle", slots=1, warm=True, pool=1)
    worker = start_worker(env, config)
    try:
        wait_pool_full(worker, 1)
        time.sleep(2.0)  # the refill's own work is over
        pooled = worker.pool.guests() if worker.pool is not None else []
        pids = qemu_pids(worker.name)
        found = [(g.domain_name, pids[g.domain_name]) for g in pooled if g.domain_name in pids]
        if not found:
            print("  idle: the pool is full but no qemu process of its guests was found")
            return None
        name, pid = found[0]
        cpu, rss = sample_idle(pid, seconds)
        return f"pooled guest {name}", cpu, rss
    finally:
        stop_worker(worker)


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
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory and the snapshots"
    )
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown method or section: {', '.join(unknown)}")

    run_id = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="bw-start-", dir="/tmp"))
    workdir.chmod(0o755)
    vmroot = STATE_ROOT / f"bench-start-{run_id}"
    for folder in (vmroot, vmroot / "snapshots", vmroot / "vms"):
        folder.mkdir(mode=0o755, parents=True)
        folder.chmod(0o755)  # libvirt-qemu reaches the frozen overlays and the VM folders
    events_path = Path(tempfile.gettempdir()) / f"bw-start-{run_id}-events.jsonl"
    timeline = Timeline(events_path)
    configure_logging(True, "info", masker=timeline, stream=open(os.devnull, "w"))  # noqa: SIM115
    vhost = f"bw-start-{run_id}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    amqp_url = f"amqp://guest:guest@127.0.0.1:5672/{urllib.parse.quote(vhost, safe='')}"
    api = Api(workdir, amqp_url)
    env = Env(api, amqp_url, workdir, args.images, args.ssh_key, timeline, run_id, vmroot)
    results: dict[str, list[Sample]] = {}
    throughput: dict[str, tuple[float, int, int]] = {}
    idle: tuple[str, float, int] | None = None
    try:
        if "latency" in sections:
            for method in methods:
                print(f"latency: {method}, {args.jobs} jobs (+ warm-up) ...", flush=True)
                results[method] = measure_method(env, method, args.jobs, args.warmup)
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
            shutil.rmtree(vmroot, ignore_errors=True)

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
            kind = "warm-start no, pool 0" if label == "cold" else "warm-start + pool 1"
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
        print(f"work directory kept: {workdir}; snapshots and VM folders: {vmroot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
