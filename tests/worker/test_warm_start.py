"""Warm start through the whole worker: the warm pool, a corrupt snapshot, a dead pooled guest.

Real API, RabbitMQ, daemon and guests. The pool tests size the pool to 1 and run more jobs
than that back to back, so both the pooled guest and the fallback are exercised.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import IMAGES, Stack

from buildworker.config import VmConfig
from buildworker.guest.images import ImageCatalogue
from buildworker.guest.snapstore import SnapshotStore

pytestmark = [pytest.mark.vm, pytest.mark.slow]

BOOT_ID = "image: debian/bookworm\ntasks:\n  - id: cat /proc/sys/kernel/random/boot_id\n"


def boot_id(stack: Stack, job_id: int) -> str:
    text = stack.log(job_id, "id").decode(errors="replace")
    ids = [line.strip() for line in text.splitlines() if len(line.strip()) == 36]
    assert ids, text
    return ids[-1]


def starts(stack: Stack, path: str) -> float:
    assert stack.daemon is not None
    value = stack.daemon.metrics.registry.get_sample_value(
        "buildworker_guest_starts_total",
        {"image": "debian/bookworm", "arch": "amd64", "path": path},
    )
    return value or 0.0


#: One pooled guest, of bookworm only: the images directory may hold other releases (CI builds
#: trixie and sid), each of which would otherwise get a guest of its own.
BOOKWORM_POOL = {"pool_size": 0, "pool_sizes": ("debian/bookworm@amd64=1",)}


def test_a_pooled_guest_serves_one_job_and_each_job_gets_its_own_machine(
    stack_factory: Any,
) -> None:
    stack: Stack = stack_factory(vm=BOOKWORM_POOL)
    daemon = stack.start_daemon(pool=True)
    assert stack.pool is not None
    pooled = {g.domain_name for g in stack.pool.guests()}
    assert len(pooled) == 1
    ready = daemon.metrics.registry.get_sample_value(
        "buildworker_pool_ready", {"image": "debian/bookworm", "arch": "amd64"}
    )
    assert ready == 1.0
    # When three jobs come back to back, more than the pool holds
    jobs = [stack.live.submit(BOOT_ID) for _ in range(3)]
    for job_id in jobs:
        assert stack.wait(job_id)["status"] == "success", stack.log(job_id)[-1500:]
    # Then each ran on a machine of its own: three boot ids, none of them the snapshot's
    ids = [boot_id(stack, job_id) for job_id in jobs]
    assert len(set(ids)) == 3, ids
    # The first took the pooled guest, and its setup log says so
    first_log = stack.log(jobs[0]).decode()
    assert "Warm start: a guest from the warm pool" in first_log, first_log
    assert "(warm pool)" in first_log
    assert starts(stack, "pool") >= 1
    assert starts(stack, "pool") + starts(stack, "snapshot") + starts(stack, "cold") == 3
    # And the pooled guest it took is gone (used once, never returned)
    assert not pooled & {g.domain_name for g in stack.pool.guests()}
    listing = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not pooled & set(listing)


def test_a_dead_pooled_guest_is_not_given_to_a_job(stack_factory: Any) -> None:
    stack: Stack = stack_factory(vm=BOOKWORM_POOL)
    stack.start_daemon(pool=True)
    assert stack.pool is not None
    (dead,) = [g.domain_name for g in stack.pool.guests()]
    # When the pooled guest dies while it waits
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", dead], check=True, timeout=60)
    job_id = stack.live.submit(BOOT_ID)
    # Then the job still succeeds, on a guest restored for it
    assert stack.wait(job_id)["status"] == "success", stack.log(job_id)[-1500:]
    log = stack.log(job_id).decode()
    assert "Warm start: restored from snapshot" in log, log
    assert starts(stack, "pool") == 0 and starts(stack, "snapshot") == 1


def test_a_corrupt_snapshot_still_runs_the_job_cold_and_is_made_again(
    stack_factory: Any,
) -> None:
    # Given this worker's own copy of the image's snapshot, with one byte flipped
    shared_dir = VmConfig().snapshot_dir
    image = ImageCatalogue(IMAGES).resolve("debian/bookworm", None)
    own_dir = Path("/var/lib/buildworker/test-vms") / f"snaps-{uuid.uuid4().hex[:8]}"
    stack: Stack = stack_factory(vm={"snapshot_dir": own_dir, "pool_size": 0})
    stack.start_daemon()
    assert stack.vms is not None
    shared = SnapshotStore(shared_dir).get(stack.vms.shape_of(image))[0]
    if shared is None:
        shared = stack.vms.ensure_snapshot(image)[0]
        own_dir.mkdir(parents=True, mode=0o755)
        shutil.move(shared.directory, own_dir / shared.directory.name)
    else:
        own_dir.mkdir(parents=True, mode=0o755)
        shutil.copytree(shared.directory, own_dir / shared.directory.name)
    try:
        state = own_dir / shared.directory.name / "state.bin"
        with open(state, "r+b") as fh:
            fh.seek(state.stat().st_size // 3)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0x5A]))
        # When a job comes
        job_id = stack.live.submit(BOOT_ID)
        # Then it succeeds through a cold boot, and the setup log says why
        assert stack.wait(job_id)["status"] == "success", stack.log(job_id)[-1500:]
        log = stack.log(job_id).decode()
        assert "Warm start: cold boot: snapshot" in log and "fails its checksum" in log, log
        assert "(cold boot)" in log
        # And the snapshot is made again, so the next job is a restore
        assert stack.vms.wait_snapshots(300)
        remade, why = SnapshotStore(own_dir).get(stack.vms.shape_of(image))
        assert remade is not None, why
        again = stack.live.submit(BOOT_ID)
        assert stack.wait(again)["status"] == "success"
        assert "Warm start: restored from snapshot" in stack.log(again).decode()
        assert starts(stack, "cold") == 1 and starts(stack, "snapshot") == 1
    finally:
        stack.stop_daemon()
        shutil.rmtree(own_dir, ignore_errors=True)
