"""The warm pool: restored guests, already logged into, waiting for the next claimed job.

Per image the worker serves, up to ``[vm] pool-size`` guests (``pool-sizes`` per image) are
restored from the image's snapshot ahead of time, with the SSH connection open and the host
key checked. ``WarmPool.boot`` (the worker's ``VmHost``) hands one to a job in
microseconds; an empty pool means an ordinary ``Hypervisor.boot`` (a restore, else a cold
boot), never a failed job.

- A pooled guest serves exactly one job and is never returned: the job's teardown destroys
  it. Nothing of a job (secrets, sources, environment) reaches a guest before its claim.
- A refill thread replaces taken guests. It waits a moment after a take so the job's own
  first seconds get the CPU, and runs each pooled guest's QEMU at niceness 15 until a job
  takes it (back to 0 then), so refills yield to running builds.
- Pool guests count against the host's memory budget (``[vm] memory-budget``, default 80%
  of the host's memory): the ``slots`` builds are reserved first, the pool gets what is
  left (``pool_room``), in whole guests.
- Guests older than ``[vm] pool-max-age``, dead ones, and ones of a snapshot that changed
  (a rebuilt image) are destroyed and replaced.

The sizing rules are pure functions at the top (tested without a VM).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from buildworker.config import Config, ConfigError
from buildworker.guest.errors import GuestError, VMError
from buildworker.guest.hypervisor import Hypervisor
from buildworker.guest.images import ImageCatalogue, ImageInfo
from buildworker.guest.ssh import GuestConnection
from buildworker.guest.vm import Guest

__all__ = [
    "PoolTarget",
    "PooledGuest",
    "WarmPool",
    "host_memory",
    "parse_pool_sizes",
    "pool_room",
    "pool_targets",
    "vm_host_for",
]

#: After a job takes a guest, the refill waits this long before restoring the next one.
REFILL_DELAY_S = 2.0
#: Niceness of a pooled guest's QEMU threads while it waits.
POOL_NICENESS = 15
#: How often the refill thread looks at the pool when nothing happens (age, liveness).
CHECK_INTERVAL_S = 5.0

_log = structlog.get_logger()


# --- sizing (pure) ---------------------------------------------------------------------------


def parse_pool_sizes(entries: Sequence[str]) -> dict[tuple[str, str | None], int]:
    """``IMAGE[@ARCH]=N`` entries of ``[vm] pool-sizes`` → {(image, arch or None): N}.

    Raises ConfigError naming the entry."""
    sizes: dict[tuple[str, str | None], int] = {}
    for entry in entries:
        key, sep, number = entry.partition("=")
        image, _, arch = key.strip().partition("@")
        if not sep or not image or not number.strip().isdigit():
            raise ConfigError(
                f"vm.pool-sizes: expected IMAGE[@ARCH]=N such as debian/bookworm@amd64=2, "
                f"got {entry!r}"
            )
        sizes[image, arch or None] = int(number)
    return sizes


def pool_room(*, budget: int, slots: int, guest_memory: int) -> int:
    """How many pooled guests fit in ``budget`` bytes once ``slots`` builds are reserved."""
    if guest_memory <= 0:
        return 0
    return max(0, (budget - slots * guest_memory) // guest_memory)


@dataclass(frozen=True)
class PoolTarget:
    """How many guests of one image the pool keeps."""

    image: ImageInfo
    size: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.image.name, self.image.arch)


def pool_targets(
    served: Sequence[tuple[str, str, ImageInfo]],
    *,
    default_size: int,
    sizes: dict[tuple[str, str | None], int],
    room: int,
) -> list[PoolTarget]:
    """The pool's size per image: ``served`` is (name as registered, arch, resolved image)
    for every image and alias the worker serves at its default arch, plus every
    ``IMAGE@ARCH`` named in ``sizes``. Aliases of one image count once; an entry of
    ``sizes`` (by any of its names, with or without arch) overrides ``default_size``; the
    total is cut to ``room``, in the order served."""
    chosen: dict[tuple[str, str], PoolTarget] = {}
    for name, arch, image in served:
        key = (image.name, image.arch)
        size = default_size
        for candidate in ((name, arch), (image.name, image.arch), (name, None), (image.name, None)):
            if candidate in sizes:
                size = sizes[candidate]
                break
        if key in chosen and (name, arch) not in sizes and (name, None) not in sizes:
            continue  # an alias of an image seen already keeps that size
        chosen[key] = PoolTarget(image, size)
    targets: list[PoolTarget] = []
    left = room
    for target in chosen.values():
        size = min(target.size, left)
        left -= size
        if size > 0:
            targets.append(PoolTarget(target.image, size))
    return targets


def host_memory() -> int:
    """MemTotal of this host in bytes (0 if /proc/meminfo cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return 0


# --- the pool ----------------------------------------------------------------------------


def _renice(pid: int | None, niceness: int) -> None:
    """Set every thread of ``pid`` (a QEMU process) to ``niceness``; best effort."""
    if pid is None:
        return
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(task), niceness)


