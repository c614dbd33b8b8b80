"""`buildworker config`: validate the config file and print the effective values."""

from __future__ import annotations

import argparse
import dataclasses

from buildworker.config import Config, describe, load_config
from buildworker.exitcodes import EXIT_OK

NAME = "config"
HELP = "check the config file and print every effective value (exit 2 if it is invalid)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="only check; print nothing when valid"
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="print every key with its default as Markdown (docs/operations.md) and exit",
    )


#: Values never printed, only whether they are set.
_SECRET_KEYS = {"worker_token", "secret_key", "token", "smtp_password", "webhook_key"}


def render(config: Config) -> str:
    lines = [f"# effective configuration (from {config.source or 'built-in defaults'})"]
    for section in dataclasses.fields(config):
        if section.name == "source":
            continue
        lines.append(f"\n[{section.name}]")
        values = getattr(config, section.name)
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            if isinstance(value, tuple):
                value = ", ".join(value)
            secret = item.name in _SECRET_KEYS and value
            lines.append(f"{item.name.replace('_', '-')} = {'<set>' if secret else value}")
    return "\n".join(lines)


def reference() -> str:
    """Every section and key with its default and description, as Markdown tables: the
    configuration reference of docs/operations.md (a test keeps the two equal)."""
    lines: list[str] = []
    section = None
    for name, key, default, doc in describe():
        if name != section:
            if section is not None:
                lines.append("")
            lines += [f"#### `[{name}]`", "", "| key | default | meaning |", "|---|---|---|"]
            section = name
        shown = f"`{default}`" if default else "(empty)"
        meaning = doc.replace("|", r"\|")  # a pipe would end the table cell
        lines.append(f"| `{key}` | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.reference:
        print(reference(), end="")
        return EXIT_OK
    config = load_config(args.config)
    if not args.quiet:
        print(render(config))
    return EXIT_OK
