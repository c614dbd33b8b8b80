"""Pure parts of the guest layer: accelerator choice, domain XML, probe schedule, ports, SSH
helpers. (Isolation: test_egress.py.)"""

from __future__ import annotations

import socket
import subprocess
import xml.etree.ElementTree as ET
from itertools import islice
from pathlib import Path

import paramiko
import pytest

from buildworker.guest.accel import HostFacts, choose_accel, probe_host
from buildworker.guest.domain import (
    QEMU_NS,
    DomainSpec,
    domain_name,
    domain_prefix,
    parse_hostfwd_port,
    render_domain_xml,
)
from buildworker.guest.ports import is_hostfwd_conflict, pick_port
from buildworker.guest.settle import probe_delays
from buildworker.guest.ssh import fingerprint_sha256, guest_path_expr

from .conftest import SSH_KEY

PVM_HOST = HostFacts(frozenset({"sse2", "avx2"}), frozenset({"kvm_pvm"}), True)


def test_a_paravirtual_kvm_without_vmx_or_svm_gets_tcg_and_says_why() -> None:
    choice = choose_accel("auto", PVM_HOST)
    assert choice.accel == "tcg"
    assert "no vmx/svm" in choice.reason and "kvm_pvm" in choice.reason


def test_hardware_virtualisation_gets_kvm() -> None:
    facts = HostFacts(frozenset({"vmx"}), frozenset({"kvm_intel"}), True)
    assert choose_accel("auto", facts).accel == "kvm"
    assert choose_accel("tcg", facts).accel == "tcg"


def test_this_machine_picks_tcg() -> None:
    # MACHINE-NOTES.md: these hosts have kvm_pvm and no vmx/svm.
    assert choose_accel("auto", probe_host()).accel == "tcg"


def test_an_unknown_accel_setting_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"vm\.accel"):
        choose_accel("xen", PVM_HOST)


def spec(**overrides: object) -> DomainSpec:
    values: dict[str, object] = {
        "name": domain_name("host-1", 42, 2),
        "accel": "tcg",
        "vcpus": 2,
        "memory_bytes": 2 * 1024**3,
        "kernel": Path("/img/vmlinuz"),
        "initrd": Path("/img/initrd.img"),
        "overlay": Path("/vms/x/overlay.qcow2"),
        "ssh_port": 40022,
        "console_log": Path("/vms/x/console.log"),
        "qemu_uid": 64055,
        "qemu_gid": 113,
    }
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


def test_domain_names_follow_the_convention_and_prefixes_do_not_overlap() -> None:
    assert domain_name("host-1", 42, 2) == "buildworker-host_1-42-2"
    # "host" must not reap "host-1"'s guests: sanitised names contain no dash.
    assert not domain_name("host-1", 1, 1).startswith(domain_prefix("host"))


def test_tcg_domain_xml_uses_qemu_type_tuned_cpu_and_loopback_only_ssh() -> None:
    root = ET.fromstring(render_domain_xml(spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "buildworker-host_1-42-2"
    assert root.find("cpu/model").text == "qemu64"  # type: ignore[union-attr]
    assert root.find("features/tcg/tb-cache").text == "1024"  # type: ignore[union-attr]
    assert root.findtext("memory") == str(2 * 1024**2)
    assert root.findtext("os/kernel") == "/img/vmlinuz"
    assert root.find("devices/disk/driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert root.find("devices/disk/source").get("file") == "/vms/x/overlay.qcow2"  # type: ignore[union-attr]
    assert root.find("devices/rng") is not None
    assert root.find("seclabel/label").text == "+64055:+113"  # type: ignore[union-attr]
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in (netdev or "")
    assert parse_hostfwd_port(render_domain_xml(spec())) == 40022


def test_kvm_domain_xml_uses_kvm_type_and_host_cpu() -> None:
    root = ET.fromstring(render_domain_xml(spec(accel="kvm")))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert root.find("features/tcg") is None


def test_values_are_escaped_in_the_xml() -> None:
    xml = render_domain_xml(spec(description="<job> & 'x'"))
    assert ET.fromstring(xml).findtext("description") == "<job> & 'x'"


def test_probes_start_small_and_double_up_to_a_cap() -> None:
    assert list(islice(probe_delays(), 6)) == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
    assert list(islice(probe_delays(cap_s=1.0), 7)) == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    with pytest.raises(ValueError):
        next(probe_delays(first_s=0))


def test_a_picked_port_is_free_on_loopback_and_not_excluded() -> None:
    port = pick_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert pick_port(exclude={port}) != port


def test_qemu_port_conflicts_are_recognised() -> None:
    assert is_hostfwd_conflict("qemu: could not set up host forwarding rule 'tcp:...'")
    assert not is_hostfwd_conflict("Cannot access storage file")


def test_fingerprints_match_ssh_keygen() -> None:
    key = paramiko.PKey.from_path(str(SSH_KEY))
    expected = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(SSH_KEY) + ".pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert fingerprint_sha256(key) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("~/out/a b.txt", "\"$HOME\"/'out/a b.txt'"),
        ("relative.txt", "relative.txt"),
        ("/etc/x; rm -rf /", "'/etc/x; rm -rf /'"),
    ],
)
def test_guest_paths_are_quoted_with_home_expanded(path: str, expected: str) -> None:
    assert guest_path_expr(path) == expected
