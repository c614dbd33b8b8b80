"""The API tier's background threads: the outbox publisher, the republish monitor, the lease
reaper and the trigger sender.

`start` is called from the app's lifespan with ``app.state``; the callable it returns stops
both threads and waits for them, and the lifespan calls it before the engine is disposed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from buildworker.api.health import BrokerWatch
from buildworker.api.publisher import OutboxPublisher
from buildworker.api.reaper import LeaseReaper
from buildworker.api.republish import RepublishMonitor
from buildworker.config import Config
from buildworker.triggers import sender as trigger_sender

__all__ = ["start"]

_log = structlog.get_logger(__name__)


def start(state: Any) -> Callable[[], None]:
    """Start the publisher and the reaper for the app whose ``state`` holds ``config`` and
    ``sessionmaker``; they are also left on the state (``publisher``, ``reaper``)."""
    config: Config = state.config
    publisher = OutboxPublisher(
        state.sessionmaker,
        config.broker.url,
        poll_s=config.broker.outbox_poll,
        reconnect_max_s=config.broker.reconnect_max,
        heartbeat_s=config.broker.heartbeat,
    )
    reaper = LeaseReaper(
        state.sessionmaker,
        max_attempts=config.api.max_attempts,
        interval_s=config.api.reap_interval,
    )
    # /readyz's view of the broker (buildworker.api.health).
    broker_watch = BrokerWatch(config.broker.url, heartbeat_s=config.broker.heartbeat)
    republisher = RepublishMonitor(
        state.sessionmaker,
        config.broker.url,
        interval_s=config.broker.republish_interval,
        reconnect_max_s=config.broker.reconnect_max,
    )
    publisher.start()
    reaper.start()
    broker_watch.start()
    if config.broker.republish_interval > 0:
        republisher.start()
    stop_triggers = trigger_sender.start(state)
    state.publisher = publisher
    state.reaper = reaper
    state.broker_watch = broker_watch
    state.republisher = republisher
    _log.info("background.started")

    def stop() -> None:
        publisher.stop()
        reaper.stop()
        broker_watch.stop()
        republisher.stop()
        stop_triggers()
        _log.info("background.stopped")

    return stop
