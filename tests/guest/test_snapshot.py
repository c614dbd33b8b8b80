"""Warm start: copies of a settled guest's saved memory, each its own machine."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildworker.guest.copyprep import own_machine_command, own_machine_sudo
from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageInfo
from buildworker.guest.snapstore import SnapshotStore
from buildworker.guest.ssh import GuestConnection

from .conftest import SNAPSHOT_DIR, VM_TEST_ROOT, make_vm_config, unique_worker

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def snap_hv(vm_work_dir: Path) -> Iterator[Hypervisor]:
    hv = Hypervisor(make_vm_config(vm_work_dir), worker_name=unique_worker("s"))
    yield hv
    hv.reap_leftovers()
    hv.close()


def output(conn: GuestConnection, command: str) -> str:
    chunks: list[bytes] = []
    assert conn.run(command, pty=False, on_output=chunks.append) == 0
    return b"".join(chunks).decode()


def clock_offset(conn: GuestConnection) -> float:
    """Guest clock minus host clock, taking the host's time halfway through the command."""
    before = time.time()
    guest = float(output(conn, "date -u +%s.%N"))
    after = time.time()
    return guest - (before + after) / 2


def test_two_copies_of_one_snapshot_run_at_once_as_their_own_machines(
    snap_hv: Hypervisor, bookworm: ImageInfo
) -> None:
    snapshot, _ = snap_hv.ensure_snapshot(bookworm)
    assert snapshot.directory.parent == SNAPSHOT_DIR
    first = snap_hv.boot(bookworm, job_id=1, attempt=1)
    second = snap_hv.boot(bookworm, job_id=2, attempt=1)
    try:
        assert (first.start_path, second.start_path) == ("snapshot", "snapshot")
        assert snapshot.directory.name in first.start_note
        assert first.ssh_port != second.ssh_port
        a = first.wait_ready(120)
        b = second.wait_ready(120)
        # Each set its clock and boot id on the primed exec launcher, not a channel of its own.
        assert (first.own_machine_way, second.own_machine_way) == ("launcher", "launcher")
        # The template's preparation (copyprep) holds in each copy: sshd listens by itself
        # (not socket-activated), the armed own-machine helper did its work and is gone.
        units = "buildworker-copy-sshd buildworker-ssh.socket buildworker-own-machine"
        for conn in (a, b):
            state = output(conn, f"sudo systemctl is-active {units} || true")
            assert state.split() == ["active", "inactive", "inactive"], state
        # That first command ran on the primed launcher (no sshd session or shell start-up
        # on the critical path); a task-like command takes the primed PTY and has a terminal.
        assert (a.primed_runs, b.primed_runs) == (1, 1)
        tty: list[bytes] = []
        assert a.run("/usr/bin/tty", pty=True, on_output=tty.append) == 0
        assert b"/dev/pts/" in b"".join(tty) and a.primed_runs == 2
        # Their clocks were set to the host's, not left at when the snapshot was saved.
        for conn in (a, b):
            assert abs(clock_offset(conn)) < 2.0
        # Their random streams differ (new VM generation id → the kernel reseeds) ...
        random = "head -c 32 /dev/urandom | od -An -tx1"
        assert output(a, random) != output(b, random)
        # ... and so do their boot ids (journald and build tools key caches on it).
        boot_id = "cat /proc/sys/kernel/random/boot_id"
        ids = {output(a, boot_id).strip(), output(b, boot_id).strip()}
        assert len(ids) == 2 and all(len(i) == 36 for i in ids)
        # Each writes to its own overlay, backed by the snapshot's frozen one.
        a.upload("mine", b"first")
        assert b.run("test -e mine", pty=False) != 0
        assert output(a, "uname -n").strip() == "build"
    finally:
        first.destroy()
        second.destroy()
    assert not first.directory.exists() and not second.directory.exists()
    assert snapshot.state.is_file(), "saved snapshots outlive the guests (and the worker)"


