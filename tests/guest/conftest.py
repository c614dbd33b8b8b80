"""Fixtures for the guest area: the built Debian image, the worker's key, a hypervisor.

VM tests share one booted guest per module (boots are ~10 s of two busy cores under TCG).
They need the image from ``images/debian/genimg bookworm`` (scripts/setup builds it) and
fail, not skip, without it: CI builds it first.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildworker.config import VmConfig
from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageCatalogue, ImageInfo

REPO = Path(__file__).resolve().parents[2]
#: A worktree whose images/debian/bookworm is a symlink to another checkout points this at
#: that checkout's images/ (the catalogue refuses images that resolve outside its root).
IMAGES = Path(os.environ.get("BUILDWORKER_TEST_IMAGES", REPO / "images"))
SSH_KEY = REPO / ".state" / "id_ed25519"
#: Overlays must be reachable by the libvirt-qemu user, which pytest's tmp dirs (0700) are not.
VM_TEST_ROOT = Path("/var/lib/buildworker/test-vms")
#: Warm-start snapshots shared by every test (and kept between runs): one cold boot and
#: save per image shape, then every guest of the suite is a restored copy. Tests that break
#: a snapshot on purpose use their own directory.
SNAPSHOT_DIR = Path("/var/lib/buildworker/test-snapshots")


@pytest.fixture(scope="session")
def bookworm() -> ImageInfo:
    catalogue = ImageCatalogue(IMAGES)
    try:
        return catalogue.resolve("debian/bookworm", None)
    except LookupError as exc:
        pytest.fail(f"{exc} — build it with: images/debian/genimg bookworm")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def vm_work_dir() -> Iterator[Path]:
    path = VM_TEST_ROOT / uuid.uuid4().hex[:10]
    path.mkdir(parents=True, mode=0o755)
    VM_TEST_ROOT.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_vm_config(work_dir: Path, **overrides: object) -> VmConfig:
    if not SSH_KEY.exists():
        pytest.fail(f"{SSH_KEY} missing — scripts/setup generates it (and bakes it into the image)")
    values: dict[str, object] = {
        "ssh_key": SSH_KEY,
        "work_dir": work_dir,
        "settle_timeout": 180.0,
        "snapshot_dir": SNAPSHOT_DIR,
    }
    values.update(overrides)
    return VmConfig(**values)  # type: ignore[arg-type]


def unique_worker(tag: str) -> str:
    return f"t{tag}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def hypervisor(vm_work_dir: Path) -> Iterator[Hypervisor]:
    hv = Hypervisor(make_vm_config(vm_work_dir), worker_name=unique_worker("hv"))
    yield hv
    hv.reap_leftovers()
    hv.close()
