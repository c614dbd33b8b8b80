"""The snapshot store without a VM: names, checksums, atomic publish, locks, pruning."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest

from buildworker.guest.images import ImageInfo
from buildworker.guest.snapstore import (
    FROZEN_NAME,
    STATE_NAME,
    Shape,
    SnapshotStore,
    shape_of,
)


@pytest.fixture
def image(tmp_path: Path) -> ImageInfo:
    arch_dir = tmp_path / "img" / "amd64"
    arch_dir.mkdir(parents=True)
    for name in ("root.img.qcow2", "vmlinuz", "initrd.img"):
        (arch_dir / name).write_bytes(name.encode())
    (arch_dir / ".recipe").write_text("abc123\n")
    return ImageInfo(
        name="debian/bookworm",
        arch="amd64",
        directory=tmp_path / "img",
        disk=arch_dir / "root.img.qcow2",
        kernel=arch_dir / "vmlinuz",
        initrd=arch_dir / "initrd.img",
        host_key_fingerprint="SHA256:x",
    )


def shape(image: ImageInfo, **changes: object) -> Shape:
    values: dict[str, object] = {
        "vcpus": 2,
        "memory": 2 << 30,
        "accel": "tcg",
        "qemu_version": "7.2.0",
        "cmdline": "console=ttyS0",
    }
    values.update(changes)
    return shape_of(image, **values)  # type: ignore[arg-type]


def make_files(store: SnapshotStore, scratch: Path, state: bytes = b"state" * 1000) -> None:
    (scratch / FROZEN_NAME).write_bytes(b"frozen")
    (scratch / STATE_NAME).write_bytes(state)
    (scratch / "vm").mkdir()  # the template's own directory: not part of the snapshot


def test_every_input_changes_the_name(image: ImageInfo) -> None:
    base = shape(image)
    assert base.dirname.startswith("debian_bookworm-amd64-")
    assert shape(image).digest == base.digest
    for change in (
        {"vcpus": 4},
        {"memory": 4 << 30},
        {"accel": "kvm"},
        {"qemu_version": "8.0.0"},
        {"cmdline": "quiet"},
    ):
        assert shape(image, **change).digest != base.digest, change
    os.utime(image.disk, ns=(1, 1))  # a rebuilt disk
    assert shape(image).digest != base.digest
    rekeyed = dataclasses.replace(image, host_key_fingerprint="SHA256:y")
    assert shape(rekeyed).digest != shape(image).digest
    before = shape(image).digest
    (image.disk.parent / ".recipe").write_text("third\n")
    assert shape(image).digest != before


def test_publish_then_get_and_a_corrupt_file_is_refused(tmp_path: Path, image: ImageInfo) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    s = shape(image)
    got, miss = store.get(s)
    assert got is None and miss is not None and miss.kind == "absent" and not miss.unusable
    with store.making(s, threading.Event()) as scratch:
        assert scratch is not None
        make_files(store, scratch)
        published = store.publish(s, scratch, {"made_by": "test"})
    assert sorted(p.name for p in published.directory.iterdir()) == [
        FROZEN_NAME,
        "meta.json",
        STATE_NAME,
    ]
    assert not any(p.name.startswith(".tmp-") for p in store.root.iterdir())
    meta = json.loads((published.directory / "meta.json").read_text())
    assert meta["inputs"]["vcpus"] == "2" and meta["made_by"] == "test"
    got, why = store.get(s)
    assert got == published and why is None
    # A byte flipped in the state (same size): a fresh store (another process) refuses it,
    # and so does this one, because the file's identity changed.
    data = bytearray(published.state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    published.state.write_bytes(bytes(data))
    for reader in (store, SnapshotStore(store.root)):
        got, why = reader.get(s)
        assert got is None and why is not None and why.unusable
        assert "state.bin fails its checksum" in str(why)
    published.state.write_bytes(b"short")
    short = SnapshotStore(store.root).get(s)[1]
    assert short is not None and short.unusable and "wrong size" in str(short)
    store.discard(s)
    assert not published.directory.exists()
    assert store.get(s)[0] is None


def test_making_yields_nothing_once_another_made_it(tmp_path: Path, image: ImageInfo) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    s = shape(image)
    with store.making(s, threading.Event()) as scratch:
        assert scratch is not None
        make_files(store, scratch)
        store.publish(s, scratch, {})
    with SnapshotStore(store.root).making(s, threading.Event()) as again:
        assert again is None


def test_a_held_lock_waits_until_cancelled(tmp_path: Path, image: ImageInfo) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    s = shape(image)
    cancel = threading.Event()
    seen: list[Path | None] = []
    with store.making(s, threading.Event()) as scratch:
        assert scratch is not None

        def other() -> None:
            with SnapshotStore(store.root).making(s, cancel) as theirs:
                seen.append(theirs)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive(), "the second maker waits for the lock"
        cancel.set()
        thread.join(5.0)
    assert seen == [None]


def test_prune_removes_other_shapes_and_dead_scratch(tmp_path: Path, image: ImageInfo) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    current, old = shape(image), shape(image, vcpus=8)
    other_image = shape(dataclasses.replace(image, name="debian/trixie"), vcpus=8)
    for s in (current, old, other_image):
        with store.making(s, threading.Event()) as scratch:
            assert scratch is not None
            make_files(store, scratch)
            store.publish(s, scratch, {})
    dead = store.root / ".tmp-999999999-3"
    mine = store.root / f".tmp-{os.getpid()}-77"
    dead.mkdir()
    mine.mkdir()
    removed = store.prune(current)
    assert sorted(p.name for p in removed) == sorted([old.dirname, dead.name])
    assert (store.root / current.dirname).is_dir()
    assert (store.root / other_image.dirname).is_dir()
    assert mine.is_dir()
    assert {m["digest"] for m in store.list()} == {current.digest, other_image.digest}
