"""arm64 guests: the aarch64 domain XML (pure), their accelerator, and arch spellings."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from buildworker.arches import libvirt_arch, match_arch, spellings
from buildworker.guest.accel import AccelChoice, accel_for_guest
from buildworker.guest.domain import (
    AARCH64_CPU,
    DEFAULT_CMDLINE,
    QEMU_NS,
    default_cmdline,
    parse_hostfwd_port,
    render_domain_xml,
)

from .test_pure import spec


def arm_xml(**overrides: object) -> ET.Element:
    values: dict[str, object] = {"arch": "aarch64", "cmdline": default_cmdline("aarch64")}
    values.update(overrides)
    return ET.fromstring(render_domain_xml(spec(**values)))


def test_an_aarch64_guest_is_a_virt_machine_on_qemu_system_aarch64() -> None:
    root = arm_xml()
    os_type = root.find("os/type")
    assert os_type is not None
    assert (os_type.get("arch"), os_type.get("machine"), os_type.text) == ("aarch64", "virt", "hvm")
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-aarch64"
    assert root.get("type") == "qemu"


def test_an_aarch64_guest_boots_its_kernel_without_firmware_acpi_or_vmgenid() -> None:
    root = arm_xml(genid="6f2d3c6e-0000-4000-8000-000000000001")
    assert root.findtext("os/kernel") == "/img/vmlinuz"
    assert root.findtext("os/initrd") == "/img/initrd.img"
    assert root.find("os/bios") is None and root.find("os/bootmenu") is None
    assert root.find("features/acpi") is None  # ACPI on aarch64 needs UEFI
    assert root.find("genid") is None  # vmgenid is an ACPI device
    gic = root.find("features/gic")
    assert gic is not None and gic.get("version") == "3"


def test_an_aarch64_guest_under_tcg_gets_the_measured_cpu_and_translation_cache() -> None:
    root = arm_xml()
    assert root.findtext("cpu/model") == AARCH64_CPU == "cortex-a57"
    assert root.findtext("features/tcg/tb-cache") == "1024"


def test_an_aarch64_guest_logs_its_console_from_ttyama0() -> None:
    cmdline = default_cmdline("aarch64")
    assert "console=ttyAMA0" in cmdline and "ttyS0" not in cmdline
    assert cmdline.replace("ttyAMA0", "ttyS0") == DEFAULT_CMDLINE
    assert default_cmdline("x86_64") == DEFAULT_CMDLINE
    root = arm_xml()
    assert root.findtext("os/cmdline") == cmdline
    serial = root.find("devices/serial/source")
    assert serial is not None and serial.get("path") == "/vms/x/console.log"


def test_an_aarch64_guest_keeps_user_net_ssh_on_loopback_and_virtio_devices() -> None:
    xml = render_domain_xml(spec(arch="aarch64"))
    root = ET.fromstring(xml)
    args = [a.get("value") or "" for a in root.iter(f"{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in netdev
    device = args[args.index("-device") + 1]
    # on the virt machine's PCIe root complex, at the slot x86 uses, without option ROM
    assert device.startswith("virtio-net-pci,netdev=bwnet,addr=0x10,") and "romfile=" in device
    assert parse_hostfwd_port(xml) == 40022
    target = root.find("devices/disk/target")
    assert target is not None and target.get("bus") == "virtio"
    rng = root.find("devices/rng")
    assert rng is not None and rng.get("model") == "virtio"
    label = root.find("seclabel/label")
    assert label is not None and label.text == "+64055:+113"


def test_an_x86_guest_is_rendered_as_before() -> None:
    root = ET.fromstring(render_domain_xml(spec(genid="6f2d3c6e-0000-4000-8000-000000000001")))
    os_type = root.find("os/type")
    assert os_type is not None and os_type.get("machine") == "pc"
    assert root.find("features/acpi") is not None and root.find("features/gic") is None
    assert root.find("os/bios") is not None and root.find("devices/emulator") is None
    assert root.findtext("genid") == "6f2d3c6e-0000-4000-8000-000000000001"
    assert root.findtext("cpu/model") == "qemu64"


HOST_KVM = AccelChoice("kvm", "hardware virtualisation (vmx/svm) with kvm_intel/kvm_amd")


def test_a_guest_of_another_arch_is_always_emulated() -> None:
    choice = accel_for_guest(HOST_KVM, "aarch64", "x86_64")
    assert choice.accel == "tcg"
    assert "aarch64 guest on an x86_64 host" in choice.reason
    assert accel_for_guest(HOST_KVM, "x86_64", "x86_64") is HOST_KVM
    assert accel_for_guest(HOST_KVM, "aarch64", "aarch64") is HOST_KVM


def test_both_spellings_of_an_arch_name_one_machine() -> None:
    assert spellings("aarch64") == ("aarch64", "arm64")
    assert spellings("riscv64") == ("riscv64",)
    assert match_arch("aarch64", ["amd64", "arm64"]) == "arm64"
    assert match_arch("arm64", ["arm64"]) == "arm64"
    assert match_arch("x86_64", ["amd64"]) == "amd64"
    assert match_arch("amd64", ["x86_64"]) == "x86_64"  # alpine's spelling
    assert match_arch("aarch64", ["aarch64", "arm64"]) == "aarch64"  # an exact name first
    assert match_arch("ppc64el", ["amd64", "arm64"]) is None
    assert [libvirt_arch(a) for a in ("amd64", "x86_64", "arm64", "aarch64", "riscv64")] == [
        "x86_64",
        "x86_64",
        "aarch64",
        "aarch64",
        "riscv64",
    ]