def test_a_corrupt_snapshot_means_a_cold_boot_and_a_new_snapshot(
    snap_hv: Hypervisor, bookworm: ImageInfo, vm_work_dir: Path
) -> None:
    shared, _ = snap_hv.ensure_snapshot(bookworm)
    own_dir = VM_TEST_ROOT / f"snaps-{uuid.uuid4().hex[:8]}"
    own_dir.mkdir(mode=0o755)
    shutil.copytree(shared.directory, own_dir / shared.directory.name)
    hv = Hypervisor(
        make_vm_config(vm_work_dir, snapshot_dir=own_dir), worker_name=unique_worker("c")
    )
    try:
        copy, why = hv.snapshot_for(bookworm)
        assert copy is not None, why
        with open(copy.state, "r+b") as fh:  # one flipped byte in the middle of the memory
            fh.seek(copy.state.stat().st_size // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0xFF]))
        guest = hv.boot(bookworm, job_id=7, attempt=1)
        try:
            assert guest.start_path == "cold"
            assert "fails its checksum" in guest.start_note
            assert "making one in the background" in guest.start_note
            conn = guest.wait_ready(180)
            assert output(conn, "echo ok").strip() == "ok"
        finally:
            guest.destroy()
        assert hv.wait_snapshots(300)
        remade, why = SnapshotStore(own_dir).get(hv.shape_of(bookworm))
        assert remade is not None, why
        again = hv.boot(bookworm, job_id=8, attempt=1)
        try:
            assert again.start_path == "snapshot"
            assert output(again.wait_ready(120), "echo ok").strip() == "ok"
        finally:
            again.destroy()
    finally:
        hv.close()
        shutil.rmtree(own_dir, ignore_errors=True)


def test_warm_start_off_boots_cold_and_says_so(vm_work_dir: Path, bookworm: ImageInfo) -> None:
    hv = Hypervisor(make_vm_config(vm_work_dir, warm_start=False), worker_name=unique_worker("w"))
    try:
        guest = hv.boot(bookworm, job_id=3, attempt=1)
        try:
            assert (guest.start_path, guest.restored) == ("cold", False)
            assert guest.start_note == "cold boot ([vm] warm-start = no)"
            # A cold guest has no armed helper: its own-machine command says so at once
            # (the caller then uses sudo), and the sudo way works.
            conn = guest.wait_ready(180)
            started = time.monotonic()
            assert conn.run(own_machine_command(time.time()), pty=False, timeout=5) != 0
            assert time.monotonic() - started < 5
            assert conn.run(own_machine_sudo(time.time()), pty=False) == 0
            assert abs(clock_offset(conn)) < 2.0
            assert conn.primed_runs == 0, "only restored copies prime their channels"
        finally:
            guest.destroy()
        assert not hv.making_snapshots()
    finally:
        hv.close()


def test_a_worker_start_makes_the_missing_snapshot_so_the_first_job_restores(
    vm_work_dir: Path, bookworm: ImageInfo
) -> None:
    own_dir = VM_TEST_ROOT / f"snaps-{uuid.uuid4().hex[:8]}"
    own_dir.mkdir(mode=0o755)
    hv = Hypervisor(
        make_vm_config(vm_work_dir, snapshot_dir=own_dir), worker_name=unique_worker("p")
    )
    try:
        assert hv.snapshot_for(bookworm)[0] is None
        # What `buildworker worker` does at start without a pool
        hv.prepare_snapshots_soon([bookworm]).join(60)
        assert hv.wait_snapshots(300)
        snapshot, why = hv.snapshot_for(bookworm)
        assert snapshot is not None, why
        guest = hv.boot(bookworm, job_id=9, attempt=1)
        try:
            assert guest.start_path == "snapshot"
        finally:
            guest.destroy()
        # Checked again (a later start): there, intact, nothing made
        hv.prepare_snapshots_soon([bookworm]).join(60)
        assert not hv.making_snapshots()
    finally:
        hv.close()
        shutil.rmtree(own_dir, ignore_errors=True)
