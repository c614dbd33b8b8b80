"""The guest egress policy (nftables): guests reach public addresses and nothing of ours.

With QEMU user networking every guest connection leaves from the qemu process, which runs as
the libvirt-qemu user; the guest's gateway 10.0.2.2 is the host's loopback, and every address
the host can reach is reachable from the guest too: the host's own services, the cloud
metadata service at 169.254.169.254 (instance credentials: the classic way into CI runners),
and whatever sits on the host's private networks. So the output hook drops, for packets of
the qemu user:

- new connections to any **local** address of the host (loopback and its own interfaces);
- the cloud **metadata** addresses (`METADATA_ADDRESSES`), always, even inside an allowed range;
- new connections to **non-public** ranges (`BLOCKED_V4`, `BLOCKED_V6`): private (RFC 1918,
  fc00::/7), link-local, shared address space (100.64/10), "this network" and loopback,

with these exceptions, checked first:

- ``[vm] forwards``: 127.0.0.1:PORT for the forwarded ports (guests use 10.0.2.2:PORT);
- the host's DNS resolvers (from /etc/resolv.conf), port 53 only: user-net's DNS at 10.0.2.3
  is qemu relaying to them, and on most hosts they are private or loopback addresses;
- ``[vm] allow-networks``: ranges opened on purpose (an internal mirror), after the local
  and metadata drops.

SSH forwarding keeps working (those connections are *to* qemu; its replies are established),
and so do downloads from public mirrors. Everything lives in the table ``inet buildworker``.
Forwards and allowed networks are owned by the worker processes that asked for them and
expire unless refreshed: see buildworker.guest.grants. This module holds the pure parts (what
the policy is, the nft script) and the nft runner.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildworker.guest.errors import VMError

__all__ = [
    "BLOCKED_V4",
    "BLOCKED_V6",
    "FORWARD_SET",
    "GUEST_USERS_SET",
    "LEGACY_FORWARD_SET",
    "METADATA_ADDRESSES",
    "NET4_OWNERS_SET",
    "NET6_OWNERS_SET",
    "NETS4_SET",
    "NETS6_SET",
    "PORT_OWNERS_SET",
    "SET_DEFINITIONS",
    "TABLE",
    "Address",
    "Forward",
    "Network",
    "Nft",
    "current_ruleset",
    "element_value",
    "forwarded_ports",
    "host_nameservers",
    "parse_allow_networks",
    "parse_forwards",
    "parse_nameservers",
    "render_ruleset",
]

TABLE = "buildworker"
CHAIN = "output"
#: QEMU user-net's gateway: inside the guest it stands for the host's 127.0.0.1.
GATEWAY = "10.0.2.2"
_FORWARD = re.compile(r"^([0-9.]+):(\d+)=([0-9.]+):(\d+)$")

#: IPv4 destinations guests never open connections to, unless ``[vm] allow-networks`` says.
BLOCKED_V4 = (
    "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the host itself
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space (carrier NAT; Alibaba's metadata service)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local: cloud metadata, ECS task credentials
    "172.16.0.0/12",  # private
    "192.168.0.0/16",  # private
)
#: IPv6 destinations guests never open connections to, unless allowed.
BLOCKED_V6 = (
    "::/128",  # unspecified
    "::1/128",  # loopback
    "fc00::/7",  # unique local (private); AWS metadata is fd00:ec2::254
    "fe80::/10",  # link-local
)
#: Instance metadata services: dropped always, even when an allowed network contains them.
METADATA_ADDRESSES = (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle...
    "169.254.170.2",  # AWS ECS task credentials
    "100.100.100.200",  # Alibaba Cloud
    "fd00:ec2::254",  # AWS over IPv6
)

#: Set names. New names for the new layout: hosts (and worktrees) that still run the
#: previous version use ``forward_ports`` with other flags, and redefining it would fail.
GUEST_USERS_SET = "guest_users"
FORWARD_SET = "guest_ports"
NETS4_SET = "guest_nets4"
NETS6_SET = "guest_nets6"
PORT_OWNERS_SET = "guest_port_owners"
NET4_OWNERS_SET = "guest_net4_owners"
NET6_OWNERS_SET = "guest_net6_owners"
#: The previous version's forward set; removed on the first start of this one.
LEGACY_FORWARD_SET = "forward_ports"

#: Every set of the layout and its definition (``add set`` is idempotent for an identical one).
SET_DEFINITIONS = {
    GUEST_USERS_SET: "typeof meta skuid;",
    FORWARD_SET: "type inet_service; flags timeout;",
    NETS4_SET: "type ipv4_addr; flags interval, timeout;",
    NETS6_SET: "type ipv6_addr; flags interval, timeout;",
    # owner = (pid, process start time, serial within the process): see grants.Owner
    PORT_OWNERS_SET: "type inet_service . mark . mark . mark; flags timeout;",
    NET4_OWNERS_SET: "type ipv4_addr . mark . mark . mark . mark; flags timeout;",
    NET6_OWNERS_SET: "type ipv6_addr . mark . mark . mark . mark; flags timeout;",
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Forward:
    """Guests may open TCP connections to ``GATEWAY:port`` → ``127.0.0.1:port``."""

    port: int


def parse_forwards(entries: Sequence[str]) -> list[Forward]:
    """``[vm] forwards`` entries ``10.0.2.2:PORT=127.0.0.1:PORT`` → Forward(PORT).

    User-net maps the gateway's ports one to one onto the host's loopback, and libvirt runs
    qemu with a sandbox that forbids the per-connection helpers a remapping would need, so
    other forms are refused with the reason. Raises ValueError naming ``vm.forwards``.
    """
    forwards = []
    for entry in entries:
        match = _FORWARD.match(entry.strip())
        if not match:
            raise ValueError(f"vm.forwards: {entry!r}: expected 10.0.2.2:PORT=127.0.0.1:PORT")
        guest_ip, guest_port, host_ip, host_port = match.groups()
        try:
            loopback = ipaddress.ip_address(host_ip).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"vm.forwards: {entry!r}: the host side must be a loopback address")
        if guest_ip != GATEWAY or guest_port != host_port:
            raise ValueError(
                f"vm.forwards: {entry!r}: guests reach host port {host_port} as "
                f"{GATEWAY}:{host_port}; write {GATEWAY}:{host_port}={host_ip}:{host_port}"
            )
        port = int(host_port)
        if not 0 < port < 65536:
            raise ValueError(f"vm.forwards: {entry!r}: port out of range")
        forwards.append(Forward(port))
    return forwards


def parse_allow_networks(entries: Sequence[str]) -> list[Network]:
    """``[vm] allow-networks`` entries (``10.20.0.0/16``, ``fd12:3456::/48``, an address).

    Raises ValueError naming ``vm.allow-networks`` for text that is not a network, a network
    with host bits set, or loopback (host services are reached through ``[vm] forwards``).
    """
    networks: list[Network] = []
    for entry in entries:
        text = entry.strip()
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            loose = _loose_network(text)
            hint = f"; write {loose}" if loose is not None else ""
            raise ValueError(f"vm.allow-networks: {text!r}: {exc}{hint}") from None
        if network.is_loopback or network.network_address.is_unspecified:
            raise ValueError(
                f"vm.allow-networks: {text!r}: the host itself is reached through "
                "[vm] forwards (10.0.2.2:PORT=127.0.0.1:PORT), not allowed networks"
            )
        networks.append(network)
    return networks


def _loose_network(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def parse_nameservers(text: str) -> list[Address]:
    """The ``nameserver`` addresses of a resolv.conf, in order (zone ids dropped).

    With none listed, 127.0.0.1: what glibc and QEMU's user-net both fall back to.
    """
    found: list[Address] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1].split("%", 1)[0])
            except ValueError:
                continue
            if address not in found:
                found.append(address)
    return found or [ipaddress.IPv4Address("127.0.0.1")]


def host_nameservers(path: Path = Path("/etc/resolv.conf")) -> list[Address]:
    try:
        return parse_nameservers(path.read_text())
    except OSError:
        return parse_nameservers("")


def _elements(items: Iterable[object]) -> str:
    return "{ " + ", ".join(str(item) for item in items) + " }"


def render_ruleset(qemu_uid: int, nameservers: Sequence[Address]) -> str:
    """The nft script that installs the policy for ``qemu_uid`` (atomic under ``nft -f``).

    Creates the table and every set if missing (keeping their elements: other workers' grants),
    adds the uid to the guest users (never removed: a guest left running by a dead worker stays
    confined), removes the previous version's ``forward_ports`` set, and rebuilds the chain.
    The chain is flushed and refilled in the same transaction, so the drops are never absent.
    """
    lines = [f"add table inet {TABLE}"]
    lines += [f"add set inet {TABLE} {name} {{ {spec} }}" for name, spec in SET_DEFINITIONS.items()]
    lines += [
        f"add chain inet {TABLE} {CHAIN} {{ type filter hook output priority 0; policy accept; }}",
        f"flush chain inet {TABLE} {CHAIN}",
        # Upgrade from the previous layout: its set goes once no rule refers to it (the flush
        # above). Adding it first makes the delete succeed whether or not it existed.
        f"add set inet {TABLE} {LEGACY_FORWARD_SET} {{ type inet_service; }}",
        f"delete set inet {TABLE} {LEGACY_FORWARD_SET}",
        f"add element inet {TABLE} {GUEST_USERS_SET} {{ {qemu_uid} }}",
    ]
    rule = f"add rule inet {TABLE} {CHAIN} meta skuid @{GUEST_USERS_SET}"
    dns4 = [a for a in nameservers if a.version == 4]
    dns6 = [a for a in nameservers if a.version == 6]
    metadata4 = [a for a in METADATA_ADDRESSES if ipaddress.ip_address(a).version == 4]
    metadata6 = [a for a in METADATA_ADDRESSES if ipaddress.ip_address(a).version == 6]
    lines.append(f"{rule} ip daddr 127.0.0.1 tcp dport @{FORWARD_SET} accept")
    if dns4:
        lines.append(
            f"{rule} ip daddr {_elements(dns4)} meta l4proto {{ tcp, udp }} th dport 53 accept"
        )
    if dns6:
        lines.append(
            f"{rule} ip6 daddr {_elements(dns6)} meta l4proto {{ tcp, udp }} th dport 53 accept"
        )
    lines += [
        f"{rule} ct state new fib daddr type local drop",
        f"{rule} ip daddr {_elements(metadata4)} drop",
        f"{rule} ip6 daddr {_elements(metadata6)} drop",
        f"{rule} ip daddr @{NETS4_SET} accept",
        f"{rule} ip6 daddr @{NETS6_SET} accept",
        # Only new connections: qemu's replies to the worker's SSH client (127.0.0.1) are
        # established and must pass.
        f"{rule} ct state new ip daddr {_elements(BLOCKED_V4)} drop",
        f"{rule} ct state new ip6 daddr {_elements(BLOCKED_V6)} drop",
    ]
    return "\n".join(lines) + "\n"


def _nft_path() -> str | None:
    # /usr/sbin is not on every PATH (e.g. a non-login shell)
    return shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)


class Nft:
    """Runs nft scripts and reads sets of the table. Raises VMError naming what failed."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or _nft_path()
        if found is None:
            raise VMError("isolation: nft not found (apt-get install nftables)")
        self.binary = found

    def run(self, script: str) -> None:
        result = subprocess.run(
            [self.binary, "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise VMError(f"isolation: nft failed: {result.stderr.strip()}")

    def set_elements(self, name: str) -> list[Any] | None:
        """The elements of set `name` as nft's JSON gives them; None when it does not exist."""
        result = subprocess.run(
            [self.binary, "-j", "list", "set", "inet", TABLE, name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            return None
        for item in json.loads(result.stdout).get("nftables", []):
            if "set" in item:
                elements: list[Any] = item["set"].get("elem", [])
                return elements
        return []


def element_value(element: Any) -> Any:
    """The key of a set element from nft's JSON ({"elem": {"val": ..., "timeout": ...}} or bare)."""
    if isinstance(element, dict) and "elem" in element:
        return element["elem"]["val"]
    return element


def forwarded_ports() -> set[int]:
    """The ports guests may reach now (empty when the table is absent)."""
    try:
        elements = Nft().set_elements(FORWARD_SET)
    except VMError:
        return set()
    return {int(element_value(e)) for e in elements or []}


def current_ruleset() -> str:
    """The installed table as nft prints it ('' when absent); for tests and diagnostics."""
    nft = _nft_path() or "nft"
    result = subprocess.run(
        [nft, "list", "table", "inet", TABLE], capture_output=True, text=True, check=False
    )
    return result.stdout if result.returncode == 0 else ""
