"""`buildworker image build <release>` / `list` / `snapshot`: the worker's base images.

``snapshot`` makes the warm-start snapshots ahead of time (docs/images.md, "Warm start"), so a
worker's first job is a restore too; the worker makes them on demand otherwise.
"""

from __future__ import annotations

import argparse
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
    sub.add_parser("list", help="list the images and arches under [worker] images")
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


def _list(args: argparse.Namespace) -> int:
    from buildworker.guest.errors import GuestLayerError
    from buildworker.guest.images import ImageCatalogue

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
    print(f"{'IMAGE':24s} {'ARCHES':20s} {'DEFAULT':8s} CANONICAL / HOST KEY")
    for entry in served:
        try:
            info = catalogue.resolve(entry["image"], None)
            detail = f"{info.name} {info.host_key_fingerprint or '(no host key recorded)'}"
        except GuestLayerError as exc:
            detail = f"unusable: {exc}"
        arches = ",".join(entry["arches"])
        print(f"{entry['image']:24s} {arches:20s} {entry['default_arch']:8s} {detail}")
    return EXIT_OK


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
    print("usage: buildworker image {build,list,snapshot} ...", file=sys.stderr)
    return EXIT_USAGE
