"""Acceptance (issue 14): a manifest asking for ``debian/stable`` runs on the release the
alias names, through the real API, RabbitMQ, the worker daemon and a libvirt guest, and the
job record and the setup log say which release it was and its digest."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import worker_helpers
from worker_helpers import Stack

from buildworker.guest.imagedigest import compute_digest, write_digests

pytestmark = [pytest.mark.vm, pytest.mark.slow]

#: Reachable by the libvirt-qemu user (pytest's tmp dirs are 0700).
ROOT = Path("/var/lib/buildworker/test-vms")


@pytest.fixture
def images_with_digest(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """An images directory whose debian/bookworm is the built one (its files linked, not
    copied) with a digest recorded, and debian/stable a symlink to it."""
    built = worker_helpers.IMAGES / "debian" / "bookworm"
    root = ROOT / f"img-{uuid.uuid4().hex[:8]}"
    arch_dir = root / "debian" / "bookworm" / "amd64"
    arch_dir.mkdir(parents=True)
    for path in (root, root / "debian", root / "debian" / "bookworm", arch_dir):
        path.chmod(0o755)
    for name in ("root.img.qcow2", "vmlinuz", "initrd.img", ".recipe"):
        (arch_dir / name).symlink_to(built / "amd64" / name)
    shutil.copy(built / "config.yml", root / "debian" / "bookworm" / "config.yml")
    digest = compute_digest(arch_dir)
    write_digests(root / "debian" / "bookworm" / "config.yml", {"amd64": digest})
    (root / "debian" / "stable").symlink_to("bookworm")
    monkeypatch.setattr(worker_helpers, "IMAGES", root)
    yield root, digest
    shutil.rmtree(root, ignore_errors=True)


def test_debian_stable_runs_on_the_release_it_names_and_the_record_says_so(
    stack_factory: Any, images_with_digest: tuple[Path, str]
) -> None:
    _, digest = images_with_digest
    # A cold boot: these files' paths are new to the shared snapshot directory.
    stack: Stack = stack_factory(vm={"warm_start": False})
    # Given a worker whose debian/stable is a symlink to bookworm (registered at start)
    stack.start_daemon()
    # When a manifest asks for debian/stable
    job_id = stack.live.submit(
        "image: debian/stable\ntasks:\n  - release: |\n      . /etc/os-release; echo $VERSION_CODENAME\n"
    )
    job = stack.wait(job_id)
    setup = stack.log(job_id).decode(errors="replace")
    assert job["status"] == "success", setup
    # Then it ran on bookworm, and the guest says so
    assert "bookworm" in stack.log(job_id, "release").decode()
    # and the setup log names the release, the alias and the digest
    assert f"Image: debian/bookworm (asked as debian/stable), amd64, digest {digest}" in setup
    # and so does the job record, beside the name as asked
    assert job["image"] == "debian/stable"
    assert job["image_release"] == "debian/bookworm"
    assert job["image_digest"] == digest
