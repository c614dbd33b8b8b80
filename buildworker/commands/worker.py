"""`buildworker worker`: the build-host daemon (RabbitMQ → claim → VM → reports)."""

from __future__ import annotations

import argparse

import structlog

from buildworker.config import load_config
from buildworker.log import configure_logging
from buildworker.worker.apiclient import InternalApi
from buildworker.worker.daemon import Daemon
from buildworker.worker.redact import NeedleSet, structlog_masker

NAME = "worker"
HELP = "run the build worker daemon (consumes jobs, one fresh VM per job)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-metrics", action="store_true", help="do not serve /metrics ([worker] metrics-bind)"
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config.log.format == "json", config.log.level)
    # Our own log events are masked with the secrets of the jobs running at the time.
    log_needles = NeedleSet()
    processors = list(structlog.get_config()["processors"])
    structlog.configure(processors=[structlog_masker(log_needles), *processors])
    # Imported here so `buildworker --help` works on a host without libvirt.
    from buildworker.guest.hypervisor import Hypervisor
    from buildworker.guest.images import ImageCatalogue

    catalogue = ImageCatalogue(config.worker.images)
    vms = Hypervisor(config.vm, worker_name=config.worker.name)
    reaped = vms.reap_leftovers()
    api = InternalApi(config.worker.api_url, config.worker.token)
    daemon = Daemon(config, catalogue, vms, api, log_needles=log_needles)
    if reaped:
        structlog.get_logger().warning("reaped_leftover_vms", domains=reaped)
    daemon.install_signal_handlers()
    if not args.no_metrics:
        daemon.metrics.serve(config.worker.metrics_bind)
    daemon.start()
    try:
        return daemon.run_until_stopped()
    finally:
        api.close()
        vms.close()  # withdraws this worker's forwards and allowed networks
