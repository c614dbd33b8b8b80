"""The SSH entry point as a test sets it up: a live API, Debian's sshd on a loopback port with
the shipped configuration, the worker's control server, and the OpenSSH client under pexpect.

Everything lives under /var/lib/buildworker/test-ssh/<id>: sshd insists that the
AuthorizedKeysCommand and every directory above it be root-owned and writable by nobody else
(pytest's tmp dirs are under /tmp, which is world-writable), and the SSH user and the keys
user must reach the socket and the config file.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pexpect

from buildworker.api.accounts import create_token, create_user
from buildworker.config import load_config
from buildworker.ssh.sshd import install, unsafe_path_reasons
from buildworker.worker.control import ControlServer
from buildworker.worker.control_access import ApiAuthorizer

from .conftest import keygen

ROOT = Path("/var/lib/buildworker/test-ssh")
BUILDWORKER = Path(sys.executable).parent / "buildworker"
SSH_USER = "builds"
KEYS_USER = "buildworker-keys"
WORKER_NAME = "ssh-test-worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Person:
    name: str
    key: Path
    token: str = ""


@dataclass
class EntryPoint:
    """A running entry point; ``close`` stops sshd and the control server."""

    root: Path
    port: int
    api: Any  # worker_helpers.LiveApi
    control: ControlServer
    sshd: subprocess.Popen[bytes]
    known_hosts: Path
    people: dict[str, Person] = field(default_factory=dict)

    @property
    def sshd_log(self) -> str:
        return (self.root / "sshd.log").read_text(errors="replace")

    def ssh_argv(self, who: str, *options: str, tty: bool = True) -> list[str]:
        argv = ["-F", "/dev/null", "-p", str(self.port), "-i", str(self.people[who].key)]
        argv += ["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "IdentityAgent=none"]
        argv += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        argv += ["-o", "ConnectTimeout=30"]
        if tty:
            argv.append("-tt")
        return [*argv, *options, f"{SSH_USER}@127.0.0.1"]

    def spawn(self, who: str, command: str, *options: str, **kwargs: Any) -> pexpect.spawn:
        """The OpenSSH client in a pseudo-terminal, as a person would run it."""
        child = pexpect.spawn(
            "ssh",
            [*self.ssh_argv(who, *options), command],
            encoding="utf-8",
            codec_errors="replace",
            timeout=kwargs.pop("timeout", 120),
            dimensions=kwargs.pop("dimensions", (24, 80)),
            env={**os.environ, "TERM": "xterm", "LC_ALL": "C.UTF-8"},
            **kwargs,
        )
        return child

    def run(
        self, who: str, command: str, *options: str, tty: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The OpenSSH client without a terminal; output captured."""
        return subprocess.run(
            ["ssh", *self.ssh_argv(who, *options, tty=tty), command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def add_person(self, name: str, *, register_key: bool = True) -> Person:
        key = keygen(self.root / "keys", name)
        person = Person(name, key)
        if name != "alice":
            with self.api.app.state.sessionmaker() as session:
                user = create_user(session, name, f"{name}@example.org")
                person.token = create_token(session, user, "*").token
                session.commit()
        else:
            person.token = self.api.user_token
        if register_key:
            response = httpx.post(
                f"{self.api.url}/api/user/ssh-keys",
                json={"ssh-key": key.with_suffix(".pub").read_text()},
                headers={"Authorization": f"token {person.token}"},
                timeout=30,
            )
            assert response.status_code == 201, response.text
        self.people[name] = person
        return person

    def submit_running_job(self, owner: str = "alice", **fields: Any) -> int:
        """A job submitted by ``owner`` and claimed by this worker: ``running`` in the API."""
        response = httpx.post(
            f"{self.api.url}/api/jobs",
            json={
                "manifest": "image: debian/bookworm\ntasks:\n  - build: |\n      true\n",
                **fields,
            },
            headers={"Authorization": f"token {self.people[owner].token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        job_id = int(response.json()["id"])
        claimed = httpx.post(
            f"{self.api.url}/api/internal/jobs/{job_id}/claim",
            json={"worker": WORKER_NAME, "attempt": 1},
            headers={"Authorization": f"Bearer {self.api.config.api.worker_token}"},
            timeout=30,
        )
        assert claimed.status_code == 200, claimed.text
        return job_id

    def close(self) -> None:
        self.sshd.terminate()
        try:
            self.sshd.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.sshd.kill()
            self.sshd.wait(timeout=20)
        self.control.close()
        self.api.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _usable_by_others(path: Path) -> bool:
    real = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in real.parents) and bool(real.stat().st_mode & 0o005)


def _launcher(path: Path) -> Path:
    """The `buildworker` that sshd runs (as the keys user) and the forced command uses (as the
    SSH user): root-owned, in a root-owned directory. Where this checkout's virtualenv Python
    is not usable by other users (a pyenv Python under /root, 0700), it is Debian's python3
    on the virtualenv's packages, isolated from Debian's own (-I -S)."""
    if _usable_by_others(Path(sys.executable)):
        path.write_text(f'#!/bin/sh\nexec {BUILDWORKER} "$@"\n')
    else:
        site_packages = (
            Path(sys.executable).parent.parent
            / "lib"
            / f"python{sys.version_info.major}.{sys.version_info.minor}"
            / "site-packages"
        )
        path.write_text(
            "#!/usr/bin/python3 -IS\n"
            "import site, sys\n"
            f"site.addsitedir({str(site_packages)!r})\n"
            "from buildworker.cli import main\n"
            "sys.exit(main())\n"
        )
    path.chmod(0o755)
    return path


def _wait_for_port(port: int, sshd: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sshd.poll() is not None:
            raise RuntimeError(f"sshd exited {sshd.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd did not listen on {port}: {log.read_text()}")


def start_entry_point(api: Any) -> EntryPoint:
    """Install the entry point into a fresh root (the way `buildworker ssh install` does,
    accounts excepted: scripts/setup made them) and start sshd and the control server."""
    for account in (SSH_USER, KEYS_USER):
        try:
            pwd.getpwnam(account)
        except KeyError:
            raise RuntimeError(f"no user {account}: run scripts/setup") from None
    ROOT.mkdir(parents=True, exist_ok=True, mode=0o755)
    root = ROOT / uuid.uuid4().hex[:10]
    root.mkdir(mode=0o755)
    for sub in ("bin", "run", "keys"):
        (root / sub).mkdir(mode=0o755)
    wrapper = _launcher(root / "bin" / "buildworker")
    reasons = unsafe_path_reasons(wrapper)
    if reasons:
        raise RuntimeError(f"sshd would refuse {wrapper}: {reasons}")
    port = free_port()
    conf = root / "worker.conf"
    conf.write_text(
        "\n".join(
            [
                "[worker]",
                f"name = {WORKER_NAME}",
                f"api-url = {api.url}",
                f"token = {api.config.api.worker_token}",
                f"control-socket = {root / 'run' / 'control.sock'}",
                "[ssh]",
                f"listen = 127.0.0.1:{port}",
                f"user = {SSH_USER}",
                f"keys-user = {KEYS_USER}",
                f"host-keys = {root / 'hostkeys'}",
                f"sshd-config = {root / 'sshd_config'}",
                "",
            ]
        )
    )
    conf.chmod(0o600)
    config = load_config(conf)
    done = install(config, conf, wrapper, accounts=False)
    assert any("wrote" in line for line in done), done
    known = root / "known_hosts"
    known.write_text(
        "".join(
            f"[127.0.0.1]:{port} {(path.with_suffix('.pub')).read_text()}"
            for path in sorted((root / "hostkeys").glob("*_key"))
        )
    )
    log = root / "sshd.log"
    sshd = subprocess.Popen(
        [str(config.ssh.sshd), "-D", "-e", "-f", str(config.ssh.sshd_config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    ssh_user = pwd.getpwnam(SSH_USER)
    control = ControlServer(
        config.worker.control_socket,
        ApiAuthorizer(api.url, api.config.api.worker_token),
        worker_name=WORKER_NAME,
        allowed_uids=frozenset({0, ssh_user.pw_uid}),
        group=ssh_user.pw_gid,
    ).start()
    try:
        _wait_for_port(port, sshd, log)
    except BaseException:
        sshd.kill()
        control.close()
        raise
    return EntryPoint(root=root, port=port, api=api, control=control, sshd=sshd, known_hosts=known)
