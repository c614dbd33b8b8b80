"""A real guest against the egress policy: a test host of our own in a network namespace.

The test makes a network namespace joined to the host by a veth pair, with one address in a
private range and one in 169.254.0.0/16 (never 169.254.169.254, and ranges no route of this
machine covers), and serves HTTP there. The host reaches both; a guest reaches neither; with
``[vm] allow-networks`` naming the private range, it reaches that one and still not the other.
The namespace and the veth are removed in a finally. (Other worktrees running the previous
isolation code may rewrite the chain while this runs: the policy is re-applied right before
each check.)
"""

from __future__ import annotations

import ipaddress
import random
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from buildworker.guest.hypervisor import Guest, Hypervisor
from buildworker.guest.images import ImageInfo
from buildworker.guest.ssh import GuestConnection

from .conftest import make_vm_config, unique_worker

pytestmark = [pytest.mark.vm, pytest.mark.slow]

PORT = 8080
ANSWER = "hello from the test namespace"


@dataclass(frozen=True)
class NetnsHost:
    private: str
    private_net: str
    link_local: str
    link_local_net: str


def _routes() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True
    ).stdout
    routes = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local", "unreachable", "blackhole"):
            first = line.split()[1] if first != "default" else ""
        try:
            routes.append(ipaddress.ip_network(first, strict=False))
        except ValueError:
            continue
    return [r for r in routes if isinstance(r, ipaddress.IPv4Network)]


def _free_net(candidates: list[str], routes: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for text in candidates:
        net = ipaddress.IPv4Network(text)
        if not any(net.overlaps(route) for route in routes if route.prefixlen > 0):
            return net
    raise AssertionError(f"no free test range among {candidates}")


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr}"


SERVER = textwrap.dedent(
    f"""
    import http.server
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"{ANSWER}\\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("0.0.0.0", {PORT}), Hello).serve_forever()
    """
)


@pytest.fixture(scope="module")
def test_host() -> Iterator[NetnsHost]:
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"bwt{tag}", f"bwh{tag}", f"bwn{tag}"
    routes = _routes()
    rng = random.Random(tag)
    # 10.213.x.0/30 and 169.254.y.0/30: nothing on this machine routes them (checked), and
    # y avoids 169 and 170 (metadata and ECS addresses live there).
    private = _free_net([f"10.213.{rng.randrange(1, 255)}.0/30" for _ in range(20)], routes)
    link_local = _free_net(
        [
            f"169.254.{rng.choice([y for y in range(1, 254) if y not in (169, 170)])}.0/30"
            for _ in range(20)
        ],
        routes,
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        for net in (private, link_local):
            hosts = list(net.hosts())
            _ip("addr", "add", f"{hosts[0]}/{net.prefixlen}", "dev", host_if)
            _ip("-n", ns, "addr", "add", f"{hosts[1]}/{net.prefixlen}", "dev", ns_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER])
        made = NetnsHost(
            private=str(list(private.hosts())[1]),
            private_net=str(private),
            link_local=str(list(link_local.hosts())[1]),
            link_local_net=str(link_local),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://{made.private}:{PORT}/", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield made
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)


@pytest.fixture(scope="module")
def hv(vm_work_dir: Path) -> Iterator[Hypervisor]:
    hypervisor = Hypervisor(make_vm_config(vm_work_dir), worker_name=unique_worker("egress"))
    yield hypervisor
    hypervisor.reap_leftovers()
    hypervisor.close()


@pytest.fixture(scope="module")
def guest(hv: Hypervisor, bookworm: ImageInfo) -> Iterator[tuple[Guest, GuestConnection]]:
    booted = hv.boot(bookworm, job_id=1, attempt=1)
    try:
        yield booted, booted.wait_ready(hv.config.settle_timeout)
    finally:
        booted.destroy()


def guest_get(hv: Hypervisor, conn: GuestConnection, url: str) -> tuple[int, str]:
    """curl `url` from the guest, the policy re-applied just before (see the module doc)."""
    assert hv.egress is not None
    hv.egress.apply_policy()
    chunks: list[bytes] = []
    status = conn.run(f"curl -sS -m 10 {url}", on_output=chunks.append, pty=False)
    return status, b"".join(chunks).decode(errors="replace")


def test_the_host_reaches_both_addresses_of_the_test_host(test_host: NetnsHost) -> None:
    for address in (test_host.private, test_host.link_local):
        response = httpx.get(f"http://{address}:{PORT}/", timeout=10)
        assert response.status_code == 200 and ANSWER in response.text


def test_a_guest_reaches_neither_and_still_resolves_names_and_reaches_the_mirror(
    hv: Hypervisor, guest: tuple[Guest, GuestConnection], test_host: NetnsHost
) -> None:
    _, conn = guest
    for address in (test_host.private, test_host.link_local):
        status, output = guest_get(hv, conn, f"http://{address}:{PORT}/")
        assert status != 0 and ANSWER not in output, f"the guest reached {address}: {output}"
    # DNS through user-net (qemu relays to the host's resolver, a private address here) and
    # the Debian mirror still work
    status, output = guest_get(
        hv,
        conn,
        "-o /dev/null -w '%{http_code}' http://deb.debian.org/debian/dists/bookworm/Release",
    )
    assert (status, output.strip()) == (0, "200"), output


def test_allow_networks_opens_the_named_range_and_only_it(
    hv: Hypervisor,
    guest: tuple[Guest, GuestConnection],
    test_host: NetnsHost,
    vm_work_dir: Path,
) -> None:
    _, conn = guest
    # Given a worker on this host configured with [vm] allow-networks = the private range
    config = make_vm_config(vm_work_dir, allow_networks=(test_host.private_net,))
    allowing = Hypervisor(config, worker_name=unique_worker("allow"))
    try:
        # Then guests reach the private address, and still not the link-local one
        status, output = guest_get(hv, conn, f"http://{test_host.private}:{PORT}/")
        assert status == 0 and ANSWER in output, output
        status, output = guest_get(hv, conn, f"http://{test_host.link_local}:{PORT}/")
        assert status != 0 and ANSWER not in output, output
    finally:
        allowing.close()
    # And when that worker stops, the range is closed again
    status, output = guest_get(hv, conn, f"http://{test_host.private}:{PORT}/")
    assert status != 0 and ANSWER not in output, output
    # The link-local address is closed by the policy, not by the network: allowed, it answers
    config = make_vm_config(vm_work_dir, allow_networks=(test_host.link_local_net,))
    allowing = Hypervisor(config, worker_name=unique_worker("allow"))
    try:
        status, output = guest_get(hv, conn, f"http://{test_host.link_local}:{PORT}/")
        assert status == 0 and ANSWER in output, output
    finally:
        allowing.close()
