"""What setup sends into the guest, as one archive and one script (pure: no I/O).

Task files, ``~/.buildenv`` and every file secret travel in one tar on the stdin of
one guest command, so setup costs one round trip however many secrets a job has (under TCG
every guest command costs most of a second). The script unpacks the archive into the build
user's home, which writes ``~/.tasks/<name>`` and ``~/.buildenv`` directly; the secrets land
in a staging folder there (mode 700, files 600) and are then installed one by one, as the
separate steps did before:

- ``ssh_key``: ``~/.ssh`` (700) gets ``<label>`` (600, a final newline added if missing);
  the first key is also ``~/.ssh/id_rsa`` (a symlink, unless it is called that);
- ``pgp_key``: ``gpg --batch --import``, the staged file removed whatever the outcome;
- ``plaintext_file``: moved to its path (parents created), chmod to its mode (default 600).

Before each secret the script prints a marker line (:data:`MARK` and the secret's index),
which :class:`MarkedOutput` takes out of the output and turns into the setup log's
"Installing secret <uuid>" line; the last marker seen names the secret a failure belongs
to (:meth:`SetupBundle.failure`). A secret the worker cannot install (no path, an unknown
type) is not sent: the script stops at its marker. Secret values are only in the archive,
never in the script (it is the command line) or in an error message.
"""

from __future__ import annotations

import io
import shlex
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from buildworker.manifest import Task
from buildworker.render import render_buildenv, render_task_script
from buildworker.worker.context import JobSpec, SecretMaterial, home_path
from buildworker.worker.errors import BuildFailed, InfraError, WorkerError

__all__ = [
    "MARK",
    "STAGING",
    "MarkedOutput",
    "SetupBundle",
    "SetupItem",
    "build_bundle",
    "buildenv_text",
    "ssh_key_label",
]

#: Where the secrets wait in the home until they are moved into place (removed on exit).
STAGING = ".buildworker-setup"
#: The start of a marker line (ASCII record separator: no tool's output begins so).
MARK = b"\x1ebuildworker-setup "
#: A stop of ours in the script (a secret that cannot be installed); never sent by a tool
#: in a way we read, as the script stops right after that secret's marker.
_REFUSED = 97


@dataclass(frozen=True)
class SetupItem:
    """One secret the script installs after unpacking: what the setup log says when it
    starts, and what the build fails with when it does not succeed (``with_status``: the
    failing command's exit status is added, as `` (exit N)``)."""

    say: str
    failure: str
    with_status: bool = False


@dataclass(frozen=True)
class SetupBundle:
    """The archive (stdin of the command; holds the secrets) and the command to run."""

    archive: bytes = field(repr=False)
    command: str
    items: tuple[SetupItem, ...]

    def failure(self, started: int | None, status: int) -> WorkerError:
        """The error of a command that exited ``status``, the last marker seen ``started``
        (None: the archive itself could not be unpacked)."""
        if started is None or not 0 <= started < len(self.items):
            return InfraError(
                f"could not write the task files and ~/.buildenv in the guest (exit {status})"
            )
        item = self.items[started]
        return BuildFailed(item.failure + (f" (exit {status})" if item.with_status else ""))


def buildenv_text(spec: JobSpec) -> str:
    """``~/.buildenv``: the manifest's environment plus CI_NAME, JOB_ID, JOB_URL and the
    job's extra variables."""
    extra = {
        "CI_NAME": "sourcehut",
        "JOB_ID": str(spec.job_id),
        "JOB_URL": spec.job_url,
        **spec.extra_env,
    }
    return render_buildenv(spec.manifest.environment, extra)


def ssh_key_label(secret: SecretMaterial, references: Sequence[str]) -> str:
    """The file name under ~/.ssh: the manifest's reference (uuid or name), made safe."""
    for candidate in (secret.uuid, secret.name):
        if candidate and candidate in references:
            label = candidate
            break
    else:
        label = secret.uuid
    if not label or "/" in label or label.startswith("."):
        label = secret.uuid or "secret"
    return label


#: One archive member: its name, its bytes (None: a folder), its mode.
_Entry = tuple[str, bytes | None, int]


