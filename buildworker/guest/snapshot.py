"""Memory snapshots: boot once, save the settled guest's state, start copies from it.

MACHINE-NOTES.md measured ~1.4 s to SSH for a restored copy under TCG, against ~6-12 s for a
cold boot. libvirt's own save/restore cannot start several copies of one saved domain (a
restore must keep the saved name and UUID), so the state moves over QEMU's migration
protocol through a Unix socket in the guest's directory, driven by QMP:

- save: ``migrate`` to ``unix:<dir>/out.sock``, where we listen and write the stream to a
  file; the template domain is then destroyed and its overlay frozen (never written again:
  the saved memory belongs to that disk).
- restore: a domain started paused with ``-incoming defer`` on a new overlay backed by the
  frozen one; ``migrate-incoming`` on ``unix:<dir>/in.sock``; we stream the file into it,
  wait for the load, resume. A new vmgenid makes the kernel reseed its RNG; the caller sets
  the clock.
Unix sockets are used so nothing crosses the loopback firewall rule.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]

from buildworker.guest.errors import VMError

__all__ = ["load_state", "qmp", "save_state"]

CHUNK = 1 << 20


def qmp(domain: libvirt.virDomain, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """One QMP command on the domain's monitor; returns its ``return`` value."""
    message: dict[str, Any] = {"execute": command}
    if arguments:
        message["arguments"] = arguments
    try:
        reply = json.loads(libvirt_qemu.qemuMonitorCommand(domain, json.dumps(message), 0))
    except libvirt.libvirtError as exc:
        raise VMError(f"QMP {command}: {exc.get_error_message()}") from exc
    if "error" in reply:
        raise VMError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return")


def _wait_migration(domain: libvirt.virDomain, deadline: float) -> None:
    while time.monotonic() < deadline:
        info = qmp(domain, "query-migrate") or {}
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise VMError(f"migration {status}: {info.get('error-desc', '')}")
        time.sleep(0.05)
    raise VMError("migration did not complete in time")


def save_state(
    domain: libvirt.virDomain, directory: Path, target: Path, *, uid: int, gid: int, timeout: float
) -> int:
    """Stream the running domain's state into ``target``; returns its size in bytes.

    The domain is left paused (QEMU's post-migration state); destroy it afterwards."""
    path = directory / "out.sock"
    path.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        os.chown(path, uid, gid)  # qemu (its user) connects to it
        server.listen(1)
        server.settimeout(timeout)
        qmp(domain, "migrate", {"uri": f"unix:{path}"})
        try:
            peer, _ = server.accept()
        except TimeoutError:
            raise VMError("save: QEMU did not connect to the state socket") from None
        size = 0
        with peer, open(target, "wb") as sink:
            peer.settimeout(max(1.0, deadline - time.monotonic()))
            while True:
                data = peer.recv(CHUNK)
                if not data:
                    break
                sink.write(data)
                size += len(data)
    path.unlink(missing_ok=True)
    _wait_migration(domain, deadline)
    return size


def load_state(domain: libvirt.virDomain, directory: Path, source: Path, *, timeout: float) -> None:
    """Feed ``source`` into a domain started paused with ``-incoming defer``; resume it."""
    path = directory / "in.sock"
    deadline = time.monotonic() + timeout
    qmp(domain, "migrate-incoming", {"uri": f"unix:{path}"})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        while True:
            try:
                client.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise VMError("restore: QEMU did not open the state socket") from None
                time.sleep(0.01)
        with open(source, "rb") as stream:
            while chunk := stream.read(CHUNK):
                client.sendall(chunk)
        client.shutdown(socket.SHUT_WR)
        # Wait until QEMU has loaded everything (it leaves the inmigrate state).
        while time.monotonic() < deadline:
            status = (qmp(domain, "query-status") or {}).get("status")
            if status != "inmigrate":
                break
            time.sleep(0.02)
        else:
            raise VMError("restore: the state did not load in time")
    if status not in ("paused", "prelaunch", "running"):
        raise VMError(f"restore: guest in state {status!r} after loading")
    try:
        domain.resume()
    except libvirt.libvirtError as exc:
        if "not paused" not in (exc.get_error_message() or ""):
            raise VMError(f"restore: resume: {exc.get_error_message()}") from exc
