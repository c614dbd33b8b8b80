"""`buildworker run`: the pipeline in a real libvirt guest, logs on stdout, exit 0/1/2.

Each VM test boots one guest (~20 s of CPU under TCG), so each test checks several things
of one build rather than booting once per assertion.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_helpers import IMAGES, vm_work_dir, write_run_config

BUILDWORKER = [sys.executable, "-m", "buildworker.cli"]
SECRET = "hunter2-Very-s3cret-value"


@pytest.fixture
def work_dir() -> Iterator[Path]:
    path = vm_work_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_cli(
    tmp_path: Path, manifest: str, *args: str, config: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    path = tmp_path / "manifest.yml"
    path.write_text(manifest)
    cmd = [*BUILDWORKER, "run", str(path), *args]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


def test_a_bad_manifest_is_a_setup_error_naming_the_field(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "image: debian/bookworm\ntasks:\n  - Bad Name: echo\n")
    assert result.returncode == 2
    assert b"tasks" in result.stderr and b"Traceback" not in result.stderr


def test_a_bad_option_is_a_setup_error_naming_it(tmp_path: Path) -> None:
    manifest = "image: debian/bookworm\ntasks:\n  - a: echo\n"
    result = run_cli(tmp_path, manifest, "--secret", f"x={tmp_path}/missing")
    assert result.returncode == 2 and b"--secret x" in result.stderr
    result = run_cli(tmp_path, manifest, "--env", "1BAD=x")
    assert result.returncode == 2 and b"--env" in result.stderr


@pytest.mark.vm
def test_an_unknown_image_is_a_setup_error_listing_what_exists(
    tmp_path: Path, work_dir: Path
) -> None:
    config = write_run_config(tmp_path / "w.conf", work_dir)
    result = run_cli(tmp_path, "image: plan9/x\ntasks:\n  - a: echo\n", config=config)
    assert result.returncode == 2, result.stderr
    assert b"debian/bookworm" in result.stdout + result.stderr


SUCCESS_MANIFEST = """\
image: debian/bookworm
environment:
  GREETING: hello world
  BIG: 1000000
  RATIO: 0.5
  FLAG: true
  EMPTY: null
