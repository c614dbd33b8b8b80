"""The git mirror cache: bare mirrors on the host, cloned by guests through a forward.

``[cache] git = yes`` (docs/operations.md "Git mirror cache"): before the ``sources`` step
clones a public ``https://`` or ``git://`` source, the worker updates (or creates) a bare
mirror of it under ``git-dir/mirrors`` (`GitMirrors.prepare`: ``git clone --mirror``, then
``git fetch --prune`` before each use, one job at a time per mirror, bounded by
``git-fetch-timeout``); the guest clones from that mirror as ``git://10.0.2.2:PORT/KEY``
and sets ``origin`` back to the manifest's URL, so the build sees what builds.sr.ht gives
it (submodules then come direct, relative ones from the real URL). When the mirror cannot
be had, or the guest's clone from it fails, the guest clones direct, as without the cache:
the cache never fails a job.

Which sources (`mirror_key`, `GitMirrors.check_host`): ``https://`` and ``git://`` URLs
without credentials, query or unusual characters, of a host that resolves to public
addresses only (``git-hosts``, when set, limits them further). A host that resolves to a
loopback, private, link-local or otherwise non-global address goes direct unless it is in
``git-private-hosts``: the host-side fetch must not become a way for a manifest to reach
the host's own or its LAN's services. The fetch connects to the address checked (https:
``http.curloptResolve``; git: the address in the URL), follows no redirects, uses no
credentials and no prompts. Jobs that carry a git credentials file as a secret
(``~/.netrc``, ``~/.git-credentials``, a git config) go direct for all their sources; ssh
sources (``git@host:...``, ``ssh://``) are never cached.

Serving: `GitServer` listens on 127.0.0.1:``git-port`` and hands each connection to
``git daemon --inetd`` with ``--base-path`` the mirrors directory, only repositories under
it exported (each mirror has ``git-daemon-export-ok`` once complete) and only
``upload-pack`` (clone/fetch) enabled: a guest can read the mirrors and nothing else, on
the host or off it; the port becomes one of the worker's ``[vm] forwards``.

Size: `trim_mirrors` removes the least recently used mirrors while they take more than
``git-max-size`` (at start, then every ``TRIM_INTERVAL_S``).

Metrics (``buildworker_cache_*{cache="git"}``): requests by result (``hit``: the mirror
was there and updated; ``miss``: created; ``bypass``: the source was not eligible;
``error``: the mirror could not be fetched, the guest went direct), fetched bytes (the
growth of a mirror's objects on disk from a fetch: about what came over the wire) and
served bytes (the git protocol stream `GitServer` sent to guests).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import ipaddress
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from buildworker.config import CacheConfig

__all__ = [
    "GUEST_HOST",
    "GitCacheError",
    "GitMirrors",
    "GitServer",
    "HostGitCache",
    "Prepared",
    "guest_clone_command",
    "mirror_key",
    "needs_credentials",
    "start_git_cache",
    "trim_mirrors",
]

_log = structlog.get_logger()

#: The host as guests reach it (QEMU's user network).
GUEST_HOST = "10.0.2.2"
#: How often the mirrors are trimmed to ``git-max-size``.
TRIM_INTERVAL_S = 600.0
#: The file whose mtime is a mirror's last use (trim order).
USED_MARK = "buildworker-used"
#: The file git daemon requires to serve a repository (written once a mirror is complete).
EXPORT_OK = "git-daemon-export-ok"
#: At most this many guests' connections are served at once (more are closed at once).
MAX_CONNECTIONS = 32
_DEFAULT_PORTS = {"https": 443, "git": 9418}
_SEGMENT = re.compile(r"[A-Za-z0-9._~+-]+")
_HOST = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]")
#: Secrets at these paths (relative to home) are git credentials: their jobs go direct.
_CREDENTIAL_FILES = re.compile(r"(^|/)(\.netrc|\.git-credentials|\.gitconfig|\.config/git/.*)$")
_PR_SET_PDEATHSIG = 1


class GitCacheError(RuntimeError):
    """The cache could not be started; the message names the key and the fix."""


def mirror_key(url: str) -> str | None:
    """The mirror's path under the mirrors directory for an eligible URL
    (``https/git.example.org/~user/repo.git``); None when the source must go direct (not
    https/git, credentials, query or fragment, an unusual character or ``..``).
    ``repo`` and ``repo.git``, with or without a trailing slash, share one mirror."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.query or parts.fragment:
        return None
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        return None
    host = (parts.hostname or "").lower()
    if not host or not _HOST.fullmatch(host.strip("[]") if ":" in host else host):
        return None
    segments = [s for s in parts.path.split("/") if s]
    if not segments or any(s in (".", "..") or not _SEGMENT.fullmatch(s) for s in segments):
        return None
    if segments[-1].endswith(".git"):
        segments[-1] = segments[-1][: -len(".git")]
    if not segments[-1] or segments[-1].startswith("."):
        return None
    where = host.replace(":", "_").strip("[]") if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        where += f"_{port}"
    return "/".join([scheme, where, *segments]) + ".git"


