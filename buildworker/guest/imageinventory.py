"""What `buildworker image list` shows and `buildworker image prune` removes.

"Unreferenced" (docs/images.md, "Pruning"), each found here and removed only by `prune`:

- a genimg work directory (``<images>/<distro>/.build/<release>-<arch>``) no process is
  using and untouched for ``min_age_s``: what a killed genimg left (a finished one removes
  its own);
- a warm-start snapshot whose image files (disk, kernel, initrd, recipe, host key) match no
  image the catalogue has now: the image was rebuilt or removed, so it can never be
  restored again;
- a snapshot scratch directory (``.tmp-<pid>-<n>``) of a process that is gone.

Release directories, arch directories and alias symlinks are never removed: an alias to a
release not built yet (``testing -> trixie``) is genimg's on purpose, and an arch
directory without its disk may be a build in progress.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildworker.guest.images import ImageCatalogue, ImageInfo
from buildworker.guest.snapstore import SnapshotStore, shape_of

__all__ = [
    "IMAGE_INPUTS",
    "Removal",
    "find_unreferenced",
    "image_inputs",
    "remove",
    "snapshot_state",
    "tree_size",
]

#: The snapshot inputs that come from the image's files (the rest is the machine's).
IMAGE_INPUTS = ("disk", "kernel", "initrd", "recipe", "host_key")
_TMP = re.compile(r"^\.tmp-(\d+)-\d+$")
#: A genimg work directory younger than this is left alone even if no process is in it.
DEFAULT_MIN_AGE_S = 3600.0


@dataclass(frozen=True)
class Removal:
    path: Path
    reason: str
    size: int


def tree_size(path: Path) -> int:
    """Bytes allocated under ``path`` (sparse disks count what they use)."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            return path.lstat().st_blocks * 512
        return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def image_inputs(image: ImageInfo) -> dict[str, str]:
    """The image-file part of the snapshot shape of ``image`` (as snapstore records it).
    Raises OSError when a file is missing."""
    shape = shape_of(image, vcpus=0, memory=0, accel="", qemu_version="", cmdline="")
    return {key: value for key, value in shape.inputs if key in IMAGE_INPUTS}


def _current_inputs(catalogue: ImageCatalogue) -> dict[tuple[str, str], dict[str, str]]:
    """(canonical image, arch) → image inputs, for every image and arch built now."""
    current: dict[tuple[str, str], dict[str, str]] = {}
    for entry in catalogue.served():
        for arch in entry["arches"]:
            try:
                info = catalogue.resolve(entry["image"], arch)
                current[info.name, arch] = image_inputs(info)
            except (LookupError, OSError, ValueError):
                continue  # an unusable image has no snapshot worth keeping
    return current


def snapshot_state(meta: dict[str, Any], current: dict[tuple[str, str], dict[str, str]]) -> str:
    """``current`` when a snapshot's image files are the image's now, ``stale: ...`` else.
    Pure. (The machine's part of the shape, QEMU's version and the accelerator, is checked
    by the worker at each restore; a mismatch there means a cold boot, never a bad guest.)"""
    key = (str(meta.get("image")), str(meta.get("arch")))
    now = current.get(key)
    if now is None:
        return "stale: no such image is built now"
    recorded = meta.get("inputs") or {}
    changed = [k for k in IMAGE_INPUTS if recorded.get(k) != now.get(k)]
    if changed:
        return f"stale: the image's {', '.join(changed)} changed since"
    return "current"


def _in_use(path: Path) -> bool:
    """Whether a process has its cwd, root or an open file under ``path`` (a running
    genimg's mmdebstrap chroots into it)."""
    prefix = str(path.resolve())
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]
        with contextlib.suppress(OSError):
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        for link in links:
            with contextlib.suppress(OSError):
                target = os.readlink(link)
                if target == prefix or target.startswith(prefix + "/"):
                    return True
    return False


def _newest_mtime(path: Path) -> float:
    """The newest modification time of ``path`` and its first two levels (cheap)."""
    newest = path.stat().st_mtime
    for child in path.iterdir():
        with contextlib.suppress(OSError):
            newest = max(newest, child.lstat().st_mtime)
            if child.is_dir() and not child.is_symlink():
                for grandchild in child.iterdir():
                    newest = max(newest, grandchild.lstat().st_mtime)
    return newest


def find_unreferenced(
    images_root: Path,
    snapshot_dir: Path | None,
    *,
    min_age_s: float = DEFAULT_MIN_AGE_S,
    now: float | None = None,
) -> list[Removal]:
    """What `prune` would remove, with why (nothing is removed here)."""
    now = time.time() if now is None else now
    found: list[Removal] = []
    if images_root.is_dir():
        for distro in sorted(images_root.iterdir()):
            build = distro / ".build"
            if distro.name.startswith(".") or not build.is_dir() or build.is_symlink():
                continue
            for work in sorted(build.iterdir()):
                if _in_use(work):
                    continue
                if now - _newest_mtime(work) < min_age_s:
                    continue
                found.append(
                    Removal(
                        work,
                        "genimg work directory left by a build that did not finish",
                        tree_size(work),
                    )
                )
    if snapshot_dir is not None and snapshot_dir.is_dir():
        current = _current_inputs(ImageCatalogue(images_root))
        for meta in SnapshotStore(snapshot_dir).list():
            state = snapshot_state(meta, current)
            if state != "current":
                path = Path(meta["path"])
                found.append(Removal(path, f"warm-start snapshot, {state}", tree_size(path)))
        for child in sorted(snapshot_dir.iterdir()):
            match = _TMP.match(child.name)
            if match and not Path(f"/proc/{match.group(1)}").exists():
                found.append(
                    Removal(child, "snapshot scratch of a process that is gone", tree_size(child))
                )
    return found


def remove(removal: Removal) -> None:
    """Delete one unreferenced path. Raises OSError."""
    if removal.path.is_dir() and not removal.path.is_symlink():
        # snapshots' frozen.qcow2 is read-only; rmtree removes it (the directory is ours)
        shutil.rmtree(removal.path)
    else:
        removal.path.unlink()
