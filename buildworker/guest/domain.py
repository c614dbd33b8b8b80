"""The libvirt domain XML of one build guest (pure: no libvirt import, testable as text).

Choices, each measured on this machine (MACHINE-NOTES.md):
- ``<domain type='qemu'>`` with ``-cpu qemu64`` and a 1 GiB translation cache under TCG
  (≈25 % faster boot than ``-cpu max``); ``type='kvm'`` with host-passthrough under KVM.
- Direct kernel boot with the image's minimal initrd; ``quiet mitigations=off``.
- User-mode networking through ``qemu:commandline`` (libvirt 9.0 has no passt backend):
  SSH forwarded from 127.0.0.1 only, the NIC on a free PCI slot, no iPXE option ROM.
- The overlay is throw-away, so ``cache='unsafe'`` (flushes ignored).
- A static DAC label: qemu runs as the libvirt-qemu user (the isolation rule matches that
  uid) and libvirt does not chown the shared base image.
- on_poweroff/reboot/crash → destroy: a guest that stops is gone, never restarted.
- aarch64 guests (arm64 images; always TCG on an x86 host): the ``virt`` machine with
  qemu-system-aarch64 and ``-cpu cortex-a57`` (no pointer authentication, which ``max``
  emulates at great cost), direct kernel boot with the device tree (no firmware, so no
  ACPI and no vmgenid), console on the PL011 (ttyAMA0), virtio devices on PCIe; the NIC
  sits on the root complex (pcie.0) at the same free slot.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "AARCH64_CPU",
    "DEFAULT_CMDLINE",
    "GUEST_SSH_PORT",
    "QEMU_NS",
    "DomainSpec",
    "default_cmdline",
    "domain_name",
    "parse_hostfwd_port",
    "render_domain_xml",
]

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
GUEST_SSH_PORT = 22
#: Kernel command line; the initrd ignores root= (it mounts /dev/vda) but a stock initrd
#: would need it. net.ifnames=0 keeps the initrd-configured eth0 from being renamed.
DEFAULT_CMDLINE = (
    "root=/dev/vda rw console=ttyS0 quiet loglevel=3 mitigations=off net.ifnames=0 "
    "systemd.show_status=0 cryptomgr.notests"
)
_NAME_PART = re.compile(r"[^A-Za-z0-9_.]+")
#: The CPU model of an aarch64 guest under TCG (measured against max: docs/images.md).
AARCH64_CPU = "cortex-a57"
#: The emulator of each non-x86 guest arch (x86_64: libvirt's default).
_EMULATORS = {"aarch64": "/usr/bin/qemu-system-aarch64"}
#: The serial console's device in the guest, per arch.
_CONSOLES = {"aarch64": "ttyAMA0"}


def default_cmdline(arch: str) -> str:
    """DEFAULT_CMDLINE with the arch's console (``arch`` as libvirt names it)."""
    console = _CONSOLES.get(arch)
    if console is None:
        return DEFAULT_CMDLINE
    return DEFAULT_CMDLINE.replace("console=ttyS0", f"console={console}")


def domain_name(worker: str, job_id: int, attempt: int) -> str:
    """``buildworker-<worker>-<job>-<attempt>``; the worker part is sanitised (no dashes, so
    a prefix match on ``buildworker-<worker>-`` never catches another worker's domains)."""
    return f"{domain_prefix(worker)}{int(job_id)}-{int(attempt)}"


def domain_prefix(worker: str) -> str:
    cleaned = _NAME_PART.sub("_", worker).strip("_") or "worker"
    return f"buildworker-{cleaned}-"


