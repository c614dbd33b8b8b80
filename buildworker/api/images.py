"""Submit-time check of a manifest's image and arch against what can actually run it, and
the resolution of an alias (``debian/stable``) to the release it means today.

What exists = the images registered by workers (`workers.images`, the shape of
ImageCatalogue.served()) plus the `[api] images` config entries (``image@arch``, or
``image`` for ``image@amd64``). A job nobody can run is refused at submit with the list.

Aliases: ``[api] image-aliases`` entries (``alias=release``) first, then what workers
registered (each served alias carries the ``release`` its symlink points to, read from the
worker's images directory); when workers disagree (a host upgraded before another), the
most recently seen worker's wins. An image no table names is its own release. The job is
routed to the release's queue, so a worker serving only real releases runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from buildworker.api.errors import ApiError
from buildworker.arches import match_arch
from buildworker.config import image_alias_table
from buildworker.db.models import Worker

__all__ = [
    "DEFAULT_CONFIG_ARCH",
    "Placement",
    "ServedImage",
    "alias_table",
    "check_image",
    "parse_aliases",
    "resolve_alias",
    "served_images",
]

#: The arch of an `[api] images` entry written without ``@arch``.
DEFAULT_CONFIG_ARCH = "amd64"


@dataclass
class ServedImage:
    image: str
    default_arch: str
    arches: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Placement:
    """Where a submitted job runs: the release its image name means, and the arch."""

    release: str
    arch: str


def _add(found: dict[str, ServedImage], image: str, arches: list[str], default: str) -> None:
    entry = found.setdefault(image, ServedImage(image=image, default_arch=default))
    for arch in arches:
        if arch not in entry.arches:
            entry.arches.append(arch)


def served_images(session: Session, config_images: tuple[str, ...]) -> dict[str, ServedImage]:
    found: dict[str, ServedImage] = {}
    for item in config_images:
        image, _, arch = item.partition("@")
        arch = arch or DEFAULT_CONFIG_ARCH
        _add(found, image.strip(), [arch.strip()], arch.strip())
    for images in session.scalars(select(Worker.images).order_by(Worker.last_seen.desc())):
        for entry in images or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                continue
            arches = [a for a in entry.get("arches") or [] if isinstance(a, str)]
            default = entry.get("default_arch")
            if not isinstance(default, str) or not default:
                default = arches[0] if arches else DEFAULT_CONFIG_ARCH
            _add(found, entry["image"], arches or [default], default)
    return found


def parse_aliases(entries: tuple[str, ...]) -> dict[str, str]:
    """``[api] image-aliases`` as a table (checked when the config loads; a Config built in
    code is checked here). Raises ValueError naming the entry."""
    try:
        return image_alias_table(entries)
    except ValueError as exc:
        raise ValueError(f"image-aliases: {exc}") from None


def _worker_aliases(worker_images: list[list[Any]]) -> dict[str, str]:
    """Aliases from registrations, newest worker first: the first to name an alias wins."""
    table: dict[str, str] = {}
    for images in worker_images:
        for entry in images or []:
            if not isinstance(entry, dict):
                continue
            image, release = entry.get("image"), entry.get("release")
            if isinstance(image, str) and isinstance(release, str) and release != image:
                table.setdefault(image, release)
    return table


def alias_table(session: Session, config_aliases: tuple[str, ...]) -> dict[str, str]:
    """alias → release: the config's entries over the workers' (newest worker first)."""
    rows = list(session.scalars(select(Worker.images).order_by(Worker.last_seen.desc())))
    table = _worker_aliases(rows)
    table.update(parse_aliases(config_aliases))
    return table


def resolve_alias(image: str, aliases: dict[str, str]) -> str:
    """The release ``image`` means: followed through the table (an alias of an alias too),
    itself when no entry names it. A loop stops where it would repeat (a bad table must
    not hang a submit; the image check then refuses what it cannot serve)."""
    seen = {image}
    while image in aliases and aliases[image] not in seen:
        image = aliases[image]
        seen.add(image)
    return image


def _listing(found: dict[str, ServedImage]) -> str:
    if not found:
        return "no image is served (no worker has registered and [api] images is empty)"
    parts = [f"{name} ({', '.join(found[name].arches)})" for name in sorted(found)]
    return "images served: " + ", ".join(parts)


def check_image(
    session: Session,
    config_images: tuple[str, ...],
    image: str,
    arch: str | None,
    config_aliases: tuple[str, ...] = (),
) -> Placement:
    """The release and arch the job will run on; ApiError(400) naming `image` or `arch`.

    An alias is resolved first; the release must be served (by a worker or the config).
    """
    found = served_images(session, config_images)
    try:
        aliases = alias_table(session, config_aliases)
    except ValueError as exc:  # a bad [api] image-aliases: ours, but name it
        raise ApiError.field("image", f"cannot resolve aliases: {exc}") from None
    release = resolve_alias(image, aliases)
    entry = found.get(release)
    if entry is None:
        meant = f" (an alias of {release!r})" if release != image else ""
        raise ApiError.field("image", f"unknown image {image!r}{meant}; {_listing(found)}")
    asked = arch or entry.default_arch
    # In the image's spelling: an `aarch64` job queues with the `arm64` ones (arches.py).
    chosen = match_arch(asked, entry.arches)
    if chosen is None:
        raise ApiError.field(
            "arch",
            f"image {image!r} is not available for arch {asked!r} "
            f"(arches: {', '.join(entry.arches)})",
        )
    return Placement(release=release, arch=chosen)
