"""The one backoff (buildworker.backoff), as its callers on both sides use it."""

from __future__ import annotations

from typing import Any

import pytest

from buildworker.backoff import BROKER_RECONNECT_START_S, compute_backoff

no_jitter = lambda: 0.0  # noqa: E731
full_jitter = lambda: 1.0  # noqa: E731


def test_backoff_grows_caps_and_jitters_down() -> None:
    delays = [compute_backoff(n, base_s=1, max_s=8, rand=no_jitter) for n in range(6)]
    assert delays == [1, 2, 4, 8, 8, 8]
    assert compute_backoff(3, base_s=1, max_s=8, jitter=0.5, rand=full_jitter) == 4
    with pytest.raises(ValueError, match="attempt"):
        compute_backoff(-1)


def test_broker_reconnects_double_from_half_a_second_up_to_reconnect_max() -> None:
    # The outbox publisher and the republish monitor count failures from 1 and pass
    # ``failures - 1``; the worker's consumer counts from 0: the same waits either way.
    waits = [
        compute_backoff(n, base_s=BROKER_RECONNECT_START_S, max_s=5.0, rand=no_jitter)
        for n in range(5)
    ]
    assert waits == [0.5, 1, 2, 4, 5]
    # The default jitter takes at most a quarter off.
    assert compute_backoff(
        2, base_s=BROKER_RECONNECT_START_S, max_s=5.0, rand=full_jitter
    ) == pytest.approx(1.5)


def test_api_client_retries_stay_within_their_cap_with_the_real_random() -> None:
    # The worker's internal API client: base 0.2 s, cap 5 s, jitter from `random.random`.
    for attempt in (0, 1, 5, 10, 10_000):  # huge attempts must not overflow a float
        delay = compute_backoff(attempt, base_s=0.2, max_s=5.0)
        full = min(5.0, 0.2 * 2 ** min(attempt, 64))
        assert 0.75 * full <= delay <= full


@pytest.mark.parametrize(
    "kwargs", [{"base_s": -1}, {"max_s": -1}, {"factor": 0.5}, {"jitter": 1.5}]
)
def test_out_of_range_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        compute_backoff(0, **kwargs)
