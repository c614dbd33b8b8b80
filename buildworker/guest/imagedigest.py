"""An image's content digest: which bytes a job's guest booted from (docs/images.md, "Digest").

The digest of one arch of an image is the SHA-256 of the text ``sha256sum`` prints for the
arch's boot files, those present of ``root.img.qcow2``, ``vmlinuz`` (or ``vmlinux``) and
``initrd.img``, in that order, named without a directory. So anyone can check it with
coreutils alone::

    cd images/debian/bookworm/amd64 && sha256sum root.img.qcow2 vmlinuz initrd.img | sha256sum

It covers the files as stored (a re-converted qcow2 with the same guest content is another
image: the worker boots the file, not its content). ``config.yml`` is not covered: it holds
the digest itself, and its settings are shown beside the digest where they matter (the
release, the host key).

Computed once, when the image is built (``buildworker image digest --write``), and recorded in
the release's ``config.yml`` as ``digest: {ARCH: "sha256:<hex>"}``; the worker reads it there
at each job (hashing a multi-GB disk per job would cost more than the boot).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DIGEST_KEY",
    "DIGEST_PATTERN",
    "boot_files",
    "combine",
    "compute_digest",
    "sha256_file",
    "write_digests",
]

#: The config.yml key the digests are recorded under (a mapping arch → digest).
DIGEST_KEY = "digest"
#: What a recorded digest looks like.
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
#: The boot files, in digest order; of the kernel names, the first present is the one used
#: (the catalogue picks the kernel the same way).
_DISK = "root.img.qcow2"
_KERNELS = ("vmlinuz", "vmlinux")
_INITRD = "initrd.img"
_CHUNK = 1 << 20


def boot_files(arch_dir: Path) -> list[Path]:
    """The files of ``arch_dir`` the digest covers, in order (only those present)."""
    files = []
    if (arch_dir / _DISK).is_file():
        files.append(arch_dir / _DISK)
    kernel = next((arch_dir / n for n in _KERNELS if (arch_dir / n).is_file()), None)
    if kernel is not None:
        files.append(kernel)
    if (arch_dir / _INITRD).is_file():
        files.append(arch_dir / _INITRD)
    return files


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes. Raises OSError."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def combine(entries: Iterable[tuple[str, str]]) -> str:
    """``sha256:<hex>`` of the ``sha256sum`` listing of (file name, hex digest) pairs.

    Pure: the definition of the digest, apart from reading the files.
    """
    listing = "".join(f"{hexdigest}  {name}\n" for name, hexdigest in entries)
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def compute_digest(arch_dir: Path) -> str:
    """The digest of one arch directory. Raises FileNotFoundError naming the disk when it is
    missing (an arch without a disk is no image), OSError for unreadable files."""
    files = boot_files(arch_dir)
    if not files or files[0].name != _DISK:
        raise FileNotFoundError(f"{arch_dir / _DISK}: missing (an image arch needs its disk)")
    return combine((path.name, sha256_file(path)) for path in files)


def write_digests(config_path: Path, digests: dict[str, str]) -> None:
    """Record ``digests`` (arch → digest) in ``config_path``, keeping the other arches'.

    The file is rewritten with its other lines kept as they are (genimg's comments too):
    the ``digest:`` block is replaced, or appended when absent. Written to a temporary file
    and renamed, so a reader never sees half a file. Raises OSError, or ValueError when the
    existing file is not a mapping.
    """
    text = config_path.read_text() if config_path.exists() else ""
    data: Any = yaml.safe_load(text) if text.strip() else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{config_path}: expected a mapping of settings")
    merged: dict[str, str] = {}
    old = data.get(DIGEST_KEY)
    if isinstance(old, dict):
        merged.update({str(k): str(v) for k, v in old.items()})
    merged.update(digests)
    kept = _without_block(text.splitlines(), DIGEST_KEY)
    if kept and kept[-1].strip() == "":
        kept = kept[:-1]
    block = [f"{DIGEST_KEY}:"] + [f'  {arch}: "{merged[arch]}"' for arch in sorted(merged)]
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text("\n".join(kept + block) + "\n")
    tmp.replace(config_path)


def _without_block(lines: list[str], key: str) -> list[str]:
    """``lines`` without the top-level ``key:`` entry and its indented continuation."""
    out: list[str] = []
    skipping = False
    for line in lines:
        if skipping and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        skipping = False
        if line.startswith(f"{key}:"):
            skipping = True
            continue
        out.append(line)
    return out
