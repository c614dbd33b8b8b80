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

#: Exit codes shared by every subcommand.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _command_modules() -> list[ModuleType]:
    found = []
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            found.append(module)
    return sorted(found, key=lambda m: str(m.NAME))


def build_parser() -> argparse.ArgumentParser:
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
    for module in _command_modules():
        sp = sub.add_parser(module.NAME, help=getattr(module, "HELP", None))
        # --config is accepted after the subcommand too: `buildworker api --config x.conf`.
        sp.add_argument("--config", "-c", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if hasattr(module, "add_arguments"):
            module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
