"""The `buildworker` console script: discovers subcommands in `buildworker.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from buildworker import __version__, commands
from buildworker.config import ConfigError
from buildworker.exitcodes import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE


def _command_modules(only: str | None = None) -> list[ModuleType]:
    """Import the subcommand modules; just ``only`` when the command line names one.

    Some commands import FastAPI, SQLAlchemy or libvirt at the top; importing all of them
    would make every `buildworker lint` pay for the API tier's start-up.
    """
    names = [i.name for i in pkgutil.iter_modules(commands.__path__) if not i.name.startswith("_")]
    if only in names:
        names = [only]
    found = []
    for name in names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            found.append(module)
    return sorted(found, key=lambda m: str(m.NAME))


def _named_command(argv: Sequence[str]) -> str | None:
    """The first word that is not an option (or the value of --config/-c): the subcommand."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("--config", "-c"):
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buildworker",
        description="A builds.sr.ht-compatible build farm.",
    )
    parser.add_argument("--version", action="version", version=f"buildworker {__version__}")
    parser.add_argument(
        "--config",
        "-c",
        default=None,
        help="INI config file (default: $BUILDWORKER_CONFIG, then /etc/buildworker/worker.conf)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules(only):
        sp = sub.add_parser(module.NAME, help=getattr(module, "HELP", None))
        # --config is accepted after the subcommand too: `buildworker api --config x.conf`.
        sp.add_argument("--config", "-c", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if hasattr(module, "add_arguments"):
            module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_named_command(words))
    args = parser.parse_args(words)
    module = getattr(args, "_module", None)
    if module is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        result = module.run(args)
    except ConfigError as exc:
        print(f"buildworker: config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return int(result or EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
