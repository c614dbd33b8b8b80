"""Architecture names: Debian's and the kernel's spellings of one machine (pure).

builds.sr.ht's manifests say ``arch: arm64`` or ``arch: aarch64`` (and ``amd64`` or
``x86_64``) for the same machine, and image directories use their distribution's spelling
(``debian/bookworm/arm64``, ``alpine/edge/x86_64``). A manifest's arch matches a built arch
in either spelling, and the job is placed (and queued) under the spelling the image uses,
so ``aarch64`` and ``arm64`` jobs share one queue. libvirt and QEMU use the kernel's.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

__all__ = ["host_arch", "libvirt_arch", "match_arch", "spellings"]

#: spelling → the other spelling of the same machine
_OTHER = {"amd64": "x86_64", "x86_64": "amd64", "arm64": "aarch64", "aarch64": "arm64"}


def spellings(arch: str) -> tuple[str, ...]:
    """``arch`` and its other spelling, if it has one: ``aarch64`` → (aarch64, arm64)."""
    other = _OTHER.get(arch)
    return (arch, other) if other else (arch,)


def match_arch(asked: str, available: Iterable[str]) -> str | None:
    """The entry of ``available`` that is ``asked`` (itself first, then its other
    spelling), or None."""
    built = list(available)
    return next((name for name in spellings(asked) if name in built), None)


def libvirt_arch(arch: str) -> str:
    """The arch libvirt and QEMU call it (``<type arch=...>``, qemu-system-<arch>)."""
    if arch in ("amd64", "x86_64"):
        return "x86_64"
    if arch in ("arm64", "aarch64"):
        return "aarch64"
    return arch


def host_arch() -> str:
    """This host's machine, as libvirt names it (x86_64, aarch64)."""
    return libvirt_arch(platform.machine())
