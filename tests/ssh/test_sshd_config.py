"""The shipped sshd configuration, its install checks, the unit, and the set-up's promise that
Debian's openssh-server is installed without the system's own sshd listening."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildworker.config import ConfigError
from buildworker.ssh.sshd import SshdLayout, render_sshd_config, unsafe_path_reasons

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "buildworker"


def layout(**changes: object) -> SshdLayout:
    values: dict[str, object] = {
        "listen": ("127.0.0.1:2222", "[::1]:2222"),
        "user": "builds",
        "keys_user": "buildworker-keys",
        "host_keys": (Path("/etc/buildworker/ssh/ssh_host_ed25519_key"),),
        "command": Path("/opt/buildworker/.venv/bin/buildworker"),
        "config": Path("/etc/buildworker/worker.conf"),
    }
    values.update(changes)
    return SshdLayout(**values)  # type: ignore[arg-type]


def test_the_rendered_config_allows_only_the_forced_command() -> None:
    text = render_sshd_config(layout())
    lines = {line for line in text.splitlines() if line and not line.startswith("#")}
    assert {"ListenAddress 127.0.0.1:2222", "ListenAddress [::1]:2222"} <= lines
    assert "AllowUsers builds" in lines and "AuthorizedKeysFile none" in lines
    assert (
        "AuthorizedKeysCommand /opt/buildworker/.venv/bin/buildworker --config "
        "/etc/buildworker/worker.conf ssh authorized-keys %u %t %k"
    ) in lines
    assert "AuthorizedKeysCommandUser buildworker-keys" in lines
    for directive in (
        "DisableForwarding yes",
        "AllowTcpForwarding no",
        "PermitTunnel no",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "PasswordAuthentication no",
    ):
        assert directive in lines
    assert not any(line.startswith("Subsystem") for line in lines)


def test_bad_values_are_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"ssh\.listen: expected HOST:PORT"):
        render_sshd_config(layout(listen=("0.0.0.0",)))
    with pytest.raises(ConfigError, match=r"ssh\.listen: at least one"):
        render_sshd_config(layout(listen=()))
    with pytest.raises(ConfigError, match=r"ssh\.user: cannot be written"):
        render_sshd_config(layout(user="bad user"))


def test_sshd_accepts_the_rendered_config(tmp_path: Path) -> None:
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    path = tmp_path / "sshd_config"
    path.write_text(render_sshd_config(layout(host_keys=(key,))))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    result = subprocess.run(
        ["/usr/sbin/sshd", "-t", "-f", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # and would refuse a broken one (the check above can fail)
    path.write_text(path.read_text().replace("AllowUsers", "AllowUserz"))
    broken = subprocess.run(
        ["/usr/sbin/sshd", "-t", "-f", str(path)], capture_output=True, text=True
    )
    assert broken.returncode != 0 and "AllowUserz" in broken.stderr


def test_unsafe_keys_command_paths_are_named(tmp_path: Path) -> None:
    # pytest's tmp dirs are under /tmp, which anyone may write
    script = tmp_path / "bw"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    reasons = unsafe_path_reasons(script)
    assert any(reason.startswith("/tmp: writable by group or others") for reason in reasons)
    script.chmod(0o644)
    assert f"{script}: not an executable file" in unsafe_path_reasons(script)
    assert unsafe_path_reasons(Path("relative")) == ["relative: must be an absolute path"]
    assert unsafe_path_reasons(Path("/usr/sbin/sshd")) == []


def test_sshd_config_command_prints_the_config_for_worker_conf(tmp_path: Path) -> None:
    conf = tmp_path / "worker.conf"
    conf.write_text("[ssh]\nlisten = 127.0.0.1:2200\nuser = ci\n")
    result = subprocess.run(
        [str(BIN), "--config", str(conf), "ssh", "sshd-config"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "ListenAddress 127.0.0.1:2200\n" in result.stdout and "AllowUsers ci\n" in result.stdout
    assert f"--config {conf} ssh authorized-keys %u %t %k" in result.stdout


def test_the_forced_command_without_a_running_worker_says_so() -> None:
    result = subprocess.run(
        [str(BIN), "ssh", "shell", "--socket", "/nonexistent/control.sock", "alice"],
        capture_output=True,
        text=True,
        env={**os.environ, "SSH_ORIGINAL_COMMAND": "connect 5"},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "The build worker on this host is not running" in result.stderr


def test_the_unit_passes_systemd_analyze_verify() -> None:
    unit = REPO / "systemd" / "buildworker-sshd.service"
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    text = unit.read_text()
    assert "ExecStart=/usr/sbin/sshd -D -e -f /etc/buildworker/sshd_config" in text


def test_openssh_server_is_installed_and_nothing_listens_on_port_22() -> None:
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "openssh-server"], capture_output=True, text=True
    )
    assert status.stdout == "install ok installed", "scripts/setup installs openssh-server"
    listeners = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    ports = {line.split()[3].rsplit(":", 1)[1] for line in listeners.splitlines() if line.strip()}
    assert "22" not in ports, listeners
