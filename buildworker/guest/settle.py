"""When to probe a booting guest's SSH (pure).

builds.sr.ht spawns ``ssh ... echo`` once a second until it answers; we probe the forwarded
port from 50 ms, doubling up to a cap, and only pay for the (emulated, ~1 s) key exchange
once the guest's sshd has sent its banner.

"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["BANNER_PREFIX", "probe_delays"]

#: What an SSH server sends first (RFC 4253 §4.2).
BANNER_PREFIX = b"SSH-"


def probe_delays(first_s: float = 0.05, factor: float = 2.0, cap_s: float = 0.4) -> Iterator[float]:
    """Seconds to sleep before each retry: 0.05, 0.1, 0.2, 0.4, 0.4, ...

    A refused probe costs the guest one reset, so the cap stays well under a second: the
    guest's listener is found within 0.4 s of appearing."""
    if first_s <= 0 or factor < 1 or cap_s < first_s:
        raise ValueError("need 0 < first_s <= cap_s and factor >= 1")
    delay = first_s
    while True:
        yield delay
        delay = min(delay * factor, cap_s)
