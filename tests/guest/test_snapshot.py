"""Snapshot boot: copies of a settled guest's saved memory, each on its own overlay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageInfo
from buildworker.guest.ssh import GuestConnection

from .conftest import make_vm_config, unique_worker

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def snap_hv(vm_work_dir: Path) -> Iterator[Hypervisor]:
    hv = Hypervisor(make_vm_config(vm_work_dir, snapshot_boot=True), worker_name=unique_worker("s"))
    yield hv
    hv.reap_leftovers()
    hv.close()


def output(conn: GuestConnection, command: str) -> str:
    chunks: list[bytes] = []
    assert conn.run(command, pty=False, on_output=chunks.append) == 0
    return b"".join(chunks).decode()


def test_two_copies_of_one_snapshot_run_at_once_independently(
    snap_hv: Hypervisor, bookworm: ImageInfo
) -> None:
    # Given the first boot saved a snapshot (a cold boot), two copies start from it.
    first = snap_hv.boot(bookworm, job_id=1, attempt=1)
    second = snap_hv.boot(bookworm, job_id=2, attempt=1)
    try:
        assert first.restored and second.restored
        assert first.ssh_port != second.ssh_port
        a = first.wait_ready(120)
        b = second.wait_ready(120)
        # Their clocks were set to now, not to when the snapshot was taken.
        for conn in (a, b):
            assert abs(float(output(conn, "date -u +%s.%N")) - time.time()) < 5
        # Their random streams differ (new VM generation id → the kernel reseeds).
        assert output(a, "head -c 32 /dev/urandom | od -An -tx1") != output(
            b, "head -c 32 /dev/urandom | od -An -tx1"
        )
        # Each writes to its own overlay.
        a.upload("mine", b"first")
        assert b.run("test -e mine", pty=False) != 0
        assert output(a, "uname -n").strip() == "build"
    finally:
        first.destroy()
        second.destroy()
    assert not first.directory.exists() and not second.directory.exists()


def test_discarded_snapshots_are_deleted(snap_hv: Hypervisor, vm_work_dir: Path) -> None:
    saved = [p for p in vm_work_dir.iterdir() if "-snap-" in p.name]
    assert saved, "the module's snapshot exists while its hypervisor is open"
    assert sorted(snap_hv.discard_snapshots()) == sorted(saved)
    assert not any(p.exists() for p in saved)