def needs_credentials(secret_paths: Sequence[str | None]) -> bool:
    """Whether a job's file secrets hold git credentials (the job's sources go direct)."""
    return any(
        path is not None and _CREDENTIAL_FILES.search(path.removeprefix("~/")) is not None
        for path in secret_paths
    )


def guest_clone_command(mirror_url: str, url: str, directory: str, git_env: str = "") -> str:
    """The guest's clone: from the mirror, ``origin`` set back to `url`; on any failure
    the partial clone is removed and `url` cloned direct (the cache never fails a job).
    A `directory` that exists already is left alone: the direct clone fails on it, as
    without the cache."""
    q = shlex.quote
    env = f"{git_env} " if git_env else ""
    direct = f"{env}git clone {q(url)} {q(directory)}"
    return (
        f"if [ -e {q(directory)} ]; then {direct}; else "
        f"{{ git clone {q(mirror_url)} {q(directory)} && "
        f"git -C {q(directory)} remote set-url origin {q(url)}; }} || "
        f"{{ echo 'The host git mirror failed; cloning directly'; rm -rf {q(directory)}; "
        f"{direct}; }}; fi"
    )


def _scheme_host(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or ''}"
    except ValueError:
        return "(unparsable)"


def _du(path: Path) -> int:
    total = 0
    for directory, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                continue
    return total


def _last_use(mirror: Path) -> float:
    try:
        return (mirror / USED_MARK).stat().st_mtime
    except OSError:
        return 0.0


def _mirrors(root: Path) -> Iterator[Path]:
    """The complete mirrors under `root` (directories holding EXPORT_OK)."""
    for directory, names, files in os.walk(root):
        if EXPORT_OK in files:
            names.clear()
            yield Path(directory)


