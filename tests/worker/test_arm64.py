"""An arm64 guest runs a job through the real worker (issue 14): `arch: arm64`, or
builds.sr.ht's other spelling `arch: aarch64`, boots debian/bookworm's arm64 image under
qemu-system-aarch64 (TCG: always emulated on this x86 host) and the guest says it is an
aarch64 bookworm, with its SSH host key checked against config.yml's `arm64` fingerprint.

The image is built by `images/debian/genimg bookworm arm64` (up to an hour here: the tree boots
once in emulation, docs/images.md), so CI does not build it by default (with the suite that
would pass CI's 90 minutes on these hosts). Without it the test is skipped with that command,
except when the set-up was asked for it (`bookworm/arm64` in BUILDWORKER_IMAGES): then it fails.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pytest
import yaml
from worker_helpers import IMAGES, Stack

from buildworker.guest.images import ImageCatalogue, ImageInfo

pytestmark = [pytest.mark.vm, pytest.mark.slow]

#: scripts/setup was asked to build it, so a missing image is a failure, not a skip
ASKED = "bookworm/arm64" in os.environ.get("BUILDWORKER_IMAGES", "").split()


def built_arm64() -> ImageInfo:
    try:
        return ImageCatalogue(IMAGES).resolve("debian/bookworm", "arm64")
    except LookupError as exc:
        how = (
            f"debian/bookworm (arm64) is not built ({exc}); build it with "
            "`images/debian/genimg bookworm arm64` (or "
            'BUILDWORKER_IMAGES="bookworm bookworm/arm64" scripts/setup)'
        )
        if ASKED:
            pytest.fail(f"{how}; BUILDWORKER_IMAGES asked scripts/setup to build it")
        pytest.skip(how)
    raise AssertionError("unreachable")


MANIFEST = """\
image: debian/bookworm
arch: {arch}
tasks:
  - machine: |
      echo "machine=$(uname -m)"
      echo "kernel=$(uname -r)"
      cat /etc/os-release
      ssh-keygen -l -E sha256 -f /etc/ssh/ssh_host_ed25519_key.pub
"""


@pytest.mark.parametrize("arch", ["arm64", "aarch64"])
def test_an_arm64_job_runs_on_an_aarch64_bookworm_guest_with_its_host_key_pinned(
    stack_factory: Any, arch: str
) -> None:
    image = built_arm64()
    assert image.arch == "arm64"
    # The worker checks the guest's host key against this; without one it refuses the guest.
    assert image.host_key_fingerprint and image.host_key_fingerprint.startswith("SHA256:")
    config = yaml.safe_load((image.directory / "config.yml").read_text())
    assert config["host_key_fingerprints"]["arm64"] == image.host_key_fingerprint
    # arm64 guests are never snapshotted (no vmgenid on virt): warm-start stays on, to show
    # the job boots cold anyway and says why.
    stack: Stack = stack_factory(
        images=("debian/bookworm@amd64", "debian/bookworm@arm64"),
        vm={"pool_size": 0, "settle_timeout": 300.0},
    )
    job_id = stack.live.submit(MANIFEST.format(arch=arch))
    t0 = time.monotonic()
    stack.start_daemon()
    job = stack.wait(job_id, timeout=900)
    setup = stack.log(job_id).decode(errors="replace")
    log = stack.log(job_id, "machine").decode(errors="replace").replace("\r\n", "\n")
    assert job["status"] == "success", f"{setup[-3000:]}\n{log[-2000:]}"
    assert job["arch"] == "arm64"  # aarch64 is placed (and queued) as arm64
    assert "Booting image debian/bookworm (arm64)" in setup
    assert "cold boot: no snapshots of aarch64 guests" in setup, setup
    assert re.search(r"^machine=aarch64$", log, re.MULTILINE), log
    assert re.search(r"^VERSION_CODENAME=bookworm$", log, re.MULTILINE), log
    assert re.search(r'^VERSION_ID="12"$', log, re.MULTILINE), log
    kernel = config["kernel_versions"]["arm64"]
    assert kernel.endswith("-arm64")
    assert re.search(rf"^kernel={re.escape(kernel)}$", log, re.MULTILINE), log
    # The key the guest holds is the one config.yml pins for arm64 (SSH was checked with it).
    assert f" {image.host_key_fingerprint} " in log, log
    print(f"arm64 job ({arch}) done in {time.monotonic() - t0:.1f} s")
