"""Keep guests off the worker host's own services (nftables), forwards only by configuration.

With QEMU user networking every guest connection leaves from the qemu process, which runs as
the libvirt-qemu user; the guest's gateway 10.0.2.2 is the host's loopback, and any other
host address is reachable too (services listening on all interfaces). One rule in the output
hook drops new connections from that user to any local address (measured, MACHINE-NOTES.md):
SSH forwarding keeps working (those connections are *to* qemu, and its replies are
established), downloads from the internet keep working (not local). Explicit forwards from
``[vm] forwards`` are accepted before the drop.

The rules live in their own table, ``inet buildworker``; forwarded ports are a named set that
each apply adds to (never removes from), so several workers on one host keep each other's.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from buildworker.guest.errors import VMError

__all__ = [
    "FORWARD_SET",
    "TABLE",
    "Forward",
    "apply_isolation",
    "forwarded_ports",
    "parse_forwards",
    "render_ruleset",
]

TABLE = "buildworker"
#: QEMU user-net's gateway: inside the guest it stands for the host's 127.0.0.1.
GATEWAY = "10.0.2.2"
_FORWARD = re.compile(r"^([0-9.]+):(\d+)=([0-9.]+):(\d+)$")


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


#: The named set of host ports guests may reach; every worker on the host adds to it.
FORWARD_SET = "forward_ports"


def render_ruleset(qemu_uid: int, forwards: Sequence[Forward]) -> str:
    """The nft script: ensure table inet buildworker, add our ports to the shared forward set,
    and rebuild the output chain (accept the set's ports, then drop local destinations).

    Additive on purpose: several workers or test processes on one host each apply their own
    ``[vm] forwards``, and none may remove another's. The chain is flushed and refilled in the
    same transaction (``nft -f`` is atomic), so there is never a moment without the drop rule.
    Removing a port needs ``nft delete element inet buildworker forward_ports { PORT }``.
    """
    lines = [
        f"add table inet {TABLE}",
        f"add set inet {TABLE} {FORWARD_SET} {{ type inet_service; }}",
        f"add chain inet {TABLE} output {{ type filter hook output priority 0; policy accept; }}",
        f"flush chain inet {TABLE} output",
    ]
    if forwards:
        ports = ", ".join(str(f.port) for f in forwards)
        lines.append(f"add element inet {TABLE} {FORWARD_SET} {{ {ports} }}")
    lines += [
        f"add rule inet {TABLE} output meta skuid {qemu_uid} ip daddr 127.0.0.1 "
        f"tcp dport @{FORWARD_SET} accept",
        f"add rule inet {TABLE} output meta skuid {qemu_uid} ct state new fib daddr type local drop",
    ]
    return "\n".join(lines) + "\n"


def forwarded_ports() -> set[int]:
    """The ports in the shared forward set now (empty when the table is absent)."""
    nft = _nft() or "nft"
    result = subprocess.run(
        [nft, "list", "set", "inet", TABLE, FORWARD_SET],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return set()
    elements = re.search(r"elements = \{([^}]*)\}", result.stdout)
    return {int(p) for p in re.findall(r"\d+", elements.group(1))} if elements else set()


def _nft() -> str | None:
    # /usr/sbin is not on every PATH (e.g. a non-login shell)
    return shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)


def apply_isolation(qemu_uid: int, forwards: Sequence[Forward]) -> None:
    """Install the rules (idempotent, atomic). Raises VMError if nft is missing or fails:
    the worker must not boot guests that can reach the host."""
    nft = _nft()
    if nft is None:
        raise VMError("isolation: nft not found (apt-get install nftables)")
    result = subprocess.run(
        [nft, "-f", "-"],
        input=render_ruleset(qemu_uid, forwards),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise VMError(f"isolation: nft failed: {result.stderr.strip()}")


def current_ruleset() -> str:
    """The installed table as nft prints it ('' when absent); for tests and diagnostics."""
    nft = _nft() or "nft"
    result = subprocess.run(
        [nft, "list", "table", "inet", TABLE], capture_output=True, text=True, check=False
    )
    return result.stdout if result.returncode == 0 else ""
