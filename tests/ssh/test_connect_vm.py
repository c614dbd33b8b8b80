"""`connect` into a real guest: Debian's sshd with the shipped configuration, the OpenSSH client
(`ssh -tt` under pexpect), the real API, and a guest booted through the Hypervisor and
registered in the control server as the job's (the daemon does this from the next round on).

One guest for the module: boots cost 5-20 s of two shared cores under TCG.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from buildworker.config import VmConfig
from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageCatalogue
from buildworker.guest.ssh import GuestConnection
from buildworker.ssh.texts import BUILD_CANCELLED
from buildworker.worker.control import JobHandle

from .entry import EntryPoint

pytestmark = [pytest.mark.vm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VM_ROOT = Path("/var/lib/buildworker/test-vms")


@pytest.fixture(scope="module")
def guest_conn() -> Iterator[GuestConnection]:
    work_dir = VM_ROOT / f"ssh-{uuid.uuid4().hex[:8]}"
    work_dir.mkdir(parents=True, mode=0o755)
    try:
        config = VmConfig(
            ssh_key=REPO / ".state" / "id_ed25519", work_dir=work_dir, settle_timeout=240.0
        )
        # (in a worktree, images/debian/bookworm may be a link to another checkout's images)
        images = (REPO / "images" / "debian" / "bookworm").resolve().parents[1]
        image = ImageCatalogue(images).resolve("debian/bookworm", None)
        hypervisor = Hypervisor(config, worker_name=f"tssh{uuid.uuid4().hex[:8]}")
        try:
            guest = hypervisor.boot(image, job_id=1, attempt=1)
            try:
                conn = guest.wait_ready(config.settle_timeout)
                # what a build leaves behind: ~/.buildenv and a clone directory
                conn.upload("~/.buildenv", b"#!/bin/sh\nexport GREETING='hello from buildenv'\n")
                conn.upload("~/myrepo/README.md", b"# my repo\n")
                yield conn
            finally:
                guest.destroy()
        finally:
            hypervisor.reap_leftovers()
            hypervisor.close()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def started(self, user: str) -> None:
        self.events.append(("start", user))

    def ended(self, user: str) -> None:
        self.events.append(("end", user))


def job_in_guest(
    entry_point: EntryPoint, conn: GuestConnection, **fields: Any
) -> tuple[int, JobHandle, Recorder]:
    job = entry_point.submit_running_job(**fields)
    recorder = Recorder()
    handle = entry_point.control.register(
        job,
        deadline=lambda: time.time() + 600,
        on_session_start=recorder.started,
        on_session_end=recorder.ended,
    )
    handle.attach_guest(conn)
    handle.finish_setup()
    return job, handle, recorder


def test_the_owner_connects_runs_commands_in_the_guest_and_logs_out(
    entry_point: EntryPoint, guest_conn: GuestConnection
) -> None:
    job, handle, recorder = job_in_guest(entry_point, guest_conn)
    try:
        child = entry_point.spawn("alice", f"connect {job}", dimensions=(30, 100))
        # builds.sr.ht's banner, with the job page and when the VM goes away
        child.expect(
            re.escape(f"Connected to build job #{job} (running): http://127.0.0.1/~alice/job/{job}")
        )
        child.expect(r"Your VM will be terminated (9|10) minutes from now, or when you log out\.")
        # a shell as `build` in the guest, with the build's files
        child.sendline("id -un; cat ~/.buildenv; ls ~/myrepo; echo MARK-$((6*7))")
        child.expect("hello from buildenv")
        child.expect("README.md")
        child.expect("MARK-42")
        child.sendline("echo USER-$(id -un)-$(hostname)")
        child.expect("USER-build-build")
        # the terminal is the user's size, and follows a resize
        child.sendline("stty size")
        child.expect("30 100")
        child.setwinsize(40, 120)
        time.sleep(0.5)
        child.sendline("stty size")
        child.expect("40 120")
        assert recorder.events == [("start", "alice")] and handle.sessions == 1
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert recorder.events == [("start", "alice"), ("end", "alice")]
        assert handle.sessions == 0
    finally:
        handle.end("success")


def test_a_user_in_access_write_runs_a_command_and_gets_its_exit_status(
    entry_point: EntryPoint, guest_conn: GuestConnection
) -> None:
    job, handle, recorder = job_in_guest(entry_point, guest_conn, **{"access:write": ["carol"]})
    try:
        result = entry_point.run("carol", f"connect {job} echo hi-$(whoami) in $PWD; exit 3")
        assert result.returncode == 3, result.stderr
        assert f"Connected to build job #{job} (running)" in result.stdout
        assert "hi-build in /home/build" in result.stdout
        assert recorder.events == [("start", "carol"), ("end", "carol")]
        # input goes through too (no terminal: stdin is relayed, then its end)
        piped = entry_point.run("carol", f"connect {job} wc -c")
        assert piped.returncode == 0 and piped.stdout.rstrip().endswith("0")
    finally:
        handle.end("success")


def test_a_cancel_during_a_session_ends_it_with_a_message(
    entry_point: EntryPoint, guest_conn: GuestConnection
) -> None:
    job, handle, recorder = job_in_guest(entry_point, guest_conn)
    child = entry_point.spawn("alice", f"connect {job}")
    child.expect(f"Connected to build job #{job}")
    child.sendline("echo READY-$((1+1))")
    child.expect("READY-2")
    # When the job is cancelled (the daemon ends the handle before teardown)
    handle.end("cancelled", BUILD_CANCELLED)
    # Then the user sees why, and the session is over
    child.expect(BUILD_CANCELLED)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 255
    assert recorder.events == [("start", "alice"), ("end", "alice")]
    # and the worker's own connection to the guest still works
    assert guest_conn.run("true", pty=False) == 0


def test_a_user_whose_ssh_dies_mid_session_is_counted_out(
    entry_point: EntryPoint, guest_conn: GuestConnection
) -> None:
    job, handle, recorder = job_in_guest(entry_point, guest_conn)
    try:
        child = entry_point.spawn("alice", f"connect {job}")
        child.expect(f"Connected to build job #{job}")
        child.sendline("echo UP-$((2+2))")
        child.expect("UP-4")
        assert handle.sessions == 1
        # When the user's ssh is killed (a dropped connection)
        child.terminate(force=True)
        # Then the worker sees the session end (standby counts on it) within sshd's timeouts
        deadline = time.monotonic() + 120
        while handle.sessions and time.monotonic() < deadline:
            time.sleep(0.2)
        assert handle.sessions == 0
        assert recorder.events == [("start", "alice"), ("end", "alice")]
    finally:
        handle.end("success")
