"""Pure renderers for the files a build writes into the guest.

``render_task_script`` gives ``~/.tasks/<name>`` (builds.sr.ht's preamble + the script) and
``render_buildenv`` gives ``~/.buildenv``. builds.sr.ht's renderer (spec/buildsrht.md §1.6)
has bugs we fix on purpose:

- integers stay integers (Go renders every number with ``%g``, so ``1000000`` became ``1e+06``);
- list items are shell-quoted (Go wraps them in ``"..."`` unescaped, so ``$`` and backticks
  expanded) and non-string items are rendered as their YAML text instead of being dropped;
- lines come out in manifest order (Go used random map order).

Every value is quoted so that ``. ~/.buildenv; printf %s "$KEY"`` gives back the exact string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from buildworker.manifest import RESERVED_SHELL_NAMES, EnvValue

__all__ = [
    "COMPLETE_BUILD_FUNCTION",
    "DEFAULT_PREAMBLE",
    "render_buildenv",
    "render_task_script",
    "shell_quote",
]

#: builds.sr.ht's default task preamble (`worker/manifest.go`). ``~/.buildenv`` is sourced
#: before ``set -x`` so values are not traced; ``acurl`` turns tracing off so the token is not
#: echoed. Images may override it (``preamble:`` in their config).
DEFAULT_PREAMBLE = """\
#!/usr/bin/env bash
. ~/.buildenv
set -xe

acurl() (
\tset +x
\tcurl --oauth2-bearer "$OAUTH2_TOKEN" "$@"
)
"""

#: Defined in ``~/.buildenv``: ends the build early and successfully; the worker sees
#: ``~/.complete-build`` and marks the remaining tasks skipped.
COMPLETE_BUILD_FUNCTION = """\
complete-build() {
\techo 1 > ~/.complete-build
\texit 0
}
"""

_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def shell_quote(value: str) -> str:
    """POSIX-shell quoting, as ``shlex.quote``: bare when only safe characters, else '...'."""
    if _SAFE.fullmatch(value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"


def render_task_script(script: str, preamble: str = DEFAULT_PREAMBLE) -> str:
    """The text of ``~/.tasks/<name>``: ``preamble + script + "\\n"``, as builds.sr.ht writes it.

    A preamble that does not end in a newline gets one, so its last line never runs into the
    script's first (builds.sr.ht concatenates blindly).
    """
    if preamble and not preamble.endswith("\n"):
        preamble += "\n"
    return preamble + script + "\n"


def _scalar_text(value: str | int | float | bool | None) -> str:
    """A non-list environment value as the string the shell variable will hold."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr() is the shortest text that reads back as the same float: 1.5, 1e+20, inf, nan.
        return repr(value)
    return value


def render_buildenv(environment: Mapping[str, EnvValue], extra: Mapping[str, str] = {}) -> str:
    """The text of ``~/.buildenv``.

    ``#!/bin/sh``, the ``complete-build`` function, then the worker's variables from
    ``extra`` (CI_NAME, JOB_ID, JOB_URL, OAUTH2_TOKEN; they override user values of the same
    name), then the manifest's, in manifest order. Scalars are ``export``-ed; lists become
    bash arrays (``K=(a 'b c')``), which cannot be exported, exactly as in builds.sr.ht.
    Raises ValueError for a name that is not a shell identifier or that bash reserves (the
    parser refuses those).
    """
    lines = ["#!/bin/sh\n", COMPLETE_BUILD_FUNCTION]
    for name, text in extra.items():
        lines.append(_line(name, text))
    for name, value in environment.items():
        if name not in extra:
            lines.append(_line(name, value))
    return "".join(lines)


def _line(name: str, value: EnvValue) -> str:
    if not _NAME.fullmatch(name) or name in RESERVED_SHELL_NAMES:
        raise ValueError(f"environment.{name}: invalid variable name")
    if isinstance(value, list):
        items = " ".join(shell_quote(_scalar_text(item)) for item in value)
        return f"{name}=({items})\n"
    return f"export {name}={shell_quote(_scalar_text(value))}\n"
