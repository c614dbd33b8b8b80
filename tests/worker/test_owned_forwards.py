"""Forwards belong to the `buildworker worker` processes that asked for them (issue 9, item 4).

Real worker processes (API in this process, a fresh vhost, no job: no guest is booted) with
`[vm] forwards` are started and stopped with SIGTERM and SIGKILL; after each stop and the next
start, the host's forward set holds only ports of live owners, and of ours only those of the
workers still running.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_helpers import IMAGES, SSH_KEY, WORKER_TOKEN, LiveApi, api_config, vm_work_dir

from buildworker.guest.grants import owner_alive, parse_owners
from buildworker.guest.isolation import PORT_OWNERS_SET, Nft, forwarded_ports

pytestmark = pytest.mark.slow

#: One port per worker, and one that workers A and B both forward. Nobody else uses these.
PA, PB, PC, PD, SHARED = 64961, 64962, 64963, 64964, 64965
OURS = {PA, PB, PC, PD, SHARED}


@pytest.fixture
def live(data_dir: Path, sqlite_url: str, amqp_url: str) -> Iterator[LiveApi]:
    api = LiveApi(api_config(data_dir, sqlite_url, amqp_url))
    yield api
    api.close()


class Workers:
    def __init__(self, live: LiveApi, amqp_url: str, tmp: Path) -> None:
        self.live, self.amqp_url, self.tmp = live, amqp_url, tmp
        self.work_dir = vm_work_dir()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *ports: int) -> subprocess.Popen[bytes]:
        forwards = ", ".join(f"10.0.2.2:{p}=127.0.0.1:{p}" for p in ports)
        conf = self.tmp / f"{name}.conf"
        conf.write_text(
            f"[broker]\nurl = {self.amqp_url}\nreconnect-max = 2s\n"
            f"[worker]\nname = owned-{name}-{uuid.uuid4().hex[:6]}\napi-url = {self.live.url}\n"
            f"token = {WORKER_TOKEN}\nimages = {IMAGES}\ndrain-timeout = 30s\n"
            f"[vm]\nssh-key = {SSH_KEY}\nwork-dir = {self.work_dir}\nforwards = {forwards}\n"
            "warm-start = no\n"  # no guest is needed here: no snapshot, no pool to leak
            "[log]\nlevel = info\n"
        )
        log = (self.tmp / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "buildworker.cli",
                "worker",
                "--no-metrics",
                "--config",
                str(conf),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        # Its grant is claimed when the hypervisor starts, before it registers and consumes;
        # wait for both (a SIGTERM before the daemon's handlers are in would just kill it).
        wait_for(lambda: set(ports) <= owned_by(proc.pid), f"worker {name}'s forwards", self, name)
        wait_for(lambda: "worker_started" in self.log(name), f"worker {name}", self, name)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()[-3000:]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.work_dir, ignore_errors=True)


def owned_by(pid: int) -> set[int]:
    owners = parse_owners(Nft().set_elements(PORT_OWNERS_SET) or [], [], [])
    return {port for owner, g in owners.items() if owner.pid == pid for port in g.ports}


def wait_for(predicate: object, what: str, workers: Workers, name: str) -> None:
    deadline = time.monotonic() + 120
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{workers.log(name)}")
        time.sleep(0.2)


def assert_only_live(expected_ours: set[int]) -> None:
    """Of our ports exactly `expected_ours`; and every port in the set has a live owner."""
    ports = forwarded_ports()
    assert ports & OURS == expected_ours
    owners = parse_owners(Nft().set_elements(PORT_OWNERS_SET) or [], [], [])
    live_ports = {p for owner, g in owners.items() if owner_alive(owner) for p in g.ports}
    assert ports <= live_ports, f"ports without a live owner: {ports - live_ports}"


@pytest.fixture
def workers(live: LiveApi, amqp_url: str, tmp_path: Path) -> Iterator[Workers]:
    made = Workers(live, amqp_url, tmp_path)
    yield made
    made.close()


def test_forwards_of_stopped_and_killed_workers_leave_the_set(workers: Workers) -> None:
    # Given two workers, A and B, that both forward SHARED
    workers.start("a", PA, SHARED)
    b = workers.start("b", PB, SHARED)
    assert_only_live({PA, PB, SHARED})
    # When A gets SIGTERM: it drains, exits 0 and withdraws PA; SHARED stays, B holds it
    a = workers.procs["a"]
    a.send_signal(signal.SIGTERM)
    assert a.wait(120) == 0, workers.log("a")
    assert_only_live({PB, SHARED})
    # And the next start (C) changes nothing of B's
    c = workers.start("c", PC)
    assert_only_live({PB, SHARED, PC})
    # When B is killed with SIGKILL (nothing withdrawn), its ports linger until...
    b.kill()
    b.wait(10)
    assert {PB, SHARED} <= forwarded_ports()
    # ...the next start of any worker on the host (D) removes them
    d = workers.start("d", PD)
    assert_only_live({PC, PD})
    # When C gets SIGTERM and D SIGKILL, then another worker starts
    c.send_signal(signal.SIGTERM)
    assert c.wait(120) == 0, workers.log("c")
    assert_only_live({PD})
    d.kill()
    d.wait(10)
    e = workers.start("e", PA)
    # Then only the live worker's port is left
    assert_only_live({PA})
    e.send_signal(signal.SIGTERM)
    assert e.wait(120) == 0, workers.log("e")
    assert_only_live(set())
