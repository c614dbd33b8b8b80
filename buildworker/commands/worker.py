"""`buildworker worker`: the build-host daemon (RabbitMQ → claim → VM → reports).

Under systemd (``Type=notify``, `buildworker.worker.supervisor`): ``READY=1`` once the broker
is connected, libvirt answers, images are present and the API is reachable (``/readyz``'s
checks), ``STATUS=`` lines with the slots and the broker, ``WATCHDOG=1`` while the main loop
ticks and the consumer runs, ``STOPPING=1`` when SIGTERM starts the drain.
"""

from __future__ import annotations

import argparse
import dataclasses
import pwd
import sys
from typing import TYPE_CHECKING

import structlog

from buildworker.config import Config, ConfigError, load_config
from buildworker.exitcodes import EXIT_USAGE
from buildworker.log import configure_logging
from buildworker.sdnotify import Notifier, NotifyError, WatchdogPinger
from buildworker.worker.apiclient import InternalApi

if TYPE_CHECKING:
    from buildworker.guest.images import ImageCatalogue, ImageInfo
from buildworker.worker.control import ControlServer
from buildworker.worker.control_access import ApiAuthorizer
from buildworker.worker.daemon import Daemon
from buildworker.worker.health import readiness
from buildworker.worker.metrics import WorkerMetrics
from buildworker.worker.redact import NeedleSet, structlog_masker
from buildworker.worker.supervisor import Supervisor

NAME = "worker"
HELP = "run the build worker daemon (consumes jobs, one fresh VM per job)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-metrics",
        action="store_true",
        help="do not serve /metrics, /healthz and /readyz ([worker] metrics-bind)",
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # Our own log lines (and stdlib ones: paramiko, pika) are masked with the secrets of
    # the jobs running at the time; the runner adds and removes them.
    log_needles = NeedleSet(min_len=config.worker.mask_min_length)
    configure_logging(config.log.format, config.log.level, masker=structlog_masker(log_needles))
    try:
        notifier = Notifier.from_environ()
    except NotifyError as exc:
        print(f"buildworker: systemd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    notifier.status("starting: connecting to libvirt")
    # Imported here so `buildworker --help` works on a host without libvirt.
    from buildworker.cache.apt import CacheError, start_apt_cache
    from buildworker.cache.git import GitCacheError, start_git_cache
    from buildworker.guest.hypervisor import Hypervisor
    from buildworker.guest.images import ImageCatalogue
    from buildworker.guest.pool import vm_host_for

    metrics = WorkerMetrics()
    try:
        apt_cache = start_apt_cache(
            config.cache,
            on_transfer=lambda t: metrics.cache_transfer(
                "apt", t.hit, t.served_bytes, t.fetched_bytes
            ),
        )
    except CacheError as exc:
        print(f"buildworker worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        git_cache = start_git_cache(
            config.cache,
            on_prepared=lambda p: metrics.cache_request("git", p.result, p.fetched_bytes),
            on_served=lambda n: metrics.cache_served("git", n),
        )
    except GitCacheError as exc:
        apt_cache.close()
        print(f"buildworker worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    catalogue = ImageCatalogue(
        config.worker.images,
        apt_proxy=apt_cache.guest_url,
        apt_hosts=apt_cache.hosts,
        git_cache=git_cache.mirrors,
    )
    # The caches' ports are forwards of this worker (the egress policy opens just them).
    vm = dataclasses.replace(
        config.vm, forwards=config.vm.forwards + apt_cache.forwards + git_cache.forwards
    )
    try:
        vms = Hypervisor(vm, worker_name=config.worker.name)
    except BaseException:
        apt_cache.close()
        git_cache.close()
        raise
    reaped = vms.reap_leftovers()
    try:
        pool = vm_host_for(
            config,
            catalogue,
            vms,
            on_ready=lambda image, arch, n: metrics.pool_ready.labels(image=image, arch=arch).set(
                n
            ),
        )
    except ConfigError:  # a bad [vm] pool-sizes: said by the CLI, naming the entry
        vms.close()
        apt_cache.close()
        git_cache.close()
        raise
    if pool is None and config.vm.warm_start:
        # Without a pool nothing restores ahead of the first job: check (and make) the
        # served images' snapshots now, in the background.
        vms.prepare_snapshots_soon(_served_images(catalogue))
    api = InternalApi(config.worker.api_url, config.worker.token)
    control = _control_server(config)
    daemon = Daemon(
        config,
        catalogue,
        pool or vms,
        api,
        log_needles=log_needles,
        control=control,
        metrics=metrics,
    )
    if reaped:
        structlog.get_logger().warning("reaped_leftover_vms", domains=reaped)
    daemon.install_signal_handlers()
    notifier.status("starting: registering with the API")
    daemon.start()
    checks = readiness(
        connected=daemon.broker_connected,
        libvirt_uri=config.vm.libvirt_uri,
        catalogue=catalogue,
        api_url=config.worker.api_url,
    )
    supervisor = Supervisor(daemon, notifier, checks, daemon.metrics)
    server = None
    if not args.no_metrics:
        server = daemon.metrics.serve(
            config.worker.metrics_bind, liveness=supervisor.liveness(), readiness=checks
        )
    pinger = WatchdogPinger(notifier, supervisor.alive).start()
    if pool is not None:
        pool.start()  # after the daemon is up: the pool fills while jobs may already run
    try:
        return daemon.run_until_stopped(on_tick=supervisor.tick, on_drain=supervisor.draining)
    finally:
        pinger.stop()
        if server is not None:
            server.close()
        if control is not None:
            control.close()  # open sessions are told the worker is shutting down
        api.close()
        if pool is not None:
            pool.close()  # its waiting guests go; running builds have already ended
        vms.close()  # withdraws this worker's forwards and allowed networks
        apt_cache.close()
        git_cache.close()
        notifier.close()


def _control_server(config: Config) -> ControlServer | None:
    """The control socket SSH users reach builds through (docs/ssh.md), when this host
    has the SSH account (`buildworker ssh install`); without it, builds run unreachable."""
    log = structlog.get_logger()
    try:
        account = pwd.getpwnam(config.ssh.user)
    except KeyError:
        log.info("ssh_access_off", reason=f"no user {config.ssh.user!r} on this host")
        return None
    server = ControlServer(
        config.worker.control_socket,
        ApiAuthorizer(config.worker.api_url, config.worker.token),
        worker_name=config.worker.name,
        allowed_uids=frozenset({0, account.pw_uid}),
        group=account.pw_gid,
    )
    try:
        return server.start()
    except OSError as exc:  # a directory we may not write: say so, keep building
        log.warning("ssh_access_off", reason=f"{config.worker.control_socket}: {exc}")
        return None


def _served_images(catalogue: ImageCatalogue) -> list[ImageInfo]:
    """The releases the worker serves, each at its default arch (aliases count once)."""
    images = []
    for entry in catalogue.served():
        if entry.get("release", entry["image"]) != entry["image"]:
            continue
        try:
            images.append(catalogue.resolve(entry["image"], entry.get("default_arch")))
        except Exception as exc:  # an image the catalogue refuses: its jobs will say why
            structlog.get_logger().warning(
                "snapshot_check_skipped", image=entry["image"], error=str(exc)
            )
    return images
