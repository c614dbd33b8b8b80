"""A running guest: settle it (SSH ready), read its console, destroy it.

Created by ``Hypervisor.boot`` (``buildworker.guest.hypervisor``), which also re-exports it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
import paramiko
import structlog

from buildworker.guest.copyprep import (
    OWN_MACHINE_TIMEOUT_S,
    own_machine_command,
    own_machine_preamble,
    own_machine_sudo,
)
from buildworker.guest.errors import CommandCancelled, CommandTimeout, GuestError, SettleTimeout
from buildworker.guest.images import ImageInfo
from buildworker.guest.ssh import AnyStop, GuestConnection, StopSignal, connect_guest

__all__ = ["CONSOLE_GATE_S", "CONSOLE_NAME", "Guest"]

CONSOLE_NAME = "console.log"
#: Longest wait for the image's console_ready line before probing SSH regardless.
CONSOLE_GATE_S = 30.0
CONSOLE_POLL_S = 0.05

_log = structlog.get_logger()


class Guest:
    """A running VM. ``wait_ready`` settles it; ``destroy`` removes domain and overlay."""

    def __init__(
        self,
        *,
        ssh_key: Callable[[], paramiko.PKey],
        teardown: Callable[[libvirt.virDomain, str, Path], None],
        domain: libvirt.virDomain,
        domain_name: str,
        directory: Path,
        image: ImageInfo,
        ssh_port: int,
        started: float,
        job_id: int,
        attempt: int,
        restored: bool = False,
    ):
        self._ssh_key = ssh_key
        self._teardown = teardown
        #: started from a memory snapshot rather than booted
        self.restored = restored
        #: how this guest came to be: "cold", "snapshot" or "pool" (metrics label)
        self.start_path = "snapshot" if restored else "cold"
        #: the same for a person, with the reason (the setup log's "Warm start: …" line)
        self.start_note = "restored from a snapshot" if restored else "cold boot"
        #: how a restored copy's clock and boot id were set ("launcher", "helper", "sudo";
        #: "" until then, and on a cold boot, which needs neither)
        self.own_machine_way = ""
        self._domain = domain
        self.domain_name = domain_name
        self.directory = directory
        self.image = image
        self.ssh_port = ssh_port
        #: time.monotonic() just before the domain was started
        self.started = started
        self.console_log = directory / CONSOLE_NAME
        self._destroyed = threading.Event()
        self._connections: list[GuestConnection] = []
        self._lock = threading.Lock()
        # Job 0 is a guest of no job yet (a snapshot template, a warm-pool guest): its
        # events must not claim a job; a pooled guest gets its job's id when taken (assign).
        self._log = (
            _log.bind(job_id=job_id, attempt=attempt, domain=domain_name)
            if job_id
            else _log.bind(domain=domain_name)
        )

    def wait_ready(self, timeout: float, cancel: StopSignal | None = None) -> GuestConnection:
        """Block until SSH answers a command (host key checked); return that connection.

        Raises SettleTimeout (with the tail of the serial console), HostKeyMismatch,
        CommandCancelled if the guest is destroyed or ``cancel`` is set meanwhile (seen
        within a probe interval), GuestError.
        """
        key = self._ssh_key()
        deadline = time.monotonic() + timeout
        stop: StopSignal = self._destroyed if cancel is None else AnyStop(self._destroyed, cancel)
        if self.image.console_ready and not self.restored:
            self._await_console(self.image.console_ready.encode(), deadline, stop)
        try:
            conn = connect_guest(
                self.ssh_port,
                user=self.image.login_user,
                key=key,
                fingerprint=self.image.host_key_fingerprint,
                timeout=max(1.0, deadline - time.monotonic()),
                cancel=stop,
                description=self.domain_name,
                probe=not self.restored,
            )
        except SettleTimeout as exc:
            raise SettleTimeout(f"{exc}; console: {self.console_tail()!r}") from exc
        with self._lock:
            if stop.is_set():
                conn.close()
                raise CommandCancelled(f"{self.domain_name}: stopped while settling")
            self._connections.append(conn)
        if self.restored:
            # The launchers start now (the guest has two vCPUs), the exec launcher first,
            # with the own-machine step as its preamble: setup and the first task then start
            # without their sshd session and shell, and the own-machine step needs no
            # channel of its own.
            conn.prime_soon(own_machine_preamble())
            try:
                self._own_machine(conn, stop)
            except GuestError:
                # The guest destroyed (or the job cancelled) during that step is a stop,
                # as anywhere else in settling, not a failed guest.
                if stop.is_set():
                    raise CommandCancelled(f"{self.domain_name}: stopped while settling") from None
                raise
        self._log.info("guest.ready", seconds=round(time.monotonic() - self.started, 3))
        return conn

    def _own_machine(self, conn: GuestConnection, stop: StopSignal) -> None:
        """Set the copy's clock and boot id: through the template's armed helper, from the
        primed exec launcher's preamble (else a channel of its own), else (no helper, or it
        failed) through sudo, with the time of then. ``own_machine_way`` says which."""
        t0 = time.monotonic()
        way = ""
        try:
            status = conn.run_preamble(
                lambda: f"{time.time():.6f}", timeout=OWN_MACHINE_TIMEOUT_S, cancel=stop
            )
        except CommandTimeout:
            status = -1
        if status == 0:
            way = "launcher"
        elif status is None:  # not primed: the helper through a channel of its own
            try:
                fast = conn.run(
                    own_machine_command(time.time()),
                    pty=False,
                    timeout=OWN_MACHINE_TIMEOUT_S,
                    cancel=stop,
                    primed=False,
                )
            except CommandTimeout:
                fast = -1
            way = "helper" if fast == 0 else ""
        if not way:
            status = conn.run(own_machine_sudo(time.time()), pty=False, cancel=stop, primed=False)
            if status != 0:
                raise GuestError(
                    f"{self.domain_name}: setting the clock and boot id failed ({status})"
                )
            way = "sudo"
        self.own_machine_way = way
        self._log.debug("guest.own_machine", way=way, seconds=round(time.monotonic() - t0, 3))

    def _await_console(self, marker: bytes, deadline: float, stop: StopSignal) -> None:
        """Wait until the serial console shows ``marker`` (the guest's network is up), at
        most CONSOLE_GATE_S: probes made before that linger in QEMU's user-net and reach the
        guest later, each starting an sshd that competes with the real login."""
        give_up = min(deadline, time.monotonic() + CONSOLE_GATE_S)
        while time.monotonic() < give_up:
            if stop.is_set():
                raise CommandCancelled(f"{self.domain_name}: stopped while booting")
            try:
                with open(self.console_log, "rb") as fh:
                    if marker in fh.read():
                        return
            except OSError:
                pass
            stop.wait(CONSOLE_POLL_S)
        self._log.warning("guest.console_marker_missing", marker=marker.decode(errors="replace"))

    def console_tail(self, size: int = 2000) -> str:
        """The end of the serial console log (root can read it; qemu writes it)."""
        try:
            with open(self.console_log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - size))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def qemu_rss_bytes(self) -> int | None:
        """Resident memory of this guest's qemu process, or None if unknown."""
        pidfile = Path("/run/libvirt/qemu") / f"{self.domain_name}.pid"
        try:
            pid = int(pidfile.read_text().strip())
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
        return None

    def assign(self, job_id: int, attempt: int, image: str) -> None:
        """This (pooled) guest now runs that job: its later events carry the job's ids."""
        self._log = _log.bind(job_id=job_id, attempt=attempt, image=image, domain=self.domain_name)

    @property
    def domain(self) -> libvirt.virDomain:
        """The libvirt domain (for the hypervisor: snapshots, diagnostics)."""
        return self._domain

    def forget_connections(self) -> None:
        """Drop (without closing) the connections handed out so far."""
        with self._lock:
            self._connections = []

    @property
    def destroyed(self) -> bool:
        return self._destroyed.is_set()

    def destroy(self) -> None:
        """Close SSH, destroy the domain, delete the overlay directory. Idempotent.

        Raises VMError only if the domain or directory could not be removed."""
        with self._lock:
            self._destroyed.set()
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(GuestError):
                conn.close()
        self._teardown(self._domain, self.domain_name, self.directory)
        self._log.info("guest.destroyed")