def _qemu_pid(guest: Guest) -> int | None:
    try:
        return int((Path("/run/libvirt/qemu") / f"{guest.domain_name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class _Entry:
    guest: Guest
    conn: GuestConnection
    digest: str
    ready_at: float = field(default_factory=time.monotonic)


class PooledGuest:
    """A pooled guest handed to one job: ``wait_ready`` returns the open connection."""

    start_path = "pool"
    restored = True

    def __init__(self, entry: _Entry):
        self._guest = entry.guest
        self._conn = entry.conn
        waited = time.monotonic() - entry.ready_at
        self.start_note = f"a guest from the warm pool (restored and waiting for {waited:.0f}s)"

    @property
    def domain_name(self) -> str:
        return self._guest.domain_name

    @property
    def ssh_port(self) -> int:
        return self._guest.ssh_port

    @property
    def guest(self) -> Guest:
        return self._guest

    def wait_ready(self, timeout: float, cancel: threading.Event | None = None) -> GuestConnection:
        return self._conn

    def destroy(self) -> None:
        self._guest.destroy()


class WarmPool:
    """A ``VmHost`` that serves jobs from restored guests waiting in a pool.

    ``on_ready(image, arch, count)`` is called whenever the number of waiting guests of an
    image changes (the worker's ``buildworker_pool_ready`` gauge)."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        targets: Sequence[PoolTarget],
        *,
        max_age: float,
        settle_timeout: float,
        on_ready: Callable[[str, str, int], None] | None = None,
    ):
        self.hypervisor = hypervisor
        self.targets = list(targets)
        self.max_age = max_age
        self.settle_timeout = settle_timeout
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], list[_Entry]] = {t.key: [] for t in self.targets}
        self._serial = 0
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._last_take = 0.0
        self._thread = threading.Thread(target=self._refill_loop, name="warm-pool", daemon=True)
        self._log = _log.bind(worker=hypervisor.worker_name)
        for target in self.targets:
            self._report(target.key)

    # --- VmHost -----------------------------------------------------------------------------

    def start(self) -> WarmPool:
        self._thread.start()
        return self

    def boot(self, image: ImageInfo, *, job_id: int, attempt: int) -> Guest | PooledGuest:
        """A waiting guest of ``image`` if the pool has a sound one, else a fresh guest
        (``Hypervisor.boot``: a restore, else a cold boot)."""
        entry = self._take(image)
        if entry is None:
            return self.hypervisor.boot(image, job_id=job_id, attempt=attempt)
        _renice(_qemu_pid(entry.guest), 0)  # it is a build now: full priority
        entry.guest.assign(job_id, attempt, image.name)
        self._log.info(
            "pool.taken",
            job_id=job_id,
            attempt=attempt,
            image=image.name,
            arch=image.arch,
            domain=entry.guest.domain_name,
            waited_s=round(time.monotonic() - entry.ready_at, 3),
        )
        return PooledGuest(entry)

    def _take(self, image: ImageInfo) -> _Entry | None:
        key = (image.name, image.arch)
        try:
            digest = self.hypervisor.shape_of(image).digest
        except VMError:
            return None
        while True:
            with self._lock:
                entries = self._entries.get(key)
                if not entries:
                    return None
                entry = entries.pop(0)
                self._last_take = time.monotonic()
            self._report(key)
            self._wake.set()
            if self._sound(entry, digest):
                return entry
            self._discard(entry, "not sound when taken")

    # --- state ------------------------------------------------------------------------------

    def ready(self, image: str, arch: str) -> int:
        with self._lock:
            return len(self._entries.get((image, arch), []))

    def wait_filled(self, timeout: float) -> bool:
        """Wait until every target is full; True if it is (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(len(self._entries[t.key]) >= t.size for t in self.targets):
                    return True
            time.sleep(0.1)
        return False

    def guests(self) -> list[Guest]:
        with self._lock:
            return [e.guest for entries in self._entries.values() for e in entries]

    def _report(self, key: tuple[str, str]) -> None:
        if self._on_ready is not None:
            self._on_ready(key[0], key[1], self.ready(*key))

    def _sound(self, entry: _Entry, digest: str) -> bool:
        if entry.digest != digest or entry.guest.destroyed or not entry.conn.active:
            return False
        try:
            return bool(entry.guest.domain.isActive())
        except Exception:  # libvirt's error of a domain that is gone: not sound, replace it
            return False

    def _discard(self, entry: _Entry, why: str) -> None:
        self._log.info("pool.discarded", domain=entry.guest.domain_name, reason=why)
        with contextlib.suppress(VMError):
            entry.guest.destroy()

    # --- refill -----------------------------------------------------------------------------

    def _refill_loop(self) -> None:
        while not self._closing.is_set():
            try:
                self._refill_once()
            # The edge of the thread: a failed refill is logged and retried at the next
            # check; jobs meanwhile boot the ordinary way.
            except Exception as exc:
                self._log.exception("pool.refill_failed", error=str(exc))
                self._closing.wait(CHECK_INTERVAL_S)
            self._wake.wait(CHECK_INTERVAL_S)
            self._wake.clear()

    def _refill_once(self) -> None:
        for target in self.targets:
            if self._closing.is_set():
                return
            digest = self.hypervisor.shape_of(target.image).digest
            self._expire(target.key, digest)
            while self.ready(*target.key) < target.size and not self._closing.is_set():
                since_take = time.monotonic() - self._last_take
                if since_take < REFILL_DELAY_S:
                    self._closing.wait(REFILL_DELAY_S - since_take)
                    continue
                entry = self._restore(target.image, digest)
                if entry is None:
                    return  # no snapshot yet: it is being made; try at the next check
                with self._lock:
                    if self._closing.is_set():
                        closing = True
                    else:
                        closing = False
                        self._entries[target.key].append(entry)
                if closing:
                    self._discard(entry, "the pool is closing")
                    return
                self._report(target.key)

    def _expire(self, key: tuple[str, str], digest: str) -> None:
        now = time.monotonic()
        with self._lock:
            entries = self._entries[key]
            keep = [
                e for e in entries if now - e.ready_at < self.max_age and self._sound(e, digest)
            ]
            gone = [e for e in entries if e not in keep]
            self._entries[key] = keep
        for entry in gone:
            self._discard(entry, "too old, dead, or of an older snapshot")
        if gone:
            self._report(key)

    def _restore(self, image: ImageInfo, digest: str) -> _Entry | None:
        with self._lock:
            self._serial += 1
            serial = self._serial
        t0 = time.monotonic()
        guest = self.hypervisor.restore_pooled(image, serial)
        if guest is None:
            return None
        try:
            _renice(_qemu_pid(guest), POOL_NICENESS)
            conn = guest.wait_ready(self.settle_timeout, cancel=self._closing)
        except (GuestError, VMError) as exc:
            with contextlib.suppress(VMError):
                guest.destroy()
            if self._closing.is_set():
                return None
            raise VMError(f"restoring a pool guest of {image.name}: {exc}") from exc
        self._log.info(
            "pool.filled",
            image=image.name,
            arch=image.arch,
            domain=guest.domain_name,
            seconds=round(time.monotonic() - t0, 3),
        )
        return _Entry(guest, conn, digest)

    def close(self) -> None:
        """Stop refilling and destroy every waiting guest (running builds keep theirs)."""
        self._closing.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(60.0)
        with self._lock:
            entries = [e for es in self._entries.values() for e in es]
            for key in self._entries:
                self._entries[key] = []
        for entry in entries:
            self._discard(entry, "the pool is closing")
        for target in self.targets:
            self._report(target.key)


def vm_host_for(
    config: Config,
    catalogue: ImageCatalogue,
    hypervisor: Hypervisor,
    *,
    on_ready: Callable[[str, str, int], None] | None = None,
) -> WarmPool | None:
    """The worker's warm pool per its config (not started), or None when there is none to
    keep (warm start off, pool size 0, no memory left). Raises ConfigError."""
    vm = config.vm
    sizes = parse_pool_sizes(vm.pool_sizes)
    if not vm.warm_start or (vm.pool_size == 0 and not any(sizes.values())):
        return None
    served: list[tuple[str, str, ImageInfo]] = []
    for entry in catalogue.served():
        arches = [entry["default_arch"]] + [
            arch for (name, arch) in sizes if name == entry["image"] and arch
        ]
        for arch in dict.fromkeys(arches):
            if arch not in entry["arches"]:
                raise ConfigError(
                    f"vm.pool-sizes: image {entry['image']!r} has no arch {arch!r} here "
                    f"(available: {', '.join(entry['arches'])})"
                )
            try:
                served.append((entry["image"], arch, catalogue.resolve(entry["image"], arch)))
            except LookupError as exc:
                _log.warning("pool.image_skipped", image=entry["image"], error=str(exc))
    budget = vm.memory_budget or int(host_memory() * 0.8)
    room = pool_room(budget=budget, slots=config.worker.slots, guest_memory=vm.memory)
    targets = pool_targets(served, default_size=vm.pool_size, sizes=sizes, room=room)
    _log.info(
        "pool.sized",
        targets={f"{t.image.name}@{t.image.arch}": t.size for t in targets},
        memory_budget=budget,
        room=room,
    )
    if not targets:
        return None
    return WarmPool(
        hypervisor,
        targets,
        max_age=vm.pool_max_age,
        settle_timeout=vm.settle_timeout,
        on_ready=on_ready,
    )
