"""Owned egress grants: forwards and allowed networks that belong to live worker processes.

Several workers (and test processes) share a host's table ``inet buildworker``, and qemu
runs as one user for all of them, so the ports and networks guests may reach are one union
per host. Each part of that union is **owned**: ``guest_port_owners`` / ``guest_net*_owners``
hold (grant, owner) pairs, the owner being (pid, process start time, serial within the
process); ``guest_ports`` / ``guest_nets*`` are the union the rules match. Every change is one
read-modify-write under a host-wide lock (flock), done by whoever changes something:

- a start adds its grants and drops those of owners that are no longer running (a worker
  killed with SIGKILL is gone at the next start of any worker on the host);
- a stop (``EgressGrant.close``) withdraws its grants, keeping a port another live owner
  also holds;
- every element carries a timeout (``lease_s``) that the owner's refresh thread renews every
  quarter lease, so grants of a dead worker also expire by themselves when nothing else starts,
  and a stuck worker's grants close rather than stay open (fail-closed).

The process start time makes a recycled pid a different owner. Workers sharing a host must
share its pid namespace (systemd services do), or they would take each other for dead.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from buildworker.guest.errors import VMError
from buildworker.guest.isolation import (
    FORWARD_SET,
    NET4_OWNERS_SET,
    NET6_OWNERS_SET,
    NETS4_SET,
    NETS6_SET,
    PORT_OWNERS_SET,
    TABLE,
    Address,
    Forward,
    Network,
    Nft,
    element_value,
    host_nameservers,
    render_ruleset,
)

__all__ = [
    "GRANT_LEASE_S",
    "EgressGrant",
    "Grants",
    "Owner",
    "merge_owners",
    "owner_alive",
    "parse_owners",
    "render_grants",
]

_log = structlog.get_logger(__name__)

#: How long a grant lives unless its owner refreshes it (refreshed every quarter of it).
GRANT_LEASE_S = 120.0
#: The host-wide lock serialising read-modify-write of the owner sets.
LOCK_PATH = Path("/run/lock/buildworker-egress.lock")
#: Distinguishes grants of one process (tests run several hypervisors in one process).
_serials = itertools.count(1)


@dataclass(frozen=True, order=True)
class Owner:
    """Who holds a grant: a process (pid + start time, so a recycled pid differs) and which
    of its grants (serial)."""

    pid: int
    start: int
    serial: int


@dataclass(frozen=True)
class Grants:
    ports: frozenset[int] = frozenset()
    networks: frozenset[Network] = frozenset()


def process_start(pid: int) -> int | None:
    """The start time of `pid` (clock ticks since boot, low 32 bits); None when not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) is in parentheses and may contain spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) & 0xFFFFFFFF


def owner_alive(owner: Owner) -> bool:
    return process_start(owner.pid) == owner.start


def parse_owners(
    ports: Sequence[Any], nets4: Sequence[Any], nets6: Sequence[Any]
) -> dict[Owner, Grants]:
    """The owner sets' elements (nft JSON) → each owner's grants."""
    owned: dict[Owner, tuple[set[int], set[Network]]] = {}
    for element in ports:
        port, pid, start, serial = (int(v) for v in element_value(element)["concat"])
        owned.setdefault(Owner(pid, start, serial), (set(), set()))[0].add(port)
    for element in [*nets4, *nets6]:
        address, prefix, pid, start, serial = element_value(element)["concat"]
        network = ipaddress.ip_network(f"{address}/{int(prefix)}")
        owner = Owner(int(pid), int(start), int(serial))
        owned.setdefault(owner, (set(), set()))[1].add(network)
    return {o: Grants(frozenset(p), frozenset(n)) for o, (p, n) in owned.items()}


def merge_owners(
    current: dict[Owner, Grants],
    me: Owner,
    mine: Grants | None,
    alive: Callable[[Owner], bool],
) -> dict[Owner, Grants]:
    """The owners after `me` sets its grants to `mine` (None: withdraws): owners that are not
    alive are dropped, the others kept as they are."""
    merged = {o: g for o, g in current.items() if o != me and alive(o)}
    if mine is not None and (mine.ports or mine.networks):
        merged[me] = mine
    return merged


