"""Warm-start snapshots on disk: one per image, arch and machine shape.

A snapshot is a directory ``<snapshot-dir>/<image>-<arch>-<digest>/`` holding

- ``frozen.qcow2``: the overlay the settled guest ran on (read-only; backed by the image's
  disk), which every restored copy's own overlay is backed by;
- ``state.bin``: the guest's memory and device state (QEMU's migration stream);
- ``meta.json``: what the digest was made of, and the SHA-256 and size of both files.

The digest covers everything a restore depends on (``Shape``): the image's files (path,
size, modification time, inode; hashing a multi-GB disk at each start would cost more than
the boot it saves), its build recipe and host key, vCPUs, memory, accelerator, the QEMU
version and the kernel command line. Any change gives a new name, so a stale snapshot is
never restored; ``prune`` deletes the old ones.

Snapshots are made in a scratch directory ``.tmp-<pid>-<n>`` next to them and published with
one ``rename``, so a reader sees a whole snapshot or none; an ``flock`` per shape keeps two
workers on one host from making the same one twice. Checksums are verified the first time a
process uses a file (and again whenever the file's identity changes), so a corrupted or
truncated snapshot means a cold boot, never a broken guest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from buildworker.guest.copyprep import PREP_DIGEST
from buildworker.guest.imagedigest import sha256_file
from buildworker.guest.images import ImageInfo

__all__ = [
    "FROZEN_NAME",
    "STATE_NAME",
    "Miss",
    "Shape",
    "Snapshot",
    "SnapshotStore",
    "shape_of",
]

FROZEN_NAME = "frozen.qcow2"
STATE_NAME = "state.bin"
META_NAME = "meta.json"
FORMAT = 1
_TMP = re.compile(r"^\.tmp-(\d+)-d?\d+$")


@dataclass(frozen=True)
class Shape:
    """What a snapshot depends on; ``digest`` names it."""

    image: str
    arch: str
    inputs: tuple[tuple[str, str], ...]

    @property
    def digest(self) -> str:
        text = json.dumps([FORMAT, self.image, self.arch, list(self.inputs)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def prefix(self) -> str:
        """The directory name without the digest (shared by every shape of the image)."""
        return f"{self.image.replace('/', '_')}-{self.arch}-"

    @property
    def dirname(self) -> str:
        return self.prefix + self.digest

    def label(self) -> str:
        return f"{self.image} ({self.arch})"


def _file_identity(path: Path | None) -> str:
    if path is None:
        return "-"
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def shape_of(
    image: ImageInfo,
    *,
    vcpus: int,
    memory: int,
    accel: str,
    qemu_version: str,
    cmdline: str,
) -> Shape:
    """The shape of a guest of ``image`` on this host. Raises OSError if a file is missing."""
    recipe = image.disk.parent / ".recipe"
    inputs = (
        ("disk", _file_identity(image.disk)),
        ("kernel", _file_identity(image.kernel)),
        ("initrd", _file_identity(image.initrd)),
        ("recipe", recipe.read_text().strip() if recipe.is_file() else "-"),
        ("host_key", image.host_key_fingerprint or "-"),
        ("vcpus", str(vcpus)),
        ("memory", str(memory)),
        ("accel", accel),
        ("qemu", qemu_version),
        ("cmdline", cmdline),
        ("copy_prep", PREP_DIGEST),
    )
    return Shape(image=image.name, arch=image.arch, inputs=inputs)


@dataclass(frozen=True)
class Snapshot:
    """A published snapshot (its files exist; checksums verified by ``SnapshotStore.get``)."""

    shape: Shape
    directory: Path

    @property
    def frozen(self) -> Path:
        return self.directory / FROZEN_NAME

    @property
    def state(self) -> Path:
        return self.directory / STATE_NAME


@dataclass(frozen=True)
class Miss:
    """Why there is no snapshot to restore: ``absent`` (none made yet for this shape: make
    one) or ``unusable`` (one exists but is of another format, truncated, corrupt or
    unreadable: discard it, then make one). ``str()`` is the reason, for logs and notes."""

    kind: Literal["absent", "unusable"]
    reason: str

    @property
    def unusable(self) -> bool:
        return self.kind == "unusable"

    def __str__(self) -> str:
        return self.reason


class SnapshotStore:
    """The snapshots under one directory. Thread-safe; several processes may share it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._serial = 0
        #: file identity → checksum seen valid by this process
        self._verified: set[str] = set()

    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        # qemu (another user) opens frozen.qcow2 inside as a backing file
        os.chmod(self.root, 0o755)

    def get(self, shape: Shape) -> tuple[Snapshot, None] | tuple[None, Miss]:
        """(the snapshot of ``shape``, None) if it is whole and intact, else (None, why not)."""
        directory = self.root / shape.dirname
        if not directory.is_dir():
            return None, Miss("absent", "no snapshot of this image and shape yet")
        snapshot = Snapshot(shape, directory)
        try:
            meta = json.loads((directory / META_NAME).read_text())
            if meta.get("format") != FORMAT or meta.get("digest") != shape.digest:
                return None, Miss(
                    "unusable", f"snapshot {directory.name} is of another format or shape"
                )
            for name in (FROZEN_NAME, STATE_NAME):
                path = directory / name
                identity = _file_identity(path)
                with self._lock:
                    if identity in self._verified:
                        continue
                if path.stat().st_size != meta["files"][name]["size"]:
                    return None, Miss(
                        "unusable", f"snapshot {directory.name}: {name} has the wrong size"
                    )
                if sha256_file(path) != meta["files"][name]["sha256"]:
                    return None, Miss(
                        "unusable", f"snapshot {directory.name}: {name} fails its checksum"
                    )
                with self._lock:
                    self._verified.add(identity)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, Miss("unusable", f"snapshot {directory.name} is unreadable: {exc}")
        return snapshot, None

    def discard(self, shape: Shape) -> None:
        """Delete the snapshot of ``shape`` (corrupt or failing to restore)."""
        directory = self.root / shape.dirname
        if directory.is_dir():
            # Renamed first so no reader picks up a half-deleted directory.
            doomed = self.root / f".tmp-{os.getpid()}-d{time.monotonic_ns()}"
            with contextlib.suppress(OSError):
                os.rename(directory, doomed)
                shutil.rmtree(doomed, ignore_errors=True)

    @contextlib.contextmanager
    def making(self, shape: Shape, cancel: threading.Event) -> Iterator[Path | None]:
        """Hold the shape's lock and yield a fresh scratch directory to make it in, or None
        when the snapshot exists meanwhile (another worker made it) or ``cancel`` is set."""
        self._ensure_root()
        lock_path = self.root / f".{shape.dirname}.lock"
        with open(lock_path, "a") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cancel.wait(0.5):
                        yield None
                        return
            try:
                if (self.root / shape.dirname / META_NAME).is_file():
                    yield None
                    return
                with self._lock:
                    self._serial += 1
                    scratch = self.root / f".tmp-{os.getpid()}-{self._serial}"
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir(mode=0o755)
                try:
                    yield scratch
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def publish(self, shape: Shape, scratch: Path, extra: dict[str, Any]) -> Snapshot:
        """Seal ``scratch`` (holding frozen.qcow2 and state.bin) as the snapshot of ``shape``."""
        files: dict[str, Any] = {}
        for name in (FROZEN_NAME, STATE_NAME):
            path = scratch / name
            files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        meta = {
            "format": FORMAT,
            "digest": shape.digest,
            "image": shape.image,
            "arch": shape.arch,
            "inputs": dict(shape.inputs),
            "files": files,
            "created": time.time(),
            **extra,
        }
        (scratch / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        for leftover in scratch.iterdir():
            if leftover.name not in (FROZEN_NAME, STATE_NAME, META_NAME):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        os.chmod(scratch / FROZEN_NAME, 0o444)  # the saved memory belongs to this disk
        os.chmod(scratch / STATE_NAME, 0o600)
        target = self.root / shape.dirname
        os.rename(scratch, target)  # atomic: the whole snapshot appears at once
        snapshot = Snapshot(shape, target)
        with self._lock:
            for name in (FROZEN_NAME, STATE_NAME):
                self._verified.add(_file_identity(target / name))
        return snapshot

    def prune(self, shape: Shape) -> list[Path]:
        """Delete other shapes' snapshots of the same image and arch, and scratch
        directories of processes that are gone. Returns what was deleted."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for child in self.root.iterdir():
            stale = False
            match = _TMP.match(child.name)
            if match:
                stale = not Path(f"/proc/{match.group(1)}").exists()
            elif child.is_dir() and child.name.startswith(shape.prefix):
                rest = child.name[len(shape.prefix) :]
                stale = (
                    child.name != shape.dirname and re.fullmatch(r"[0-9a-f]{16}", rest) is not None
                )
            if stale:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
        return removed

    def list(self) -> list[dict[str, Any]]:
        """meta.json of every published snapshot (for `buildworker image list` and `prune`)."""
        found = []
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                meta = child / META_NAME
                if not child.name.startswith(".") and meta.is_file():
                    with contextlib.suppress(OSError, ValueError):
                        found.append({"path": str(child), **json.loads(meta.read_text())})
        return found
