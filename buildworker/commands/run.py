"""`buildworker run manifest.yml`: the build pipeline on this machine, no API, no broker."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from buildworker.config import load_config
from buildworker.exitcodes import EXIT_BUILD_FAILED, EXIT_SETUP_ERROR, EXIT_SUCCESS
from buildworker.log import configure_logging
from buildworker.manifest import ManifestError, parse_manifest
from buildworker.secret_types import SECRET_TYPES
from buildworker.worker.context import CancelToken, JobSpec, SecretMaterial
from buildworker.worker.report import TerminalReporter
from buildworker.worker.runner import BuildRunner, RunnerSettings

NAME = "run"
HELP = "run a build manifest in a fresh local VM and print its logs (exit 0/1/2)"


class UsageError(ValueError):
    """A bad command-line value; the message names the option."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="the build manifest (YAML)")
    parser.add_argument("--images", type=Path, default=None, help="images directory")
    parser.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME=FILE[,type=T][,path=P][,mode=M]",
        help="a secret from a file; type ssh_key|pgp_key|plaintext_file (guessed when absent);"
        " plaintext files need path= (mode defaults to 600)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="extra environment variable"
    )
    parser.add_argument(
        "--artifacts", type=Path, default=None, metavar="DIR", help="copy artifacts here"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="worker events on stderr")


def guess_secret_type(data: bytes) -> str:
    head = data.lstrip()[:64]
    if head.startswith(b"-----BEGIN PGP"):
        return "pgp_key"
    if head.startswith(b"-----BEGIN") and b"PRIVATE KEY" in head:
        return "ssh_key"
    return "plaintext_file"


def parse_secret(text: str) -> SecretMaterial:
    """``NAME=FILE[,type=T][,path=P][,mode=M]`` → a secret.

    Raises:
        UsageError: naming ``--secret`` and what is wrong.
    """
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise UsageError(f"--secret {text!r}: expected NAME=FILE")
    file_part, *options = rest.split(",")
    opts: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("type", "path", "mode"):
            raise UsageError(f"--secret {name}: unknown option {option!r} (type, path, mode)")
        opts[key] = value
    try:
        data = Path(file_part).read_bytes()
    except OSError as exc:
        raise UsageError(f"--secret {name}: {file_part}: {exc.strerror}") from None
    kind = opts.get("type") or guess_secret_type(data)
    if kind not in SECRET_TYPES:
        raise UsageError(f"--secret {name}: type must be one of {', '.join(SECRET_TYPES)}")
    path = opts.get("path")
    if kind == "plaintext_file" and not path:
        raise UsageError(f"--secret {name}: a plaintext_file secret needs path=GUEST_PATH")
    try:
        mode = int(opts.get("mode", "600"), 8)
    except ValueError:
        raise UsageError(f"--secret {name}: mode must be octal, such as 600") from None
    return SecretMaterial(uuid=name, name=name, type=kind, data=data, path=path, mode=mode)


def parse_env(items: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--env {item!r}: expected NAME=VALUE with a shell variable name")
        env[key] = value
    return env


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config.log.format == "json", "info" if args.verbose else "warning")
    try:
        text = args.manifest.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"buildworker run: {args.manifest}: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    try:
        manifest = parse_manifest(text)
        secrets = tuple(parse_secret(item) for item in args.secret)
        env = parse_env(args.env)
    except ManifestError as exc:
        print(f"buildworker run: {args.manifest}: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    except UsageError as exc:
        print(f"buildworker run: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    for warning in manifest.warnings:
        print(f"buildworker run: warning: {warning}", file=sys.stderr)

    # Imported here so `buildworker --help` works on a host without libvirt.
    from buildworker.cache.apt import CacheError, start_apt_cache
    from buildworker.cache.git import GitCacheError, start_git_cache
    from buildworker.guest.hypervisor import Hypervisor
    from buildworker.guest.images import ImageCatalogue

    try:
        # [cache]: the worker's apt-cacher-ng when it runs on this host, else one of our own
        apt_cache = start_apt_cache(config.cache, share_running=True)
    except CacheError as exc:
        print(f"buildworker run: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    try:
        # [cache] git: the worker's mirror server when it runs on this host, else our own
        git_cache = start_git_cache(config.cache, share_running=True)
    except GitCacheError as exc:
        apt_cache.close()
        print(f"buildworker run: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    catalogue = ImageCatalogue(
        args.images or config.worker.images,
        apt_proxy=apt_cache.guest_url,
        apt_hosts=apt_cache.hosts,
        git_cache=git_cache.mirrors,
    )
    vm = dataclasses.replace(
        config.vm, forwards=config.vm.forwards + apt_cache.forwards + git_cache.forwards
    )
    try:
        vms = Hypervisor(vm, worker_name=f"{config.worker.name}-run")
    except BaseException:
        apt_cache.close()
        git_cache.close()
        raise
    settings = RunnerSettings(
        settle_timeout_s=config.vm.settle_timeout,
        log_flush_s=config.worker.log_flush,
        max_log_bytes=config.worker.max_log_size,
        max_task_log_bytes=config.worker.max_task_log_size,
        setup_log_reserve_bytes=config.worker.setup_log_reserve,
        max_artifact_bytes=config.api.max_artifact_size,
        mask_min_length=config.worker.mask_min_length,
    )
    spec = JobSpec(
        job_id=os.getpid(),
        attempt=1,
        manifest=manifest,
        secrets=secrets,
        job_url=f"file://{args.manifest.resolve()}",
        timeout_s=config.worker.timeout,
        extra_env=env,
    )
    reporter = TerminalReporter(sys.stdout.buffer, args.artifacts, color=sys.stdout.isatty())
    cancel = CancelToken()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # First signal: cancel the build (the VM is still torn down); second: stop now.
        if cancel.is_set():
            raise KeyboardInterrupt
        print("\nbuildworker run: cancelling (again to abort)", file=sys.stderr)
        cancel.cancel("cancelled")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = BuildRunner(catalogue, vms, settings).run(spec, reporter, cancel)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if vms.making_snapshots() and not cancel.is_set():
            # The build booted cold; its snapshot makes the next run a warm start.
            print("buildworker run: saving a warm-start snapshot for the next run", file=sys.stderr)
            vms.wait_snapshots(config.vm.settle_timeout + 120)
        vms.close()  # withdraws the forwards and allowed networks of this run
        apt_cache.close()
        git_cache.close()
    summary = ", ".join(f"{name}: {status}" for name, status in result.task_statuses.items())
    print(
        f"buildworker run: {result.status}"
        + (f" ({result.reason})" if result.reason and result.status != "success" else "")
        + (f"; tasks {summary}" if summary else ""),
        file=sys.stderr,
    )
    if result.status == "success":
        return EXIT_SUCCESS
    return EXIT_SETUP_ERROR if result.setup_error else EXIT_BUILD_FAILED