@contextlib.contextmanager
def _locked(lock_dir: Path, key: str, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock per mirror (threads and processes alike); yields whether held."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"
    with open(lock_dir / name, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def trim_mirrors(root: Path, max_bytes: int, lock_dir: Path | None = None) -> int:
    """Remove the least recently used mirrors under `root` until they take at most
    `max_bytes`; a mirror being updated (its lock held) is skipped. Returns bytes removed."""
    found = sorted((_last_use(m), _du(m), m) for m in _mirrors(root))
    total = sum(size for _, size, _ in found)
    removed = 0
    for _, size, mirror in found:
        if total <= max_bytes:
            break
        key = mirror.relative_to(root).as_posix()
        with _locked(lock_dir or root.parent / "locks", key, wait=False) as held:
            if not held:
                continue
            shutil.rmtree(mirror, ignore_errors=True)
        total -= size
        removed += size
    return removed


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Prepared:
    """What `GitMirrors.prepare` made of one source: ``result`` hit|miss|bypass|error,
    ``guest_url`` the mirror as guests clone it ('' unless hit or miss)."""

    result: str
    guest_url: str = ""
    fetched_bytes: int = 0
    reason: str = ""


@dataclass
class GitMirrors:
    """The host's mirrors under ``directory`` (``mirrors/``, ``tmp/``, ``locks/``).

    ``port``: the `GitServer` guests reach as 10.0.2.2:port; ``hosts``: when non-empty,
    the only hosts cached; ``private_hosts``: ``HOST`` or ``HOST:PORT`` entries cached
    although they resolve to non-global addresses; ``on_prepared`` is called with each
    `Prepared` (the metrics)."""

    directory: Path
    port: int
    max_bytes: int = 10 * 1024**3
    fetch_timeout: float = 600.0
    hosts: tuple[str, ...] = ()
    private_hosts: tuple[str, ...] = ()
    on_prepared: Callable[[Prepared], None] | None = None
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def mirrors_dir(self) -> Path:
        return self.directory / "mirrors"

    @property
    def lock_dir(self) -> Path:
        return self.directory / "locks"

    def check_host(self, url: str) -> tuple[str, str]:
        """(the address the fetch connects to, '') for an allowed host; ('', why not)
        otherwise. Resolves the host once; the fetch is pinned to that address."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or _DEFAULT_PORTS[parts.scheme.lower()]
        if self.hosts and host not in self.hosts:
            return "", f"{host} is not in cache.git-hosts"
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return "", f"{host} does not resolve ({exc})"
        addresses = [str(info[4][0]) for info in infos]
        private = {host, f"{host}:{port}"} & set(self.private_hosts)
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not ip.is_global and not private:
                return "", f"{host} resolves to {address}, not in cache.git-private-hosts"
        return addresses[0], ""

    def _git(
        self, args: Sequence[str], timeout: float, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "LC_ALL": "C",
        }
        config = [
            "-c", "credential.helper=",
            "-c", "http.followRedirects=false",
            "-c", "protocol.allow=never",
            "-c", "protocol.https.allow=always",
            "-c", "protocol.git.allow=always",
        ]  # fmt: skip
        with subprocess.Popen(
            ["git", *config, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        ) as process:
            try:
                output, _ = process.communicate(timeout=max(1.0, min(timeout, self.fetch_timeout)))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                return subprocess.CompletedProcess(process.args, -9, "timed out")
            return subprocess.CompletedProcess(process.args, process.returncode, output)

    def _pinned(self, url: str, address: str) -> tuple[str, list[str]]:
        """The fetch URL and git options that connect to `address` whatever DNS says now."""
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS[parts.scheme.lower()]
        if parts.scheme.lower() == "https":
            host = parts.hostname or ""
            return url, ["-c", f"http.curloptResolve={host}:{port}:{address}"]
        literal = f"[{address}]" if ":" in address else address
        return parts._replace(netloc=f"{literal}:{port}").geturl(), []

    def prepare(self, url: str, timeout: float | None = None) -> Prepared:
        """Update (or create) the mirror of `url`, within `timeout` (and the configured
        fetch timeout); the result says how guests clone it. Never raises for the source's
        sake: a failure is result ``error`` (go direct)."""
        started = time.monotonic()
        prepared = self._prepare(url, self.fetch_timeout if timeout is None else timeout)
        log = _log.warning if prepared.result == "error" else _log.info
        log(
            "git_cache.prepared",
            # a bypassed URL may carry credentials: only its scheme and host are logged
            source=url if prepared.result != "bypass" else _scheme_host(url),
            result=prepared.result,
            reason=prepared.reason,
            seconds=round(time.monotonic() - started, 2),
        )
        if self.on_prepared is not None:
            self.on_prepared(prepared)
        return prepared

    def _prepare(self, url: str, timeout: float) -> Prepared:
        key = mirror_key(url)
        if key is None:
            return Prepared("bypass", reason="not a public https:// or git:// URL")
        address, why = self.check_host(url)
        if not address:
            return Prepared("bypass", reason=why)
        fetch_url, options = self._pinned(url, address)
        mirror = self.mirrors_dir / key
        try:
            with _locked(self.lock_dir, key):
                if (mirror / EXPORT_OK).exists():
                    before = _du(mirror / "objects")
                    done = self._git(
                        [*options, "fetch", "--prune", "--quiet", fetch_url, "+refs/*:refs/*"],
                        timeout,
                        cwd=mirror,
                    )
                    result = "hit"
                else:
                    before = 0
                    shutil.rmtree(mirror, ignore_errors=True)
                    tmp = self.directory / "tmp" / hashlib.sha256(key.encode()).hexdigest()[:32]
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                    done = self._git(
                        [*options, "clone", "--mirror", "--quiet", fetch_url, str(tmp)], timeout
                    )
                    if done.returncode == 0:
                        mirror.parent.mkdir(parents=True, exist_ok=True)
                        (tmp / EXPORT_OK).touch()
                        tmp.rename(mirror)
                    else:
                        shutil.rmtree(tmp, ignore_errors=True)
                    result = "miss"
                if done.returncode != 0:
                    return Prepared("error", reason=done.stdout.strip()[-500:])
                (mirror / USED_MARK).touch()
                fetched = max(0, _du(mirror / "objects") - before)
        except OSError as exc:
            return Prepared("error", reason=str(exc))
        return Prepared(result, f"git://{GUEST_HOST}:{self.port}/{key}", fetched)

    def start(self) -> GitMirrors:
        """Trim now, then every TRIM_INTERVAL_S in a thread (``close()`` stops it)."""
        self.mirrors_dir.mkdir(parents=True, exist_ok=True)
        self.trim()
        self._thread = threading.Thread(target=self._loop, name="git-cache-trim", daemon=True)
        self._thread.start()
        return self

    def trim(self) -> int:
        removed = trim_mirrors(self.mirrors_dir, self.max_bytes, self.lock_dir)
        if removed:
            _log.info("git_cache.trimmed", bytes=removed)
        return removed

    def _loop(self) -> None:
        while not self._stop.wait(TRIM_INTERVAL_S):
            self.trim()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


@dataclass
class GitServer:
    """Serves the mirrors read-only on 127.0.0.1:``port``: each connection goes to a
    ``git daemon --inetd`` (upload-pack only, exported mirrors under ``mirrors_dir``
    only); ``on_served`` is called with the bytes sent to each client."""

    mirrors_dir: Path
    port: int
    on_served: Callable[[int], None] | None = None
    _sock: socket.socket | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_CONNECTIONS), init=False
    )

    def start(self) -> GitServer:
        if shutil.which("git") is None:
            raise GitCacheError("cache.git: git not found (apt-get install git)")
        self.mirrors_dir.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError as exc:
            sock.close()
            raise GitCacheError(
                f"cache.git-port: cannot listen on 127.0.0.1:{self.port} ({exc}); pick another port"
            ) from None
        sock.listen(64)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="git-cache", daemon=True)
        self._thread.start()
        _log.info("git_cache.started", port=self.port, directory=str(self.mirrors_dir))
        return self

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        base = str(self.mirrors_dir.resolve())
        sent = 0
        try:
            command = [
                "git", "daemon", "--inetd",
                f"--base-path={base}", "--timeout=120", "--init-timeout=20",
                "--forbid-override=upload-archive", "--disable=upload-archive",
                "--forbid-override=receive-pack", "--disable=receive-pack", base,
            ]  # fmt: skip
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "HOME": base,
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_CONFIG_GLOBAL": "/dev/null",
                },
                preexec_fn=_die_with_parent,
            )
            assert process.stdin is not None and process.stdout is not None
            stdin = process.stdin

            def upstream() -> None:
                try:
                    while data := conn.recv(65536):
                        stdin.write(data)
                        stdin.flush()
                except OSError:
                    pass
                with contextlib.suppress(OSError):
                    stdin.close()

            reader = threading.Thread(target=upstream, daemon=True)
            reader.start()
            try:
                while data := os.read(process.stdout.fileno(), 65536):
                    conn.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            reader.join(5)
            process.stdout.close()
        except OSError as exc:
            _log.warning("git_cache.serve_failed", error=str(exc))
        finally:
            conn.close()
            self._slots.release()
            if sent and self.on_served is not None:
                self.on_served(sent)

    def close(self) -> None:
        if self._sock is not None:
            # shutdown wakes the accept() of the thread (close alone does not on Linux)
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(10)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class HostGitCache:
    """The git mirror cache of one worker process: the forward guests reach it through,
    the mirrors (None when ``[cache] git`` is off) and our server (None when off or when
    `buildworker run` shares the worker's)."""

    forwards: tuple[str, ...] = ()
    mirrors: GitMirrors | None = None
    server: GitServer | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.mirrors is not None:
            self.mirrors.close()


def start_git_cache(
    cache: CacheConfig,
    on_prepared: Callable[[Prepared], None] | None = None,
    on_served: Callable[[int], None] | None = None,
    *,
    share_running: bool = False,
) -> HostGitCache:
    """Start the git mirror cache of ``[cache] git`` (a HostGitCache that changes nothing
    when off). `share_running` (``buildworker run``): when ``git-port`` answers already
    (the host's worker serves the same ``git-dir``), only prepare mirrors. Raises
    GitCacheError when the server cannot start."""
    if not cache.git:
        return HostGitCache()
    mirrors = GitMirrors(
        cache.git_dir,
        port=cache.git_port,
        max_bytes=cache.git_max_size,
        fetch_timeout=cache.git_fetch_timeout,
        hosts=cache.git_hosts,
        private_hosts=cache.git_private_hosts,
        on_prepared=on_prepared,
    )
    server = None
    if not (share_running and _port_open(cache.git_port)):
        server = GitServer(mirrors.mirrors_dir, cache.git_port, on_served=on_served).start()
    try:
        mirrors.start()
    except BaseException:
        if server is not None:
            server.close()
        raise
    port = cache.git_port
    return HostGitCache(
        forwards=(f"{GUEST_HOST}:{port}=127.0.0.1:{port}",), mirrors=mirrors, server=server
    )
