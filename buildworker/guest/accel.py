"""KVM or TCG: pick the accelerator from what the host really offers.

MACHINE-NOTES.md: on hosts that are themselves VMs, /dev/kvm may be a paravirtual module
(kvm_pvm) without vmx/svm, and a stock guest kernel is then slower than TCG and crashes.
So KVM is chosen only with hardware virtualisation (a vmx or svm CPU flag), a loaded
kvm_intel/kvm_amd module and a usable /dev/kvm; otherwise tuned TCG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AccelChoice", "HostFacts", "accel_for_guest", "choose_accel", "probe_host"]


@dataclass(frozen=True)
class HostFacts:
    cpu_flags: frozenset[str]
    kvm_modules: frozenset[str]
    dev_kvm_usable: bool


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def probe_host(proc: Path = Path("/proc"), sys_module: Path = Path("/sys/module")) -> HostFacts:
    flags: set[str] = set()
    try:
        for line in (proc / "cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
    except OSError:
        pass
    modules = frozenset(
        name for name in ("kvm_intel", "kvm_amd", "kvm_pvm") if (sys_module / name).exists()
    )
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    return HostFacts(frozenset(flags), modules, usable)


def choose_accel(setting: str, facts: HostFacts) -> AccelChoice:
    """``setting`` is ``[vm] accel``: auto, kvm or tcg. Raises ValueError on anything else."""
    if setting not in {"auto", "kvm", "tcg"}:
        raise ValueError(f"vm.accel: expected auto, kvm or tcg, got {setting!r}")
    if setting == "tcg":
        return AccelChoice("tcg", "configured: [vm] accel = tcg")
    hardware = bool(facts.cpu_flags & {"vmx", "svm"})
    module = bool(facts.kvm_modules & {"kvm_intel", "kvm_amd"})
    if setting == "kvm":
        return AccelChoice("kvm", "configured: [vm] accel = kvm")
    if hardware and module and facts.dev_kvm_usable:
        return AccelChoice("kvm", "hardware virtualisation (vmx/svm) with kvm_intel/kvm_amd")
    missing = []
    if not hardware:
        missing.append("no vmx/svm CPU flag")
    if not module:
        extra = " (only kvm_pvm, paravirtual)" if "kvm_pvm" in facts.kvm_modules else ""
        missing.append(f"no kvm_intel/kvm_amd module{extra}")
    if not facts.dev_kvm_usable:
        missing.append("/dev/kvm not usable")
    return AccelChoice("tcg", "software emulation: " + ", ".join(missing))


def accel_for_guest(host: AccelChoice, guest_arch: str, host_arch: str) -> AccelChoice:
    """The accelerator of one guest: ``host`` (the worker's choice) when the guest's arch is
    the host's (libvirt spellings: x86_64, aarch64), else TCG: KVM runs only its own arch,
    so an aarch64 guest on an x86_64 host is emulated whatever ``[vm] accel`` says."""
    if guest_arch == host_arch:
        return host
    return AccelChoice("tcg", f"software emulation: an {guest_arch} guest on an {host_arch} host")
