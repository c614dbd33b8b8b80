"""Pure retry timing: how long to wait before attempt N (no I/O, no sleeping here).

The one backoff of the project: the API's outbox publisher and republish monitor (broker
reconnects) and the worker's consumer (broker reconnects) and internal API client (request
retries) all wait by it, so they all spread out the same way after an outage.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["BROKER_RECONNECT_START_S", "compute_backoff"]

#: Default first delay, in seconds.
BACKOFF_BASE_S = 0.2
#: Default ceiling for a single delay, in seconds.
BACKOFF_MAX_S = 10.0
#: First wait after a lost broker connection, in seconds, on the API side (outbox publisher,
#: republish monitor) and the worker side (consumer) alike; each doubles up to its
#: ``[broker] reconnect-max``.
BROKER_RECONNECT_START_S = 0.5


def compute_backoff(
    attempt: int,
    *,
    base_s: float = BACKOFF_BASE_S,
    factor: float = 2.0,
    max_s: float = BACKOFF_MAX_S,
    jitter: float = 0.25,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 = first retry).

    Exponential growth from ``base_s`` capped at ``max_s``; then up to ``jitter`` (a fraction)
    of the delay is taken off at random, so that many workers retrying against one restarted
    API do not arrive in lockstep. The result is never negative and never above ``max_s``.

    Raises:
        ValueError: ``attempt`` is negative or a parameter is out of range.
    """
    if attempt < 0:
        raise ValueError(f"attempt: must be >= 0, got {attempt}")
    if base_s < 0 or max_s < 0 or factor < 1 or not 0 <= jitter <= 1:
        raise ValueError("backoff parameters out of range")
    # Cap the exponent so huge attempt numbers don't overflow a float.
    delay = min(max_s, base_s * factor ** min(attempt, 64))
    return delay * (1.0 - jitter * rand())
