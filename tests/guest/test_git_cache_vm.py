"""Real guests and the git mirror cache's forward: sources clone through it, nothing else does.

A FakeGitForge on a loopback port (no public forge is reachable here; the guest cannot
reach that port, only the host can), the cache's mirrors and server as ``[cache] git``
starts them with the forge listed in ``git-private-hosts``, a hypervisor whose forwards
hold the cache's port. Through the forward a guest reads the mirrors and nothing else; the
forge's and the host's other ports stay dropped. Two jobs through the worker's runner clone
the forge's repository as a manifest source: both succeed with ``origin`` the real URL and
the forge's commit (the guest could not have cloned it direct), the first a miss, the
second a hit, and the bytes served are counted.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildworker.cache.git import HostGitCache, start_git_cache
from buildworker.config import CacheConfig
from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageCatalogue, ImageInfo
from buildworker.guest.ports import pick_port
from buildworker.manifest import parse_manifest
from buildworker.worker.context import CancelToken, JobSpec
from buildworker.worker.metrics import WorkerMetrics
from buildworker.worker.report import TerminalReporter
from buildworker.worker.runner import BuildRunner, RunnerSettings

from .conftest import IMAGES, make_vm_config, unique_worker
from .git_forge import FakeGitForge
from .test_apt_cache_vm import ANSWER, guest_run, host_service  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def forge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGitForge]:
    forge = FakeGitForge(tmp_path_factory.mktemp("forge")).start()
    forge.create("repo", commits=3)
    try:
        yield forge
    finally:
        forge.close()


@pytest.fixture(scope="module")
def metrics() -> WorkerMetrics:
    return WorkerMetrics()


@pytest.fixture(scope="module")
def git_cache(
    tmp_path_factory: pytest.TempPathFactory, forge: FakeGitForge, metrics: WorkerMetrics
) -> Iterator[HostGitCache]:
    config = CacheConfig(
        git=True,
        git_port=pick_port(),
        git_dir=tmp_path_factory.mktemp("gitcache"),
        git_private_hosts=(f"127.0.0.1:{forge.port}",),
    )
    # As `buildworker worker` starts it, with the same metrics callbacks
    cache = start_git_cache(
        config,
        on_prepared=lambda p: metrics.cache_request("git", p.result, p.fetched_bytes),
        on_served=lambda n: metrics.cache_served("git", n),
    )
    try:
        yield cache
    finally:
        cache.close()


@pytest.fixture(scope="module")
def hv(vm_work_dir: Path, git_cache: HostGitCache) -> Iterator[Hypervisor]:
    hv = Hypervisor(
        make_vm_config(vm_work_dir, forwards=git_cache.forwards), worker_name=unique_worker("git")
    )
    try:
        yield hv
    finally:
        hv.reap_leftovers()
        hv.close()


def test_through_the_forward_only_the_mirrors_answer_and_other_host_ports_stay_dropped(
    hv: Hypervisor,
    bookworm: ImageInfo,
    git_cache: HostGitCache,
    forge: FakeGitForge,
    host_service: int,  # noqa: F811
) -> None:
    assert git_cache.mirrors is not None
    mirror = git_cache.mirrors.prepare(forge.url("repo")).guest_url
    port = git_cache.mirrors.port
    (git_cache.mirrors.directory / "tmp" / "x.git").mkdir(parents=True, exist_ok=True)
    booted = hv.boot(bookworm, job_id=1, attempt=1)
    try:
        conn = booted.wait_ready(hv.config.settle_timeout)
        # The mirror answers through the forward
        status, output = guest_run(hv, conn, f"git ls-remote {mirror}")
        assert status == 0 and f"{forge.head('repo')}\trefs/heads/main" in output, output
        # Nothing but the mirrors: not the forge's path, the cache's other files, the host's
        for path in ("/repo.git", "/../tmp/x.git", "/../locks", "/etc", "/", "/git"):
            status, output = guest_run(hv, conn, f"git ls-remote git://10.0.2.2:{port}{path}")
            assert status != 0 and "refs/heads" not in output, (path, output)
        # No push through it
        status, output = guest_run(
            hv,
            conn,
            f"cd /tmp && git clone -q {mirror} c && cd c && "
            f"git push {mirror} HEAD:refs/heads/evil 2>&1",
        )
        assert status != 0, output
        # Not an HTTP proxy, nor a way to the host's other ports
        status, output = guest_run(
            hv,
            conn,
            f"curl -sS -m 20 -x http://10.0.2.2:{port} http://127.0.0.1:{host_service}/ 2>&1",
        )
        assert ANSWER not in output, output
        # The forge's port and the host's other port, asked for directly: dropped
        status, output = guest_run(
            hv, conn, f"timeout 30 git ls-remote git://10.0.2.2:{forge.port}/repo.git 2>&1"
        )
        assert status != 0 and "refs/heads" not in output, output
        status, output = guest_run(hv, conn, f"curl -sS -m 10 http://10.0.2.2:{host_service}/")
        assert status != 0 and ANSWER not in output, output
    finally:
        booted.destroy()


def run_job(hv: Hypervisor, git_cache: HostGitCache, job_id: int, manifest: str) -> str:
    catalogue = ImageCatalogue(IMAGES, git_cache=git_cache.mirrors)
    settings = RunnerSettings(settle_timeout_s=hv.config.settle_timeout, standby_s=0)
    spec = JobSpec(job_id=job_id, attempt=1, manifest=parse_manifest(manifest), timeout_s=900)
    out = io.BytesIO()
    result = BuildRunner(catalogue, hv, settings).run(spec, TerminalReporter(out), CancelToken())
    text = out.getvalue().decode(errors="replace")
    assert result.status == "success", (result, text[-4000:])
    return text


def test_a_jobs_source_is_cloned_through_the_mirror_with_the_real_url(
    hv: Hypervisor, git_cache: HostGitCache, forge: FakeGitForge, metrics: WorkerMetrics
) -> None:
    url, head = forge.url("repo"), forge.head("repo")
    # The guest cannot reach the forge (127.0.0.1 is its own loopback): only the mirror can
    # have given it the commit; origin is the manifest's URL, as builds.sr.ht leaves it
    manifest = (
        "image: debian/bookworm\n"
        f"sources:\n  - {url}\n"
        "tasks:\n"
        "  - check: |\n"
        f'      test "$(git -C repo remote get-url origin)" = "{url}"\n'
        f'      test "$(git -C repo rev-parse HEAD)" = "{head}"\n'
        "      git -C repo log --oneline | wc -l | grep -qx 3\n"
    )
    registry = metrics.registry

    def requests(result: str) -> float:
        value = registry.get_sample_value(
            "buildworker_cache_requests_total", {"cache": "git", "result": result}
        )
        return value or 0.0

    hits, misses = requests("hit"), requests("miss")
    served = registry.get_sample_value("buildworker_cache_served_bytes_total", {"cache": "git"})
    run_job(hv, git_cache, 11, manifest)
    run_job(hv, git_cache, 12, manifest)
    # The first test prepared the mirror already: both jobs are hits (a miss otherwise)
    assert requests("hit") + requests("miss") - hits - misses == 2
    assert requests("hit") - hits >= 1
    after = registry.get_sample_value("buildworker_cache_served_bytes_total", {"cache": "git"})
    assert (after or 0) > (served or 0) + 1000
