"""The build host's SSH entry point on OpenSSH's own sshd: configuration, host keys, accounts.

``render_sshd_config`` fills the shipped template (``sshd_config.in``) from worker.conf;
``install`` does what an operator would by hand, idempotently: the two accounts (the SSH user,
which runs only the forced command, and the keys user, which runs the AuthorizedKeysCommand
and may read worker.conf for the worker token), the config file's permissions, the host keys,
the sshd configuration, and ``sshd -t`` on it. The systemd unit is ``systemd/buildworker-sshd
.service``. sshd insists that the AuthorizedKeysCommand and every directory above it be owned
by root and writable by nobody else; ``unsafe_path_reasons`` checks that first, with a reason.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from buildworker.config import Config, ConfigError, parse_hostport

__all__ = [
    "HOST_KEY_TYPES",
    "PRIVSEP_DIR",
    "InstallError",
    "SshdLayout",
    "check_sshd_config",
    "ensure_accounts",
    "ensure_host_keys",
    "host_key_paths",
    "install",
    "layout_from_config",
    "render_sshd_config",
    "unsafe_path_reasons",
]

#: Host key types generated for the entry point (fast to make, accepted by every client).
HOST_KEY_TYPES = ("ed25519", "ecdsa")
#: sshd's compiled-in privilege separation directory (Debian): it must exist to start.
PRIVSEP_DIR = Path("/run/sshd")
SSH_USER_SHELL = "/bin/sh"
NOLOGIN = "/usr/sbin/nologin"


class InstallError(RuntimeError):
    """An installation step that cannot be done; the message says which and why."""


@dataclass(frozen=True)
class SshdLayout:
    """Everything the sshd configuration names."""

    listen: tuple[str, ...]
    user: str
    keys_user: str
    host_keys: tuple[Path, ...]
    #: the `buildworker` executable sshd runs as AuthorizedKeysCommand
    command: Path
    #: the worker.conf the AuthorizedKeysCommand reads
    config: Path


def host_key_paths(directory: Path) -> tuple[Path, ...]:
    return tuple(directory / f"ssh_host_{kind}_key" for kind in HOST_KEY_TYPES)


def layout_from_config(config: Config, config_path: Path, executable: Path) -> SshdLayout:
    return SshdLayout(
        listen=config.ssh.listen,
        user=config.ssh.user,
        keys_user=config.ssh.keys_user,
        host_keys=host_key_paths(config.ssh.host_keys),
        command=executable,
        config=config_path,
    )


def _listen_line(entry: str) -> str:
    try:
        value = parse_hostport(entry)
    except ValueError as exc:
        raise ConfigError(f"ssh.listen: {exc}, got {entry!r}") from None
    return f"ListenAddress {value}"


def _word(name: str, value: str) -> str:
    if not value or any(c.isspace() or c in "\"'\\#" for c in value):
        raise ConfigError(f"{name}: cannot be written into sshd_config: {value!r}")
    return value


def render_sshd_config(layout: SshdLayout) -> str:
    """The sshd configuration for ``layout``. Raises ConfigError naming a value that cannot
    be written into it (sshd_config has no quoting for these directives)."""
    if not layout.listen:
        raise ConfigError("ssh.listen: at least one HOST:PORT is needed")
    template = Template(
        resources.files("buildworker.ssh").joinpath("sshd_config.in").read_text("utf-8")
    )
    return template.substitute(
        listen="\n".join(_listen_line(entry) for entry in layout.listen),
        host_keys="\n".join(
            f"HostKey {_word('ssh.host-keys', str(path))}" for path in layout.host_keys
        ),
        user=_word("ssh.user", layout.user),
        keys_user=_word("ssh.keys-user", layout.keys_user),
        command=_word("the buildworker executable", str(layout.command)),
        config=_word("the config file", str(layout.config)),
    )


def unsafe_path_reasons(path: Path) -> list[str]:
    """Why sshd would refuse ``path`` as an AuthorizedKeysCommand (empty: it would not):
    the file and each directory above it must be owned by root and not group- or
    world-writable, and the file must be executable."""
    reasons: list[str] = []
    if not path.is_absolute():
        return [f"{path}: must be an absolute path"]
    try:
        st = path.stat()
    except OSError as exc:
        return [f"{path}: {exc.strerror}"]
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        reasons.append(f"{path}: not an executable file")
    for part in [path, *path.parents]:
        st = part.stat() if part == path else part.lstat()
        if st.st_uid != 0:
            reasons.append(f"{part}: owned by uid {st.st_uid}, must be owned by root")
        if st.st_mode & 0o022:
            reasons.append(f"{part}: writable by group or others (mode {st.st_mode & 0o777:o})")
    return reasons


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise InstallError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")


def _shadow_password(user: str) -> str | None:
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == user:
                return rest.split(":", 1)[0]
    except OSError:
        return None
    return None


def ensure_accounts(ssh_user: str, keys_user: str) -> list[str]:
    """Create (or repair) the two system accounts; returns what was done.

    The SSH user gets ``/bin/sh`` (sshd runs the forced command through the login shell),
    home ``/`` (root's, not writable) and the password ``*``: no password login, but not
    "locked" (``!``), which sshd without PAM would refuse even for keys.
    """
    done: list[str] = []
    for name, shell, home in (
        (ssh_user, SSH_USER_SHELL, "/"),
        (keys_user, NOLOGIN, "/nonexistent"),
    ):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            argv = ["useradd", "--system", "--user-group", "--no-create-home"]
            argv += ["--shell", shell, "--home-dir", home]
            if name == ssh_user:
                argv += ["--password", "*"]
            _run([*argv, name])
            done.append(f"created user {name}")
            continue
        if name == ssh_user and entry.pw_shell != shell:
            _run(["usermod", "--shell", shell, name])
            done.append(
                f"{name}: login shell set to {shell} (sshd runs the forced command with it)"
            )
    password = _shadow_password(ssh_user)
    if password is not None and password.startswith("!"):
        _run(["usermod", "--password", "*", ssh_user])
        done.append(f"{ssh_user}: unlocked for key logins (password '*': none can be used)")
    keys_group = grp.getgrgid(pwd.getpwnam(keys_user).pw_gid).gr_name
    if ssh_user in grp.getgrnam(keys_group).gr_mem:
        raise InstallError(
            f"{ssh_user} is a member of group {keys_group}: it could read the worker token"
        )
    return done


def secure_config_file(path: Path, keys_user: str) -> list[str]:
    """worker.conf readable by the keys user's group, by nobody else but root."""
    done: list[str] = []
    st = path.stat()
    gid = pwd.getpwnam(keys_user).pw_gid
    if st.st_uid != 0:
        raise InstallError(f"{path}: owned by uid {st.st_uid}; it must be owned by root")
    if st.st_gid != gid:
        os.chown(path, 0, gid)
        done.append(f"{path}: group set to {grp.getgrgid(gid).gr_name}")
    mode = stat.S_IMODE(st.st_mode)
    wanted = (mode | 0o040) & ~0o037
    if mode != wanted:
        os.chmod(path, wanted)
        done.append(f"{path}: mode {mode:o} → {wanted:o}")
    for parent in path.parents:
        if not parent.stat().st_mode & 0o001:
            raise InstallError(f"{parent}: not searchable by {keys_user} (needs o+x)")
    return done


def ensure_host_keys(directory: Path) -> list[Path]:
    """Generate the missing host keys in ``directory``; returns the ones made."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    made = []
    for kind, path in zip(HOST_KEY_TYPES, host_key_paths(directory), strict=True):
        if not path.exists():
            _run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)])
            made.append(path)
    return made


def check_sshd_config(sshd: Path, path: Path) -> None:
    """``sshd -t``: the configuration and its host keys are usable. Raises InstallError."""
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    result = subprocess.run(
        [str(sshd), "-t", "-f", str(path)], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise InstallError(f"{sshd} -t -f {path}: {result.stderr.strip()}")


def install(
    config: Config, config_path: Path, executable: Path, *, accounts: bool = True
) -> list[str]:
    """Everything but starting the service; returns what was done, step by step."""
    done: list[str] = []
    reasons = unsafe_path_reasons(executable)
    if reasons:
        raise InstallError(
            "sshd would refuse the AuthorizedKeysCommand "
            + str(executable)
            + ": "
            + "; ".join(reasons)
        )
    if accounts:
        done += ensure_accounts(config.ssh.user, config.ssh.keys_user)
    done += secure_config_file(config_path, config.ssh.keys_user)
    done += [f"made host key {path}" for path in ensure_host_keys(config.ssh.host_keys)]
    text = render_sshd_config(layout_from_config(config, config_path, executable))
    target = config.ssh.sshd_config
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not target.exists() or target.read_text() != text:
        staging = target.with_name(target.name + ".new")
        staging.write_text(text)
        os.chmod(staging, 0o644)
        check_sshd_config(config.ssh.sshd, staging)
        os.replace(staging, target)
        done.append(f"wrote {target}")
    else:
        check_sshd_config(config.ssh.sshd, target)
    return done
