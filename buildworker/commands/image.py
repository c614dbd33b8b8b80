"""`buildworker image build|list|snapshot|digest|check|prune`: the worker's base images.

``snapshot`` makes the warm-start snapshots ahead of time (docs/images.md, "Warm start"), so a
worker's first job is a restore too; the worker makes them on demand otherwise. ``digest``
computes (and with ``--write`` records) an image's content digest, ``check`` validates a
directory against the image contract and boots it once, ``prune`` removes what no image
references (docs/images.md, "The image contract", "Pruning").
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from pathlib import Path

from buildworker.config import load_config
from buildworker.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

NAME = "image"
HELP = "build base images (Debian, with mmdebstrap) or list the images this worker serves"

#: The recipes ship in the checkout beside the package (images/<distro>/genimg).
RECIPES = Path(__file__).resolve().parents[2] / "images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="image_command", metavar="ACTION")
    build = sub.add_parser("build", help="build (or refresh) a Debian image: genimg")
    build.add_argument("release", help="bookworm, bullseye, trixie, sid, or stable/testing/...")
    build.add_argument("arch", nargs="?", default="amd64", help="amd64 (default) or arm64")
    build.add_argument(
        "--authorized-key",
        type=Path,
        default=None,
        help="public key baked into the image (default: [vm] ssh-key + .pub)",
    )
    build.add_argument(
        "--images",
        type=Path,
        default=None,
        help="images directory to write (default: [worker] images)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    sub.add_parser(
        "list", help="list the images under [worker] images: arches, sizes, digests, snapshots"
    )
    digest = sub.add_parser(
        "digest", help="compute an image directory's content digest per arch (genimg calls it)"
    )
    digest.add_argument("directory", type=Path, help="e.g. images/debian/bookworm")
    digest.add_argument("--write", action="store_true", help="record it in its config.yml")
    digest.add_argument("--arch", action="append", default=None, help="only this arch (repeatable)")
    check = sub.add_parser("check", help="validate an image directory and boot it once")
    check.add_argument("directory", type=Path, help="e.g. images/debian/bookworm")
    check.add_argument("--no-boot", action="store_true", help="static checks only")
    check.add_argument(
        "--no-digest", action="store_true", help="do not re-hash the files against the digest"
    )
    prune = sub.add_parser("prune", help="remove genimg leftovers and stale snapshots")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    prune.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="leave genimg work directories younger than this (default 3600)",
    )
    snap = sub.add_parser(
        "snapshot", help="make the warm-start snapshot of images (all the worker serves)"
    )
    snap.add_argument(
        "images", nargs="*", metavar="IMAGE[@ARCH]", help="e.g. debian/bookworm@amd64"
    )


def _build(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    genimg = RECIPES / "debian" / "genimg"
    if not genimg.exists():
        print(f"buildworker image: recipe not found: {genimg}", file=sys.stderr)
        return EXIT_FAILURE
    key = args.authorized_key or Path(f"{config.vm.ssh_key}.pub")
    if not key.exists():
        print(
            f"buildworker image: --authorized-key: {key} does not exist "
            "(generate the worker key with ssh-keygen -t ed25519 -f <[vm] ssh-key>)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    images = args.images or config.worker.images
    command = [str(genimg), args.release, args.arch, "--authorized-key", str(key)]
    if images.resolve() != RECIPES.resolve():
        command += ["--images", str(images)]
    if args.force:
        command.append("--force")
    return subprocess.run(command, check=False).returncode


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _list(args: argparse.Namespace) -> int:
    from buildworker.guest.errors import GuestLayerError
    from buildworker.guest.imageinventory import image_inputs, snapshot_state, tree_size
    from buildworker.guest.images import ImageCatalogue
    from buildworker.guest.snapstore import SnapshotStore

    config = load_config(args.config)
    catalogue = ImageCatalogue(config.worker.images)
    try:
        served = catalogue.served()
    except GuestLayerError as exc:
        print(f"buildworker image: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not served:
        print(
            f"no images under {config.worker.images} (build one: buildworker image build bookworm)"
        )
        return EXIT_OK
    aliases: dict[str, list[str]] = {}
    for entry in served:
        if entry["release"] != entry["image"]:
            aliases.setdefault(entry["release"], []).append(entry["image"])
    snapshots = SnapshotStore(config.vm.snapshot_dir).list()
    current: dict[tuple[str, str], dict[str, str]] = {}
    print(f"images under {config.worker.images}; snapshots under {config.vm.snapshot_dir}")
    for entry in served:
        if entry["release"] != entry["image"]:
            continue  # shown with its release
        name = entry["image"]
        also = ", ".join(sorted(aliases.get(name, []))) or "none"
        print(f"{name}  (default arch {entry['default_arch']}; aliases: {also})")
        for arch in entry["arches"]:
            try:
                info = catalogue.resolve(name, arch)
            except GuestLayerError as exc:
                print(f"  {arch}: unusable: {exc}")
                continue
            files = [p for p in (info.disk, info.kernel, info.initrd) if p is not None]
            size = sum(tree_size(p) for p in files)
            print(f"  {arch}: {_size(size)} on disk, digest {info.digest or 'not recorded'}")
            print(f"    host key {info.host_key_fingerprint or '(none recorded)'}")
            with contextlib.suppress(OSError):  # a file went missing: "stale" below
                current[info.name, arch] = image_inputs(info)
            mine = [m for m in snapshots if (m.get("image"), m.get("arch")) == (name, arch)]
            if not mine:
                print("    warm-start snapshot: none (made at the first job, or: image snapshot)")
            for meta in mine:
                state = snapshot_state(meta, current)
                path = Path(meta["path"])
                print(f"    warm-start snapshot {path.name}: {state}, {_size(tree_size(path))}")
    return EXIT_OK


def _digest(args: argparse.Namespace) -> int:
    from buildworker.guest.imagedigest import compute_digest, write_digests

    directory: Path = args.directory
    if not directory.is_dir():
        print(f"buildworker image digest: {directory}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    arches = args.arch or sorted(
        child.name
        for child in directory.iterdir()
        if child.is_dir() and (child / "root.img.qcow2").is_file()
    )
    if not arches:
        print(
            f"buildworker image digest: {directory}: no <arch>/root.img.qcow2 to hash",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    digests: dict[str, str] = {}
    try:
        for arch in arches:
            digests[arch] = compute_digest(directory / arch)
            print(f"{arch}: {digests[arch]}")
        if args.write:
            write_digests(directory / "config.yml", digests)
            print(f"recorded in {directory / 'config.yml'}")
    except (OSError, ValueError) as exc:
        print(f"buildworker image digest: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from buildworker.guest.errors import GuestLayerError
    from buildworker.guest.imagecheck import boot_once, check_directory, image_name_of

    directory: Path = args.directory
    report = check_directory(directory, verify_digest=not args.no_digest)
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if not report.ok:
        print(
            f"buildworker image check: {directory}: {len(report.problems)} problem(s)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(f"{directory}: the files and config.yml fit the contract ({', '.join(report.arches)})")
    if args.no_boot:
        return EXIT_OK
    import dataclasses

    from buildworker.guest.hypervisor import Hypervisor

    config = load_config(args.config)
    # A cold boot: a warm restore would check the snapshot, not the image.
    vm = dataclasses.replace(config.vm, warm_start=False)
    failed = 0
    try:
        catalogue, name = image_name_of(directory)
        # No egress rule needed: the guest runs `true` only, no job code.
        hv = Hypervisor(vm, worker_name=f"{config.worker.name}-check", isolate=False)
    except GuestLayerError as exc:
        print(f"buildworker image check: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        for arch in report.arches:
            try:
                info = catalogue.resolve(name, arch)

                def say(text: str, arch: str = arch) -> None:
                    print(f"{arch}: {text}")

                boot_once(hv, info, settle_timeout_s=vm.settle_timeout, say=say)
            except (GuestLayerError, RuntimeError) as exc:
                print(f"error: {arch}: the boot check failed: {exc}", file=sys.stderr)
                failed += 1
    finally:
        hv.close()
    return EXIT_FAILURE if failed else EXIT_OK


def _prune(args: argparse.Namespace) -> int:
    from buildworker.guest.errors import GuestLayerError
    from buildworker.guest.imageinventory import find_unreferenced, remove

    config = load_config(args.config)
    try:
        found = find_unreferenced(
            config.worker.images, config.vm.snapshot_dir, min_age_s=args.min_age
        )
    except (GuestLayerError, OSError) as exc:
        print(f"buildworker image prune: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not found:
        print("nothing to prune")
        return EXIT_OK
    failed = 0
    total = 0
    for item in found:
        verb = "would remove" if args.dry_run else "removed"
        if not args.dry_run:
            try:
                remove(item)
            except OSError as exc:
                print(f"cannot remove {item.path}: {exc}", file=sys.stderr)
                failed += 1
                continue
        total += item.size
        print(f"{verb} {item.path} ({_size(item.size)}): {item.reason}")
    print(f"{'would free' if args.dry_run else 'freed'} {_size(total)}")
    return EXIT_FAILURE if failed else EXIT_OK


def _snapshot(args: argparse.Namespace) -> int:
    from buildworker.guest.errors import GuestLayerError
    from buildworker.guest.hypervisor import Hypervisor
    from buildworker.guest.images import ImageCatalogue

    config = load_config(args.config)
    catalogue = ImageCatalogue(config.worker.images)
    wanted: list[tuple[str, str | None]] = []
    try:
        if args.images:
            for item in args.images:
                name, _, arch = item.partition("@")
                wanted.append((name, arch or None))
        else:
            wanted = [(e["image"], e["default_arch"]) for e in catalogue.served()]
        images = {}
        for name, arch in wanted:
            info = catalogue.resolve(name, arch)
            images[info.disk, info.arch] = info  # aliases of one image: one snapshot
        # No egress rule needed: the template runs no job code, only the image's own boot.
        hv = Hypervisor(config.vm, worker_name=f"{config.worker.name}-snap", isolate=False)
    except GuestLayerError as exc:
        print(f"buildworker image snapshot: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    failed = 0
    try:
        for info in images.values():
            try:
                snapshot, made = hv.ensure_snapshot(info)
            except GuestLayerError as exc:
                print(f"{info.name} ({info.arch}): failed: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(
                f"{info.name} ({info.arch}): {'made' if made else 'up to date'}: {snapshot.directory}"
            )
    finally:
        hv.close()
    return EXIT_FAILURE if failed else EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.image_command == "snapshot":
        return _snapshot(args)
    if args.image_command == "build":
        return _build(args)
    if args.image_command == "list":
        return _list(args)
    if args.image_command == "digest":
        return _digest(args)
    if args.image_command == "check":
        return _check(args)
    if args.image_command == "prune":
        return _prune(args)
    print("usage: buildworker image {build,list,snapshot,digest,check,prune} ...", file=sys.stderr)
    return EXIT_USAGE
