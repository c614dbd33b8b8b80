"""The guest layer's errors; no libvirt or paramiko exception escapes this package.

GuestLayerError
├── UnknownImage          image/arch not in the catalogue (message lists what exists)
├── ImageConfigError      a config.yml that cannot be used (names the file and key)
├── UnsupportedOperation  e.g. `repositories` on an image family without add-repo
├── VMError               libvirt/qemu failed: define, start, destroy, overlay
└── GuestError            talking to a running guest failed
    ├── SettleTimeout     SSH did not answer within the settle timeout
    ├── HostKeyMismatch   the guest's host key is not the image's
    ├── CommandTimeout    a command ran past its timeout (it was hung up)
    ├── CommandCancelled  the cancel event was set (the command was hung up)
    ├── FileTooLarge      a download exceeded its size cap
    └── GuestFileError    an upload or download failed in the guest (names the path)
"""

from __future__ import annotations

__all__ = [
    "CommandCancelled",
    "CommandTimeout",
    "FileTooLarge",
    "GuestError",
    "GuestFileError",
    "GuestLayerError",
    "HostKeyMismatch",
    "ImageConfigError",
    "SettleTimeout",
    "UnknownImage",
    "UnsupportedOperation",
    "VMError",
]


class GuestLayerError(Exception):
    """Base of every error raised by ``buildworker.guest``."""


class UnknownImage(GuestLayerError, LookupError):
    """The manifest's image (or arch) is not served here; the message lists what is."""


class ImageConfigError(GuestLayerError, ValueError):
    """An image's config.yml is malformed; the message names the file and the key."""


class UnsupportedOperation(GuestLayerError, ValueError):
    """The image family cannot do this (e.g. add a repository on an image without one)."""


class VMError(GuestLayerError):
    """Provisioning failed: libvirt, qemu, the overlay or the port (infrastructure)."""


class GuestError(GuestLayerError):
    """Talking to the guest over SSH failed (infrastructure unless a subclass says so)."""


class SettleTimeout(GuestError):
    """The guest's SSH did not answer a command within the settle timeout."""


class HostKeyMismatch(GuestError):
    """The guest presented a host key other than the image's recorded fingerprint."""


class CommandTimeout(GuestError):
    """A guest command ran past its timeout; the channel was closed (SIGHUP in the guest)."""


class CommandCancelled(GuestError):
    """The cancel event was set while a command ran; the channel was closed."""


class FileTooLarge(GuestError):
    """A download from the guest was larger than its cap."""


class GuestFileError(GuestError):
    """Reading or writing a file in the guest failed (missing file, permissions)."""
