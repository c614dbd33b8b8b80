"""`buildworker submit manifest.yml [--note] [--tag ...] [--follow]`: submit a job to the API.

Prints the job's URL. With ``--follow`` it then streams every log as it grows (the setup
log, then each task's log, each introduced by a header line whenever the output switches
to it), polling the job and reading each log from where it stopped with
``Range: bytes=<offset>-``; the exit status is the job's result: 0 for ``success``, 1 for
anything else.

A log is written by the build, i.e. by untrusted code. On a terminal it passes through
buildworker.termfilter: colours (SGR) stay, every other control sequence goes (window titles,
cursor queries whose answers the terminal would type, clear screen, DCS...). With ``--raw``,
or when stdout is not a terminal (a pipe, a file), the bytes are written as they are.

The token comes from ``--token``, ``$BUILDWORKER_TOKEN`` or ``[client] token``; the API's
URL from ``--url``, ``$BUILDWORKER_URL`` or ``[client] url``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from buildworker.config import load_config
from buildworker.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from buildworker.termfilter import TerminalFilter
from buildworker.web.urls import job_page_url

NAME = "submit"
HELP = "submit a build manifest to the API; --follow streams its logs and exits with its result"

TERMINAL = frozenset({"success", "failed", "timeout", "cancelled"})
#: The command a failed build's standby notice offers (buildworker.ssh.texts.standby_notice).
_CONNECT = re.compile(rb"^\t(ssh -t [^\n]* connect \d+)$", re.M)
#: Consecutive failed polls tolerated while following (the API may be restarting).
MAX_POLL_FAILURES = 30


class SubmitError(Exception):
    """Something the user must be told, with the exit status to leave with."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="the build manifest (YAML or JSON); - for stdin")
    parser.add_argument("--note", default=None, help="a human-friendly description of the job")
    parser.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        help="a tag (lowercase alphanumerics and -_.); repeat for several",
    )
    parser.add_argument(
        "--follow", "-f", action="store_true", help="stream the logs and exit with the result"
    )
    parser.add_argument(
        "--url", default=None, help="the API (default: $BUILDWORKER_URL, then [client] url)"
    )
    parser.add_argument(
        "--token",
        default=None,
        help="a token with jobs:write (default: $BUILDWORKER_TOKEN, then [client] token)",
    )
    parser.add_argument(
        "--no-secrets", action="store_true", help="do not give the job access to secrets"
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="with --follow, write the logs' bytes as they are, control sequences included "
        "(default on a terminal: keep colours, drop other control sequences)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between polls while following (default: 1)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args, sys.stdout.buffer, sys.stderr)
    except SubmitError as exc:
        print(f"buildworker submit: {exc}", file=sys.stderr)
        return exc.status


def _settings(args: argparse.Namespace) -> tuple[str, str]:
    config = load_config(args.config)
    url = args.url or os.environ.get("BUILDWORKER_URL") or config.client.url
    token = args.token or os.environ.get("BUILDWORKER_TOKEN") or config.client.token
    if not token:
        raise SubmitError(
            "no token: pass --token, set $BUILDWORKER_TOKEN or [client] token", EXIT_USAGE
        )
    return url.rstrip("/"), token.strip()


def _read_manifest(name: str) -> str:
    try:
        return sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SubmitError(f"{name}: cannot read the manifest: {exc}", EXIT_USAGE) from None


def _errors(response: httpx.Response) -> str:
    """sr.ht's error form as lines of ``field: reason``; the raw text otherwise."""
    try:
        errors = response.json().get("errors", [])
        lines = [f"{e['field']}: {e['reason']}" if e.get("field") else e["reason"] for e in errors]
    except (ValueError, AttributeError, KeyError, TypeError):
        lines = []
    return "\n  ".join(lines) or response.text.strip() or response.reason_phrase


def _run(args: argparse.Namespace, out: BinaryIO, err: Any) -> int:
    url, token = _settings(args)
    manifest = _read_manifest(args.manifest)
    body: dict[str, Any] = {"manifest": manifest, "tags": args.tags}
    if args.note is not None:
        body["note"] = args.note
    if args.no_secrets:
        body["secrets"] = False
    headers = {"Authorization": f"token {token}"}
    with httpx.Client(headers=headers, timeout=30.0) as client:
        try:
            response = client.post(f"{url}/api/jobs", json=body)
        except httpx.HTTPError as exc:
            raise SubmitError(f"cannot reach the API at {url}: {exc}") from None
        if response.status_code != 200:
            raise SubmitError(
                f"the API refused the job ({response.status_code}):\n  {_errors(response)}"
            )
        job_id = int(response.json()["id"])
        job_url = f"{url}/api/jobs/{job_id}"
        out.write(f"{job_page_url(url, response.json()['owner']['name'], job_id)}\n".encode())
        out.flush()
        if not args.follow:
            return EXIT_OK
        sanitize = not args.raw and _is_terminal(out)
        follower = Follower(client, job_url, out, interval_s=args.interval, sanitize=sanitize)
        status = follower.follow()
    print(f"job {job_id}: {status}", file=err, flush=True)
    if follower.connect_command and status == "failed":
        # The standby's notice scrolled by with the setup log: the one line to act on, last.
        print(f"To examine the failed build: {follower.connect_command}", file=err, flush=True)
    return EXIT_OK if status == "success" else EXIT_FAILURE


def _is_terminal(out: BinaryIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class Follower:
    """Streams a job's logs to ``out`` until the job ends; `follow` returns its status."""

    client: httpx.Client
    job_url: str
    out: BinaryIO
    interval_s: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    #: log URL → bytes already written
    offsets: dict[str, int] = field(default_factory=dict)
    #: the log whose output was written last (a header is printed when it changes)
    current: str | None = None
    #: whether the last byte written ended a line
    at_line_start: bool = True
    #: pass each log through a TerminalFilter (colours kept, other controls dropped)
    sanitize: bool = False
    #: log URL → its filter (a sequence may be split across two reads of one log)
    filters: dict[str, TerminalFilter] = field(default_factory=dict)
    #: ``ssh -t builds@HOST connect N``, when the setup log offered one (failure standby)
    connect_command: str | None = None

    def follow(self) -> str:
        failures = 0
        while True:
            try:
                job = self._get_job()
                ended = job["status"] in TERMINAL
                # Read every log after seeing the job ended, so its last bytes are not lost.
                for title, log_url in _logs(job):
                    self._drain(title, log_url)
                failures = 0
            except (httpx.HTTPError, SubmitError) as exc:
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    raise SubmitError(f"lost the API while following: {exc}") from None
                ended = False
            if ended:
                self._finish()
                return str(job["status"])
            self.sleep(self.interval_s)

    def _get_job(self) -> dict[str, Any]:
        response = self.client.get(self.job_url)
        if response.status_code != 200:
            raise SubmitError(f"GET {self.job_url}: {response.status_code} {_errors(response)}")
        job: dict[str, Any] = response.json()
        return job

    def _drain(self, title: str, log_url: str) -> None:
        offset = self.offsets.get(log_url, 0)
        response = self.client.get(log_url, headers={"Range": f"bytes={offset}-"})
        if response.status_code == 206:
            data = response.content
        elif response.status_code == 200:  # the server sent it all: skip what we have
            data = response.content[offset:]
        elif response.status_code in (404, 416):  # not there yet / nothing new
            return
        else:
            raise SubmitError(f"GET {log_url}: {response.status_code}")
        if not data:
            return
        self.offsets[log_url] = offset + len(data)
        if title == "setup":
            found = _CONNECT.search(data)
            if found:
                self.connect_command = found.group(1).decode()
        shown = self._filter(log_url).feed(data) if self.sanitize else data
        if not shown:
            return  # e.g. only a title sequence: no header for nothing
        if self.current != log_url:
            self._header(title)
            self.current = log_url
        self.out.write(shown)
        self.out.flush()
        self.at_line_start = shown.endswith(b"\n")

    def _filter(self, log_url: str) -> TerminalFilter:
        if log_url not in self.filters:
            self.filters[log_url] = TerminalFilter()
        return self.filters[log_url]

    def _reset_colours(self) -> bytes:
        resets = [f.reset_colour() for f in self.filters.values()]
        return b"\x1b[0m" if any(resets) else b""

    def _header(self, title: str) -> None:
        # Colours a log left set stop at its end; the header starts on its own line even if
        # the previous log ended mid-line.
        reset = self._reset_colours()
        self.out.write(reset + f"{'' if self.at_line_start else chr(10)}==> {title} <==\n".encode())

    def _finish(self) -> None:
        # A colour the last log left on does not outlive it; an unfinished sequence or
        # character at a log's very end is dropped with its filter.
        reset = self._reset_colours()
        if reset:
            self.out.write(reset)
            self.out.flush()


def _logs(job: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, url) of every log that exists so far: setup first, then tasks in order."""
    found = []
    if job.get("setup_log"):
        found.append(("setup", str(job["setup_log"])))
    for task in job.get("tasks") or []:
        if task.get("log") and task.get("status") != "pending":
            found.append((f"task {task['name']}", str(task["log"])))
    return found
