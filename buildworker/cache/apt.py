"""The package cache: Debian's apt-cacher-ng on the host's loopback, used by guests' apt.

Two ways to have one (``[cache]``, docs/operations.md "Package cache"):

- ``apt-run = yes``: the worker runs its own ``apt-cacher-ng`` (`AptCacher`) bound to
  127.0.0.1:``apt-port``, its cache and logs under ``apt-dir``; the Debian package's system
  service is not used (scripts/setup installs it without starting it).
- ``apt-proxy = http://127.0.0.1:PORT``: one that ops run already (its policy is theirs).

Either way the port becomes one of the worker's ``[vm] forwards`` (guests reach it as
10.0.2.2:PORT, the egress policy lets that one port through), and before ``repositories``
and ``packages`` the guest gets ``/etc/apt/apt.conf.d/01buildworker-cache`` sending plain
``http://`` requests for the ``apt-hosts`` (deb.debian.org) through it. Every other host and
every ``https://`` source goes direct, as without the cache: a manifest's own repositories are
not cached, and TLS is never terminated or tunnelled by the cache.

Our own apt-cacher-ng is run with ``ForceManaged``: it serves only the Debian archive and
security archive (remapped to deb.debian.org), refuses any other URL with 403 and refuses
``CONNECT``, so a guest cannot use the forward to reach anything else, on the host or off it.

Size: apt-cacher-ng expires files no index references after ``ExThreshold`` days
(``apt-max-age``; `AptCacher` runs its expiration, ``acngtool maint``, once a day), and has no
size cap of its own: `trim_cache` removes the least recently used files while the cache is
over ``apt-max-size`` (at start, then every ``TRIM_INTERVAL_S``).

Metrics: apt-cacher-ng's transfer log (``apt-cacher.log``: ``time|I|bytes|client|path`` for
bytes fetched upstream, ``O`` for bytes sent to a client, ``E`` for errors) is read as it
grows; an ``O`` with a preceding ``I`` of the same path is a miss, without one a hit.
"""

from __future__ import annotations

import ctypes
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from buildworker.config import CacheConfig

__all__ = [
    "APT_CONF_PATH",
    "AptCacher",
    "CacheError",
    "HostAptCache",
    "Transfer",
    "TransferLog",
    "guest_apt_conf",
    "guest_setup_command",
    "render_acng_conf",
    "start_apt_cache",
    "trim_cache",
]

_log = structlog.get_logger()

#: Where guests get the proxy settings (read by apt before sources.list.d).
APT_CONF_PATH = "/etc/apt/apt.conf.d/01buildworker-cache"
#: How often the cache is trimmed to ``apt-max-size``.
TRIM_INTERVAL_S = 600.0
#: How often apt-cacher-ng's expiration (unreferenced files older than apt-max-age) runs.
EXPIRE_INTERVAL_S = 86400.0
#: How often the transfer log is read for the metrics.
LOG_POLL_S = 2.0
#: How long apt-cacher-ng may take to listen.
START_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1
#: The log apt-cacher-ng writes one line per transfer to, under its log directory.
TRANSFER_LOG = "apt-cacher.log"


class CacheError(RuntimeError):
    """The cache could not be started or configured; the message says what and how to fix."""


def guest_apt_conf(proxy_url: str, hosts: Sequence[str]) -> str:
    """apt.conf lines sending plain-http requests for `hosts` through `proxy_url` (the URL
    as guests reach it, ``http://10.0.2.2:3142``); other hosts and https stay direct."""
    lines = ['Acquire::http::Proxy "DIRECT";']
    lines += [f'Acquire::http::Proxy::{host} "{proxy_url}";' for host in hosts]
    return "\n".join(lines) + "\n"


def guest_setup_command(proxy_url: str, hosts: Sequence[str]) -> str:
    """The guest command (build user, sudo) that writes `guest_apt_conf` to APT_CONF_PATH."""
    text = shlex.quote(guest_apt_conf(proxy_url, hosts))
    return f"printf %s {text} | sudo tee {APT_CONF_PATH} >/dev/null"


