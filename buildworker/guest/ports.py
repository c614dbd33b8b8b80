"""Loopback ports for guests' forwarded SSH.

builds.sr.ht takes ports from a Redis counter without checking use (spec §6.6). Here the
kernel picks a free port (bind to 127.0.0.1:0); ports that live domains already forward are
skipped, and since QEMU binds the port itself a little later, the hypervisor retries with a
new port if it lost that race (QEMU then fails to start with a host-forwarding error).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection

__all__ = ["is_hostfwd_conflict", "pick_port"]


def pick_port(
    exclude: Collection[int] = (),
    host: str = "127.0.0.1",
    tries: int = 50,
    *,
    below: int | None = None,
) -> int:
    """A port free on ``host`` right now and not in ``exclude``; with ``below``, one
    from 20000 up to it, at random (apt-cacher-ng binds nothing above 32767, where the
    kernel's own picks are). Raises OSError if none."""
    for _ in range(tries if below is None else max(tries, 200)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, 0 if below is None else random.randrange(20000, below)))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise OSError("no free loopback port found")


def is_hostfwd_conflict(message: str) -> bool:
    """Whether a libvirt/QEMU start error means the forwarded port was taken meanwhile."""
    text = message.lower()
    return "host forwarding" in text or "hostfwd" in text or "address already in use" in text
