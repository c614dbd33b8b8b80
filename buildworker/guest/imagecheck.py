"""`buildworker image check DIR`: an image directory against the image contract (docs/images.md).

The static checks (files, config.yml keys and types, the disk's format, the digest) are
`check_directory`, which reads files and runs ``qemu-img info`` but boots nothing; the
boot (boot, settle with the pinned host key, run ``true``, destroy) is `boot_once`, on the
worker's own Hypervisor. A problem names the file (or the config.yml key) it is about.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from buildworker.guest.imagedigest import DIGEST_KEY, DIGEST_PATTERN, compute_digest
from buildworker.guest.images import DISK_NAME, KEY_TYPES, ImageCatalogue, ImageInfo

__all__ = ["CheckReport", "boot_once", "check_config", "check_directory", "image_name_of"]

_ARCH_NAME = re.compile(r"^[a-z0-9_]+$")
#: What ssh-keygen -l -E sha256 prints for a key (the catalogue pins it as given).
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
_KERNELS = ("vmlinuz", "vmlinux")
#: Families whose package commands ImageInfo.install_command knows.
_FAMILIES = ("debian", "ubuntu", "alpine", "archlinux", "fedora", "rockylinux")


@dataclass
class CheckReport:
    """What `check_directory` found: ``problems`` break the contract (the check fails),
    ``notes`` do not (a digest not recorded, an initrd-less kernel)."""

    directory: Path
    arches: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_config(data: Any, arches: list[str]) -> tuple[list[str], list[str]]:
    """(problems, notes) of a parsed config.yml for an image with ``arches``. Pure.

    Each message starts with ``config.yml: <key>``.
    """
    problems: list[str] = []
    notes: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return ["config.yml: expected a mapping of settings"], notes
    for key in sorted(set(data) - set(KEY_TYPES)):
        problems.append(f"config.yml: {key}: unknown key (known: {', '.join(sorted(KEY_TYPES))})")
    for key, kind in KEY_TYPES.items():
        value = data.get(key)
        if value is None:
            continue
        if kind == "str" and not isinstance(value, str):
            problems.append(f"config.yml: {key}: expected a string, got {type(value).__name__}")
        elif kind == "map" and not (
            isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            problems.append(f"config.yml: {key}: expected a mapping of arch: string")
    homedir = data.get("homedir")
    if isinstance(homedir, str) and not homedir.startswith("/"):
        problems.append("config.yml: homedir: expected an absolute path")
    family = data.get("family")
    if isinstance(family, str) and family not in _FAMILIES:
        notes.append(
            f"config.yml: family: {family!r} has no package commands here "
            "(manifests with packages or repositories fail on it)"
        )
    default = data.get("default_arch")
    if isinstance(default, str) and arches and default not in arches:
        problems.append(
            f"config.yml: default_arch: {default!r} is not built (arches: {', '.join(arches)})"
        )
    fingerprints = data.get("host_key_fingerprints")
    fingerprints = fingerprints if isinstance(fingerprints, dict) else {}
    single = data.get("host_key_fingerprint")
    for arch in arches:
        fp = fingerprints.get(arch) or single
        if not fp:
            problems.append(
                f"config.yml: host_key_fingerprints.{arch}: missing: the guest's SSH host key "
                "fingerprint (ssh-keygen -l -E sha256 of its ssh_host_ed25519_key.pub); "
                "the worker refuses a guest it cannot pin"
            )
        elif isinstance(fp, str) and not _FINGERPRINT.match(fp):
            problems.append(
                f"config.yml: host_key_fingerprints.{arch}: {fp!r} is not a SHA256:... fingerprint"
            )
    digests = data.get(DIGEST_KEY)
    if isinstance(digests, dict):
        for arch, value in digests.items():
            if isinstance(value, str) and not DIGEST_PATTERN.match(value):
                problems.append(f"config.yml: {DIGEST_KEY}.{arch}: expected sha256:<64 hex digits>")
            if arch not in arches:
                problems.append(f"config.yml: {DIGEST_KEY}.{arch}: no such arch is built")
    return problems, notes


def _qemu_img_info(path: Path, qemu_img: str) -> dict[str, Any]:
    """``qemu-img info`` of ``path`` as JSON. Raises ValueError with qemu-img's words."""
    try:
        done = subprocess.run(
            [qemu_img, "info", "--output=json", "-U", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError:
        raise ValueError(f"{qemu_img} not found (apt-get install qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise ValueError("qemu-img info did not answer in 60 s") from None
    if done.returncode != 0:
        raise ValueError((done.stderr or done.stdout).strip() or f"exit {done.returncode}")
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def _world_readable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IROTH)


def check_directory(
    directory: Path, *, verify_digest: bool = True, qemu_img: str = "qemu-img"
) -> CheckReport:
    """Check an image directory (``images/debian/bookworm``) against the contract."""
    report = CheckReport(directory=directory)
    if not directory.is_dir():
        report.problems.append(f"{directory}: not a directory")
        return report
    arch_dirs = sorted(
        child
        for child in directory.iterdir()
        if child.is_dir() and not child.name.startswith(".") and _ARCH_NAME.match(child.name)
    )
    for arch_dir in arch_dirs:
        disk = arch_dir / DISK_NAME
        if not disk.is_file():
            report.problems.append(f"{disk}: missing: the arch's root disk (qcow2)")
            continue
        report.arches.append(arch_dir.name)
    if not arch_dirs:
        report.problems.append(f"{directory}/<arch>/{DISK_NAME}: missing: no arch is built")
    config_path = directory / "config.yml"
    data: Any = None
    if not config_path.is_file():
        report.problems.append(
            f"{config_path}: missing: it must pin each arch's SSH host key fingerprint"
        )
    else:
        try:
            data = yaml.safe_load(config_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            report.problems.append(f"{config_path}: cannot read: {exc}")
        problems, notes = check_config(data, report.arches)
        report.problems += problems
        report.notes += notes
    digests = data.get(DIGEST_KEY) if isinstance(data, dict) else None
    digests = digests if isinstance(digests, dict) else {}
    for arch in report.arches:
        _check_arch(directory / arch, digests.get(arch), report, verify_digest, qemu_img)
    return report


def _check_arch(
    arch_dir: Path,
    recorded: Any,
    report: CheckReport,
    verify_digest: bool,
    qemu_img: str,
) -> None:
    arch = arch_dir.name
    disk = arch_dir / DISK_NAME
    kernel = next((arch_dir / n for n in _KERNELS if (arch_dir / n).is_file()), None)
    if kernel is None:
        report.problems.append(
            f"{arch_dir / 'vmlinuz'}: missing: the kernel (the worker boots it directly)"
        )
    initrd = arch_dir / "initrd.img"
    if not initrd.is_file():
        report.notes.append(f"{initrd}: absent: the kernel must mount /dev/vda by itself")
    for path in (disk, kernel, initrd if initrd.is_file() else None):
        if path is not None and not _world_readable(path):
            report.problems.append(
                f"{path}: not world-readable: QEMU runs as its own user and reads it directly"
            )
    try:
        info = _qemu_img_info(disk, qemu_img)
    except ValueError as exc:
        report.problems.append(f"{disk}: not a readable disk image: {exc}")
    else:
        if info.get("format") != "qcow2":
            report.problems.append(f"{disk}: format is {info.get('format')!r}, expected qcow2")
        if info.get("backing-filename"):
            report.problems.append(
                f"{disk}: has a backing file ({info['backing-filename']}): a base image must "
                "stand alone (every job's overlay is backed by it)"
            )
    if recorded is None:
        report.notes.append(
            f"{arch}: digest: not recorded (buildworker image digest --write {arch_dir.parent})"
        )
    elif verify_digest and isinstance(recorded, str) and DIGEST_PATTERN.match(recorded):
        actual = compute_digest(arch_dir)
        if actual != recorded:
            report.problems.append(
                f"config.yml: {DIGEST_KEY}.{arch}: recorded {recorded}, but the files hash "
                f"to {actual} (rebuilt without recording it? buildworker image digest --write)"
            )


def image_name_of(directory: Path) -> tuple[ImageCatalogue, str]:
    """A catalogue and name that resolve ``directory``: ``<root>/<distro>/<release>``, or a
    single-level ``<root>/<image>`` when the directory holds arches itself."""
    directory = directory.resolve()
    two_level = ImageCatalogue(directory.parent.parent)
    name = f"{directory.parent.name}/{directory.name}"
    if name in two_level.names():
        return two_level, name
    return ImageCatalogue(directory.parent), directory.name


def boot_once(
    hypervisor: Any,
    image: ImageInfo,
    *,
    settle_timeout_s: float,
    say: Callable[[str], None],
) -> None:
    """Boot ``image`` on ``hypervisor``, settle with its host key checked, run ``true``,
    destroy. Raises the guest layer's errors (VMError, GuestError) or RuntimeError when
    ``true`` does not exit 0."""
    say(f"booting {image.name} ({image.arch})")
    guest = hypervisor.boot(image, job_id=0, attempt=0)
    try:
        conn = guest.wait_ready(settle_timeout_s)
        say(f"settled; SSH host key {image.host_key_fingerprint} matched")
        try:
            status = conn.run("true", pty=False, timeout=60)
        finally:
            conn.close()
        if status != 0:
            raise RuntimeError(f"`true` exited {status} in the guest")
        say("ran `true`: exit 0")
    finally:
        guest.destroy()