def render_acng_conf(
    cache_dir: Path, log_dir: Path, port: int, max_age_days: int, support_dir: Path
) -> str:
    """acng.conf for our own instance: loopback only, the Debian archives only."""
    return "\n".join(
        [
            f"CacheDir: {cache_dir}",
            f"LogDir: {log_dir}",
            # Its own control socket: the default (/run/apt-cacher-ng/socket) is shared with
            # the system service and any other instance, and a second bind fails.
            f"SocketPath: {log_dir / 'control.socket'}",
            f"SupportDir: {support_dir}",
            f"Port: {port}",
            "BindAddress: 127.0.0.1",
            "ForeGround: 1",
            # Serve the remapped archives below and nothing else: no other host, no CONNECT.
            "ForceManaged: 1",
            "Remap-debrep: file:deb_mirror*.gz /debian ; http://deb.debian.org/debian/",
            "Remap-secdeb: security.debian.org security.debian.org/debian-security "
            "deb.debian.org/debian-security /debian-security ; "
            "http://deb.debian.org/debian-security/",
            f"ExThreshold: {max_age_days}",
            "ExAbortOnProblems: 1",
            # Only the transfer log (the metrics read it); no report page for guests to drive.
            "ReportPage:",
            "VerboseLog: 1",  # the transfer log names client and path (0 drops them)
            "",
        ]
    )


def _files_by_use(root: Path) -> list[tuple[float, int, Path]]:
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            try:
                st = path.stat()
            except OSError:
                continue
            found.append((max(st.st_atime, st.st_mtime), st.st_blocks * 512, path))
    return sorted(found)


def trim_cache(root: Path, max_bytes: int) -> int:
    """Remove the least recently used files under `root` (each with its ``.head``
    companion) until the files take at most `max_bytes` on disk; returns the bytes removed.
    apt-cacher-ng fetches a removed file again when it is next asked for."""
    files = _files_by_use(root)
    sizes = {path: size for _, size, path in files}
    total = sum(sizes.values())
    removed = 0
    for _, _, path in files:
        if total <= max_bytes:
            break
        if path.suffix == ".head":
            continue
        for victim in (path, path.with_name(path.name + ".head")):
            if victim in sizes:
                try:
                    victim.unlink()
                except OSError:
                    continue
                size = sizes.pop(victim)
                total -= size
                removed += size
    return removed


@dataclass(frozen=True)
class Transfer:
    """One file sent to a client: a hit (served from the cache) or a miss (fetched first)."""

    hit: bool
    served_bytes: int
    fetched_bytes: int


