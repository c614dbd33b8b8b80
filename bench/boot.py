#!/usr/bin/env python3
"""Boot benchmark: VM start → SSH ready, our settle vs builds.sr.ht's, same image and flags.

    .venv/bin/python bench/boot.py [--runs 10] [--image debian/bookworm] [--config FILE]

Each run boots a fresh guest on a new overlay through ``Hypervisor.boot`` and measures from
just before the domain starts until SSH answers a command:
- ``buildworker``: ``Guest.wait_ready`` (probe from 50 ms doubling to 1 s, banner peek, one
  paramiko login that is then kept);
- ``builds.sr.ht``: spawn ``ssh ... echo hello`` once a second until it exits 0 (their
  worker's settle loop), on the same image with the same QEMU flags.
Runs alternate between the methods so load changes on a shared host hit them alike.
With ``--snapshot``, a third column: guests started from a saved post-boot memory snapshot
(``[vm] warm-start``); making the snapshot (one cold boot + save) is timed separately.
Also printed: time to create an overlay, and the host memory (qemu RSS) per running guest.
The baseline (builds.sr.ht's settle) is measured in the same process; the ratio is theirs
over ours. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from buildworker.config import load_config  # noqa: E402
from buildworker.guest.hypervisor import Guest, Hypervisor  # noqa: E402
from buildworker.guest.images import ImageCatalogue, ImageInfo  # noqa: E402


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p50 of 10 values is the 5th smallest)."""
    ordered = sorted(values)
    rank = max(1, int(-(-pct * len(ordered) // 100)))
    return ordered[rank - 1]


def srht_settle(guest: Guest, key: Path, timeout: float) -> float:
    """builds.sr.ht's settle: `ssh ... echo hello` once a second until it answers."""
    deadline = time.monotonic() + timeout
    command = [
        "ssh", "-q", "-p", str(guest.ssh_port), "-i", str(key),
        "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
        "-o", "LogLevel=quiet", "-o", "ConnectTimeout=5", "-o", "BatchMode=yes",
        "build@localhost", "echo", "hello",
    ]  # fmt: skip
    while time.monotonic() < deadline:
        result = subprocess.run(command, capture_output=True, timeout=60, check=False)
        if result.returncode == 0 and result.stdout.strip() == b"hello":
            return time.monotonic() - guest.started
        time.sleep(1.0)
    raise TimeoutError("builds.sr.ht settle: no answer")


def overlay_seconds(image: ImageInfo, runs: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            target = Path(tmp) / f"o{i}.qcow2"
            start = time.monotonic()
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.disk),
                 str(target)],
                check=True,
            )  # fmt: skip
            times.append(time.monotonic() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="boots per method (default 10)")
    parser.add_argument("--image", default="debian/bookworm")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--config", default=None, help="worker.conf ([vm] and [worker] images)")
    parser.add_argument("--images", type=Path, default=None, help="images directory")
    parser.add_argument("--ours-only", action="store_true", help="skip the builds.sr.ht baseline")
    parser.add_argument(
        "--snapshot", action="store_true", help="also measure restores ([vm] warm-start)"
    )
    args = parser.parse_args()

    config = load_config(
        args.config
        or (REPO / ".state/worker.conf" if (REPO / ".state/worker.conf").exists() else None)
    )
    vm = config.vm
    if not vm.ssh_key.exists() and (REPO / ".state/id_ed25519").exists():
        vm = dataclasses.replace(vm, ssh_key=REPO / ".state/id_ed25519")
    images = args.images or (
        config.worker.images if config.worker.images.exists() else REPO / "images"
    )
    image = ImageCatalogue(images).resolve(args.image, args.arch)
    hv = Hypervisor(dataclasses.replace(vm, warm_start=False), worker_name=f"bench{os.getpid()}")
    print(f"image {image.name} ({image.arch}), accel {hv.accel.accel}: {hv.accel.reason}")
    print(f"vcpus {vm.vcpus}, memory {vm.memory // 1024**2} MiB, {args.runs} boots per method\n")

    ours: list[float] = []
    theirs: list[float] = []
    snap: list[float] = []
    snap_hv: Hypervisor | None = None
    if args.snapshot:
        snap_hv = Hypervisor(
            dataclasses.replace(vm, warm_start=True), worker_name=f"benchs{os.getpid()}"
        )
        start = time.monotonic()
        _, made = snap_hv.ensure_snapshot(image)
        what = "made (one cold boot + save)" if made else "already on disk, checked"
        print(f"snapshot {what} in {time.monotonic() - start:.2f} s\n")
    rss: list[float] = []
    methods = ["buildworker"] + ([] if args.ours_only else ["builds.sr.ht"])
    if snap_hv is not None:
        methods.append("snapshot")
    job = 0
    try:
        for run in range(args.runs):
            for method in methods:
                job += 1
                host = snap_hv if method == "snapshot" and snap_hv is not None else hv
                guest = host.boot(image, job_id=job, attempt=1)
                try:
                    if method == "snapshot":
                        guest.wait_ready(vm.settle_timeout).close()
                        seconds = time.monotonic() - guest.started
                        snap.append(seconds)
                    elif method == "buildworker":
                        conn = guest.wait_ready(vm.settle_timeout)
                        seconds = time.monotonic() - guest.started
                        memory = guest.qemu_rss_bytes()
                        if memory:
                            rss.append(memory / 1024**2)
                        conn.close()
                        ours.append(seconds)
                    else:
                        seconds = srht_settle(guest, vm.ssh_key, vm.settle_timeout)
                        theirs.append(seconds)
                finally:
                    guest.destroy()
                print(f"  run {run + 1:2d} {method:13s} {seconds:6.2f} s", flush=True)
    finally:
        hv.reap_leftovers()
        if snap_hv is not None:
            snap_hv.reap_leftovers()
            snap_hv.close()

    overlays = overlay_seconds(image, max(args.runs, 5))
    print()
    print(f"{'settle method':16s} {'p50 s':>7s} {'p95 s':>7s} {'min s':>7s} {'max s':>7s}")
    rows = (("buildworker", ours), ("builds.sr.ht", theirs), ("snapshot", snap))
    for label, values in rows:
        if values:
            print(
                f"{label:16s} {percentile(values, 50):7.2f} {percentile(values, 95):7.2f} "
                f"{min(values):7.2f} {max(values):7.2f}"
            )
    if snap:
        print(
            f"ratio cold / snapshot: p50 {percentile(ours, 50) / percentile(snap, 50):.2f}x; "
            f"builds.sr.ht / snapshot: p50 "
            f"{percentile(theirs, 50) / percentile(snap, 50) if theirs else float('nan'):.2f}x"
        )
    if theirs:
        print(
            f"\nratio builds.sr.ht / buildworker: p50 {percentile(theirs, 50) / percentile(ours, 50):.2f}x, "
            f"p95 {percentile(theirs, 95) / percentile(ours, 95):.2f}x"
        )
    print(f"overlay create: p50 {percentile(overlays, 50) * 1000:.1f} ms "
          f"(mean {statistics.mean(overlays) * 1000:.1f} ms, {len(overlays)} runs)")  # fmt: skip
    if rss:
        print(f"host memory per running guest (qemu RSS at SSH-ready): p50 {percentile(rss, 50):.0f} MiB, "
              f"max {max(rss):.0f} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
