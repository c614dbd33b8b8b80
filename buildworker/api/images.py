"""Submit-time check of a manifest's image and arch against what can actually run it.

What exists = the images registered by workers (`workers.images`, the shape of
ImageCatalogue.served()) plus the `[api] images` config entries (``image@arch``, or
``image`` for ``image@amd64``). A job nobody can run is refused at submit with the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from buildworker.api.errors import ApiError
from buildworker.db.models import Worker

__all__ = ["DEFAULT_CONFIG_ARCH", "ServedImage", "check_image", "served_images"]

#: The arch of an `[api] images` entry written without ``@arch``.
DEFAULT_CONFIG_ARCH = "amd64"


@dataclass
class ServedImage:
    image: str
    default_arch: str
    arches: list[str] = field(default_factory=list)


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
    for images in session.scalars(select(Worker.images)):
        for entry in images or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                continue
            arches = [a for a in entry.get("arches") or [] if isinstance(a, str)]
            default = entry.get("default_arch")
            if not isinstance(default, str) or not default:
                default = arches[0] if arches else DEFAULT_CONFIG_ARCH
            _add(found, entry["image"], arches or [default], default)
    return found


def _listing(found: dict[str, ServedImage]) -> str:
    if not found:
        return "no image is served (no worker has registered and [api] images is empty)"
    parts = [f"{name} ({', '.join(found[name].arches)})" for name in sorted(found)]
    return "images served: " + ", ".join(parts)


def check_image(
    session: Session, config_images: tuple[str, ...], image: str, arch: str | None
) -> str:
    """The arch the job will run on; ApiError(400) naming `image` or `arch` otherwise."""
    found = served_images(session, config_images)
    entry = found.get(image)
    if entry is None:
        raise ApiError.field("image", f"unknown image {image!r}; {_listing(found)}")
    chosen = arch or entry.default_arch
    if chosen not in entry.arches:
        raise ApiError.field(
            "arch",
            f"image {image!r} is not available for arch {chosen!r} "
            f"(arches: {', '.join(entry.arches)})",
        )
    return chosen
