"""Subcommands of the `buildworker` CLI, one module each.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
``buildworker.cli`` discovers them, so adding a command never touches the CLI's own code.
"""
