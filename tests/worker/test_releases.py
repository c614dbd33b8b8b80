"""Every Debian release genimg builds boots under the worker and runs a job (issue 14).

One job per release through the real API, RabbitMQ, daemon and a cold-booted guest: the
guest's host key is checked against the image's config.yml (the worker refuses a guest it
cannot verify), a package installs from the release's archive, and the guest says which
release and machine it is. scripts/setup builds bookworm only; a release that is not built is
skipped with the command that builds it, except in CI (CI=true), which builds them all first
(.ci/run), so there a missing image fails.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml
from worker_helpers import IMAGES, Stack

from buildworker.guest.images import ImageCatalogue, ImageInfo

pytestmark = [pytest.mark.vm, pytest.mark.slow]

IN_CI = os.environ.get("CI") == "true"

#: What /etc/os-release says per release. sid's VERSION_CODENAME is the testing release's
#: (forky/sid today, another name after the next release), so sid is told by its PRETTY_NAME.
OS_RELEASE = {
    "bookworm": (r"^VERSION_CODENAME=bookworm$", r'^VERSION_ID="12"$'),
    "trixie": (r"^VERSION_CODENAME=trixie$", r'^VERSION_ID="13"$'),
    "sid": (r'^PRETTY_NAME="Debian GNU/Linux [a-z]+/sid"$',),
}

#: genimg's alias symlinks (images/debian/genimg link_aliases).
#: What the suites are today (Dec 2026: trixie stable since Aug 2025, forky testing), as
#: images/debian/link-aliases reads from the mirror (or its own table, offline).
ALIASES = {"oldstable": "bookworm", "stable": "trixie", "unstable": "sid"}


def built(release: str) -> ImageInfo:
    """The release's amd64 image, or a skip (a failure in CI) saying how to build it."""
    try:
        return ImageCatalogue(IMAGES).resolve(f"debian/{release}", "amd64")
    except LookupError as exc:
        how = (
            f"debian/{release} (amd64) is not built ({exc}); build it with "
            f'`images/debian/genimg {release}` (or BUILDWORKER_IMAGES="bookworm trixie sid" '
            "scripts/setup)"
        )
        if IN_CI:
            pytest.fail(f"{how}; CI builds every release first (.ci/run sets CI=true)")
        pytest.skip(how)
    raise AssertionError("unreachable")


MANIFEST = """\
image: debian/{release}
{packages}
tasks:
  - release: |
      cat /etc/os-release
      echo "debian_version=$(cat /etc/debian_version)"
      echo "machine=$(uname -m)"
      echo "kernel=$(uname -r)"
      ssh-keygen -l -E sha256 -f /etc/ssh/ssh_host_ed25519_key.pub
      if command -v jq >/dev/null; then echo '"{release}"' | jq -r '"jq says " + .'; fi
"""


@pytest.mark.parametrize("release", list(OS_RELEASE))
def test_each_built_release_boots_and_runs_a_job_naming_itself(
    stack_factory: Any, release: str
) -> None:
    image = built(release)
    # The worker checks the guest's host key against this; without one it refuses the guest.
    assert image.host_key_fingerprint and image.host_key_fingerprint.startswith("SHA256:")
    # A cold boot: this is about the image booting, not about warm-start snapshots of it.
    stack: Stack = stack_factory(
        images=(f"debian/{release}@amd64",), vm={"warm_start": False, "pool_size": 0}
    )
    # bookworm's `packages` step is what test_e2e_daemon runs (a minute under TCG); the other
    # releases' apt sources are this change's (sid's may skip the expiry check: genimg).
    packages = "" if release == "bookworm" else "packages: [jq]"
    job_id = stack.live.submit(MANIFEST.format(release=release, packages=packages))
    stack.start_daemon()
    job = stack.wait(job_id, timeout=480)
    setup = stack.log(job_id).decode(errors="replace")
    # Tasks run on a PTY: its line ends are \r\n.
    log = stack.log(job_id, "release").decode(errors="replace").replace("\r\n", "\n")
    assert job["status"] == "success", f"{setup[-2000:]}\n{log[-2000:]}"
    assert job["image"] == f"debian/{release}"
    assert f"Booting image debian/{release} (amd64)" in setup
    for pattern in OS_RELEASE[release]:
        assert re.search(pattern, log, re.MULTILINE), f"{pattern!r} not in:\n{log}"
    if release == "sid":
        assert re.search(r"^debian_version=[a-z]+/sid$", log, re.MULTILINE), log
    assert re.search(r"^machine=x86_64$", log, re.MULTILINE), log
    # The kernel the worker booted directly is the release's own (genimg records it).
    kernel = yaml.safe_load((image.directory / "config.yml").read_text())["kernel_version"]
    assert re.search(rf"^kernel={re.escape(kernel)}$", log, re.MULTILINE), log
    # The key the guest holds is the one config.yml records (the one SSH was checked against).
    assert f" {image.host_key_fingerprint} " in log, log
    if packages:
        # The package came from the release's archive through the guest's own apt.
        assert f"jq says {release}" in log, log


@pytest.mark.parametrize(("alias", "release"), list(ALIASES.items()))
def test_the_aliases_point_at_the_built_releases(alias: str, release: str) -> None:
    built(release)
    info = ImageCatalogue(IMAGES).resolve(f"debian/{alias}", "amd64")
    assert info.name == f"debian/{release}"
    assert info.requested_name == f"debian/{alias}"


def test_an_alias_of_a_release_not_built_here_is_not_linked() -> None:
    # testing is forky, which genimg does not build: no alias, rather than a wrong release.
    if (IMAGES / "debian" / "forky" / "config.yml").exists():
        pytest.skip("forky is built here")
    assert not (IMAGES / "debian" / "testing").exists()
