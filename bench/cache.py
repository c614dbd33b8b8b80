"""How much the host's package cache saves: one job's ``packages`` step, without and with it.

    .venv/bin/python bench/cache.py [--packages cmake,python3-pip] [--image debian/bookworm]

Runs, with ``buildworker run`` (a real guest, the worker's own runner and steps), a job that
installs the packages four times: twice without ``[cache]``, then twice with ``[cache]
apt-run = yes`` on a fresh cache directory (the first cached run fills it, the second is
served from it). Each run's ``packages`` step is timed from the runner's own step events
(``step_start``/``step_end``, JSON log); printed: the four times, and the second cached run
against each uncached one as a ratio, with the cache's hits and bytes from its transfer log.
The git mirror cache (``sources``) is not built yet: this bench measures packages only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from buildworker.cache.apt import TRANSFER_LOG, TransferLog  # noqa: E402
from buildworker.guest.ports import pick_port  # noqa: E402

VENV = Path(sys.executable).parent
RUNS = (("uncached", 1), ("uncached", 2), ("cached", 1), ("cached", 2))


def write_config(path: Path, work: Path, images: Path, cache: str) -> None:
    path.write_text(
        f"""[worker]
name = benchcache
images = {images}
timeout = 30m

[vm]
ssh-key = {REPO / ".state" / "id_ed25519"}
work-dir = {work / "vms"}
snapshot-dir = /var/lib/buildworker/test-snapshots

[log]
format = json
{cache}"""
    )


def step_seconds(stderr: str, step: str) -> float:
    """The step's duration from the runner's step_start/step_end events."""
    marks: dict[str, datetime] = {}
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(event, dict)
            and event.get("step") == step
            and event.get("event") in ("step_start", "step_end")
        ):
            marks[event["event"]] = datetime.fromisoformat(event["timestamp"])
    if set(marks) != {"step_start", "step_end"}:
        raise SystemExit(f"no {step} step events in the run's log:\n{stderr[-4000:]}")
    return (marks["step_end"] - marks["step_start"]).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", default="cmake,python3-pip")
    parser.add_argument("--image", default="debian/bookworm")
    parser.add_argument(
        "--images",
        type=Path,
        default=Path(os.environ.get("BUILDWORKER_TEST_IMAGES", REPO / "images")),
        help="images directory (default: $BUILDWORKER_TEST_IMAGES, else images/)",
    )
    args = parser.parse_args()
    packages = [p for p in args.packages.split(",") if p]
    work = Path(tempfile.mkdtemp(prefix="bench-cache-", dir="/var/lib/buildworker"))
    work.chmod(0o755)
    (work / "vms").mkdir(mode=0o755)
    manifest = work / "build.yml"
    manifest.write_text(
        f"image: {args.image}\npackages:\n"
        + "".join(f"  - {p}\n" for p in packages)
        + "tasks:\n  - check: |\n      dpkg -s "
        + " ".join(packages)
        + " >/dev/null\n"
    )
    apt_dir = work / "apt-cache"
    cache_section = (
        f"\n[cache]\napt-run = yes\napt-port = {pick_port(below=32768)}\napt-dir = {apt_dir}\n"
    )
    times: dict[tuple[str, int], float] = {}
    try:
        for kind, n in RUNS:
            config = work / f"{kind}.conf"
            write_config(config, work, args.images, cache_section if kind == "cached" else "")
            result = subprocess.run(
                [str(VENV / "buildworker"), "--config", str(config), "run", "-v", str(manifest)],
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            if result.returncode != 0:
                print(result.stdout[-4000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
                raise SystemExit(f"{kind} run {n} failed (exit {result.returncode})")
            times[kind, n] = step_seconds(result.stderr, "packages")
            print(f"{kind} run {n}: packages {times[kind, n]:.1f} s", flush=True)
        transfers = TransferLog(apt_dir / "log" / TRANSFER_LOG).read()
        hits = [t for t in transfers if t.hit]
        served = sum(t.served_bytes for t in transfers)
        fetched = sum(t.fetched_bytes for t in transfers)
        second = times["cached", 2]
        print(f"packages: {', '.join(packages)} on {args.image}")
        for n in (1, 2):
            base = times["uncached", n]
            print(
                f"cached run 2 / uncached run {n}: {second:.1f} / {base:.1f} s = {second / base:.2f}"
            )
        print(
            f"cache: {len(transfers)} files served, {len(hits)} hits; "
            f"{served / 1e6:.1f} MB served, {fetched / 1e6:.1f} MB fetched upstream"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
