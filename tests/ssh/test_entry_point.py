"""The SSH entry point on Debian's sshd with the shipped configuration, the real OpenSSH client,
the real API and the worker's control server (no VM: what needs a guest is in test_connect_vm).

Who gets in (a registered key; the owner or access:write), what they are told otherwise, that
no shell or forwarding on the host is ever reachable, and `tail`.
"""

from __future__ import annotations

import io
import pwd
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pexpect
import pytest

from buildworker.ssh.texts import BUILD_CANCELLED
from buildworker.worker.control import JobHandle
from buildworker.worker.logs import SETUP_LOG

from .entry import KEYS_USER, SSH_USER, EntryPoint, free_port

pytestmark = pytest.mark.slow


def as_user(user: str, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,  # type: ignore[arg-type]
    )


def test_an_unregistered_key_is_refused_by_sshd(entry_point: EntryPoint) -> None:
    job = entry_point.submit_running_job()
    result = entry_point.run("dave", f"connect {job}")
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr
    assert result.stdout == ""


def test_the_keys_command_prints_a_forced_restricted_line_for_the_keys_owner(
    entry_point: EntryPoint,
) -> None:
    conf = entry_point.root / "worker.conf"
    launcher = str(entry_point.root / "bin" / "buildworker")
    kind, data = entry_point.people["bob"].key.with_suffix(".pub").read_text().split()[:2]
    # Run as sshd runs it: as the keys user, which may read worker.conf
    result = as_user(
        KEYS_USER,
        launcher,
        "--config",
        str(conf),
        "ssh",
        "authorized-keys",
        SSH_USER,
        kind,
        data,
    )
    assert result.returncode == 0, result.stderr
    socket_path = entry_point.root / "run" / "control.sock"
    assert result.stdout == (
        f'restrict,pty,command="{launcher} ssh shell --socket {socket_path} bob" {kind} {data}\n'
    )
    # another login name, or a key nobody registered, gets nothing
    other = as_user(
        KEYS_USER,
        launcher,
        "--config",
        str(conf),
        "ssh",
        "authorized-keys",
        "root",
        kind,
        data,
    )
    assert other.returncode == 0 and other.stdout == ""
    dkind, ddata = entry_point.people["dave"].key.with_suffix(".pub").read_text().split()[:2]
    unknown = as_user(
        KEYS_USER,
        launcher,
        "--config",
        str(conf),
        "ssh",
        "authorized-keys",
        SSH_USER,
        dkind,
        ddata,
    )
    assert unknown.returncode == 0 and unknown.stdout == ""


def registered_job(entry_point: EntryPoint, **fields: Any) -> tuple[int, JobHandle]:
    job = entry_point.submit_running_job(**fields)
    handle = entry_point.control.register(job, deadline=lambda: time.time() + 600)
    return job, handle


def test_another_users_key_is_not_permitted_and_an_unknown_job_is_not_found(
    entry_point: EntryPoint,
) -> None:
    job, handle = registered_job(entry_point)
    try:
        refused = entry_point.run("bob", f"connect {job}")
        assert refused.returncode == 1, refused.stderr
        assert "You are not permitted to connect to this job." in refused.stderr
        tail = entry_point.run("bob", f"tail {job}")
        assert tail.returncode == 1
        assert "You are not permitted to connect to this job." in tail.stderr
        unknown = entry_point.run("alice", "connect 999999")
        assert unknown.returncode == 1 and "No such job found." in unknown.stderr
    finally:
        handle.end("success")


def test_a_job_without_a_build_environment_here_says_so(entry_point: EntryPoint) -> None:
    running_elsewhere = entry_point.submit_running_job()  # claimed, but not in the registry
    result = entry_point.run("alice", f"connect {running_elsewhere}")
    assert result.returncode == 1
    assert f"Build job #{running_elsewhere} (running) has no build environment on this host." in (
        result.stderr
    )


