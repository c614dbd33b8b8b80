"""The worker's health checks, each a function of what it probes (see `buildworker.health`).

``/readyz`` of a worker (served beside ``/metrics``, `buildworker.worker.metrics`) is:
broker connected, libvirt answering, images present, internal API reachable. ``/healthz``
is the process's own loops (consumer thread alive, main loop ticking), registered by the
daemon. `readiness` binds the four checks to a daemon's parts; the daemon registers them
(next to its watchdog) when it is wired to systemd.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import httpx

from buildworker.health import CheckResult, HealthChecks, fail, ok

__all__ = [
    "ServedImages",
    "api_reachable",
    "broker_connected",
    "images_present",
    "libvirt_answering",
    "readiness",
]


class ServedImages(Protocol):
    """What `images_present` needs of `buildworker.guest.images.ImageCatalogue`."""

    def served(self) -> list[dict[str, Any]]: ...


def broker_connected(connected: threading.Event | Callable[[], bool]) -> CheckResult:
    """The consumer's connection is up (``Consumer.connected``, an Event)."""
    is_up = connected.is_set() if isinstance(connected, threading.Event) else connected()
    return ok("connected") if is_up else fail("not connected (reconnecting)")


def libvirt_answering(uri: str) -> CheckResult:
    """A read-only connection to ``uri`` opens and answers a version query.

    Read-only: the probe must not need more rights than looking, and a fresh connection
    each time tests the daemon, not a connection object that may be stale.
    """
    import libvirt  # not at module level: `buildworker --help` works without libvirt

    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        return fail(f"{uri}: {exc.get_error_message() or exc}")
    try:
        version = conn.getLibVersion()
        domains = conn.numOfDomains()
    except libvirt.libvirtError as exc:
        return fail(f"{uri}: {exc.get_error_message() or exc}")
    finally:
        conn.close()
    major, minor, micro = version // 1_000_000, version // 1000 % 1000, version % 1000
    return ok(f"{uri}: libvirt {major}.{minor}.{micro}, {domains} running domains")


def images_present(catalogue: ServedImages, required: Iterable[str] = ()) -> CheckResult:
    """At least one image is built, and each of ``required`` (``image@arch``) is."""
    try:
        served = catalogue.served()
    except Exception as exc:  # a config.yml that does not parse, a directory gone
        return fail(f"{type(exc).__name__}: {exc}")
    have = {f"{entry['image']}@{arch}" for entry in served for arch in entry["arches"]}
    if not have:
        return fail("no image is built")
    missing = sorted(set(required) - have)
    if missing:
        return fail("missing: " + ", ".join(missing))
    return ok(", ".join(sorted(have)))


def api_reachable(
    url: str, *, client: httpx.Client | None = None, timeout_s: float = 3.0
) -> CheckResult:
    """The API at ``url`` answers ``/healthz`` with a status below 500.

    An API that answers 503 is reachable but not well (a dead background loop): not ready.
    """
    started = time.monotonic()
    try:
        if client is not None:
            response = client.get(f"{url}/healthz", timeout=timeout_s)
        else:
            response = httpx.get(f"{url}/healthz", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return fail(f"{url}: {type(exc).__name__}: {exc}")
    took = f"{(time.monotonic() - started) * 1000:.0f} ms"
    if response.status_code >= 500:
        return fail(f"{url}: answered {response.status_code} in {took}")
    return ok(f"{url}: answered {response.status_code} in {took}")


def readiness(
    *,
    connected: threading.Event | Callable[[], bool],
    libvirt_uri: str,
    catalogue: ServedImages,
    api_url: str,
    required_images: Iterable[str] = (),
) -> HealthChecks:
    """The worker's ``/readyz`` checks, bound to its parts."""
    required = tuple(required_images)
    return HealthChecks(
        [
            ("broker", lambda: broker_connected(connected)),
            ("libvirt", lambda: libvirt_answering(libvirt_uri)),
            ("images", lambda: images_present(catalogue, required)),
            ("api", lambda: api_reachable(api_url)),
        ]
    )