def _archive(entries: Sequence[_Entry]) -> bytes:
    """A deterministic tar in memory (mtime 0; the guest unpacks with ``-m``). Not
    compressed: ``tar -z`` starts a gzip process in the guest (~0.1 s under TCG) to save a
    few kilobytes on a local link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _secret_lines(
    index: int, secret: SecretMaterial, home: str, references: Sequence[str], first_key: bool
) -> tuple[list[str], SetupItem, bytes | None]:
    """The script lines that install one staged secret, its item, and the bytes to stage
    (None: nothing is sent, the script stops at this secret)."""
    staged = f'"$bw_staging"/{index}'
    say = f"Installing secret {secret.uuid}"
    if secret.type == "ssh_key":
        label = ssh_key_label(secret, references)
        ssh = shlex.quote(f"{home}/.ssh")
        target = shlex.quote(f"{home}/.ssh/{label}")
        lines = [
            f"mkdir -p {ssh} && chmod 700 {ssh} && mv -f {staged} {target}"
            f" && chmod 600 {target} || exit $?"
        ]
        if first_key and label != "id_rsa":
            # As before: a failed symlink does not fail the build.
            lines.append(f"ln -sf {shlex.quote(label)} {ssh}/id_rsa")
        data = secret.data if secret.data.endswith(b"\n") else secret.data + b"\n"
        return lines, SetupItem(say, f"could not install secret {secret.uuid} in ~/.ssh"), data
    if secret.type == "pgp_key":
        lines = [
            f"gpg --batch --import {staged}; bw_rc=$?; rm -f {staged}"
            '; [ "$bw_rc" = 0 ] || exit "$bw_rc"'
        ]
        failure = f"gpg --import of secret {secret.uuid} failed"
        return lines, SetupItem(say, failure, with_status=True), secret.data
    if secret.type == "plaintext_file":
        if not secret.path:
            return (
                [f"exit {_REFUSED}"],
                SetupItem(say, f"secret {secret.uuid} has no file path"),
                None,
            )
        target = home_path(home, secret.path)
        mode = f"{secret.mode if secret.mode is not None else 0o600:o}"
        lines = [
            f'mkdir -p "$(dirname {target})" && mv -f {staged} {target}'
            f" && chmod {mode} {target} || exit $?"
        ]
        failure = f"could not write secret {secret.uuid} to {secret.path}"
        return lines, SetupItem(say, failure), secret.data
    # SecretMaterial.from_claim refuses other types; a spec built otherwise stops here.
    failure = f"secret {secret.uuid}: unknown type {secret.type}"
    return [f"exit {_REFUSED}"], SetupItem(say, failure), None


def build_bundle(spec: JobSpec, home: str, preamble: str) -> SetupBundle:
    """The archive and the command that put this job's task files, ``~/.buildenv`` and file
    secrets into a guest whose build user's home is ``home``."""
    home = home.rstrip("/") or "/"
    entries: list[_Entry] = [(".tasks", None, 0o755)]
    for task in spec.manifest.tasks:
        entries.append((f".tasks/{task.name}", _task_script(task, preamble), 0o755))
    entries.append((".buildenv", buildenv_text(spec).encode(), 0o755))
    quoted_home = shlex.quote(home)
    lines = ["exec 2>&1"]
    if spec.secrets:
        # Removed however the script ends; created 700 by tar (the archive says so).
        lines.append(f"bw_staging={shlex.quote(f'{home}/{STAGING}')}")
        lines.append("trap 'rm -rf \"$bw_staging\"' EXIT")
        entries.append((STAGING, None, 0o700))
    lines.append(f"tar -xmf - -C {quoted_home} || exit $?")
    items: list[SetupItem] = []
    first_key = True
    for index, secret in enumerate(spec.secrets):
        body, item, data = _secret_lines(index, secret, home, spec.manifest.secrets, first_key)
        if secret.type == "ssh_key":
            first_key = False
        if data is not None:
            entries.append((f"{STAGING}/{index}", data, 0o600))
        items.append(item)
        lines.append(f"printf '\\036buildworker-setup %s\\n' {index}")
        lines.extend(body)
    lines.append("exit 0")
    return SetupBundle(_archive(entries), "\n".join(lines) + "\n", tuple(items))


def _task_script(task: Task, preamble: str) -> bytes:
    return render_task_script(task.script, preamble).encode()


class MarkedOutput:
    """The command's output with the marker lines taken out: the rest goes to ``emit`` as
    it arrives (a partial line is not held back unless it may be the start of a marker),
    each marker's index to ``on_mark`` in its place."""

    def __init__(self, emit: Callable[[bytes], None], on_mark: Callable[[int], None]) -> None:
        self._emit = emit
        self._on_mark = on_mark
        self._held = b""

    def feed(self, data: bytes) -> None:
        buf = self._held + data
        while True:
            at = buf.find(MARK)
            if at == -1:
                keep = _prefix_overlap(buf, MARK)
                self._out(buf[: len(buf) - keep])
                self._held = buf[len(buf) - keep :]
                return
            self._out(buf[:at])
            end = buf.find(b"\n", at)
            if end == -1:
                self._held = buf[at:]
                return
            text = buf[at + len(MARK) : end].strip()
            if text.isdigit():
                self._on_mark(int(text))
            else:
                self._out(buf[at : end + 1])
            buf = buf[end + 1 :]

    def close(self) -> None:
        """Let out what is held (output that ended on what looked like a marker's start)."""
        self._out(self._held)
        self._held = b""

    def _out(self, data: bytes) -> None:
        if data:
            self._emit(data)


def _prefix_overlap(data: bytes, mark: bytes) -> int:
    """The length of the longest end of ``data`` that is a start of ``mark``."""
    for size in range(min(len(data), len(mark) - 1), 0, -1):
        if data.endswith(mark[:size]):
            return size
    return 0