@dataclass
class TransferLog:
    """Reads apt-cacher-ng's transfer log as it grows (a partial last line waits)."""

    path: Path
    _offset: int = 0
    _partial: bytes = b""
    _fetched: dict[str, int] = field(default_factory=dict)

    def read(self) -> list[Transfer]:
        try:
            with open(self.path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size < self._offset:  # rotated or truncated
                    self._offset, self._partial = 0, b""
                handle.seek(self._offset)
                data = handle.read()
                self._offset = handle.tell()
        except FileNotFoundError:
            return []
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return list(self._parse(lines))

    def _parse(self, lines: Iterable[bytes]) -> Iterable[Transfer]:
        for raw in lines:
            fields = raw.decode(errors="replace").split("|", 4)
            if len(fields) != 5 or not fields[2].isdigit():
                continue
            kind, size, path = fields[1], int(fields[2]), fields[4]
            if kind == "I":
                self._fetched[path] = self._fetched.get(path, 0) + size
            elif kind == "O":
                fetched = self._fetched.pop(path, 0)
                yield Transfer(hit=fetched == 0, served_bytes=size, fetched_bytes=fetched)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the worker dies (even by SIGKILL), so no
    orphaned apt-cacher-ng keeps the port."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class AptCacher:
    """Our own apt-cacher-ng: started by ``start()``, stopped by ``close()``.

    Parameters: ``directory`` holds ``conf/``, ``cache/`` and ``log/``; ``port`` on
    127.0.0.1; ``max_bytes`` the size `trim_cache` keeps the cache under; ``max_age_days``
    apt-cacher-ng's ExThreshold; ``on_transfer`` is called (from the cache's thread) for each
    transfer read from its log. Raises CacheError from ``start()`` when apt-cacher-ng is
    missing, the port is taken or it does not listen in time.
    """

    directory: Path
    port: int = 3142
    max_bytes: int = 10 * 1024**3
    max_age_days: int = 4
    on_transfer: Callable[[Transfer], None] | None = None
    binary: str | None = None
    support_dir: Path = Path("/usr/lib/apt-cacher-ng")
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cache_dir(self) -> Path:
        return self.directory / "cache"

    @property
    def log_dir(self) -> Path:
        return self.directory / "log"

    @property
    def conf_dir(self) -> Path:
        return self.directory / "conf"

    def start(self) -> AptCacher:
        binary = self.binary or shutil.which("apt-cacher-ng") or "/usr/sbin/apt-cacher-ng"
        if not os.path.exists(binary):
            raise CacheError(
                "cache.apt-run: apt-cacher-ng not found (apt-get install apt-cacher-ng)"
            )
        if _port_open(self.port):
            raise CacheError(
                f"cache.apt-port: 127.0.0.1:{self.port} is taken already (another "
                "apt-cacher-ng? use it with cache.apt-proxy, or pick another port)"
            )
        for directory in (self.conf_dir, self.cache_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "acng.conf").write_text(
            render_acng_conf(
                self.cache_dir, self.log_dir, self.port, self.max_age_days, self.support_dir
            )
        )
        trim_cache(self.cache_dir, self.max_bytes)
        transfers = TransferLog(self.log_dir / TRANSFER_LOG)
        transfers.read()  # earlier runs' transfers are not this process's metrics
        stderr = open(self.log_dir / "stderr.log", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            self._process = subprocess.Popen(
                [binary, "-c", str(self.conf_dir)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # a terminal's Ctrl-C reaches the worker, not it
                preexec_fn=_die_with_parent,
            )
        finally:
            stderr.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _port_open(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise CacheError(
                    f"cache.apt-run: apt-cacher-ng did not listen on 127.0.0.1:{self.port} "
                    f"(see {self.log_dir / 'stderr.log'})"
                )
            time.sleep(0.05)
        self._thread = threading.Thread(
            target=self._loop, args=(transfers,), name="apt-cache", daemon=True
        )
        self._thread.start()
        _log.info("apt_cache.started", url=self.url, directory=str(self.directory))
        return self

    def _loop(self, transfers: TransferLog) -> None:
        next_trim = time.monotonic() + TRIM_INTERVAL_S
        next_expire = time.monotonic() + EXPIRE_INTERVAL_S
        while not self._stop.wait(LOG_POLL_S):
            self._read(transfers)
            now = time.monotonic()
            if now >= next_trim:
                next_trim = now + TRIM_INTERVAL_S
                removed = trim_cache(self.cache_dir, self.max_bytes)
                if removed:
                    _log.info("apt_cache.trimmed", bytes=removed)
            if now >= next_expire:
                next_expire = now + EXPIRE_INTERVAL_S
                self.expire()
        self._read(transfers)

    def _read(self, transfers: TransferLog) -> None:
        for transfer in transfers.read():
            if self.on_transfer is not None:
                self.on_transfer(transfer)

    def expire(self) -> None:
        """Run apt-cacher-ng's expiration (files no index references, older than max-age)."""
        tool = self.support_dir / "acngtool"
        result = subprocess.run(
            [str(tool), "maint", "-c", str(self.conf_dir)],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        if result.returncode != 0:
            _log.warning("apt_cache.expire_failed", output=result.stdout[-2000:])

    def close(self) -> None:
        """Stop apt-cacher-ng (SIGTERM, then SIGKILL after 10 s) and the log reader."""
        self._stop.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        if self._thread is not None:
            self._thread.join(10)


def guest_proxy_url(host_url: str) -> str:
    """``http://127.0.0.1:PORT`` → ``http://10.0.2.2:PORT``: the same port as guests see it."""
    port = int(host_url.rsplit(":", 1)[1].split("/", 1)[0])
    return f"http://10.0.2.2:{port}"


def ceil_days(seconds: float) -> int:
    return max(1, math.ceil(seconds / 86400.0))


@dataclass
class HostAptCache:
    """The package cache of one worker process: what the hypervisor forwards, what guests
    are told, and our own apt-cacher-ng when ``[cache] apt-run`` (None otherwise)."""

    forwards: tuple[str, ...]
    guest_url: str
    hosts: tuple[str, ...]
    cacher: AptCacher | None = None

    def close(self) -> None:
        if self.cacher is not None:
            self.cacher.close()


def start_apt_cache(
    cache: CacheConfig,
    on_transfer: Callable[[Transfer], None] | None = None,
    *,
    share_running: bool = False,
) -> HostAptCache:
    """Start (``apt-run``) or point at (``apt-proxy``) the package cache; with neither, a
    HostAptCache that changes nothing. `share_running` (``buildworker run``): when
    ``apt-port`` answers already (the host's worker runs the cache), use that one. Raises
    CacheError when our apt-cacher-ng fails."""
    url = cache.apt_url
    if not url:
        return HostAptCache(forwards=(), guest_url="", hosts=())
    cacher = None
    if cache.apt_run and not (share_running and _port_open(cache.apt_port)):
        cacher = AptCacher(
            cache.apt_dir,
            port=cache.apt_port,
            max_bytes=cache.apt_max_size,
            max_age_days=ceil_days(cache.apt_max_age),
            on_transfer=on_transfer,
        ).start()
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    return HostAptCache(
        forwards=(f"10.0.2.2:{port}=127.0.0.1:{port}",),
        guest_url=guest_proxy_url(url),
        hosts=cache.apt_hosts,
        cacher=cacher,
    )
