"""The image catalogue over a real directory tree laid out as genimg writes it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from buildworker.guest.errors import ImageConfigError, UnknownImage, UnsupportedOperation
from buildworker.guest.images import ImageCatalogue

CONFIG = """\
family: debian
default_arch: amd64
homedir: /home/build
console_ready: "buildworker: network up"
host_key_fingerprints:
  amd64: "SHA256:abc"
  arm64: "SHA256:def"
"""


def make_image(root: Path, name: str, arches: tuple[str, ...], config: str | None = CONFIG) -> Path:
    directory = root / name
    for arch in arches:
        (directory / arch).mkdir(parents=True)
        (directory / arch / "root.img.qcow2").write_bytes(b"QFI\xfb")
        (directory / arch / "vmlinuz").write_bytes(b"kernel")
        (directory / arch / "initrd.img").write_bytes(b"initrd")
    if config is not None:
        (directory / "config.yml").write_text(config)
    return directory


@pytest.fixture
def root(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    make_image(images, "debian/bookworm", ("amd64", "arm64"))
    (images / "debian" / "stable").symlink_to("bookworm")
    (images / "debian" / "testing").symlink_to("trixie")  # alias to an unbuilt release
    make_image(images, "archlinux", ("x86_64",), config=None)
    return images


def test_an_alias_resolves_to_its_release_with_the_default_arch(root: Path) -> None:
    info = ImageCatalogue(root).resolve("debian/stable", None)
    assert info.name == "debian/bookworm"
    assert info.requested_name == "debian/stable"
    assert info.arch == "amd64"
    assert info.disk == (root / "debian/bookworm/amd64/root.img.qcow2").resolve()
    assert info.kernel is not None and info.kernel.name == "vmlinuz"
    assert info.initrd is not None and info.initrd.name == "initrd.img"
    assert info.host_key_fingerprint == "SHA256:abc"
    assert info.console_ready == "buildworker: network up"
    assert (info.homedir, info.login_user, info.family, info.git_variant) == (
        "/home/build",
        "build",
        "debian",
        "git",
    )


def test_an_explicit_arch_picks_that_arch_and_its_host_key(root: Path) -> None:
    info = ImageCatalogue(root).resolve("debian/bookworm", "arm64")
    assert (info.arch, info.host_key_fingerprint) == ("arm64", "SHA256:def")


def test_a_single_level_image_without_config_gets_defaults(root: Path) -> None:
    info = ImageCatalogue(root).resolve("archlinux", None)
    assert (info.name, info.arch, info.family, info.homedir) == (
        "archlinux",
        "x86_64",
        "archlinux",
        "/home/build",
    )
    assert info.preamble is None


def test_an_unknown_image_names_what_exists(root: Path) -> None:
    with pytest.raises(UnknownImage) as err:
        ImageCatalogue(root).resolve("alpine/edge", None)
    message = str(err.value)
    assert "alpine/edge" in message
    assert "debian/bookworm (amd64, arm64)" in message
    assert "debian/stable" in message


def test_an_alias_to_an_unbuilt_release_is_unknown(root: Path) -> None:
    with pytest.raises(UnknownImage, match="debian/testing"):
        ImageCatalogue(root).resolve("debian/testing", None)


def test_an_unavailable_arch_is_refused_with_the_arches_there_are(root: Path) -> None:
    with pytest.raises(UnknownImage, match=r"arch: .*'ppc64el'.*amd64, arm64"):
        ImageCatalogue(root).resolve("debian/bookworm", "ppc64el")


@pytest.mark.parametrize("name", ["../etc", "/etc", "debian/../../x", "Debian/Bookworm", "a/b/c"])
def test_names_that_are_not_image_names_are_refused(root: Path, name: str) -> None:
    with pytest.raises(UnknownImage, match="image"):
        ImageCatalogue(root).resolve(name, None)


def test_a_symlink_out_of_the_images_directory_is_refused(root: Path, tmp_path: Path) -> None:
    outside = make_image(tmp_path / "elsewhere", "evil/one", ("amd64",))
    (root / "debian" / "evil").symlink_to(outside)
    with pytest.raises(UnknownImage):
        ImageCatalogue(root).resolve("debian/evil", None)


def test_served_lists_images_and_aliases_with_arches(root: Path) -> None:
    served = {entry["image"]: entry for entry in ImageCatalogue(root).served()}
    assert set(served) == {"archlinux", "debian/bookworm", "debian/stable"}
    assert served["debian/stable"] == {
        "image": "debian/stable",
        "arches": ["amd64", "arm64"],
        "default_arch": "amd64",
        "release": "debian/bookworm",  # what the API resolves the alias to at submit
    }
    assert served["debian/bookworm"]["release"] == "debian/bookworm"
    assert served["archlinux"]["default_arch"] == "x86_64"
    assert ImageCatalogue(root).aliases() == {"debian/stable": "debian/bookworm"}


def test_the_recorded_digest_of_the_arch_is_read_and_its_absence_is_none(root: Path) -> None:
    digest = "sha256:" + "0" * 64
    config = root / "debian/bookworm/config.yml"
    config.write_text(CONFIG + f'digest:\n  arm64: "{digest}"\n')
    catalogue = ImageCatalogue(root)
    assert catalogue.resolve("debian/stable", "arm64").digest == digest
    assert catalogue.resolve("debian/stable", "amd64").digest is None  # not recorded
    assert "digest" not in catalogue.resolve("debian/stable", "amd64").extra


def test_a_malformed_digest_names_the_key(root: Path) -> None:
    config = root / "debian/bookworm/config.yml"
    config.write_text(CONFIG + 'digest:\n  amd64: "md5:1234"\n')
    with pytest.raises(ImageConfigError, match=r"config.yml: digest.amd64: expected sha256:"):
        ImageCatalogue(root).resolve("debian/bookworm", None)
    config.write_text(CONFIG + 'digest: "sha256:00"\n')
    with pytest.raises(ImageConfigError, match=r"config.yml: digest: expected a mapping"):
        ImageCatalogue(root).resolve("debian/bookworm", None)


def test_a_bad_config_names_the_file_and_key(root: Path) -> None:
    (root / "debian/bookworm/config.yml").write_text("homedir: [1, 2]\n")
    with pytest.raises(ImageConfigError, match=r"config.yml: homedir: expected a string"):
        ImageCatalogue(root).resolve("debian/bookworm", None)
    (root / "debian/bookworm/config.yml").write_text("homedir: relative/path\n")
    with pytest.raises(ImageConfigError, match="homedir: expected an absolute path"):
        ImageCatalogue(root).resolve("debian/bookworm", None)


def test_a_missing_images_directory_says_nothing_is_built(tmp_path: Path) -> None:
    with pytest.raises(UnknownImage, match="no images built"):
        ImageCatalogue(tmp_path / "nope").resolve("debian/bookworm", None)


def test_debian_installs_quote_each_package(root: Path) -> None:
    info = ImageCatalogue(root).resolve("debian/bookworm", None)
    command = info.install_command(["git", "libfoo-dev", "x; rm -rf /"])
    assert command.startswith("sudo env DEBIAN_FRONTEND=noninteractive apt-get update -y && ")
    assert shlex.split(command)[-3:] == ["git", "libfoo-dev", "x; rm -rf /"]


def test_debian_add_repository_writes_signed_deb_and_deb_src_lines(root: Path) -> None:
    info = ImageCatalogue(root).resolve("debian/bookworm", None)
    command = info.add_repository_command(
        "llvm", "https://apt.llvm.org/bookworm/ llvm-toolchain-bookworm main 15CF4D18AF4F7421"
    )
    assert "--recv-keys 15CF4D18AF4F7421" in command
    assert "/etc/apt/keyrings/llvm.gpg" in command
    assert "deb [signed-by=/etc/apt/keyrings/llvm.gpg] https://apt.llvm.org/bookworm/" in command
    assert "deb-src [signed-by=" in command
    assert "/etc/apt/sources.list.d/llvm.list" in command


def test_a_malformed_repository_is_refused_naming_it(root: Path) -> None:
    info = ImageCatalogue(root).resolve("debian/bookworm", None)
    with pytest.raises(UnsupportedOperation, match=r"repositories\.foo: expected"):
        info.add_repository_command("foo", "https://example.org/only-url")
    with pytest.raises(UnsupportedOperation, match=r"repositories\.\.\./x"):
        info.add_repository_command("../x", "a b c")


def test_an_image_family_without_repositories_says_so(root: Path) -> None:
    info = ImageCatalogue(root).resolve("archlinux", None)
    with pytest.raises(UnsupportedOperation, match="archlinux"):
        info.add_repository_command("foo", "https://example.org#KEY")
