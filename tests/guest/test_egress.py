"""The guest egress policy and owned grants, without a guest: pure parts, then real nftables.

The real-nftables tests change the host's table ``inet buildworker`` (as a worker start does)
and use ports nobody else forwards; other workers' grants on the host are left alone.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from buildworker.guest.grants import (
    EgressGrant,
    Grants,
    Owner,
    merge_owners,
    owner_alive,
    parse_owners,
    process_start,
    render_grants,
)
from buildworker.guest.isolation import (
    BLOCKED_V4,
    BLOCKED_V6,
    FORWARD_SET,
    LEGACY_FORWARD_SET,
    METADATA_ADDRESSES,
    NETS4_SET,
    PORT_OWNERS_SET,
    Forward,
    Nft,
    current_ruleset,
    element_value,
    forwarded_ports,
    parse_allow_networks,
    parse_forwards,
    parse_nameservers,
    render_ruleset,
)

NFT = "/usr/sbin/nft"
DNS = [ipaddress.ip_address("10.255.255.53"), ipaddress.ip_address("fd00::53")]


def blocked(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(net) for net in (*BLOCKED_V4, *BLOCKED_V6))


# --- what the policy is -----------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # cloud metadata
        "169.254.10.1",  # link-local
        "10.1.2.3",
        "172.16.5.4",
        "172.31.255.254",
        "192.168.1.1",
        "100.64.0.1",  # shared address space
        "127.0.0.53",
        "0.0.0.0",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fc00::1",
        "fe80::1",
        "::1",
    ],
)
def test_non_public_destinations_are_in_the_blocked_ranges(address: str) -> None:
    assert blocked(address)


@pytest.mark.parametrize(
    "address", ["151.101.2.132", "199.232.18.132", "1.1.1.1", "2a04:4e42::644", "172.32.0.1"]
)
def test_public_destinations_are_not(address: str) -> None:
    # deb.debian.org (Fastly) among them: downloads keep working
    assert not blocked(address)


def test_every_metadata_address_is_blocked_even_without_its_own_rule() -> None:
    assert all(blocked(address) for address in METADATA_ADDRESSES)


def test_allow_networks_parse_cidr_and_refuse_bad_entries_naming_the_key() -> None:
    assert parse_allow_networks(["10.20.0.0/16", " fd12:3456::/48", "192.168.7.9"]) == [
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd12:3456::/48"),
        ipaddress.ip_network("192.168.7.9/32"),
    ]
    with pytest.raises(ValueError, match=r"vm.allow-networks: '10.20.1.0/16'.*write 10.20.0.0/16"):
        parse_allow_networks(["10.20.1.0/16"])
    with pytest.raises(ValueError, match=r"vm.allow-networks: 'mirror.lan'"):
        parse_allow_networks(["mirror.lan"])
    with pytest.raises(ValueError, match=r"vm.allow-networks: '127.0.0.0/8'.*\[vm\] forwards"):
        parse_allow_networks(["127.0.0.0/8"])


def test_forwards_parse_gateway_entries_and_refuse_others_with_the_reason() -> None:
    assert parse_forwards(["10.0.2.2:9418=127.0.0.1:9418"]) == [Forward(9418)]
    with pytest.raises(ValueError, match=r"vm.forwards: .*write 10.0.2.2:19418=127.0.0.1:19418"):
        parse_forwards(["10.0.2.100:9418=127.0.0.1:19418"])
    with pytest.raises(ValueError, match="loopback"):
        parse_forwards(["10.0.2.2:80=192.0.2.5:80"])
    with pytest.raises(ValueError, match="expected"):
        parse_forwards(["nonsense"])


def test_nameservers_come_from_resolv_conf_with_loopback_as_the_fallback() -> None:
    text = "# dhcp\nsearch lan\nnameserver 10.255.255.53\nnameserver fe80::1%eth0 # router\n"
    assert parse_nameservers(text) == [
        ipaddress.ip_address("10.255.255.53"),
        ipaddress.ip_address("fe80::1"),
    ]
    assert parse_nameservers("options edns0\n") == [ipaddress.ip_address("127.0.0.1")]


def test_the_ruleset_orders_exceptions_drops_allowed_networks_then_ranges() -> None:
    rules = render_ruleset(64055, DNS).splitlines()

    def at(fragment: str) -> int:
        [index] = [i for i, line in enumerate(rules) if fragment in line]
        return index

    forwards = at("ip daddr 127.0.0.1 tcp dport @guest_ports accept")
    dns4 = at("ip daddr { 10.255.255.53 } meta l4proto { tcp, udp } th dport 53 accept")
    dns6 = at("ip6 daddr { fd00::53 } meta l4proto { tcp, udp } th dport 53 accept")
    local = at("ct state new fib daddr type local drop")
    metadata = at("ip daddr { 169.254.169.254, 169.254.170.2, 100.100.100.200 } drop")
    allowed = at("ip daddr @guest_nets4 accept")
    private = at("ct state new ip daddr { 0.0.0.0/8, 10.0.0.0/8")
    private6 = at("ct state new ip6 daddr { ::/128, ::1/128, fc00::/7, fe80::/10 } drop")
    assert at("flush chain inet buildworker output") < forwards
    assert forwards < dns4 < dns6 < local < metadata < allowed < private < private6
    # The previous layout's set is removed after the flush that frees it, never redefined
    assert at("flush chain") < at(f"delete set inet buildworker {LEGACY_FORWARD_SET}")
    assert not any(f"{LEGACY_FORWARD_SET} {{ type inet_service; flags" in line for line in rules)
    # Every rule applies to the guest users only
    assert all("meta skuid @guest_users" in line for line in rules if "add rule" in line)


def test_the_ruleset_and_a_grant_update_are_valid_nftables() -> None:
    owners = {
        Owner(1, 2, 3): Grants(frozenset({5000}), frozenset({ipaddress.ip_network("fd12::/64")})),
        Owner(4, 5, 6): Grants(frozenset({5000}), frozenset({ipaddress.ip_network("10.0.0.0/8")})),
    }
    script = render_ruleset(64055, DNS) + render_grants(owners, 120)
    # nft --check parses and validates with the kernel without changing anything
    result = subprocess.run(
        [NFT, "--check", "-f", "-"], input=script, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --- owners -----------------------------------------------------------------------------

A, B, C = Owner(100, 1, 1), Owner(200, 2, 1), Owner(300, 3, 1)
NET = ipaddress.ip_network("10.20.0.0/16")


def test_a_start_keeps_live_owners_drops_dead_ones_and_replaces_its_own() -> None:
    current = {A: Grants(frozenset({1})), B: Grants(frozenset({2})), C: Grants(frozenset({3}))}
    merged = merge_owners(current, C, Grants(frozenset({4})), alive=lambda o: o != B)
    assert merged == {A: Grants(frozenset({1})), C: Grants(frozenset({4}))}


def test_a_withdraw_keeps_a_port_another_live_owner_holds() -> None:
    current = {A: Grants(frozenset({1, 2})), B: Grants(frozenset({2}))}
    merged = merge_owners(current, A, None, alive=lambda o: True)
    assert merged == {B: Grants(frozenset({2}))}
    script = render_grants(merged, 60)
    assert "add element inet buildworker guest_ports { 2 timeout 60s }" in script
    assert "{ 2 . 200 . 2 . 1 timeout 60s }" in script


def test_grants_of_several_owners_are_collapsed_into_one_union() -> None:
    owners = {
        A: Grants(networks=frozenset({ipaddress.ip_network("10.0.0.0/8")})),
        B: Grants(networks=frozenset({NET, ipaddress.ip_network("192.168.5.0/24")})),
    }
    script = render_grants(owners, 30)
    assert "guest_nets4 { 10.0.0.0/8 timeout 30s, 192.168.5.0/24 timeout 30s }" in script
    # and nothing left: every set is flushed first
    assert render_grants({}, 30).count("flush set") == 6
    assert "add element" not in render_grants({}, 30)


def test_owner_elements_parse_from_nfts_json() -> None:
    ports = [{"elem": {"val": {"concat": [5000, 100, 1, 1]}, "timeout": 60, "expires": 59}}]
    nets4 = [{"elem": {"val": {"concat": ["10.20.0.0", 16, 200, 2, 1]}, "timeout": 60}}]
    nets6 = [{"concat": ["fd12::", 64, 200, 2, 1]}]
    assert parse_owners(ports, nets4, nets6) == {
        A: Grants(frozenset({5000})),
        B: Grants(networks=frozenset({NET, ipaddress.ip_network("fd12::/64")})),
    }


def test_an_owner_is_alive_only_while_that_process_runs() -> None:
    me = Owner(os.getpid(), process_start(os.getpid()) or -1, 1)
    assert owner_alive(me)
    assert not owner_alive(Owner(me.pid, me.start + 1, 1))  # a recycled pid
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not owner_alive(Owner(child.pid, 0, 1))


# --- real nftables ----------------------------------------------------------------------

QEMU_UID = pwd.getpwnam("libvirt-qemu").pw_uid
#: Ports no other test or worker forwards.
PORTS = (64971, 64972, 64973)


def owned_ports() -> dict[int, set[int]]:
    """pid → ports, from the owner set on the host."""
    owners = parse_owners(Nft().set_elements(PORT_OWNERS_SET) or [], [], [])
    out: dict[int, set[int]] = {}
    for owner, grants in owners.items():
        out.setdefault(owner.pid, set()).update(grants.ports)
    return out


def test_two_grants_add_up_withdraw_their_own_and_the_rules_are_single() -> None:
    first = EgressGrant(QEMU_UID, [Forward(PORTS[0]), Forward(PORTS[1])], []).start()
    second = EgressGrant(QEMU_UID, [Forward(PORTS[1]), Forward(PORTS[2])], [NET]).start()
    try:
        assert set(PORTS) <= forwarded_ports()
        table = current_ruleset()
        assert table.count("fib daddr type local drop") == 1
        assert table.count("@guest_ports accept") == 1
        assert "10.20.0.0/16" in table
        # When the first withdraws, the port both held stays, the other goes
        first.close()
        assert set(PORTS) & forwarded_ports() == {PORTS[1], PORTS[2]}
    finally:
        first.close()
        second.close()
    assert set(PORTS) & forwarded_ports() == set()
    assert "10.20.0.0/16" not in current_ruleset()


OLD_LAYOUT = """\
add table inet buildworker
add set inet buildworker forward_ports { type inet_service; }
add chain inet buildworker output { type filter hook output priority 0; policy accept; }
flush chain inet buildworker output
add element inet buildworker forward_ports { 64974 }
add rule inet buildworker output meta skuid %(uid)d ip daddr 127.0.0.1 tcp dport @forward_ports accept
add rule inet buildworker output meta skuid %(uid)d ct state new fib daddr type local drop
"""


def test_a_host_that_ran_the_previous_layout_has_only_the_new_rules_after_a_start() -> None:
    # Given the previous version's table (its set, its two rules, a forward)
    Nft().run(OLD_LAYOUT % {"uid": QEMU_UID})
    assert LEGACY_FORWARD_SET in current_ruleset()
    # When this version starts
    grant = EgressGrant(QEMU_UID, [Forward(PORTS[0])], []).start()
    try:
        # Then the old set and rules are gone, the new ones are there once each
        table = current_ruleset()
        assert LEGACY_FORWARD_SET not in table
        assert f"meta skuid {QEMU_UID} " not in table  # the old rules named the uid
        assert table.count("meta skuid @guest_users ct state new fib daddr type local drop") == 1
        assert 64974 not in forwarded_ports() and PORTS[0] in forwarded_ports()
    finally:
        grant.close()


GRANT_CHILD = textwrap.dedent(
    """
    import sys, time
    from buildworker.guest.grants import EgressGrant
    from buildworker.guest.isolation import Forward
    grant = EgressGrant(int(sys.argv[1]), [Forward(int(sys.argv[2]))], [], lease_s=4).start()
    print("granted", flush=True)
    time.sleep(600)
    """
)


def start_grant_child(port: int) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", GRANT_CHILD, str(QEMU_UID), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "granted"
    return child


def test_a_killed_owners_grants_go_at_the_next_start_and_a_stuck_ones_expire() -> None:
    # Given a process that holds a port and is killed with SIGKILL (nothing withdrawn)
    killed = start_grant_child(PORTS[0])
    killed.kill()
    killed.wait()
    assert PORTS[0] in forwarded_ports()
    # When another grant starts, the dead owner's port is removed
    other = EgressGrant(QEMU_UID, [Forward(PORTS[1])], []).start()
    try:
        assert set(PORTS) & forwarded_ports() == {PORTS[1]}
        assert killed.pid not in owned_ports()
    finally:
        other.close()
    # Given a process alive but stopped (SIGSTOP): it no longer refreshes its 4 s lease
    stuck = start_grant_child(PORTS[2])
    try:
        stuck.send_signal(signal.SIGSTOP)
        assert PORTS[2] in forwarded_ports()
        # Then its grant expires by itself (the kernel drops the element), owner entry too
        deadline = time.monotonic() + 30
        while PORTS[2] in forwarded_ports() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert PORTS[2] not in forwarded_ports()
        assert stuck.pid not in owned_ports()
    finally:
        stuck.kill()
        stuck.wait()


def test_a_refresh_renews_the_lease_so_a_live_owner_keeps_its_port() -> None:
    grant = EgressGrant(QEMU_UID, [Forward(PORTS[0])], [], lease_s=3).start()
    try:
        time.sleep(7)  # more than two leases: only the refresh thread keeps it
        assert PORTS[0] in forwarded_ports()
        elements = Nft().set_elements(FORWARD_SET) or []
        [mine] = [e for e in elements if element_value(e) == PORTS[0]]
        assert mine["elem"]["timeout"] == 3
    finally:
        grant.close()
    assert PORTS[0] not in forwarded_ports()


def test_nets_sets_hold_only_live_owners_networks() -> None:
    grant = EgressGrant(QEMU_UID, [], [NET]).start()
    try:
        nets = [element_value(e) for e in Nft().set_elements(NETS4_SET) or []]
        assert {"prefix": {"addr": "10.20.0.0", "len": 16}} in nets
    finally:
        grant.close()
    nets = [element_value(e) for e in Nft().set_elements(NETS4_SET) or []]
    assert {"prefix": {"addr": "10.20.0.0", "len": 16}} not in nets


def test_a_start_waits_for_the_host_lock(tmp_path: Path) -> None:
    # Two grants in one process serialise through the lock file: a start while another
    # holds the lock waits for it instead of interleaving its read-modify-write.
    import fcntl
    import threading

    lock = tmp_path / "egress.lock"
    grant = EgressGrant(QEMU_UID, [Forward(PORTS[0])], [], lock_path=lock)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        started = threading.Event()

        def start() -> None:
            grant.start()
            started.set()

        thread = threading.Thread(target=start)
        thread.start()
        assert not started.wait(1.0)
        fcntl.flock(handle, fcntl.LOCK_UN)
    thread.join(30)
    try:
        assert started.is_set() and PORTS[0] in forwarded_ports()
    finally:
        grant.close()
