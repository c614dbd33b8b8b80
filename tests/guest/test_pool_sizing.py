"""The warm pool's sizing rules, without a VM."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildworker.config import ConfigError
from buildworker.guest.images import ImageInfo
from buildworker.guest.pool import parse_pool_sizes, pool_room, pool_targets

GIB = 1024**3


def image(name: str, arch: str = "amd64") -> ImageInfo:
    d = Path("/images") / name
    return ImageInfo(
        name=name,
        arch=arch,
        directory=d,
        disk=d / arch / "root.img.qcow2",
        kernel=None,
        initrd=None,
    )


def test_pool_sizes_parse_and_name_the_bad_entry() -> None:
    assert parse_pool_sizes(["debian/bookworm=2", "debian/sid@arm64=0"]) == {
        ("debian/bookworm", None): 2,
        ("debian/sid", "arm64"): 0,
    }
    for bad in ("debian/bookworm", "=2", "debian/bookworm=two", "x=-1"):
        with pytest.raises(ConfigError, match=r"vm\.pool-sizes: expected IMAGE") as info:
            parse_pool_sizes([bad])
        assert repr(bad) in str(info.value)


def test_room_reserves_the_slots_first() -> None:
    assert pool_room(budget=16 * GIB, slots=4, guest_memory=2 * GIB) == 4
    assert pool_room(budget=9 * GIB, slots=4, guest_memory=2 * GIB) == 0
    assert pool_room(budget=11 * GIB, slots=4, guest_memory=2 * GIB) == 1
    assert pool_room(budget=GIB, slots=1, guest_memory=2 * GIB) == 0


def test_targets_count_an_alias_once_and_follow_overrides_and_room() -> None:
    bookworm, trixie = image("debian/bookworm"), image("debian/trixie")
    served = [
        ("debian/bookworm", "amd64", bookworm),
        ("debian/stable", "amd64", bookworm),  # alias of the same image
        ("debian/trixie", "amd64", trixie),
    ]
    targets = pool_targets(served, default_size=1, sizes={}, room=10)
    assert [(t.key, t.size) for t in targets] == [
        (("debian/bookworm", "amd64"), 1),
        (("debian/trixie", "amd64"), 1),
    ]
    # An override by the alias's name applies to the image it names.
    targets = pool_targets(
        served,
        default_size=1,
        sizes={("debian/stable", None): 3, ("debian/trixie", "amd64"): 0},
        room=10,
    )
    assert [(t.key, t.size) for t in targets] == [(("debian/bookworm", "amd64"), 3)]
    # The memory budget cuts the total, in the order served.
    targets = pool_targets(served, default_size=2, sizes={}, room=3)
    assert [(t.key, t.size) for t in targets] == [
        (("debian/bookworm", "amd64"), 2),
        (("debian/trixie", "amd64"), 1),
    ]
    assert pool_targets(served, default_size=0, sizes={}, room=10) == []
