"""`buildworker lint FILE...`: check build manifests without submitting them."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from buildworker.config import load_config
from buildworker.exitcodes import EXIT_INVALID, EXIT_UNREADABLE, EXIT_VALID
from buildworker.manifest import (
    DEFAULT_MAX_ARTIFACTS,
    DEFAULT_MAX_SIZE,
    FieldError,
    Manifest,
    ManifestError,
    parse_manifest,
)
from buildworker.render import render_buildenv, render_task_script

NAME = "lint"
HELP = "check build manifests without submitting them"

_EPILOG = """\
Each problem is printed as 'FILE: field: reason'; warnings (unknown or duplicate keys) as
'FILE: warning: field: reason'. Exit status: 0 when every file is a valid manifest, 1 when
at least one is invalid, 2 when a file cannot be read (or is not UTF-8 text). Use '-' to read
standard input.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Check build manifests (builds.sr.ht format) without submitting them."
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("files", nargs="+", metavar="FILE", help="manifest files ('-' = stdin)")
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="largest manifest accepted, in bytes (default: [api] max-manifest-size of the "
        f"config, else {DEFAULT_MAX_SIZE})",
    )
    parser.add_argument(
        "--max-artifacts",
        type=int,
        default=None,
        help="most artifacts a manifest may declare (default: [api] max-artifacts of the "
        f"config, else {DEFAULT_MAX_ARTIFACTS})",
    )
    parser.add_argument(
        "--no-warnings", action="store_true", help="print errors only, not warnings"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="also print, for each valid manifest, the ~/.buildenv and ~/.tasks/<name> files "
        "a build would write into the guest",
    )


def _read(name: str) -> str:
    if name == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(name, "rb") as handle:
            data = handle.read()
    return data.decode("utf-8")


def _print_problems(
    name: str,
    errors: list[FieldError],
    warnings: list[FieldError],
    show_warnings: bool,
    out: TextIO,
) -> None:
    for error in errors:
        print(f"{name}: {error}", file=out)
    if show_warnings:
        for warning in warnings:
            print(f"{name}: warning: {warning}", file=out)


def _print_rendered(name: str, manifest: Manifest, out: TextIO) -> None:
    # JOB_ID/JOB_URL are placeholders: a real build gets them from the API at claim time.
    extra = {"CI_NAME": "sourcehut", "JOB_ID": "0", "JOB_URL": "about:blank"}
    print(f"==> {name}: ~/.buildenv", file=out)
    out.write(render_buildenv(manifest.environment, extra))
    for task in manifest.tasks:
        print(f"==> {name}: ~/.tasks/{task.name}", file=out)
        out.write(render_task_script(task.script))


def _limits(args: argparse.Namespace) -> tuple[int, int]:
    """The API's limits, so lint refuses exactly what submit would refuse."""
    max_size, max_artifacts = args.max_size, args.max_artifacts
    if max_size is None or max_artifacts is None:
        api = load_config(getattr(args, "config", None)).api
        max_size = api.max_manifest_size if max_size is None else max_size
        max_artifacts = api.max_artifacts if max_artifacts is None else max_artifacts
    return max_size, max_artifacts


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    max_size, max_artifacts = _limits(args)
    invalid = unreadable = 0
    for name in args.files:
        try:
            text = _read(name)
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror or exc}", file=out)
            unreadable += 1
            continue
        except UnicodeDecodeError as exc:
            print(f"{name}: manifest: not UTF-8 text (byte {exc.start})", file=out)
            unreadable += 1
            continue
        try:
            manifest = parse_manifest(text, max_size=max_size, max_artifacts=max_artifacts)
        except ManifestError as exc:
            invalid += 1
            _print_problems(name, exc.errors, exc.warnings, not args.no_warnings, out)
            continue
        _print_problems(name, [], list(manifest.warnings), not args.no_warnings, out)
        if args.render:
            _print_rendered(name, manifest, out)
    total = len(args.files)
    print(
        f"{total} file{'s' if total != 1 else ''} checked: {total - invalid - unreadable} valid, "
        f"{invalid} invalid, {unreadable} unreadable",
        file=sys.stderr,
    )
    if unreadable:
        return EXIT_UNREADABLE
    return EXIT_INVALID if invalid else EXIT_VALID
