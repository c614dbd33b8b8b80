"""How much the host's caches save: one job's ``packages`` and ``sources`` steps, without and
with them.

    .venv/bin/python bench/cache.py [--packages cmake,python3-pip] [--image debian/bookworm]
        [--repo-commits 200 --repo-files 8 --repo-file-bytes 6000]

Runs, with ``buildworker run`` (a real guest, the worker's own runner and steps), a job that
installs the packages and clones a repository four times: twice without ``[cache]``, then
twice with ``[cache] apt-run = yes`` and ``git = yes`` on fresh cache directories (the first
cached run fills them, the second is served from them). Each run's ``packages`` and
``sources`` steps are timed from the runner's own step events (``step_start``/``step_end``,
JSON log); printed: the times, and the second cached run against each uncached one as
ratios, with the package cache's hits and bytes from its transfer log and the mirror's size.

The repository (no public forge is reachable from a test host) is generated with history
(``--repo-*``: each commit rewrites that many files of random text) and served by a
FakeGitForge (``git daemon``) on a loopback port. Uncached runs clone it as
``git://10.0.2.2:PORT/repo.git`` through a ``[vm] forwards`` entry of that port (as a guest
would clone a forge direct); cached runs as ``git://127.0.0.1:PORT/repo.git``, the address
the host's mirror fetches from, listed in ``git-private-hosts`` (the guest itself cannot
reach it: the clone can only come through the mirror). The sources step of a cached run
includes the host-side update of the mirror (``git fetch``) before the guest's clone.
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
from tests.guest.git_forge import FakeGitForge  # noqa: E402

VENV = Path(sys.executable).parent
RUNS = (("uncached", 1), ("uncached", 2), ("cached", 1), ("cached", 2))


def write_config(path: Path, work: Path, images: Path, forge_port: int, cache: str) -> None:
    path.write_text(
        f"""[worker]
name = benchcache
images = {images}
timeout = 30m

[vm]
ssh-key = {REPO / ".state" / "id_ed25519"}
work-dir = {work / "vms"}
snapshot-dir = /var/lib/buildworker/test-snapshots
forwards = 10.0.2.2:{forge_port}=127.0.0.1:{forge_port}

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
    parser.add_argument("--repo-commits", type=int, default=200)
    parser.add_argument("--repo-files", type=int, default=8)
    parser.add_argument("--repo-file-bytes", type=int, default=6000)
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
    forge = FakeGitForge(work / "forge").start()
    head = forge.generate("repo", args.repo_commits, args.repo_files, args.repo_file_bytes)
    repo_bytes = sum(f.stat().st_size for f in forge.path("repo").rglob("*") if f.is_file())
    apt_dir, git_dir = work / "apt-cache", work / "git-cache"
    cache_section = (
        f"\n[cache]\napt-run = yes\napt-port = {pick_port(below=32768)}\napt-dir = {apt_dir}\n"
        f"git = yes\ngit-port = {pick_port()}\ngit-dir = {git_dir}\n"
        f"git-private-hosts = 127.0.0.1:{forge.port}\n"
    )
    steps = ("packages", "sources")
    times: dict[tuple[str, int, str], float] = {}
    try:
        for kind, n in RUNS:
            cached = kind == "cached"
            url = forge.url("repo", host="127.0.0.1" if cached else "10.0.2.2")
            manifest = work / f"{kind}.yml"
            manifest.write_text(
                f"image: {args.image}\npackages:\n"
                + "".join(f"  - {p}\n" for p in packages)
                + f"sources:\n  - {url}\n"
                + "tasks:\n  - check: |\n      dpkg -s "
                + " ".join(packages)
                + " >/dev/null\n"
                + f'      test "$(git -C repo rev-parse HEAD)" = {head}\n'
                + f'      test "$(git -C repo remote get-url origin)" = {url}\n'
            )
            config = work / f"{kind}.conf"
            write_config(config, work, args.images, forge.port, cache_section if cached else "")
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
            for step in steps:
                times[kind, n, step] = step_seconds(result.stderr, step)
            print(
                f"{kind} run {n}: "
                + ", ".join(f"{step} {times[kind, n, step]:.1f} s" for step in steps),
                flush=True,
            )
        transfers = TransferLog(apt_dir / "log" / TRANSFER_LOG).read()
        hits = [t for t in transfers if t.hit]
        served = sum(t.served_bytes for t in transfers)
        fetched = sum(t.fetched_bytes for t in transfers)
        mirror_bytes = sum(f.stat().st_size for f in git_dir.rglob("*") if f.is_file())
        print(f"packages: {', '.join(packages)} on {args.image}")
        print(
            f"sources: a repository of {args.repo_commits} commits, "
            f"{repo_bytes / 1e6:.1f} MB (bare, packed)"
        )
        for step in steps:
            second = times["cached", 2, step]
            for n in (1, 2):
                base = times["uncached", n, step]
                print(
                    f"{step}: cached run 2 / uncached run {n}: "
                    f"{second:.1f} / {base:.1f} s = {second / base:.2f}"
                )
        print(
            f"package cache: {len(transfers)} files served, {len(hits)} hits; "
            f"{served / 1e6:.1f} MB served, {fetched / 1e6:.1f} MB fetched upstream"
        )
        print(f"git cache: the mirror takes {mirror_bytes / 1e6:.1f} MB")
    finally:
        forge.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