secrets: [token]
artifacts: [out/result.bin]
tasks:
  - first: |
      echo "greeting=$GREETING big=$BIG ratio=$RATIO flag=$FLAG empty=[$EMPTY] job=$JOB_ID ci=$CI_NAME extra=$EXTRA"
      cat ~/.config/token
      S=$(cat ~/.config/token)
      echo "value is $S"
      for i in $(seq 0 $((${#S}-1))); do printf '%s' "${S:$i:1}"; sleep 0.05; done; echo
      stat -c %a ~/.config/token
      mkdir -p out && head -c 100000 /dev/urandom > out/result.bin && sha256sum out/result.bin
  - second: |
      echo second ran
      complete-build
  - third: |
      echo third must not run
"""


@pytest.mark.vm
@pytest.mark.slow
def test_a_successful_build_prints_logs_masks_secrets_and_copies_artifacts(
    tmp_path: Path, work_dir: Path
) -> None:
    # Given a manifest with env values of several types, a file secret and an artifact
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(SECRET)
    artifacts = tmp_path / "artifacts"
    config = write_run_config(tmp_path / "w.conf", work_dir)
    # When it runs through `buildworker run`
    result = run_cli(
        tmp_path,
        SUCCESS_MANIFEST,
        "--secret",
        f"token={secret_file},path=~/.config/token,mode=640",
        "--env",
        "EXTRA=from-cli",
        "--artifacts",
        str(artifacts),
        config=config,
    )
    out = result.stdout.decode(errors="replace")
    # Then it succeeds, with task headers and each task's output
    assert result.returncode == 0, out + result.stderr.decode()
    assert "==> Running task first" in out and "==> Running task second" in out
    assert (
        "greeting=hello world big=1000000 ratio=0.5 flag=true empty=[] job=" in out
        and "ci=sourcehut extra=from-cli" in out
    )
    assert "second ran" in out and "640" in out
    # And complete-build skipped the third task
    assert "==> Task third: skipped" in out and "third must not run\r\n" not in out
    # And the secret never appears: not by cat, not traced by set -x, not char by char
    assert SECRET not in out and SECRET[:8] not in out
    assert "[MASKED]" in out
    # And the artifact is the guest's file, byte for byte
    copied = artifacts / "result.bin"
    assert copied.stat().st_size == 100000
    import hashlib

    assert hashlib.sha256(copied.read_bytes()).hexdigest() in out
    # And the VM is gone
    assert list(work_dir.iterdir()) == []


@pytest.mark.vm
@pytest.mark.slow
def test_a_failing_task_exits_1_and_skips_the_rest(tmp_path: Path, work_dir: Path) -> None:
    manifest = (
        "image: debian/bookworm\ntasks:\n"
        "  - ok: echo fine\n"
        "  - broken: |\n      echo about to fail\n      false\n      echo not reached\n"
        "  - later: echo later must not run\n"
    )
    result = run_cli(tmp_path, manifest, config=write_run_config(tmp_path / "w.conf", work_dir))
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 1, out + result.stderr.decode()
    assert "about to fail" in out and "not reached\r\n" not in out
    assert "==> Task broken: failed" in out and "==> Task later: skipped" in out
    assert "later must not run\r\n" not in out
    assert b"failed" in result.stderr


@pytest.mark.vm
@pytest.mark.slow
def test_a_build_past_the_timeout_ends_timed_out(tmp_path: Path, work_dir: Path) -> None:
    config = write_run_config(tmp_path / "w.conf", work_dir, timeout="60s")
    manifest = "image: debian/bookworm\ntasks:\n  - slow: sleep 600\n"
    started = time.monotonic()
    result = run_cli(tmp_path, manifest, config=config)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert b"Build timed out." in result.stdout and b"timeout" in result.stderr
    assert elapsed < 90
    assert list(work_dir.iterdir()) == []


@pytest.mark.vm
@pytest.mark.slow
def test_ctrl_c_cancels_the_build_and_tears_the_vm_down(tmp_path: Path, work_dir: Path) -> None:
    path = tmp_path / "manifest.yml"
    path.write_text(
        "image: debian/bookworm\ntasks:\n  - wait: |\n      echo started\n      sleep 600\n"
    )
    config = write_run_config(tmp_path / "w.conf", work_dir)
    proc = subprocess.Popen(
        [*BUILDWORKER, "run", str(path), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + 180
    while b"started\r\n" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.read() or b""
        time.sleep(0.1)
    assert b"started\r\n" in seen
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    rest = proc.stdout.read() or b""
    assert proc.returncode == 1
    assert b"Build cancelled." in seen + rest
    assert time.monotonic() - sent < 10
    assert list(work_dir.iterdir()) == []


@pytest.mark.vm
@pytest.mark.slow
def test_a_vm_that_never_settles_is_retried_once_then_a_setup_error(
    tmp_path: Path, work_dir: Path
) -> None:
    # Given an image whose recorded host key is not the guest's: SSH never settles
    images = vm_work_dir()
    try:
        source = IMAGES / "debian" / "bookworm"
        target = images / "debian" / "bookworm"
        (target / "amd64").mkdir(parents=True)
        for item in (source / "amd64").iterdir():
            (target / "amd64" / item.name).symlink_to(item)
        config_text = (source / "config.yml").read_text()
        config_text = re.sub(
            r'amd64: "SHA256:[^"]+"', 'amd64: "SHA256:' + "A" * 43 + '"', config_text
        )
        (target / "config.yml").write_text(config_text)
        for d in (images / "debian", target, target / "amd64"):
            d.chmod(0o755)
        config = write_run_config(tmp_path / "w.conf", work_dir)
        # When it runs
        result = run_cli(
            tmp_path,
            "image: debian/bookworm\ntasks:\n  - a: echo a\n",
            "--images",
            str(images),
            config=config,
        )
    finally:
        shutil.rmtree(images, ignore_errors=True)
    out = result.stdout.decode(errors="replace")
    # Then two VMs were tried, the failure is ours (exit 2), and both VMs are gone
    assert result.returncode == 2, out + result.stderr.decode()
    assert out.count("Booting image debian/bookworm") == 2
    assert "Retrying on a fresh VM" in out and "host key" in out
    assert list(work_dir.iterdir()) == []


@pytest.mark.vm
@pytest.mark.slow
def test_ssh_and_pgp_key_secrets_are_installed_by_type_and_masked(
    tmp_path: Path, work_dir: Path
) -> None:
    # Given an SSH key and a PGP secret key as secrets
    ssh_key = tmp_path / "deploy"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deploy", "-f", str(ssh_key)],
        check=True,
    )
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(gnupg), "--batch", "--pinentry-mode", "loopback"]
    subprocess.run(
        [*gpg, "--passphrase", "", "--quick-gen-key", "Bench <bench@example.org>", "ed25519"],
        check=True,
        capture_output=True,
    )
    pgp = tmp_path / "pgp.asc"
    pgp.write_bytes(
        subprocess.run(
            [*gpg, "--passphrase", "", "--armor", "--export-secret-keys"],
            check=True,
            capture_output=True,
        ).stdout
    )
    # gpg started an agent for that home on the host: stop it, or it outlives the test
    subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], check=False)
    manifest = (
        "image: debian/bookworm\nsecrets: [deploy, signing]\ntasks:\n  - check: |\n"
        "      stat -c '%a %n' ~/.ssh/deploy\n"
        "      readlink ~/.ssh/id_rsa\n"
        "      cat ~/.ssh/deploy\n"
        "      gpg --list-secret-keys bench@example.org | grep -c uid\n"
    )
    result = run_cli(
        tmp_path,
        manifest,
        "--secret",
        f"deploy={ssh_key}",
        "--secret",
        f"signing={pgp}",
        config=write_run_config(tmp_path / "w.conf", work_dir),
    )
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, out + result.stderr.decode()
    # Then the SSH key is ~/.ssh/<name> with mode 600 and the first one is also id_rsa
    assert "600 /home/build/.ssh/deploy" in out and "\ndeploy\r\n" in out
    # And the PGP key was imported
    assert "gpg: key" in out and "\n1\r\n" in out
    # And no line of either key's material shows in the log
    for material in (ssh_key.read_text(), pgp.read_text()):
        for line in material.splitlines():
            if len(line) >= 8 and not line.startswith("-----"):
                assert line not in out
