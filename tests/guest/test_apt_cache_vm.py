"""A real guest and the package cache's forward: apt goes through it, nothing else does.

One guest, a worker whose forwards hold our apt-cacher-ng's port (as ``[cache] apt-run``
makes them), and a plain HTTP server of the test on another loopback port. Through the
forward only the cache answers, and it refuses to fetch the host's other port; that port
stays dropped when the guest asks for it directly; the image's install command (with the
cache's apt.conf) installs a package through the cache, which serves it as a hit.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildworker.cache.apt import APT_CONF_PATH, AptCacher, Transfer, start_apt_cache
from buildworker.config import CacheConfig
from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageInfo
from buildworker.guest.ports import pick_port
from buildworker.guest.ssh import GuestConnection

from .conftest import make_vm_config, unique_worker
from .test_apt_cache import DEB

pytestmark = [pytest.mark.vm, pytest.mark.slow]

ANSWER = "a host service the guest must not reach"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{ANSWER}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", pick_port(below=32768)), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AptCacher, list[Transfer]]]:
    seen: list[Transfer] = []
    cacher = AptCacher(
        tmp_path_factory.mktemp("acngvm"), port=pick_port(below=32768), on_transfer=seen.append
    ).start()
    try:
        yield cacher, seen
    finally:
        cacher.close()


@pytest.fixture(scope="module")
def cached_guest(
    vm_work_dir: Path, bookworm: ImageInfo, cache: tuple[AptCacher, list[Transfer]]
) -> Iterator[tuple[Hypervisor, GuestConnection]]:
    cacher, _ = cache
    # The forwards the worker makes of [cache] apt-proxy (the same port as apt-run)
    forwards = start_apt_cache(CacheConfig(apt_proxy=cacher.url)).forwards
    hv = Hypervisor(
        make_vm_config(vm_work_dir, forwards=forwards), worker_name=unique_worker("apt")
    )
    try:
        booted = hv.boot(bookworm, job_id=1, attempt=1)
        try:
            yield hv, booted.wait_ready(hv.config.settle_timeout)
        finally:
            booted.destroy()
    finally:
        hv.reap_leftovers()
        hv.close()


def guest_run(hv: Hypervisor, conn: GuestConnection, command: str) -> tuple[int, str]:
    assert hv.egress is not None
    hv.egress.apply_policy()  # other worktrees' older code may rewrite the chain meanwhile
    chunks: list[bytes] = []
    status = conn.run(command, on_output=chunks.append, pty=False)
    return status, b"".join(chunks).decode(errors="replace")


def test_through_the_forward_only_the_cache_answers_and_other_host_ports_stay_dropped(
    cached_guest: tuple[Hypervisor, GuestConnection],
    cache: tuple[AptCacher, list[Transfer]],
    host_service: int,
) -> None:
    hv, conn = cached_guest
    cacher, _ = cache
    proxy = f"http://10.0.2.2:{cacher.port}"
    # The cache answers through its forward with the Debian archive
    status, output = guest_run(
        hv, conn, f"curl -sS -m 60 -o /dev/null -w '%{{http_code}}' -x {proxy} {DEB}"
    )
    assert (status, output.strip()) == (0, "200"), output
    # It refuses to fetch the host's other port (by loopback or the gateway) or to tunnel
    for url in (f"http://127.0.0.1:{host_service}/", f"http://10.0.2.2:{host_service}/"):
        status, output = guest_run(
            hv, conn, f"curl -sS -m 20 -w ' %{{http_code}}' -x {proxy} {url}"
        )
        assert ANSWER not in output and output.strip().endswith("403"), output
    status, output = guest_run(
        hv, conn, f"curl -sS -m 20 -p -x {proxy} http://127.0.0.1:{host_service}/"
    )
    assert status != 0 and ANSWER not in output, output
    # And that port asked for directly is dropped by the egress policy, as without a cache
    status, output = guest_run(hv, conn, f"curl -sS -m 10 http://10.0.2.2:{host_service}/")
    assert status != 0 and ANSWER not in output, output


def test_the_install_command_fetches_packages_through_the_cache(
    cached_guest: tuple[Hypervisor, GuestConnection],
    cache: tuple[AptCacher, list[Transfer]],
    bookworm: ImageInfo,
) -> None:
    hv, conn = cached_guest
    cacher, seen = cache
    # Given the image as a worker with the cache resolves it
    image = ImageInfo(
        **{
            **vars(bookworm),
            "apt_proxy": f"http://10.0.2.2:{cacher.port}",
            "apt_hosts": ("deb.debian.org",),
        }
    )
    before = len(seen)
    # When the packages step's command installs hello (its .deb is cached by the test above)
    status, output = guest_run(hv, conn, "exec 2>&1; " + image.install_command(["hello"]))
    assert status == 0, output[-3000:]
    status, output = guest_run(hv, conn, f"hello && cat {APT_CONF_PATH}")
    assert status == 0 and "Hello, world!" in output, output
    # Then the indices and the package came through the cache, the package as a hit
    deadline = time.monotonic() + 15
    while not any(t.hit for t in seen[before:]):
        assert time.monotonic() < deadline, seen[before:]
        time.sleep(0.2)
    assert len(seen) - before >= 3, seen[before:]  # Release files, Packages, the .deb