@dataclass(frozen=True)
class DomainSpec:
    name: str
    accel: str  # "kvm" or "tcg"
    vcpus: int
    memory_bytes: int
    kernel: Path
    initrd: Path | None
    overlay: Path
    ssh_port: int
    console_log: Path
    qemu_uid: int
    qemu_gid: int
    cmdline: str = DEFAULT_CMDLINE
    arch: str = "x86_64"
    tb_cache_mib: int = 1024
    #: extra user-net options
    netdev_options: tuple[str, ...] = field(default=())
    description: str = ""
    #: VM generation id (QEMU vmgenid): a new one per copy of a restored snapshot makes the
    #: guest kernel reseed its RNG. None: libvirt picks one.
    genid: str | None = None
    #: start waiting for a migration stream (``-incoming defer``) instead of booting
    incoming: bool = False


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def render_domain_xml(spec: DomainSpec) -> str:
    if spec.accel not in {"kvm", "tcg"}:
        raise ValueError(f"accel must be kvm or tcg, got {spec.accel!r}")
    ET.register_namespace("qemu", QEMU_NS)
    domain = ET.Element("domain", {"type": "kvm" if spec.accel == "kvm" else "qemu"})
    _sub(domain, "name", spec.name)
    if spec.arch != "aarch64":  # vmgenid is an ACPI device: x86 only
        _sub(domain, "genid", spec.genid)
    if spec.description:
        _sub(domain, "description", spec.description)
    _sub(domain, "memory", str(spec.memory_bytes // 1024), unit="KiB")
    _sub(domain, "vcpu", str(spec.vcpus))
    arm = spec.arch == "aarch64"
    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch=spec.arch, machine="virt" if arm else "pc")
    _sub(os_el, "kernel", str(spec.kernel))
    if spec.initrd is not None:
        _sub(os_el, "initrd", str(spec.initrd))
    _sub(os_el, "cmdline", spec.cmdline)
    if not arm:  # the virt machine boots the kernel without firmware
        _sub(os_el, "bios", useserial="no")
        _sub(os_el, "bootmenu", enable="no")
    features = _sub(domain, "features")
    if arm:
        _sub(features, "gic", version="3")  # GICv2 stops at 8 vCPUs
    else:
        _sub(features, "acpi")  # on aarch64, ACPI comes with UEFI only
    if spec.accel == "tcg":
        tcg = _sub(features, "tcg")
        _sub(tcg, "tb-cache", str(spec.tb_cache_mib), unit="MiB")
        cpu = _sub(domain, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", AARCH64_CPU if arm else "qemu64", fallback="forbid")
    else:
        _sub(domain, "cpu", mode="host-passthrough", check="none")
    _sub(domain, "clock", offset="utc")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(domain, event, "destroy")
    devices = _sub(domain, "devices")
    emulator = _EMULATORS.get(spec.arch)
    if emulator:
        _sub(devices, "emulator", emulator)
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", cache="unsafe", discard="unmap")
    _sub(disk, "source", file=str(spec.overlay))
    _sub(disk, "target", dev="vda", bus="virtio")
    _sub(devices, "controller", type="usb", model="none")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(spec.console_log))
    _sub(serial, "target", port="0")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="none")
    seclabel = _sub(domain, "seclabel", type="static", model="dac", relabel="no")
    _sub(seclabel, "label", f"+{spec.qemu_uid}:+{spec.qemu_gid}")
    netdev = ",".join(
        [
            "user",
            "id=bwnet",
            "net=10.0.2.0/24",
            "host=10.0.2.2",
            "dns=10.0.2.3",
            f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:{GUEST_SSH_PORT}",
            *spec.netdev_options,
        ]
    )
    commandline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
    args = [
        "-netdev",
        netdev,
        "-device",
        # addr 0x10: a slot libvirt does not hand out to the disk/rng; romfile='' skips iPXE.
        "virtio-net-pci,netdev=bwnet,addr=0x10,mac=52:54:00:12:34:56,romfile=",
    ]
    if spec.incoming:
        args += ["-incoming", "defer"]
    for arg in args:
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", {"value": arg})
    return ET.tostring(domain, encoding="unicode")


_HOSTFWD = re.compile(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:")


def parse_hostfwd_port(xml: str) -> int | None:
    """The loopback SSH port a domain's XML forwards, or None (not one of ours)."""
    match = _HOSTFWD.search(xml)
    return int(match.group(1)) if match else None
