"""The image catalogue: which base images this worker has, per arch, and how to use each.

Layout, as builds.sr.ht (spec §6.1): ``<root>/<distro>/<release>/<arch>/root.img.qcow2`` with
``vmlinuz`` and ``initrd.img`` beside it for direct kernel boot, ``<root>/<distro>/<release>/
config.yml`` for the worker-side settings, and aliases as symlinks (``debian/stable ->
bookworm``). Single-level images (``archlinux/<arch>/...``) work too.

config.yml keys and defaults (spec §6.3, plus ours): ``homedir: /home/build``, ``preamble``
(none: the default preamble), ``logincmd: ssh``, ``git_variant: git``, ``login_user: build``,
``family`` (default: the distro directory name), ``default_arch`` (default: the only arch, or
amd64/x86_64), ``host_key_fingerprints: {arch: "SHA256:..."}`` (or ``host_key_fingerprint``),
``cmdline`` (kernel command line override), ``digest: {arch: "sha256:..."}`` (the image's
content digest, buildworker/guest/imagedigest.py; written by ``buildworker image digest
--write``). docs/images.md is the contract, with types; ``KEY_TYPES`` below is its check.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from buildworker.arches import match_arch
from buildworker.guest.errors import ImageConfigError, UnknownImage, UnsupportedOperation
from buildworker.guest.imagedigest import DIGEST_PATTERN

if TYPE_CHECKING:
    from buildworker.cache.git import GitMirrors

__all__ = [
    "DISK_NAME",
    "KEY_TYPES",
    "ImageCatalogue",
    "ImageInfo",
    "validate_image_name",
]

DISK_NAME = "root.img.qcow2"
_IMAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9._+-]*(/[a-z0-9][a-z0-9._+-]*)?$")
_ARCH_NAME = re.compile(r"^[a-z0-9_]+$")
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PREFERRED_ARCHES = ("amd64", "x86_64")
#: Every config.yml key and its type ("str", or "map" for arch → string); others are kept in
#: ImageInfo.extra (a newer genimg may write keys an older worker does not know) and
#: reported by `buildworker image check`.
KEY_TYPES: dict[str, str] = {
    "family": "str",
    "release": "str",
    "default_arch": "str",
    "homedir": "str",
    "login_user": "str",
    "logincmd": "str",
    "git_variant": "str",
    "preamble": "str",
    "host_key_fingerprint": "str",
    "host_key_fingerprints": "map",
    "cmdline": "str",
    "kernel_version": "str",
    "kernel_versions": "map",
    "console_ready": "str",
    "digest": "map",
}
_KNOWN_KEYS = set(KEY_TYPES)


def validate_image_name(image: str) -> None:
    """Raise UnknownImage for names that cannot be an image (``..``, absolute paths, etc.)."""
    if not isinstance(image, str) or not _IMAGE_NAME.match(image):
        raise UnknownImage(f"image: {image!r} is not a valid image name (e.g. debian/bookworm)")


@dataclass(frozen=True)
class ImageInfo:
    name: str
    arch: str
    directory: Path
    disk: Path
    kernel: Path | None
    initrd: Path | None
    homedir: str = "/home/build"
    preamble: str | None = None
    family: str = "debian"
    login_user: str = "build"
    host_key_fingerprint: str | None = None
    git_variant: str = "git"
    logincmd: str = "ssh"
    cmdline: str | None = None
    #: a line the guest prints on its serial console once its network is up (probe after it)
    console_ready: str | None = None
    #: the name as the manifest gave it, when it was an alias (``debian/stable``)
    requested_name: str = ""
    #: the content digest recorded in config.yml for this arch (``sha256:...``); None when
    #: the image was built without one (say "digest: not recorded", never compute it here)
    digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: the host's package cache as guests reach it (``http://10.0.2.2:3142``; '' without
    #: one) and the hosts sent through it: ``[cache]``, buildworker.cache.apt
    apt_proxy: str = ""
    apt_hosts: tuple[str, ...] = ()
    #: the host's git mirrors (buildworker.cache.git.GitMirrors) the sources step clones
    #: public sources through; None without ``[cache] git``
    git_cache: GitMirrors | None = field(default=None, compare=False, repr=False)

    def _cache_prefix(self) -> str:
        if not self.apt_proxy or self.family not in {"debian", "ubuntu"}:
            return ""
        from buildworker.cache.apt import guest_setup_command

        return guest_setup_command(self.apt_proxy, self.apt_hosts) + " && "

    def install_command(self, packages: Sequence[str]) -> str:
        """Shell command, run as the build user in the guest, that installs ``packages``.

        Package names are shell-quoted (builds.sr.ht re-splits them in the guest shell).
        Raises UnsupportedOperation for a family without a package manager.
        """
        pkgs = " ".join(shlex.quote(p) for p in packages)
        family = self.family
        if family == "debian":
            apt = "sudo env DEBIAN_FRONTEND=noninteractive apt-get"
            return f"{self._cache_prefix()}{apt} update -y && {apt} install -y {pkgs}"
        if family == "ubuntu":
            apt = "sudo env DEBIAN_FRONTEND=noninteractive apt-get -q"
            return f"{self._cache_prefix()}{apt} update -y && {apt} install -y {pkgs}"
        if family == "alpine":
            return f"sudo apk upgrade -U && sudo apk add {pkgs}"
        if family == "archlinux":
            return (
                f"sudo pacman -Syu --noconfirm && yay --needed --noconfirm --noprovides -S {pkgs}"
            )
        if family in {"fedora", "rockylinux"}:
            refresh = "--refresh " if family == "rockylinux" else ""
            return f"sudo dnf {refresh}-y install {pkgs}"
        raise UnsupportedOperation(f"packages: image family {family!r} cannot install packages")

    def add_repository_command(self, name: str, source: str) -> str:
        """Shell command that adds the manifest's ``repositories: {name: source}`` entry.

        Debian/Ubuntu source: ``"<url> <distro> <component> [<key-id>]"`` (spec §6.4); the
        key is fetched from keyserver.ubuntu.com. Raises UnsupportedOperation with the field
        named when the family has no repositories or the source is malformed.
        """
        if not _REPO_NAME.match(name):
            raise UnsupportedOperation(
                f"repositories.{name}: name must be letters, digits, '.', '_' or '-'"
            )
        family = self.family
        if family in {"debian", "ubuntu"}:
            parts = source.split()
            if len(parts) not in (3, 4):
                raise UnsupportedOperation(
                    f"repositories.{name}: expected '<url> <distro> <component> [<key-id>]'"
                )
            url, distro, component = parts[:3]
            q = shlex.quote
            keyring = f"/etc/apt/keyrings/{name}.gpg"
            commands = [self._cache_prefix() + "sudo mkdir -p /etc/apt/keyrings"]
            if len(parts) == 4:
                key = parts[3]
                commands.append(
                    "sudo gpg --batch --no-default-keyring "
                    f"--keyring {q(keyring)} "
                    f"--keyserver hkp://keyserver.ubuntu.com:80 --recv-keys {q(key)}"
                )
                options = f"[signed-by={keyring}] "
            else:
                options = ""
            lines = f"deb {options}{url} {distro} {component}\ndeb-src {options}{url} {distro} {component}\n"
            commands.append(
                f"printf %s {q(lines)} | sudo tee /etc/apt/sources.list.d/{q(name + '.list')} >/dev/null"
            )
            return " && ".join(commands)
        if family == "alpine":
            parts = source.split()
            if len(parts) != 3:
                raise UnsupportedOperation(
                    f"repositories.{name}: expected '<repo-url> <key-url> <key-name>'"
                )
            url, key_url, key_name = parts
            q = shlex.quote
            line = f"@{name.lstrip('@')} {url}" if name.startswith("@") else url
            return (
                f"sudo wget -qO /etc/apk/keys/{q(key_name)} {q(key_url)} && "
                f"{{ echo {q(line)}; cat /etc/apk/repositories; }} > /tmp/repos && "
                "sudo mv /tmp/repos /etc/apk/repositories"
            )
        raise UnsupportedOperation(
            f"repositories: image family {family!r} does not support adding repositories"
        )


def _load_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ImageConfigError(f"{path}: cannot read: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ImageConfigError(f"{path}: expected a mapping of settings")
    for key, kind in KEY_TYPES.items():
        value = data.get(key)
        if value is None:
            continue
        if kind == "str" and not isinstance(value, str):
            raise ImageConfigError(f"{path}: {key}: expected a string")
        if kind == "map" and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            raise ImageConfigError(f"{path}: {key}: expected a mapping of arch: string")
    digests = data.get("digest") or {}
    for arch, value in digests.items():
        if not DIGEST_PATTERN.match(value):
            raise ImageConfigError(
                f"{path}: digest.{arch}: expected sha256:<64 hex digits>, got {value!r}"
            )
    homedir = data.get("homedir")
    if homedir is not None and not homedir.startswith("/"):
        raise ImageConfigError(f"{path}: homedir: expected an absolute path")
    return data


class ImageCatalogue:
    """Reads the images directory on each call (cheap), so a rebuilt image is seen at once."""

    def __init__(
        self,
        root: Path,
        apt_proxy: str = "",
        apt_hosts: Sequence[str] = (),
        git_cache: GitMirrors | None = None,
    ):
        """`apt_proxy`: the package cache as guests reach it, given to every image resolved
        (with `apt_hosts`, the hosts sent through it); '' without one. `git_cache`: the
        host's git mirrors (buildworker.cache.git.GitMirrors), None without them."""
        self.root = Path(root)
        self.apt_proxy = apt_proxy
        self.apt_hosts = tuple(apt_hosts)
        self.git_cache = git_cache

    # --- discovery ---------------------------------------------------------------------

    def _arches(self, directory: Path) -> list[str]:
        if not directory.is_dir():
            return []
        return sorted(
            child.name
            for child in directory.iterdir()
            if _ARCH_NAME.match(child.name) and (child / DISK_NAME).is_file()
        )

    def _image_dirs(self) -> list[tuple[str, Path]]:
        """(name, directory) for every image and alias that has at least one built arch."""
        found: list[tuple[str, Path]] = []
        if not self.root.is_dir():
            return found
        for top in sorted(self.root.iterdir()):
            if top.name.startswith(".") or not top.is_dir():
                continue
            if self._arches(top):
                found.append((top.name, top))
                continue
            for sub in sorted(top.iterdir()):
                if sub.name.startswith(".") or not sub.is_dir():
                    continue
                if self._arches(sub):
                    found.append((f"{top.name}/{sub.name}", sub))
        return found

    def names(self) -> list[str]:
        return [name for name, _ in self._image_dirs()]

    def _default_arch(self, config: dict[str, Any], arches: list[str]) -> str:
        configured = config.get("default_arch")
        if isinstance(configured, str) and configured in arches:
            return configured
        for preferred in _PREFERRED_ARCHES:
            if preferred in arches:
                return preferred
        return arches[0]

    def served(self) -> list[dict[str, Any]]:
        """What this worker can boot, aliases included, for the worker registration."""
        served = []
        for name, directory in self._image_dirs():
            arches = self._arches(directory)
            config = _load_config(directory / "config.yml")
            served.append(
                {
                    "image": name,
                    "arches": arches,
                    "default_arch": self._default_arch(config, arches),
                    # what an alias's symlink points to (itself for a release): the API
                    # resolves aliases at submit with it
                    "release": self._canonical(name),
                }
            )
        return served

    def _canonical(self, name: str) -> str:
        """The release directory ``name`` is (through symlinks), relative to the root;
        ``name`` itself when it leads outside the root (resolve refuses those)."""
        try:
            return (self.root / name).resolve().relative_to(self.root.resolve()).as_posix()
        except (OSError, ValueError):
            return name

    def aliases(self) -> dict[str, str]:
        """alias → release, for every built image reached through a symlink."""
        table = {}
        for entry in self.served():
            if entry["release"] != entry["image"]:
                table[entry["image"]] = entry["release"]
        return table

    # --- resolution --------------------------------------------------------------------

    def _describe(self) -> str:
        entries = [f"{e['image']} ({', '.join(e['arches'])})" for e in self.served()]
        return ", ".join(entries) if entries else f"none (no images built under {self.root})"

    def resolve(self, image: str, arch: str | None = None) -> ImageInfo:
        """The image to boot for a manifest's ``image`` and ``arch`` (None → default arch).

        Raises UnknownImage naming what exists; ImageConfigError for a bad config.yml.
        """
        validate_image_name(image)
        directory = self.root / image
        root = self.root.resolve()
        try:
            real = directory.resolve()
            real.relative_to(root)
        except (OSError, ValueError):
            raise UnknownImage(
                f"image: {image!r} does not exist here; available: {self._describe()}"
            ) from None
        arches = self._arches(directory)
        if not arches:
            raise UnknownImage(
                f"image: {image!r} does not exist here; available: {self._describe()}"
            )
        config = _load_config(directory / "config.yml")
        asked = arch if arch not in (None, "", "default") else self._default_arch(config, arches)
        assert asked is not None
        chosen = match_arch(asked, arches)  # aarch64 finds arm64, x86_64 amd64 (arches.py)
        if chosen is None:
            raise UnknownImage(
                f"arch: image {image!r} is not available for arch {asked!r} "
                f"(available: {', '.join(arches)})"
            )
        unknown = set(config) - _KNOWN_KEYS
        arch_dir = directory / chosen
        kernel = next(
            (arch_dir / n for n in ("vmlinuz", "vmlinux") if (arch_dir / n).is_file()), None
        )
        initrd = arch_dir / "initrd.img" if (arch_dir / "initrd.img").is_file() else None
        fingerprints = config.get("host_key_fingerprints") or {}
        fingerprint = fingerprints.get(chosen) or config.get("host_key_fingerprint")
        canonical = real.relative_to(root).as_posix()
        family = config.get("family") or canonical.split("/")[0]
        return ImageInfo(
            name=canonical,
            arch=chosen,
            directory=real,
            disk=arch_dir.resolve() / DISK_NAME,
            kernel=kernel.resolve() if kernel else None,
            initrd=initrd.resolve() if initrd else None,
            homedir=config.get("homedir") or "/home/build",
            preamble=config.get("preamble"),
            family=family,
            login_user=config.get("login_user") or "build",
            host_key_fingerprint=fingerprint,
            git_variant=config.get("git_variant") or "git",
            logincmd=config.get("logincmd") or "ssh",
            cmdline=config.get("cmdline"),
            console_ready=config.get("console_ready"),
            requested_name=image,
            digest=(config.get("digest") or {}).get(chosen),
            extra={k: config[k] for k in unknown},
            apt_proxy=self.apt_proxy,
            apt_hosts=self.apt_hosts,
            git_cache=self.git_cache,
        )
