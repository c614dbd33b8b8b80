"""Setup in one round trip, without a VM: the archive and script (pure), the script run by a
real shell in a scratch home (tar, mkdir, mv, chmod, gpg as in the guest), and the setup
step driving it through a BuildContext whose session is that shell."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from buildworker.manifest import parse_manifest
from buildworker.render import DEFAULT_PREAMBLE
from buildworker.worker.context import BuildContext, CancelToken, JobSpec, SecretMaterial
from buildworker.worker.errors import BuildFailed, InfraError
from buildworker.worker.logs import SETUP_LOG, LogStreamer
from buildworker.worker.redact import NeedleSet
from buildworker.worker.steps import setup
from buildworker.worker.steps.setup_bundle import (
    MARK,
    STAGING,
    MarkedOutput,
    SetupBundle,
    build_bundle,
    buildenv_text,
)

SSH_KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-fake-key\n-----END"
TOKEN = b"hunter2-Very-s3cret-value"

MANIFEST = (
    "image: debian/bookworm\nenvironment: {GREETING: hello world, N: 3}\n"
    "secrets: [deploy, 0b5c-second, signing, token]\n"
    "tasks:\n- a: echo a\n- b-2: echo b\n"
)


def spec_with(*secrets: SecretMaterial, manifest: str = MANIFEST) -> JobSpec:
    return JobSpec(
        7,
        1,
        parse_manifest(manifest),
        secrets=secrets,
        job_url="http://ci.example/jobs/7",
        extra_env={"EXTRA": "x y"},
    )


def members(bundle: SetupBundle) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(bundle.archive), mode="r:") as tar:
        for info in tar.getmembers():
            handle = tar.extractfile(info)
            out[info.name] = (info, handle.read() if handle else b"")
    return out


# --- the bundle (pure) -------------------------------------------------------------------


def test_tasks_and_buildenv_travel_in_the_archive_with_their_modes() -> None:
    spec = spec_with()
    bundle = build_bundle(spec, "/home/build", DEFAULT_PREAMBLE)
    found = members(bundle)
    assert set(found) == {".tasks", ".tasks/a", ".tasks/b-2", ".buildenv"}
    assert found[".tasks"][0].isdir() and found[".tasks"][0].mode == 0o755
    assert found[".tasks/b-2"][0].mode == 0o755
    assert found[".tasks/b-2"][1] == (DEFAULT_PREAMBLE + "echo b\n").encode()
    assert found[".buildenv"][0].mode == 0o755
    buildenv = found[".buildenv"][1].decode()
    assert buildenv == buildenv_text(spec)
    assert "GREETING='hello world'" in buildenv and "JOB_ID=7" in buildenv
    assert "JOB_URL=http://ci.example/jobs/7" in buildenv and "EXTRA='x y'" in buildenv
    assert "CI_NAME=sourcehut" in buildenv
    # No secrets: nothing staged, nothing to install
    assert bundle.items == () and STAGING not in bundle.command
    # The same job gives the same bytes: no timestamps in the members; a plain tar (no
    # gzip process in the guest): "ustar" at offset 257 of the first header
    assert bundle.archive[257:262] == b"ustar"
    assert {info.mtime for info, _ in found.values()} == {0}
    assert build_bundle(spec, "/home/build", DEFAULT_PREAMBLE).archive == bundle.archive


def test_an_images_preamble_is_used() -> None:
    bundle = build_bundle(spec_with(), "/home/build", "#!/bin/sh\nset -e")
    assert members(bundle)[".tasks/a"][1] == b"#!/bin/sh\nset -e\necho a\n"


def test_secrets_are_staged_private_and_never_in_the_command() -> None:
    secrets = (
        SecretMaterial("u-ssh", "deploy", "ssh_key", SSH_KEY),
        SecretMaterial("u-pgp", "signing", "pgp_key", b"PGP-" + TOKEN),
        SecretMaterial("u-txt", "token", "plaintext_file", TOKEN, "~/.config/t", 0o640),
        SecretMaterial("u-nopath", "token", "plaintext_file", b"NOPATH-" + TOKEN, None),
    )
    bundle = build_bundle(spec_with(*secrets), "/home/build", DEFAULT_PREAMBLE)
    found = members(bundle)
    assert found[STAGING][0].isdir() and found[STAGING][0].mode == 0o700
    # The SSH key gets the final newline ssh needs; each file is 600
    assert found[f"{STAGING}/0"][1] == SSH_KEY + b"\n"
    assert found[f"{STAGING}/1"][1] == b"PGP-" + TOKEN
    assert found[f"{STAGING}/2"][1] == TOKEN
    assert {found[f"{STAGING}/{i}"][0].mode for i in range(3)} == {0o600}
    # A secret that cannot be installed is not sent at all
    assert f"{STAGING}/3" not in found
    assert TOKEN.decode() not in bundle.command and b"fake-key" not in bundle.command.encode()
    assert [item.say for item in bundle.items] == [
        "Installing secret u-ssh",
        "Installing secret u-pgp",
        "Installing secret u-txt",
        "Installing secret u-nopath",
    ]
    assert TOKEN.decode() not in repr(bundle)


def test_a_failure_names_what_failed() -> None:
    secrets = (
        SecretMaterial("u-ssh", "deploy", "ssh_key", SSH_KEY),
        SecretMaterial("u-pgp", "signing", "pgp_key", b"x"),
        SecretMaterial("u-txt", "token", "plaintext_file", TOKEN, "~/.config/t"),
    )
    bundle = build_bundle(spec_with(*secrets), "/home/build", DEFAULT_PREAMBLE)
    unpack = bundle.failure(None, 2)
    assert isinstance(unpack, InfraError)
    assert str(unpack) == "could not write the task files and ~/.buildenv in the guest (exit 2)"
    ssh, pgp, txt = (bundle.failure(i, 2) for i in range(3))
    assert isinstance(ssh, BuildFailed) and "secret u-ssh" in str(ssh) and "~/.ssh" in str(ssh)
    assert str(pgp) == "gpg --import of secret u-pgp failed (exit 2)"
    assert str(txt) == "could not write secret u-txt to ~/.config/t"


# --- the marker filter --------------------------------------------------------------------


def filtered(chunks: list[bytes]) -> tuple[bytes, list[int], list[bytes]]:
    events: list[bytes] = []
    out = bytearray()
    marks: list[int] = []

    def emit(data: bytes) -> None:
        out.extend(data)
        events.append(data)

    def on_mark(index: int) -> None:
        marks.append(index)
        events.append(b"<%d>" % index)

    marked = MarkedOutput(emit, on_mark)
    for chunk in chunks:
        marked.feed(chunk)
    marked.close()
    return bytes(out), marks, events


def test_markers_come_out_in_place_however_the_output_is_cut() -> None:
    stream = b"gpg: one\n" + MARK + b"0\nhalf line" + MARK + b"12\n\x1eno marker\n" + MARK
    stream += b"x\ntail"
    expected = b"gpg: one\nhalf line\x1eno marker\n" + MARK + b"x\ntail"
    for size in range(1, len(stream) + 1):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        out, marks, events = filtered(chunks)
        assert (out, marks) == (expected, [0, 12]), size
        joined = b"".join(events)
        assert joined.index(b"<0>") == len(b"gpg: one\n")
        assert joined.index(b"<12>") == joined.index(b"half line") + len(b"half line")


def test_output_is_not_held_back_unless_it_may_be_a_marker() -> None:
    seen: list[bytes] = []
    marked = MarkedOutput(seen.append, lambda index: None)
    marked.feed(b"progress 10%")
    assert seen == [b"progress 10%"]
    marked.feed(b" done\n" + MARK[:5])
    assert seen[-1] == b" done\n"
    marked.close()
    assert seen[-1] == MARK[:5]


# --- the script, run by a real shell in a scratch home -------------------------------------


@dataclass
class Scratch:
    home: Path
    gnupg: Path
    env: dict[str, str]


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    home = tmp_path / "home"
    home.mkdir()
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GNUPGHOME": str(gnupg)}
    yield Scratch(home, gnupg, env)
    subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], check=False)


def run_script(bundle: SetupBundle, scratch: Scratch, shell: str = "bash") -> tuple[int, bytes]:
    result = subprocess.run(
        [shell, "-c", bundle.command],
        input=bundle.archive,
        capture_output=True,
        cwd=scratch.home,
        env=scratch.env,
        timeout=60,
    )
    assert result.stderr == b""  # exec 2>&1: everything comes on the one stream
    return result.returncode, result.stdout


@pytest.fixture(scope="module")
def pgp_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bytes]:
    gnupg = tmp_path_factory.mktemp("gpg-source")
    gnupg.chmod(0o700)
    gpg = ["gpg", "--homedir", str(gnupg), "--batch", "--pinentry-mode", "loopback"]
    subprocess.run(
        [*gpg, "--passphrase", "", "--quick-gen-key", "Bench <bench@example.org>", "ed25519"],
        check=True,
        capture_output=True,
    )
    exported = subprocess.run(
        [*gpg, "--passphrase", "", "--armor", "--export-secret-keys"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], check=False)
    yield exported


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_the_script_installs_every_kind_of_secret(
    scratch: Scratch, pgp_key: bytes, tmp_path: Path, shell: str
) -> None:
    # Given two SSH keys (by name and by uuid), a PGP key and two plaintext files
    elsewhere = tmp_path / "elsewhere" / "deep" / "token file"
    secrets = (
        SecretMaterial("u-ssh", "deploy", "ssh_key", SSH_KEY),
        SecretMaterial("0b5c-second", None, "ssh_key", b"second key\n"),
        SecretMaterial("u-pgp", "signing", "pgp_key", pgp_key),
        SecretMaterial("u-txt", "token", "plaintext_file", TOKEN, "~/.config/token", 0o640),
        SecretMaterial("u-abs", "token", "plaintext_file", b"abs", str(elsewhere)),
    )
    bundle = build_bundle(spec_with(*secrets), str(scratch.home), DEFAULT_PREAMBLE)
    # When the script runs with the archive on its stdin
    status, output = run_script(bundle, scratch, shell)
    # Then it succeeds, with a marker before each secret and gpg's output after the third
    assert status == 0, output
    _, marks, events = filtered([output])
    assert marks == [0, 1, 2, 3, 4]
    joined = b"".join(events)
    assert joined.index(b"<2>") < joined.index(b"gpg: key") < joined.index(b"<3>")
    # And the task files and ~/.buildenv are in the home, 755
    home = scratch.home
    assert mode(home / ".tasks") == 0o755 and mode(home / ".tasks" / "b-2") == 0o755
    assert (home / ".tasks" / "a").read_text() == DEFAULT_PREAMBLE + "echo a\n"
    assert mode(home / ".buildenv") == 0o755
    assert (home / ".buildenv").read_text() == buildenv_text(spec_with(*secrets))
    # And the SSH keys are ~/.ssh/<reference> (600, ~/.ssh 700), the first one also id_rsa
    ssh = home / ".ssh"
    assert mode(ssh) == 0o700
    assert (ssh / "deploy").read_bytes() == SSH_KEY + b"\n" and mode(ssh / "deploy") == 0o600
    assert (ssh / "0b5c-second").read_bytes() == b"second key\n"
    assert os.readlink(ssh / "id_rsa") == "deploy"
    # And the PGP key is imported
    listed = subprocess.run(
        ["gpg", "--batch", "--list-secret-keys", "bench@example.org"],
        env=scratch.env,
        capture_output=True,
        check=True,
    ).stdout
    assert b"Bench <bench@example.org>" in listed
    # And the plaintext files are at their paths with their modes (default 600)
    assert (home / ".config" / "token").read_bytes() == TOKEN
    assert mode(home / ".config" / "token") == 0o640
    assert elsewhere.read_bytes() == b"abs" and mode(elsewhere) == 0o600
    # And nothing is left staged
    assert not (home / STAGING).exists()


def test_a_key_already_called_id_rsa_gets_no_symlink(scratch: Scratch) -> None:
    secret = SecretMaterial("u-1", "id_rsa", "ssh_key", SSH_KEY)
    manifest = "image: debian/bookworm\nsecrets: [id_rsa]\ntasks:\n- a: echo\n"
    bundle = build_bundle(spec_with(secret, manifest=manifest), str(scratch.home), "")
    assert run_script(bundle, scratch)[0] == 0
    id_rsa = scratch.home / ".ssh" / "id_rsa"
    assert not id_rsa.is_symlink() and id_rsa.read_bytes() == SSH_KEY + b"\n"


def failing(bundle: SetupBundle, scratch: Scratch) -> tuple[Exception, list[int]]:
    status, output = run_script(bundle, scratch)
    assert status != 0, output
    _, marks, _ = filtered([output])
    return bundle.failure(marks[-1] if marks else None, status), marks


def test_a_secret_that_cannot_be_written_fails_naming_it_and_stops_there(
    scratch: Scratch,
) -> None:
    # Given a plaintext secret whose directory is a file (~/.buildenv), then another secret
    secrets = (
        SecretMaterial("u-ok", "token", "plaintext_file", b"fine", "~/ok"),
        SecretMaterial("u-bad", "token", "plaintext_file", TOKEN, "~/.buildenv/x", 0o600),
        SecretMaterial("u-after", "token", "plaintext_file", b"after", "~/after"),
    )
    bundle = build_bundle(spec_with(*secrets), str(scratch.home), "")
    error, marks = failing(bundle, scratch)
    assert isinstance(error, BuildFailed)
    assert str(error) == "could not write secret u-bad to ~/.buildenv/x"
    assert marks == [0, 1]
    assert (scratch.home / "ok").read_bytes() == b"fine"
    assert not (scratch.home / "after").exists() and not (scratch.home / STAGING).exists()


def test_a_pgp_key_gpg_refuses_fails_with_gpgs_status(scratch: Scratch) -> None:
    secret = SecretMaterial("u-pgp", "signing", "pgp_key", b"not a key\n")
    bundle = build_bundle(spec_with(secret), str(scratch.home), "")
    error, _ = failing(bundle, scratch)
    assert isinstance(error, BuildFailed)
    assert str(error) == "gpg --import of secret u-pgp failed (exit 2)"
    assert not (scratch.home / STAGING).exists()


def test_a_plaintext_secret_without_a_path_fails_after_the_ones_before(scratch: Scratch) -> None:
    secrets = (
        SecretMaterial("u-ok", "token", "plaintext_file", b"fine", "~/ok"),
        SecretMaterial("u-nopath", "token", "plaintext_file", TOKEN, None),
    )
    error, marks = failing(build_bundle(spec_with(*secrets), str(scratch.home), ""), scratch)
    assert str(error) == "secret u-nopath has no file path" and marks == [0, 1]
    assert (scratch.home / "ok").read_bytes() == b"fine"


def test_a_home_that_is_not_there_is_ours_to_fail(scratch: Scratch) -> None:
    secret = SecretMaterial("u-ok", "token", "plaintext_file", b"fine", "~/ok")
    bundle = build_bundle(spec_with(secret), str(scratch.home / "missing"), "")
    error, marks = failing(bundle, scratch)
    assert isinstance(error, InfraError) and marks == []
    assert str(error) == "could not write the task files and ~/.buildenv in the guest (exit 2)"


# --- the step, through a BuildContext whose session is a local shell -----------------------


class LocalShell:
    """A GuestSession whose commands run in a local shell in ``home`` (no PTY)."""

    def __init__(self, scratch: Scratch) -> None:
        self.scratch = scratch
        self.commands: list[tuple[str, bytes | None]] = []

    def run(
        self,
        command: str,
        *,
        pty: bool = True,
        on_output: Callable[[bytes], None] | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        stdin: bytes | None = None,
    ) -> int:
        self.commands.append((command, stdin))
        proc = subprocess.run(
            ["bash", "-c", command],
            input=stdin or b"",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.scratch.home,
            env=self.scratch.env,
            timeout=timeout,
        )
        if on_output is not None and proc.stdout:
            on_output(proc.stdout)
        return proc.returncode

    def upload(self, path: str, data: bytes, mode: int = 0o644) -> None:
        raise AssertionError("setup uploads nothing on its own")

    def download(self, path: str, sink: BinaryIO, max_size: int) -> int:
        raise AssertionError("setup downloads nothing")

    def close(self) -> None:
        pass


class Collect:
    def __init__(self) -> None:
        self.logs: dict[str, bytearray] = {}

    def send_chunk(self, log: str, offset: int, data: bytes) -> None:
        self.logs.setdefault(log, bytearray()).extend(data)

    def task_status(self, name: str, status: str) -> None:
        pass

    def upload_artifact(self, guest_path: str, source: Any, size: int) -> str:
        return ""


@dataclass(frozen=True)
class LocalImage:
    homedir: str
    name: str = "debian/bookworm"
    arch: str = "amd64"
    preamble: str | None = None
    directory: Path = Path("/nonexistent")
    digest: str | None = None
    git_cache: None = None

    def install_command(self, packages: Any) -> str:
        return ""

    def add_repository_command(self, name: str, source: str) -> str:
        return ""


def run_setup(scratch: Scratch, spec: JobSpec) -> tuple[LocalShell, str, Exception | None]:
    shell = LocalShell(scratch)
    reporter = Collect()
    needles = NeedleSet()
    for secret in spec.secrets:
        needles.add(secret.data, secret.name or secret.uuid)
    logs = LogStreamer(reporter, needles).start()
    ctx = BuildContext(
        spec=spec,
        image=LocalImage(str(scratch.home)),
        conn=shell,
        logs=logs,
        reporter=reporter,
        cancel=CancelToken(),
        deadline=time.monotonic() + 60,
    )
    error: Exception | None = None
    try:
        setup.run(ctx)
    except (BuildFailed, InfraError) as exc:
        error = exc
    logs.close()
    return shell, bytes(reporter.logs.get(SETUP_LOG, b"")).decode(errors="replace"), error


def lines_of(setup_log: str) -> list[str]:
    # "[#7] YYYY/MM/DD HH:MM:SS message" → message; other lines as they are
    return [
        line.split(" ", 3)[3] if line.startswith("[#") else line for line in setup_log.splitlines()
    ]


def test_the_step_is_one_command_and_says_what_the_steps_said(
    scratch: Scratch, pgp_key: bytes
) -> None:
    secrets = (
        SecretMaterial("u-ssh", "deploy", "ssh_key", SSH_KEY),
        SecretMaterial("u-pgp", "signing", "pgp_key", pgp_key),
        SecretMaterial("u-txt", "token", "plaintext_file", TOKEN + b"\n", "~/t", 0o600),
    )
    # A task that prints the token: what the build's own output shows is masked too
    shell, setup_log, error = run_setup(scratch, spec_with(*secrets))
    assert error is None, setup_log
    # One guest command, the secrets on its stdin only
    assert len(shell.commands) == 1
    command, stdin = shell.commands[0]
    assert stdin is not None and TOKEN.decode() not in command
    lines = lines_of(setup_log)
    assert lines[:5] == [
        "Sending tasks",
        "Sending build environment",
        "Sending secrets",
        "Installing secret u-ssh",
        "Installing secret u-pgp",
    ]
    assert lines[-1] == "Installing secret u-txt"
    assert any(line.startswith("gpg: key ") for line in lines[5:-1])
    assert "\x1e" not in setup_log and "buildworker-setup" not in setup_log
    assert (scratch.home / "t").read_bytes() == TOKEN + b"\n"


def test_without_secrets_the_step_says_only_tasks_and_environment(scratch: Scratch) -> None:
    shell, setup_log, error = run_setup(scratch, spec_with())
    assert error is None and len(shell.commands) == 1
    assert lines_of(setup_log) == ["Sending tasks", "Sending build environment"]
    assert (scratch.home / ".tasks" / "a").exists()


def test_the_step_fails_naming_the_secret(scratch: Scratch) -> None:
    # Given a secret whose directory is a file in the guest
    secret = SecretMaterial("u-bad", "token", "plaintext_file", TOKEN, "~/.buildenv/t")
    _, setup_log, error = run_setup(scratch, spec_with(secret))
    assert isinstance(error, BuildFailed)
    assert str(error) == "could not write secret u-bad to ~/.buildenv/t"
    lines = lines_of(setup_log)
    assert lines[2:4] == ["Sending secrets", "Installing secret u-bad"]
    # what the guest said about it follows (mkdir's complaint), never the value
    assert "cannot create directory" in setup_log and TOKEN.decode() not in setup_log
