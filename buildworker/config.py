"""One INI file, a frozen dataclass per section, typed values parsed by declared kinds.

Where the file comes from: ``--config``, then ``$BUILDWORKER_CONFIG``, then
``/etc/buildworker/worker.conf``. A missing default file is fine (every key has a default);
a file named explicitly must exist. A bad value fails at start-up naming section, key and what
was expected, e.g. ``worker.timeout: expected a duration such as 45m, got '45x'``.

To add a key: add a field with a default and ``opt(kind, doc)`` metadata to its section's
dataclass, and document it in ``worker.conf.example``. INI keys use dashes where the field
uses underscores (``worker_token`` ↔ ``worker-token``).
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_PATH = Path("/etc/buildworker/worker.conf")
ENV_VAR = "BUILDWORKER_CONFIG"


class ConfigError(ValueError):
    """A config file that cannot be used; the message names ``section.key`` and the cause."""


# --- value kinds -------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|G|T)?", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def parse_duration(text: str) -> float:
    """``45m``, ``1h30m``, ``250ms``, ``90`` (seconds) → seconds as a float."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise ValueError("expected a duration such as 45m")
    return total


def parse_size(text: str) -> int:
    """``16KiB``, ``2GiB``, ``512`` (bytes) → bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError("expected a size such as 16KiB or 2GiB")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected yes or no")


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def parse_list(text: str) -> tuple[str, ...]:
    """Comma- or newline-separated; blanks dropped."""
    return tuple(item.strip() for item in re.split(r"[,\n]", text) if item.strip())


def image_alias_table(entries: tuple[str, ...]) -> dict[str, str]:
    """``[api] image-aliases`` entries (``alias=release``) as a table. Raises ValueError
    naming the bad entry."""
    table: dict[str, str] = {}
    for entry in entries:
        alias, sep, release = (part.strip() for part in entry.partition("="))
        if not sep or not alias or not release or alias == release:
            raise ValueError(f"{entry!r}: expected alias=release (debian/stable=debian/bookworm)")
        table[alias] = release
    return table


def parse_image_aliases(text: str) -> tuple[str, ...]:
    entries = parse_list(text)
    image_alias_table(entries)  # refused at load, naming the key, not at the first submit
    return entries


def parse_hostport(text: str) -> str:
    value = text.strip()
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT such as 127.0.0.1:8080")
    return value


LOG_FORMATS = ("auto", "console", "json")


def parse_log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}")
    return value


def parse_url(text: str) -> str:
    value = text.strip()
    if not re.match(r"^[a-z][a-z0-9+.-]*://", value):
        raise ValueError("expected a URL such as http://127.0.0.1:8080")
    return value.rstrip("/") if value.startswith(("http://", "https://")) else value


_KINDS: dict[str, Any] = {
    "str": lambda text: text.strip(),
    "path": lambda text: Path(text.strip()).expanduser(),
    "int": parse_int,
    "bool": parse_bool,
    "duration": parse_duration,
    "size": parse_size,
    "list": parse_list,
    "aliases": parse_image_aliases,
    "hostport": parse_hostport,
    "url": parse_url,
    "logformat": parse_log_format,
}


def opt(kind: str, doc: str) -> dict[str, str]:
    """Field metadata: how to parse the INI text, and a one-line description."""
    if kind not in _KINDS:
        raise AssertionError(f"unknown config kind {kind!r}")
    return {"kind": kind, "doc": doc}


# --- sections ----------------------------------------------------------------------------

_STATE = Path("/var/lib/buildworker")


@dataclass(frozen=True)
class ApiConfig:
    origin: str = field(
        default="http://127.0.0.1:8080",
        metadata=opt("url", "public URL of the API, used in job, log and artifact URLs"),
    )
    bind: str = field(
        default="127.0.0.1:8080", metadata=opt("hostport", "address the API listens on")
    )
    worker_token: str = field(
        default="",
        metadata=opt("str", "shared secret workers present to the internal API; empty disables it"),
    )
    secret_key: str = field(
        default="",
        metadata=opt("str", "Fernet key (base64, 32 bytes) that encrypts secrets at rest"),
    )
    max_manifest_size: int = field(
        default=16384, metadata=opt("size", "largest manifest accepted at submit")
    )
    max_artifacts: int = field(
        default=8, metadata=opt("int", "most artifacts one manifest may list")
    )
    max_artifact_size: int = field(
        default=1024**3, metadata=opt("size", "largest single artifact accepted from a worker")
    )
    lease: float = field(
        default=60.0,
        metadata=opt("duration", "how long a claim or heartbeat keeps a job leased to a worker"),
    )
    max_attempts: int = field(
        default=3, metadata=opt("int", "attempts before a job whose worker vanished is failed")
    )
    images: tuple[str, ...] = field(
        default=(),
        metadata=opt("list", "images accepted at submit besides those workers register"),
    )
    image_aliases: tuple[str, ...] = field(
        default=(),
        metadata=opt("aliases", "alias=release entries resolved at submit, over workers' symlinks"),
    )
    results_per_page: int = field(default=50, metadata=opt("int", "page size of list endpoints"))
    job_timeout: float = field(
        default=45 * 60.0,
        metadata=opt("duration", "budget of a job from boot to artifacts, sent at claim"),
    )
    reap_interval: float = field(
        default=10.0, metadata=opt("duration", "how often lapsed leases are looked for")
    )
    metrics_cache: float = field(
        default=5.0,
        metadata=opt("duration", "how long /metrics reuses its database gauges (jobs, outbox)"),
    )


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = field(
        default=f"sqlite:///{_STATE}/buildworker.db",
        metadata=opt("str", "SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://..."),
    )


@dataclass(frozen=True)
class StoreConfig:
    path: Path = field(
        default=_STATE / "store", metadata=opt("path", "directory holding logs and artifacts")
    )


@dataclass(frozen=True)
class BrokerConfig:
    url: str = field(
        default="amqp://guest:guest@127.0.0.1:5672/%2F",
        metadata=opt("url", "RabbitMQ URL (AMQP 0-9-1)"),
    )
    heartbeat: float = field(
        default=30.0, metadata=opt("duration", "AMQP heartbeat interval negotiated with the broker")
    )
    reconnect_max: float = field(
        default=30.0, metadata=opt("duration", "longest wait between reconnect attempts")
    )
    outbox_poll: float = field(
        default=0.25, metadata=opt("duration", "how often the API looks for jobs to publish")
    )
    republish_interval: float = field(
        default=60.0,
        metadata=opt("duration", "a queued job whose message is missing this long is republished"),
    )


@dataclass(frozen=True)
class WorkerConfig:
    name: str = field(
        default_factory=socket.gethostname,
        metadata=opt("str", "this build host's name, recorded as the job's runner"),
    )
    api_url: str = field(
        default="http://127.0.0.1:8080", metadata=opt("url", "where the internal API is reached")
    )
    token: str = field(default="", metadata=opt("str", "the API's [api] worker-token"))
    images: Path = field(
        default=_STATE / "images", metadata=opt("path", "directory of base images")
    )
    slots: int = field(default=1, metadata=opt("int", "builds run at once on this host"))
    timeout: float = field(
        default=45 * 60.0, metadata=opt("duration", "a job's budget from boot to artifacts")
    )
    drain_timeout: float = field(
        default=600.0,
        metadata=opt("duration", "on SIGTERM, how long running builds may finish before cancel"),
    )
    metrics_bind: str = field(
        default="127.0.0.1:9101", metadata=opt("hostport", "where /metrics is served")
    )
    log_flush: float = field(
        default=0.25, metadata=opt("duration", "longest time output waits before it is sent")
    )
    max_log_size: int = field(
        default=64 * 1024**2,
        metadata=opt("size", "per-job cap over all its logs; output past it is dropped"),
    )
    max_task_log_size: int = field(
        default=32 * 1024**2, metadata=opt("size", "cap of each task's log (within max-log-size)")
    )
    setup_log_reserve: int = field(
        default=1024**2,
        metadata=opt("size", "part of max-log-size only the setup log may use"),
    )
    mask_min_length: int = field(
        default=4,
        metadata=opt(
            "int",
            "secrets (and lines of secrets) shorter than this many bytes are not masked in logs",
        ),
    )
    standby: float = field(
        default=600.0,
        metadata=opt("duration", "a failed build's VM waits this long for an SSH login"),
    )
    shell_idle: float = field(
        default=600.0,
        metadata=opt("duration", "shell: true builds end after this long with no SSH session"),
    )
    ssh_host: str = field(
        default="",
        metadata=opt("str", "HOST or HOST:PORT users SSH to (empty: [worker] name, [ssh] port)"),
    )
    control_socket: Path = field(
        default=Path("/run/buildworker/control.sock"),
        metadata=opt("path", "Unix socket the SSH forced command reaches the daemon on"),
    )


@dataclass(frozen=True)
class SshConfig:
    listen: tuple[str, ...] = field(
        default=("0.0.0.0:22",),
        metadata=opt("list", "HOST:PORT addresses the build host's sshd listens on"),
    )
    user: str = field(default="builds", metadata=opt("str", "the account users log in as"))
    keys_user: str = field(
        default="buildworker-keys",
        metadata=opt("str", "runs the AuthorizedKeysCommand; must be able to read this file"),
    )
    host_keys: Path = field(
        default=Path("/etc/buildworker/ssh"),
        metadata=opt("path", "directory of the entry point's own host keys"),
    )
    sshd_config: Path = field(
        default=Path("/etc/buildworker/sshd_config"),
        metadata=opt("path", "where `buildworker ssh install` writes the sshd configuration"),
    )
    sshd: Path = field(
        default=Path("/usr/sbin/sshd"), metadata=opt("path", "OpenSSH's sshd binary")
    )


@dataclass(frozen=True)
class VmConfig:
    libvirt_uri: str = field(
        default="qemu:///system", metadata=opt("str", "libvirt connection URI")
    )
    accel: str = field(
        default="auto", metadata=opt("str", "auto, kvm or tcg (auto: kvm only with vmx/svm)")
    )
    vcpus: int = field(default=2, metadata=opt("int", "virtual CPUs per guest"))
    memory: int = field(default=2 * 1024**3, metadata=opt("size", "memory per guest"))
    ssh_key: Path = field(
        default=_STATE / "id_ed25519",
        metadata=opt("path", "private key the worker logs into guests with"),
    )
    work_dir: Path = field(
        default=_STATE / "vms", metadata=opt("path", "per-job overlay directories")
    )
    settle_timeout: float = field(
        default=120.0, metadata=opt("duration", "how long a guest may take to answer SSH")
    )
    forwards: tuple[str, ...] = field(
        default=(),
        metadata=opt("list", "explicit guest→host forwards, GUESTIP:PORT=127.0.0.1:PORT"),
    )
    allow_networks: tuple[str, ...] = field(
        default=(),
        metadata=opt(
            "list", "private or link-local ranges guests may reach (CIDR, comma-separated)"
        ),
    )
    qemu_user: str = field(
        default="libvirt-qemu",
        metadata=opt("str", "user libvirt runs qemu as; the isolation rule matches its uid"),
    )
    warm_start: bool = field(
        default=True,
        metadata=opt(
            "bool", "start guests from a saved memory snapshot of a settled guest (no: cold boot)"
        ),
    )
    snapshot_dir: Path = field(
        default=_STATE / "snapshots",
        metadata=opt("path", "where warm-start snapshots are kept (one per image and shape)"),
    )
    pool_size: int = field(
        default=1,
        metadata=opt("int", "restored guests kept waiting per image this worker serves (0: off)"),
    )
    pool_sizes: tuple[str, ...] = field(
        default=(),
        metadata=opt("list", "per-image pool sizes, IMAGE[@ARCH]=N, over pool-size"),
    )
    pool_max_age: float = field(
        default=1800.0,
        metadata=opt("duration", "a pooled guest older than this is replaced by a fresh one"),
    )
    memory_budget: int = field(
        default=0,
        metadata=opt("size", "memory builds and the pool may use (0: 80% of the host's)"),
    )


@dataclass(frozen=True)
class ClientConfig:
    url: str = field(
        default="http://127.0.0.1:8080", metadata=opt("url", "API used by `buildworker submit`")
    )
    token: str = field(default="", metadata=opt("str", "user token for `buildworker submit`"))


@dataclass(frozen=True)
class LogConfig:
    format: str = field(
        default="auto",
        metadata=opt("logformat", "auto (JSON lines unless stderr is a terminal), console or json"),
    )
    level: str = field(default="info", metadata=opt("str", "debug, info, warning or error"))


@dataclass(frozen=True)
class MailConfig:
    smtp_host: str = field(
        default="", metadata=opt("str", "SMTP server for email triggers; empty disables email")
    )
    smtp_port: int = field(default=25, metadata=opt("int", "SMTP port (25 or 587)"))
    smtp_user: str = field(
        default="", metadata=opt("str", "SMTP login; empty sends without authenticating")
    )
    smtp_password: str = field(default="", metadata=opt("str", "SMTP password"))
    smtp_starttls: str = field(
        default="auto",
        metadata=opt("str", "auto (STARTTLS when offered), required, or off; certs are verified"),
    )
    smtp_ca_file: str = field(
        default="", metadata=opt("str", "CA bundle to verify the SMTP server; empty: system CAs")
    )
    smtp_timeout: float = field(
        default=30.0, metadata=opt("duration", "socket timeout of one SMTP conversation")
    )
    from_address: str = field(
        default="", metadata=opt("str", "From: of trigger emails, e.g. builds <ci@example.org>")
    )


@dataclass(frozen=True)
class TriggersConfig:
    webhook_key: str = field(
        default="",
        metadata=opt("str", "base64 Ed25519 seed (32 bytes) signing webhook payloads"),
    )
    webhook_key_file: str = field(
        default="", metadata=opt("str", "file holding that base64 seed (instead of webhook-key)")
    )
    webhook_timeout: float = field(
        default=10.0, metadata=opt("duration", "timeout of one webhook POST")
    )
    webhook_allow_private: bool = field(
        default=False,
        metadata=opt("bool", "allow webhooks to loopback, private and link-local addresses"),
    )
    max_attempts: int = field(
        default=8, metadata=opt("int", "deliveries tried this often before they are failed")
    )
    retry_backoff: float = field(
        default=30.0, metadata=opt("duration", "wait before the first retry; doubles each time")
    )
    retry_backoff_max: float = field(
        default=3600.0, metadata=opt("duration", "longest wait between two attempts")
    )
    poll: float = field(
        default=2.0, metadata=opt("duration", "how often the sender looks for due deliveries")
    )
    keep: float = field(
        default=30 * 86400.0,
        metadata=opt("duration", "how long sent and failed deliveries stay in the database"),
    )


@dataclass(frozen=True)
class WebConfig:
    session_key: str = field(
        default="",
        metadata=opt(
            "str", "key signing web session cookies; empty: derived from [api] secret-key"
        ),
    )
    session_lifetime: float = field(
        default=14 * 86400.0, metadata=opt("duration", "how long a web sign-in lasts")
    )
    site_name: str = field(
        default="buildworker", metadata=opt("str", "name in page titles and the badge label")
    )


@dataclass(frozen=True)
class CacheConfig:
    apt_run: bool = field(
        default=False,
        metadata=opt("bool", "run our own apt-cacher-ng on 127.0.0.1:apt-port for guests' apt"),
    )
    apt_proxy: str = field(
        default="",
        metadata=opt("str", "use an existing apt proxy instead, http://127.0.0.1:PORT"),
    )
    apt_port: int = field(default=3142, metadata=opt("int", "port of our own apt-cacher-ng"))
    apt_dir: Path = field(
        default=_STATE / "apt-cache",
        metadata=opt("path", "our apt-cacher-ng's directory (conf/, cache/, log/)"),
    )
    apt_max_size: int = field(
        default=10 * 1024**3,
        metadata=opt("size", "least recently used packages are removed past this size"),
    )
    apt_max_age: float = field(
        default=4 * 86400.0,
        metadata=opt("duration", "files no index refers to are expired after this (days)"),
    )
    apt_hosts: tuple[str, ...] = field(
        default=("deb.debian.org", "security.debian.org"),
        metadata=opt("list", "hosts whose http:// sources guests fetch through the cache"),
    )

    git: bool = field(
        default=False,
        metadata=opt("bool", "keep host-side git mirrors of guests' public sources"),
    )
    git_port: int = field(
        default=9419, metadata=opt("int", "port (127.0.0.1) guests clone the mirrors from")
    )
    git_dir: Path = field(
        default=_STATE / "git-cache",
        metadata=opt("path", "the mirrors' directory (mirrors/, tmp/, locks/)"),
    )
    git_max_size: int = field(
        default=10 * 1024**3,
        metadata=opt("size", "least recently used mirrors are removed past this size"),
    )
    git_fetch_timeout: float = field(
        default=600.0,
        metadata=opt("duration", "a mirror's clone or update past this goes direct"),
    )
    git_hosts: tuple[str, ...] = field(
        default=(),
        metadata=opt("list", "only these hosts' sources are mirrored (empty: any public host)"),
    )
    git_private_hosts: tuple[str, ...] = field(
        default=(),
        metadata=opt(
            "list", "HOST or HOST:PORT mirrored although it resolves to a non-public address"
        ),
    )

    @property
    def apt_url(self) -> str:
        """The cache as the host reaches it ('' when off)."""
        if self.apt_run:
            return f"http://127.0.0.1:{self.apt_port}"
        return self.apt_proxy


_LOOPBACK_URL = re.compile(r"^http://127\.0\.0\.1:(\d+)/?$")


def check_cache(cache: CacheConfig) -> None:
    """Refuse a [cache] section that cannot work, naming the key."""
    if cache.apt_proxy:
        match = _LOOPBACK_URL.match(cache.apt_proxy)
        if match is None or not 0 < int(match.group(1)) < 65536:
            raise ConfigError(
                f"cache.apt-proxy: expected http://127.0.0.1:PORT (guests reach it through "
                f"a forward of that port), got {cache.apt_proxy!r}"
            )
        if cache.apt_run:
            raise ConfigError(
                "cache.apt-proxy: set together with cache.apt-run; use an existing proxy "
                "or run our own, not both"
            )
    if not 0 < cache.apt_port < 32768:
        # apt-cacher-ng (3.7, Debian 12) cannot bind a port above 32767
        raise ConfigError(
            f"cache.apt-port: expected a port from 1 to 32767 (apt-cacher-ng binds no "
            f"higher one), got {cache.apt_port}"
        )
    for host in cache.apt_hosts:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ConfigError(f"cache.apt-hosts: expected host names, got {host!r}")
    if not 0 < cache.git_port < 65536:
        raise ConfigError(f"cache.git-port: expected a port from 1 to 65535, got {cache.git_port}")
    if cache.git and cache.apt_url and cache.apt_url.endswith(f":{cache.git_port}"):
        raise ConfigError(
            f"cache.git-port: {cache.git_port} is the package cache's port; pick another"
        )
    if cache.git_fetch_timeout <= 0:
        raise ConfigError("cache.git-fetch-timeout: expected a positive duration")
    for host in cache.git_hosts:
        if not re.fullmatch(r"[a-z0-9.-]+", host):
            raise ConfigError(f"cache.git-hosts: expected lower-case host names, got {host!r}")
    for entry in cache.git_private_hosts:
        if not re.fullmatch(r"[a-z0-9.-]+(:[0-9]{1,5})?", entry):
            raise ConfigError(f"cache.git-private-hosts: expected HOST or HOST:PORT, got {entry!r}")


@dataclass(frozen=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    vm: VmConfig = field(default_factory=VmConfig)
    ssh: SshConfig = field(default_factory=SshConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    log: LogConfig = field(default_factory=LogConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    triggers: TriggersConfig = field(default_factory=TriggersConfig)
    web: WebConfig = field(default_factory=WebConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    source: Path | None = None


_SECTIONS: dict[str, type] = {
    f.name: f.type if isinstance(f.type, type) else globals()[str(f.type)]
    for f in dataclasses.fields(Config)
    if f.name != "source"
}

S = TypeVar("S")

#: Keys that were renamed or removed: a config that still has one gets told what to write.
_RENAMED = {
    ("vm", "snapshot-boot"): "renamed to warm-start, which is on by default (yes/no)",
}


def _parse_section(name: str, cls: type[S], items: dict[str, str]) -> S:
    known = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, text in items.items():
        spec = known.get(key)
        if spec is None and (name, key) in _RENAMED:
            raise ConfigError(f"{name}.{key}: {_RENAMED[name, key]}")
        if spec is None:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
        try:
            values[spec.name] = _KINDS[spec.metadata["kind"]](text)
        except ValueError as exc:
            raise ConfigError(f"{name}.{key}: {exc}, got {text.strip()!r}") from None
    return cls(**values)


def parse_config(text: str, source: Path | None = None) -> Config:
    """Parse INI text; unknown sections and keys are errors (a typo should not pass silently)."""
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        parser.read_string(text, source=str(source or "<config>"))
    except configparser.Error as exc:
        raise ConfigError(f"{source or 'config'}: {exc.message}") from None
    sections: dict[str, Any] = {}
    for section in parser.sections():
        if section not in _SECTIONS:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(sorted(_SECTIONS))})")
        sections[section] = _parse_section(section, _SECTIONS[section], dict(parser[section]))
    config = Config(source=source, **sections)
    check_cache(config.cache)
    return config


def resolve_path(explicit: str | os.PathLike[str] | None) -> tuple[Path | None, bool]:
    """Which file to read, and whether it must exist (it must when named explicitly)."""
    if explicit:
        return Path(explicit), True
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env), True
    return DEFAULT_PATH, False


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    path, required = resolve_path(explicit)
    if path is None or not path.exists():
        if required:
            raise ConfigError(f"{path}: no such config file")
        return Config()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return parse_config(text, source=path)


def describe() -> list[tuple[str, str, str, str]]:
    """(section, key, default, doc) for every key: what worker.conf.example must document."""
    rows = []
    for section, cls in _SECTIONS.items():
        instance = cls()
        for f in dataclasses.fields(cls):
            default = getattr(instance, f.name)
            if f.name == "name" and section == "worker":
                default = "<hostname>"
            elif isinstance(default, tuple):
                default = ", ".join(default)
            rows.append((section, f.name.replace("_", "-"), str(default), f.metadata["doc"]))
    return rows
