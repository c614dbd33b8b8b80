"""The narrow seams the pipeline depends on, as structural types.

The real implementations live in ``buildworker.guest`` (ImageCatalogue, Hypervisor, Guest,
GuestConnection; interfaces agreed in the team contract); the pipeline only needs these
methods, so `buildworker run` and the daemon share it and tests can pass real parts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from buildworker.cache.git import GitMirrors

__all__ = ["BootedGuest", "Catalogue", "GuestSession", "Image", "VmHost"]


class GuestSession(Protocol):
    """One SSH connection to a guest (``buildworker.guest.ssh.GuestConnection``)."""

    def run(
        self,
        command: str,
        *,
        pty: bool = True,
        on_output: Callable[[bytes], None] | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        stdin: bytes | None = None,
    ) -> int: ...

    def upload(self, path: str, data: bytes, mode: int = 0o644) -> None: ...

    def download(self, path: str, sink: BinaryIO, max_size: int) -> int: ...

    def close(self) -> None: ...


class Image(Protocol):
    """What the pipeline reads of ``buildworker.guest.images.ImageInfo``."""

    @property
    def name(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def homedir(self) -> str: ...
    @property
    def preamble(self) -> str | None: ...
    @property
    def directory(self) -> Path: ...
    @property
    def digest(self) -> str | None: ...
    @property
    def git_cache(self) -> GitMirrors | None: ...

    def install_command(self, packages: Sequence[str]) -> str: ...

    def add_repository_command(self, name: str, source: str) -> str: ...


class BootedGuest(Protocol):
    """A running VM (``buildworker.guest.hypervisor.Guest``)."""

    @property
    def domain_name(self) -> str: ...
    @property
    def start_path(self) -> str: ...
    @property
    def start_note(self) -> str: ...

    def wait_ready(self, timeout: float, cancel: threading.Event | None = None) -> GuestSession: ...

    def destroy(self) -> None: ...


class VmHost(Protocol):
    """Boots guests (``buildworker.guest.hypervisor.Hypervisor``)."""

    # ``image`` is what Catalogue.resolve returned (the real class takes its ImageInfo).
    def boot(self, image: Any, *, job_id: int, attempt: int) -> BootedGuest: ...


class Catalogue(Protocol):
    """Finds images (``buildworker.guest.images.ImageCatalogue``)."""

    def resolve(self, image: str, arch: str | None) -> Image: ...