def render_grants(owners: dict[Owner, Grants], lease_s: float) -> str:
    """The nft script that replaces the owner sets and the union sets with `owners`' grants
    (one transaction: the union never lacks a live owner's grant)."""
    timeout = f"timeout {max(1, round(lease_s))}s"
    port_owners: list[str] = []
    net_owners: dict[int, list[str]] = {4: [], 6: []}
    ports: set[int] = set()
    nets4: list[ipaddress.IPv4Network] = []
    nets6: list[ipaddress.IPv6Network] = []
    for owner, grants in sorted(owners.items()):
        tag = f"{owner.pid} . {owner.start} . {owner.serial}"
        for port in sorted(grants.ports):
            port_owners.append(f"{port} . {tag} {timeout}")
            ports.add(port)
        for network in sorted(grants.networks, key=lambda n: (n.version, n)):
            net_owners[network.version].append(
                f"{network.network_address} . {network.prefixlen} . {tag} {timeout}"
            )
            if isinstance(network, ipaddress.IPv4Network):
                nets4.append(network)
            else:
                nets6.append(network)
    union: dict[str, list[str]] = {
        PORT_OWNERS_SET: port_owners,
        FORWARD_SET: [f"{port} {timeout}" for port in sorted(ports)],
        NET4_OWNERS_SET: net_owners[4],
        NET6_OWNERS_SET: net_owners[6],
        # Interval sets refuse overlapping elements: collapse what several owners allowed.
        NETS4_SET: [f"{n} {timeout}" for n in ipaddress.collapse_addresses(nets4)],
        NETS6_SET: [f"{n} {timeout}" for n in ipaddress.collapse_addresses(nets6)],
    }
    lines = []
    for name, elements in union.items():
        lines.append(f"flush set inet {TABLE} {name}")
        if elements:
            lines.append(f"add element inet {TABLE} {name} {{ {', '.join(elements)} }}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _host_lock(path: Path) -> Iterator[None]:
    # flock locks belong to the open file, so two grants in one process exclude each other too.
    directory = path.parent if path.parent.is_dir() else Path("/tmp")
    with open(directory / path.name, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class EgressGrant:
    """This process's forwards and allowed networks on the host, and the policy they live in.

    ``start()`` installs the egress policy for ``qemu_uid`` (buildworker.guest.isolation),
    claims the grants and starts the refresh thread; ``close()`` withdraws them. Raises
    VMError from ``start()`` when nft is missing or fails: no guest may boot unconfined.
    """

    qemu_uid: int
    forwards: Sequence[Forward]
    networks: Sequence[Network]
    lease_s: float = GRANT_LEASE_S
    resolv_conf: Path = Path("/etc/resolv.conf")
    lock_path: Path = LOCK_PATH
    nft: Nft = field(default_factory=Nft)
    owner: Owner = field(init=False)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _thread: threading.Thread | None = field(init=False, default=None)
    _nameservers: list[Address] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        pid = os.getpid()
        start = process_start(pid)
        if start is None:
            raise VMError("isolation: cannot read this process's start time from /proc")
        self.owner = Owner(pid, start, next(_serials))

    @property
    def grants(self) -> Grants:
        return Grants(frozenset(f.port for f in self.forwards), frozenset(self.networks))

    def start(self) -> EgressGrant:
        with _host_lock(self.lock_path):
            self._apply_policy()
            self._claim(self.grants)
        self._thread = threading.Thread(target=self._refresh_loop, name="egress", daemon=True)
        self._thread.start()
        return self

    def apply_policy(self) -> None:
        """Re-install the rules now (tests call it right before asserting on guest traffic)."""
        with _host_lock(self.lock_path):
            self._apply_policy()

    def refresh(self) -> None:
        """Renew this owner's grants (and drop dead owners'); follow a changed resolv.conf."""
        with _host_lock(self.lock_path):
            if host_nameservers(self.resolv_conf) != self._nameservers:
                self._apply_policy()
            self._claim(self.grants)

    def close(self) -> None:
        """Stop refreshing and withdraw this owner's grants (logged, not raised, on failure)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            with _host_lock(self.lock_path):
                self._claim(None)
        except VMError as exc:
            _log.warning("egress.withdraw_failed", error=str(exc), owner=self.owner.pid)

    def _apply_policy(self) -> None:
        self._nameservers = host_nameservers(self.resolv_conf)
        self.nft.run(render_ruleset(self.qemu_uid, self._nameservers))

    def _claim(self, mine: Grants | None) -> None:
        sets = [
            self.nft.set_elements(name)
            for name in (PORT_OWNERS_SET, NET4_OWNERS_SET, NET6_OWNERS_SET)
        ]
        if any(elements is None for elements in sets):
            if mine is None:
                return  # no table (removed by hand): nothing of ours is left to withdraw
            self._apply_policy()  # someone removed it since start: put the layout back
            sets = [[], [], []]
        current = parse_owners(*(elements or [] for elements in sets))
        owners = merge_owners(current, self.owner, mine, owner_alive)
        dropped = sorted({o.pid for o in current} - {o.pid for o in owners} - {self.owner.pid})
        self.nft.run(render_grants(owners, self.lease_s))
        if dropped:
            _log.info("egress.dead_owners_removed", pids=dropped)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self.refresh()
            except VMError as exc:  # the grants may lapse: guests lose them, nothing opens
                _log.warning("egress.refresh_failed", error=str(exc))
