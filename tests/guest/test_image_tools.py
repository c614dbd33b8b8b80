"""`buildworker image digest|check|prune|list` over real directories, real qcow2 files made by
qemu-img, real processes; the boot half of `check` on the built bookworm image (one VM)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from buildworker.cli import main
from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.imagecheck import boot_once, check_config, check_directory
from buildworker.guest.imagedigest import combine, compute_digest, write_digests
from buildworker.guest.imageinventory import find_unreferenced, image_inputs, snapshot_state
from buildworker.guest.images import ImageCatalogue, ImageInfo

from .conftest import IMAGES

FP = "SHA256:" + "A" * 43
CONFIG = f"""\
# Written by a test; comments survive a digest write.
family: debian
release: bookworm
default_arch: amd64
host_key_fingerprints:
  amd64: "{FP}"
"""


def make_image(root: Path, name: str = "debian/bookworm", config: str = CONFIG) -> Path:
    """A release directory with a real (tiny) qcow2, a kernel and an initrd, world-readable."""
    directory = root / name
    arch = directory / "amd64"
    arch.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(arch / "root.img.qcow2"), "16M"],
        check=True,
    )
    (arch / "vmlinuz").write_bytes(b"kernel bytes")
    (arch / "initrd.img").write_bytes(b"initrd bytes")
    for path in arch.iterdir():
        path.chmod(0o644)
    (directory / "config.yml").write_text(config)
    return directory


def write_conf(tmp_path: Path, images: Path, snapshots: Path) -> Path:
    conf = tmp_path / "worker.conf"
    conf.write_text(f"[worker]\nimages = {images}\n[vm]\nsnapshot-dir = {snapshots}\n")
    return conf


# --- digest ----------------------------------------------------------------------------------


def test_the_digest_is_what_sha256sum_piped_to_sha256sum_prints(tmp_path: Path) -> None:
    arch = make_image(tmp_path) / "amd64"
    # The definition docs/images.md gives, run with coreutils
    listing = subprocess.run(
        ["sha256sum", "root.img.qcow2", "vmlinuz", "initrd.img"],
        cwd=arch,
        capture_output=True,
        check=True,
    ).stdout
    assert compute_digest(arch) == "sha256:" + hashlib.sha256(listing).hexdigest()
    # and it changes with any byte of any file
    before = compute_digest(arch)
    (arch / "initrd.img").write_bytes(b"initrd bytes!")
    assert compute_digest(arch) != before


def test_combine_is_order_and_name_sensitive() -> None:
    a, b = ("x", "0" * 64), ("y", "1" * 64)
    assert combine([a, b]) != combine([b, a])
    assert combine([a]) != combine([("z", "0" * 64)])


def test_a_digest_needs_the_disk_and_names_it(tmp_path: Path) -> None:
    arch = make_image(tmp_path) / "amd64"
    (arch / "root.img.qcow2").unlink()
    with pytest.raises(FileNotFoundError, match=r"amd64/root.img.qcow2: missing"):
        compute_digest(arch)


def test_writing_digests_keeps_the_file_and_other_arches(tmp_path: Path) -> None:
    config = make_image(tmp_path) / "config.yml"
    other = "sha256:" + "1" * 64
    write_digests(config, {"arm64": other})
    write_digests(config, {"amd64": "sha256:" + "2" * 64})
    write_digests(config, {"amd64": "sha256:" + "3" * 64})  # replaced, not appended
    text = config.read_text()
    assert text.startswith("# Written by a test")
    assert text.count("digest:") == 1
    assert f'arm64: "{other}"' in text and "2" * 64 not in text
    info = ImageCatalogue(tmp_path).resolve("debian/bookworm", "amd64")
    assert info.digest == "sha256:" + "3" * 64
    assert info.host_key_fingerprint == FP  # the rest still reads as before


def test_the_digest_command_prints_and_with_write_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = make_image(tmp_path)
    expected = compute_digest(directory / "amd64")
    assert main(["image", "digest", str(directory)]) == 0
    assert f"amd64: {expected}" in capsys.readouterr().out
    assert "digest:" not in (directory / "config.yml").read_text()  # no --write: untouched
    assert main(["image", "digest", "--write", str(directory)]) == 0
    assert ImageCatalogue(tmp_path).resolve("debian/bookworm", None).digest == expected


def test_the_digest_command_refuses_a_directory_without_a_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["image", "digest", str(tmp_path / "empty")]) != 0
    assert "no <arch>/root.img.qcow2" in capsys.readouterr().err


# --- check -----------------------------------------------------------------------------------


def test_a_complete_directory_passes_with_a_note_for_the_missing_digest(tmp_path: Path) -> None:
    report = check_directory(make_image(tmp_path))
    assert report.ok, report.problems
    assert report.arches == ["amd64"]
    assert any("digest: not recorded" in note for note in report.notes)


def test_check_refuses_a_directory_missing_its_host_key_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = make_image(tmp_path, config="family: debian\n")
    assert main(["image", "check", "--no-boot", str(directory)]) != 0
    err = capsys.readouterr().err
    assert "config.yml: host_key_fingerprints.amd64: missing" in err


def test_check_refuses_a_directory_missing_its_kernel_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = make_image(tmp_path)
    (directory / "amd64" / "vmlinuz").unlink()
    assert main(["image", "check", "--no-boot", str(directory)]) != 0
    assert f"{directory / 'amd64' / 'vmlinuz'}: missing" in capsys.readouterr().err


def test_check_refuses_a_config_without_the_file(tmp_path: Path) -> None:
    directory = make_image(tmp_path)
    (directory / "config.yml").unlink()
    report = check_directory(directory)
    assert not report.ok
    assert any(p.startswith(f"{directory / 'config.yml'}: missing") for p in report.problems)


def test_check_refuses_a_disk_that_is_not_qcow2(tmp_path: Path) -> None:
    directory = make_image(tmp_path)
    disk = directory / "amd64" / "root.img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "1M"], check=True)
    report = check_directory(directory)
    assert any("format is 'raw', expected qcow2" in p for p in report.problems), report


def test_check_refuses_a_disk_with_a_backing_file(tmp_path: Path) -> None:
    directory = make_image(tmp_path)
    disk = directory / "amd64" / "root.img.qcow2"
    base = tmp_path / "base.qcow2"
    disk.rename(base)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(disk)],
        check=True,
    )
    disk.chmod(0o644)
    report = check_directory(directory)
    assert any("has a backing file" in p for p in report.problems), report


def test_check_refuses_a_digest_that_does_not_match_the_files(tmp_path: Path) -> None:
    directory = make_image(tmp_path)
    write_digests(directory / "config.yml", {"amd64": compute_digest(directory / "amd64")})
    assert check_directory(directory).ok
    (directory / "amd64" / "vmlinuz").write_bytes(b"another kernel")
    report = check_directory(directory)
    assert any("digest.amd64: recorded sha256:" in p for p in report.problems), report
    assert check_directory(directory, verify_digest=False).ok


def test_check_refuses_files_qemu_cannot_read(tmp_path: Path) -> None:
    directory = make_image(tmp_path)
    (directory / "amd64" / "initrd.img").chmod(0o600)
    report = check_directory(directory)
    assert any("initrd.img: not world-readable" in p for p in report.problems), report


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"homedir": 3}, "config.yml: homedir: expected a string, got int"),
        ({"homdir": "/home/build"}, "config.yml: homdir: unknown key"),
        ({"homedir": "home"}, "config.yml: homedir: expected an absolute path"),
        ({"host_key_fingerprints": ["x"]}, "config.yml: host_key_fingerprints: expected a mapping"),
        ({"host_key_fingerprint": "abc"}, "host_key_fingerprints.amd64: 'abc' is not a SHA256"),
        ({"default_arch": "arm64"}, "config.yml: default_arch: 'arm64' is not built"),
        ({"digest": {"arm64": "sha256:" + "0" * 64}}, "digest.arm64: no such arch is built"),
        ({"digest": {"amd64": "sha1:00"}}, "digest.amd64: expected sha256:"),
    ],
)
def test_config_problems_name_the_key(config: dict[str, object], expected: str) -> None:
    problems, _ = check_config({"host_key_fingerprint": FP, **config}, ["amd64"])
    assert any(expected in p for p in problems), problems


def test_an_unknown_family_is_a_note_not_a_failure() -> None:
    problems, notes = check_config({"family": "plan9", "host_key_fingerprint": FP}, ["amd64"])
    assert problems == [] and any("family: 'plan9'" in n for n in notes)


# --- prune and list ---------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then), follow_symlinks=False)


def _snapshot(snapshots: Path, name: str, image: ImageInfo, **changed: str) -> Path:
    directory = snapshots / name
    directory.mkdir(parents=True)
    inputs = {**image_inputs(image), **changed}
    meta = {"image": image.name, "arch": image.arch, "inputs": inputs, "digest": name}
    (directory / "meta.json").write_text(json.dumps(meta))
    (directory / "frozen.qcow2").write_bytes(b"x" * 4096)
    return directory


def test_prune_removes_leftovers_and_stale_snapshots_and_keeps_what_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, snapshots = tmp_path / "images", tmp_path / "snapshots"
    make_image(images)
    image = ImageCatalogue(images).resolve("debian/bookworm", None)
    # Given an old genimg leftover, a young one, and an old one a process is working in
    build = images / "debian" / ".build"
    old, young, busy = build / "trixie-amd64", build / "sid-amd64", build / "bullseye-amd64"
    for path in (old, young, busy):
        (path / "rootfs").mkdir(parents=True)
    _age(old, 7200)
    _age(busy, 7200)
    worker = subprocess.Popen(["sleep", "60"], cwd=busy)
    # And a snapshot of the image as built now, one of an earlier build, one of a removed
    # image, and a dead process's scratch directory
    current = _snapshot(snapshots, "debian_bookworm-amd64-aaaa", image)
    rebuilt = _snapshot(snapshots, "debian_bookworm-amd64-bbbb", image, disk="old:1:2:3")
    gone = _snapshot(snapshots, "debian_trixie-amd64-cccc", image)
    meta = json.loads((gone / "meta.json").read_text())
    (gone / "meta.json").write_text(json.dumps({**meta, "image": "debian/trixie"}))
    scratch = snapshots / ".tmp-999999999-1"
    scratch.mkdir()
    conf = write_conf(tmp_path, images, snapshots)
    try:
        # When prune runs dry, nothing goes and it says what would
        assert main(["--config", str(conf), "image", "prune", "--dry-run"]) == 0
        out = capsys.readouterr().out
        for path in (old, rebuilt, gone, scratch):
            assert f"would remove {path}" in out
        assert all(p.exists() for p in (old, rebuilt, gone, scratch))
        # Then for real
        assert main(["--config", str(conf), "image", "prune"]) == 0
    finally:
        worker.kill()
        worker.wait()
    assert not any(p.exists() for p in (old, rebuilt, gone, scratch))
    assert young.exists() and busy.exists() and current.exists()
    assert "the image's disk changed since" in capsys.readouterr().out


def test_snapshot_state_names_what_changed() -> None:
    inputs = {"disk": "d", "kernel": "k", "initrd": "i", "recipe": "r", "host_key": "h"}
    current = {("debian/bookworm", "amd64"): inputs}
    meta = {"image": "debian/bookworm", "arch": "amd64", "inputs": {**inputs, "vcpus": "2"}}
    assert snapshot_state(meta, current) == "current"
    meta["inputs"] = {**inputs, "kernel": "k2", "host_key": "h2"}
    assert snapshot_state(meta, current) == "stale: the image's kernel, host_key changed since"
    assert snapshot_state({**meta, "arch": "arm64"}, current).startswith("stale: no such image")


def test_nothing_unreferenced_in_a_clean_tree(tmp_path: Path) -> None:
    make_image(tmp_path / "images")
    assert find_unreferenced(tmp_path / "images", tmp_path / "none") == []


def test_list_shows_arches_sizes_digests_aliases_and_snapshots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, snapshots = tmp_path / "images", tmp_path / "snapshots"
    directory = make_image(images)
    (images / "debian" / "stable").symlink_to("bookworm")
    digest = compute_digest(directory / "amd64")
    write_digests(directory / "config.yml", {"amd64": digest})
    image = ImageCatalogue(images).resolve("debian/bookworm", None)
    _snapshot(snapshots, "debian_bookworm-amd64-aaaa", image)
    assert main(["--config", str(write_conf(tmp_path, images, snapshots)), "image", "list"]) == 0
    out = capsys.readouterr().out
    assert "debian/bookworm  (default arch amd64; aliases: debian/stable)" in out
    assert "amd64: " in out and f"digest {digest}" in out and "KiB on disk" in out
    assert "warm-start snapshot debian_bookworm-amd64-aaaa: current" in out
    assert "debian/stable  (" not in out  # an alias is listed with its release


# --- the boot half of check (one VM) ---------------------------------------------------------


@pytest.mark.vm
def test_the_built_image_passes_and_boots_once_with_its_host_key(
    hypervisor: Hypervisor, bookworm: ImageInfo
) -> None:
    report = check_directory(IMAGES / "debian" / "bookworm", verify_digest=False)
    assert report.ok, report.problems
    said: list[str] = []
    boot_once(hypervisor, bookworm, settle_timeout_s=180, say=said.append)
    assert said[-1] == "ran `true`: exit 0"
    fingerprint = bookworm.host_key_fingerprint
    assert fingerprint is not None  # genimg pins it
    assert any("host key" in line and fingerprint in line for line in said)