def test_no_command_or_another_command_never_reaches_a_shell_on_the_host(
    entry_point: EntryPoint,
) -> None:
    for command in (
        "id",
        "bash -i",
        "/bin/sh -c id",
        "scp -t /tmp",
        "connect 1; id",
        "rsync --server .",
    ):
        result = entry_point.run("alice", command)
        assert "uid=" not in result.stdout + result.stderr, command
        assert result.returncode == 1, (command, result.stderr)
        assert "I do not provide an interactive shell" in result.stderr, command
    # a plain login on a terminal: the greeting, then the connection closes
    child = entry_point.spawn("alice", "")
    child.expect("Hi ~alice! You've successfully authenticated")
    child.expect(pexpect.EOF)
    child.close()
    assert "uid=" not in child.before
    # subsystems (sftp) are not served: none is declared, so sshd refuses the request
    sftp = subprocess.run(
        [
            "sftp",
            "-b",
            "-",
            *entry_point.ssh_argv("alice", tty=False)[:-1],
            f"{SSH_USER}@127.0.0.1",
        ],
        input="ls /\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sftp.returncode != 0 and "bin" not in sftp.stdout
    subsystem = entry_point.run("alice", "sftp", "-s")
    assert subsystem.returncode == 255
    assert "subsystem request failed" in subsystem.stderr


class _Target(threading.Thread):
    """A TCP server on loopback that a forwarding would reach: counts connections."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.sendall(b"secret host service\n")
            conn.close()


def test_port_forwarding_is_refused_both_ways(entry_point: EntryPoint) -> None:
    target = _Target()
    target.start()
    try:
        # -R: sshd refuses to listen for us
        remote = entry_point.run(
            "alice",
            "",
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            f"127.0.0.1:0:127.0.0.1:{target.port}",
        )
        assert remote.returncode == 255 and "remote port forwarding failed" in remote.stderr
        # -L: the client listens, but every channel sshd is asked to open is refused
        local_port = free_port()
        client = subprocess.Popen(
            [
                "ssh",
                *entry_point.ssh_argv(
                    "alice",
                    "-N",
                    "-L",
                    f"127.0.0.1:{local_port}:127.0.0.1:{target.port}",
                    tty=False,
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            received = b""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", local_port), timeout=5) as conn:
                        conn.settimeout(10)
                        received = conn.recv(100)
                        break
                except OSError:
                    time.sleep(0.3)
            assert received == b""
        finally:
            client.terminate()
            try:
                _, stderr = client.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                client.kill()
                _, stderr = client.communicate(timeout=30)
        assert "administratively prohibited" in stderr or "open failed" in stderr, stderr
        assert target.accepted == 0
    finally:
        target.stop.set()
        target.join(5)


def _environ_of_user(uid: int) -> list[dict[str, str]]:
    """The environments of the processes running as ``uid`` (root may read them)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != uid:
                continue
            raw = (proc / "environ").read_bytes()
        except OSError:
            continue
        pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        found.append({k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs})
    return found


def test_agent_forwarding_is_refused(entry_point: EntryPoint, tmp_path: Path) -> None:
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not agent_sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # Given a session that waits (the job's setup never finishes) and asked for -A
        job, handle = registered_job(entry_point)
        try:
            argv = entry_point.ssh_argv("alice", "-A", "-v")
            argv[argv.index("IdentityAgent=none")] = f"IdentityAgent={agent_sock}"
            child = pexpect.spawn("ssh", [*argv, f"connect {job}"], encoding="utf-8", timeout=120)
            transcript = io.StringIO()
            child.logfile_read = transcript
            handle.feed.write(SETUP_LOG, b"[#1] setting up\n")
            child.expect("setting up")
            # Then the forced command runs with no agent socket in its environment
            sessions = [
                env
                for env in _environ_of_user(pwd.getpwnam(SSH_USER).pw_uid)
                if env.get("SSH_ORIGINAL_COMMAND") == f"connect {job}"
            ]
            assert sessions, "the forced command's process was not found"
            assert all("SSH_AUTH_SOCK" not in env for env in sessions)
            # And sshd says the key grants nothing but the command and a PTY
            assert "key options: command pty\r\n" in transcript.getvalue()
            assert "Requesting authentication agent forwarding." in transcript.getvalue()
            handle.end("cancelled", BUILD_CANCELLED)
            child.expect(BUILD_CANCELLED)
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 255
        finally:
            handle.end("cancelled")
    finally:
        agent.terminate()
        agent.wait(10)


def test_tail_follows_the_logs_with_task_prefixes_until_the_build_ends(
    entry_point: EntryPoint,
) -> None:
    job, handle = registered_job(entry_point)
    try:
        handle.feed.write(SETUP_LOG, f"[#{job}] 2026/12/01 10:00:00 Booting image\n".encode())
        child = entry_point.spawn("alice", f"tail {job}")
        child.expect("Booting image")
        # When tasks write while the user follows
        handle.finish_setup()
        handle.feed.write("build", b"compiling foo.c\r\n")
        child.expect(r"\[build\] compiling foo.c")
        handle.feed.write("test", b"1 passed\r\n")
        child.expect(r"\[test\] 1 passed")
        # Then the end of the build ends the tail, with its status, exit 0
        handle.end("success")
        child.expect(f"Build job #{job} ended: success.")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        handle.end("success")


def test_connect_during_setup_shows_the_setup_log_and_a_cancel_ends_it(
    entry_point: EntryPoint,
) -> None:
    job, handle = registered_job(entry_point, **{"access:write": ["carol"]})
    try:
        child = entry_point.spawn("carol", f"connect {job}")
        handle.feed.write(SETUP_LOG, f"[#{job}] 2026/12/01 10:00:01 Installing packages\n".encode())
        child.expect("Installing packages")
        handle.end("cancelled", BUILD_CANCELLED)
        child.expect(BUILD_CANCELLED)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 255
        assert handle.sessions == 0
    finally:
        handle.end("cancelled")


def test_only_the_ssh_user_reaches_the_socket_and_it_cannot_read_the_worker_token(
    entry_point: EntryPoint,
) -> None:
    sock = entry_point.root / "run" / "control.sock"
    st = sock.stat()
    assert oct(st.st_mode & 0o777) == "0o660"
    assert st.st_gid == pwd.getpwnam(SSH_USER).pw_gid
    probe = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')"
    # nobody (and the keys user) cannot connect to the control socket
    for user in ("nobody", KEYS_USER):
        result = as_user(user, "/usr/bin/python3", "-c", probe, str(sock))
        assert "PermissionError" in result.stderr and "connected" not in result.stdout, user
    assert "connected" in as_user(SSH_USER, "/usr/bin/python3", "-c", probe, str(sock)).stdout
    # the SSH user cannot read worker.conf (the worker token); the keys user can
    conf = entry_point.root / "worker.conf"
    denied = as_user(SSH_USER, "cat", str(conf))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert as_user(KEYS_USER, "cat", str(conf)).returncode == 0


def test_a_peer_whose_uid_is_not_admitted_gets_no_answer(
    entry_point: EntryPoint, tmp_path: Path
) -> None:
    from buildworker.ssh import protocol as proto
    from buildworker.worker.control import ControlServer

    job, handle = registered_job(entry_point)
    # a server that admits only the SSH user's uid: root (this test) is turned away
    server = ControlServer(
        tmp_path / "c.sock",
        entry_point.control.authorizer,
        worker_name="w",
        allowed_uids=frozenset({pwd.getpwnam(SSH_USER).pw_uid}),
    ).start()
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(tmp_path / "c.sock"))
            conn.sendall(proto.request_frame({"op": "tail", "job": job, "user": "alice"}))
            conn.settimeout(30)
            try:
                answer = conn.recv(100)
            except ConnectionResetError:  # closed with our request unread
                answer = b""
            assert answer == b""
    finally:
        server.close()
        handle.end("success")


def test_install_again_changes_nothing(entry_point: EntryPoint) -> None:
    from buildworker.config import load_config
    from buildworker.ssh.sshd import install

    conf = entry_point.root / "worker.conf"
    before = (entry_point.root / "sshd_config").read_text()
    done = install(
        load_config(conf), conf, entry_point.root / "bin" / "buildworker", accounts=False
    )
    assert done == []
    assert (entry_point.root / "sshd_config").read_text() == before
    st = conf.stat()
    assert oct(st.st_mode & 0o777) == "0o640"
    assert st.st_gid == pwd.getpwnam(KEYS_USER).pw_gid
