"""The daemon keeps a build's VM for SSH: a failed build's standby, and `shell: true`.

The whole path is real: the API with its outbox on a fresh RabbitMQ vhost, the worker daemon
(in this process) with its control server, Debian's sshd with the shipped configuration, the
OpenSSH client (under pexpect), and a guest per test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pexpect
import pytest
from worker.worker_helpers import IMAGES, SSH_KEY, WORKER_TOKEN, LiveApi, api_config, vm_work_dir

from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageCatalogue
from buildworker.ssh.texts import BUILD_CANCELLED
from buildworker.worker.apiclient import InternalApi
from buildworker.worker.daemon import Daemon

from .entry import SSH_USER, WORKER_NAME, EntryPoint, free_port, start_entry_point

pytestmark = [pytest.mark.vm, pytest.mark.slow]

TERMINAL = ("success", "failed", "timeout", "cancelled")
FAILING = """\
image: debian/bookworm
environment:
  GREETING: hello-from-standby
tasks:
  - prepare: |
      mkdir -p ~/project && echo built-output > ~/project/out.txt
  - broken: |
      echo about-to-fail
      false
"""
SHELL = """\
image: debian/bookworm
shell: true
tasks:
  - hello: |
      echo shell-task-ran > ~/hi.txt
"""


@dataclass
class Farm:
    api: LiveApi
    point: EntryPoint
    daemon: Daemon
    vms: Hypervisor
    thread: threading.Thread

    def submit(self, manifest: str) -> int:
        return self.api.submit(manifest)

    def status(self, job_id: int) -> str:
        return str(self.api.job(job_id)["status"])

    def wait(self, job_id: int, statuses: tuple[str, ...] = TERMINAL, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(job_id)
            if status in statuses:
                return status
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {self.status(job_id)}:\n{self.setup(job_id)}")

    def setup(self, job_id: int) -> str:
        return self.api.get(f"/logs/{job_id}/log").text

    def wait_setup(self, job_id: int, needle: str, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.setup(job_id):
                return time.monotonic()
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} never in job {job_id}'s setup log:\n{self.setup(job_id)}")

    def busy(self) -> int:
        return self.daemon.load()[0]

    def wait_idle(self, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while self.busy():
            assert time.monotonic() < deadline, "the slot was never freed"
            time.sleep(0.1)
        return time.monotonic()

    def domains(self) -> list[str]:
        out = subprocess.run(
            ["virsh", "-c", "qemu:///system", "list", "--name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [name for name in out.split() if WORKER_NAME.replace("-", "_") in name]

    def standby_slots(self) -> float:
        value = self.daemon.metrics.registry.get_sample_value("buildworker_slots_standby")
        return float(value or 0.0)


@pytest.fixture
def make_farm(tmp_path: Path, amqp_url: str) -> Iterator[Callable[..., Farm]]:
    made: list[Farm] = []

    def make(
        *, standby: float = 60.0, shell_idle: float = 60.0, forwards: tuple[str, ...] = ()
    ) -> Farm:
        data = tmp_path / "api"
        data.mkdir()
        config = api_config(data, f"sqlite:///{data / 'buildworker.db'}", amqp_url)
        # Log URLs in job records point at this API (`submit --follow` reads them)
        port = free_port()
        config = replace(config, api=replace(config.api, origin=f"http://127.0.0.1:{port}"))
        api = LiveApi(config, lifespan="on", port=port)
        point = start_entry_point(api)
        point.add_person("alice")
        point.add_person("bob")
        config = replace(
            config,
            worker=replace(
                config.worker,
                name=WORKER_NAME,
                api_url=api.url,
                images=IMAGES,
                standby=standby,
                shell_idle=shell_idle,
                ssh_host=f"127.0.0.1:{point.port}",
            ),
            vm=replace(config.vm, ssh_key=SSH_KEY, work_dir=vm_work_dir(), forwards=forwards),
            ssh=replace(config.ssh, user=SSH_USER),
        )
        vms = Hypervisor(config.vm, worker_name=WORKER_NAME)
        daemon = Daemon(
            config,
            ImageCatalogue(IMAGES),
            vms,
            InternalApi(api.url, WORKER_TOKEN),
            control=point.control,
        )
        daemon.start()
        thread = threading.Thread(target=daemon.run_until_stopped, daemon=True)
        thread.start()
        farm = Farm(api, point, daemon, vms, thread)
        made.append(farm)
        return farm

    yield make
    for farm in made:
        farm.daemon.stop_now()
        farm.thread.join(120)
        farm.vms.reap_leftovers()
        farm.vms.close()
        farm.point.close()


def test_a_failed_build_waits_for_its_owner_who_connects_and_logs_out(
    make_farm: Callable[..., Farm],
    tmp_path: Path,
    git_server: tuple[int, str],
    keep_forward: Callable[[int], None],
) -> None:
    port, tagged = git_server
    keep_forward(port)
    farm = make_farm(standby=60.0, forwards=(f"10.0.2.2:{port}=127.0.0.1:{port}",))
    # Given a failing build with a git source, submitted with `submit --follow`
    manifest = tmp_path / "failing.yml"
    manifest.write_text(
        FAILING.replace("tasks:", f"sources: [http://10.0.2.2:{port}/repo.git#v1]\ntasks:")
    )
    env = {**os.environ, "BUILDWORKER_URL": farm.api.url, "BUILDWORKER_TOKEN": farm.api.user_token}
    env.pop("BUILDWORKER_CONFIG", None)
    submit = subprocess.run(
        [sys.executable, "-m", "buildworker.cli", "submit", str(manifest), "--follow"],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    # Then the job is already `failed` in the API while its VM waits (a slot held, and said)
    job_id = int(submit.stdout.split("/job/")[1].split()[0])
    assert submit.returncode == 1, submit.stderr
    assert farm.status(job_id) == "failed"
    assert farm.busy() == 1 and farm.standby_slots() == 1.0
    command = f"ssh -t -p {farm.point.port} {SSH_USER}@127.0.0.1 connect {job_id}"
    # And the setup log ends with builds.sr.ht's text and the exact command
    setup = farm.setup(job_id)
    assert "The build environment will be kept alive for 1 minute." in setup
    assert f"\t{command}\n" in setup
    # And `submit --follow` printed the log and, last, the command to run
    assert command in submit.stdout
    assert submit.stderr.rstrip().endswith(f"To examine the failed build: {command}")
    # When another user tries, they are refused
    refused = farm.point.run("bob", f"connect {job_id}")
    assert "You are not permitted to connect to this job." in refused.stdout + refused.stderr
    # When the owner connects, they get the banner and a shell with the build's files
    child = farm.point.spawn("alice", f"connect {job_id}")
    child.expect(re.escape(f"Connected to build job #{job_id} (failed): "))
    # (the connect extended the VM to the job's deadline, about 45 minutes away)
    child.expect(r"Your VM will be terminated (44|45) minutes from now, or when you log out\.")
    child.sendline(
        "cat ~/repo/file.txt; cat ~/project/out.txt; grep GREETING ~/.buildenv; echo MARK-$((6*7))"
    )
    child.expect(tagged)  # the clone directory, at the tag the manifest asked for
    child.expect("built-output")
    child.expect("hello-from-standby")
    child.expect("MARK-42")
    assert farm.busy() == 1
    # And when they log out, the VM is destroyed right after and the slot is free
    child.sendline("exit")
    child.expect(pexpect.EOF)
    logged_out = time.monotonic()
    freed = farm.wait_idle(timeout=60)
    print(f"logout → slot free: {freed - logged_out:.2f} s")
    assert freed - logged_out < 15
    assert farm.domains() == []
    assert "The last session logged out: terminating build environment." in farm.setup(job_id)
    assert farm.status(job_id) == "failed"  # the standby changed nothing of the result


def test_a_standby_nobody_uses_ends_after_the_window_and_frees_the_slot(
    make_farm: Callable[..., Farm],
) -> None:
    farm = make_farm(standby=6.0)
    job_id = farm.submit(FAILING)
    farm.wait(job_id, ("failed",))
    failed_at = time.monotonic()
    assert farm.busy() == 1
    freed = farm.wait_idle(timeout=90)
    waited = freed - failed_at
    print(f"failed → slot free with nobody connecting: {waited:.2f} s (window 6 s)")
    assert 3.0 <= waited < 30.0
    assert farm.domains() == []
    assert "Nobody logged in: terminating build environment." in farm.setup(job_id)
    assert farm.standby_slots() == 0.0


def test_shell_true_ends_with_success_right_after_the_last_logout(
    make_farm: Callable[..., Farm],
) -> None:
    farm = make_farm(shell_idle=120.0)
    job_id = farm.submit(SHELL)
    # Given a shell: true build whose tasks are done: it waits, running, for a login
    farm.wait_setup(job_id, "Build environment ready (shell: true).")
    assert farm.status(job_id) == "running"
    assert f"connect {job_id}" in farm.setup(job_id)
    # When the owner runs a command in it (a session that ends with the command)
    done = farm.point.run("alice", f"connect {job_id} cat ~/hi.txt", tty=False)
    assert "shell-task-ran" in done.stdout, done.stdout + done.stderr
    logged_out = time.monotonic()
    # Then the build ends `success` right after, and the VM is gone
    farm.wait(job_id, timeout=60)
    ended = time.monotonic() - logged_out
    print(f"shell: true, logout → job ended: {ended:.2f} s")
    assert farm.status(job_id) == "success" and ended < 15
    farm.wait_idle(timeout=30)
    assert farm.domains() == []


def test_shell_true_with_no_login_ends_after_the_idle_window(
    make_farm: Callable[..., Farm],
) -> None:
    farm = make_farm(shell_idle=5.0)
    job_id = farm.submit(SHELL)
    ready = farm.wait_setup(job_id, "Build environment ready (shell: true).")
    farm.wait(job_id, timeout=90)
    waited = time.monotonic() - ready
    print(f"shell: true, nobody logging in: ended {waited:.2f} s after the tasks (idle 5 s)")
    assert farm.status(job_id) == "success"
    assert 3.0 <= waited < 30.0
    assert "Nobody logged in: terminating build environment." in farm.setup(job_id)


def test_a_cancel_during_a_shell_session_ends_it_with_a_message(
    make_farm: Callable[..., Farm],
) -> None:
    farm = make_farm(shell_idle=120.0)
    job_id = farm.submit(SHELL)
    farm.wait_setup(job_id, "Build environment ready (shell: true).")
    child = farm.point.spawn("alice", f"connect {job_id}")
    child.expect(re.escape(f"Connected to build job #{job_id} (running)"))
    child.sendline("echo INSIDE-$((2+3))")
    child.expect("INSIDE-5")
    # When the job is cancelled through the API
    response = httpx.post(
        f"{farm.api.url}/api/jobs/{job_id}/cancel", headers=farm.api.headers(), timeout=30
    )
    assert response.status_code < 300, response.text
    # Then the user sees why, the session ends, the job is cancelled and the VM is gone
    child.expect(re.escape(BUILD_CANCELLED), timeout=30)
    child.expect(pexpect.EOF, timeout=30)
    assert farm.wait(job_id, timeout=60) == "cancelled"
    farm.wait_idle(timeout=30)
    assert farm.domains() == []


def test_a_drain_ends_a_standby_session_with_a_message_and_the_job_stays_failed(
    make_farm: Callable[..., Farm],
) -> None:
    farm = make_farm(standby=300.0)
    job_id = farm.submit(FAILING)
    farm.wait(job_id, ("failed",))
    child = farm.point.spawn("alice", f"connect {job_id}")
    child.expect(re.escape(f"Connected to build job #{job_id} (failed)"))
    child.sendline("echo IN-$((1+1))")
    child.expect("IN-2")
    # When the worker drains (what SIGTERM does), it does not wait for the session
    drained_at = time.monotonic()
    farm.daemon.drain()
    child.expect(re.escape("The build worker is shutting down."), timeout=60)
    child.expect(pexpect.EOF, timeout=30)
    farm.thread.join(60)
    print(
        f"drain with a standby session open → worker stopped: {time.monotonic() - drained_at:.2f} s"
    )
    assert not farm.thread.is_alive()
    # Then the VM is gone and the finished job was not put back in the queue
    assert farm.domains() == []
    assert farm.status(job_id) == "failed"
