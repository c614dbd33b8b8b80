"""`buildworker ssh`: the build host's SSH entry point (docs/ssh.md).

    buildworker ssh install          accounts, config permissions, host keys, sshd_config
    buildworker ssh sshd-config      print the sshd configuration worker.conf gives
    buildworker ssh authorized-keys USER TYPE KEY
                                     sshd's AuthorizedKeysCommand (%u %t %k)
    buildworker ssh shell --socket PATH USERNAME
                                     sshd's forced command (reads SSH_ORIGINAL_COMMAND)

``shell`` runs as the SSH user, which cannot read worker.conf: it takes the socket path on
its command line (the AuthorizedKeysCommand writes it there) and reads no config.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from buildworker.config import DEFAULT_PATH, load_config, resolve_path
from buildworker.exitcodes import EXIT_FAILURE, EXIT_OK

NAME = "ssh"
HELP = "the SSH entry point into builds: install it, and the commands sshd runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    sub = parser.add_subparsers(dest="ssh_command", metavar="ACTION", required=True)
    install = sub.add_parser("install", help="set up the entry point (run as root)")
    install.add_argument(
        "--no-accounts",
        action="store_true",
        help="do not create or repair the [ssh] user and keys-user accounts",
    )
    install.add_argument(
        "--accounts-only",
        action="store_true",
        help="only create or repair the accounts (scripts/setup does this for the tests)",
    )
    sub.add_parser("sshd-config", help="print the sshd configuration worker.conf gives")
    keys = sub.add_parser("authorized-keys", help="sshd's AuthorizedKeysCommand (%%u %%t %%k)")
    keys.add_argument("user", help="the login name (%%u)")
    keys.add_argument("key_type", help="the offered key's type (%%t)")
    keys.add_argument("key", help="the offered key, base64 (%%k)")
    shell = sub.add_parser("shell", help="sshd's forced command for one user's login")
    shell.add_argument("--socket", required=True, type=Path, help="the worker's control socket")
    shell.add_argument("username", help="the user the offered key belongs to")


def _executable() -> Path:
    return Path(sys.argv[0]).absolute()


def _config_path(explicit: str | None) -> Path:
    path, _required = resolve_path(explicit)
    return path or DEFAULT_PATH


def _authorized_keys(args: argparse.Namespace) -> int:
    from buildworker.ssh.authorized import KeyLookupError, authorized_line, lookup_key_owner

    config = load_config(args.config)
    if args.user != config.ssh.user:
        return EXIT_OK  # not our account: no keys from us
    try:
        owner = lookup_key_owner(
            config.worker.api_url, config.worker.token, args.key_type, args.key
        )
    except KeyLookupError as exc:
        print(f"buildworker ssh authorized-keys: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if owner is None:
        return EXIT_OK
    try:
        line = authorized_line(
            owner.username,
            args.key_type,
            args.key,
            executable=_executable(),
            socket_path=config.worker.control_socket,
        )
    except ValueError as exc:
        print(f"buildworker ssh authorized-keys: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(line)
    return EXIT_OK


def _shell(args: argparse.Namespace) -> int:
    from buildworker.ssh.shell import run_shell

    return run_shell(args.username, args.socket, os.environ.get("SSH_ORIGINAL_COMMAND"))


def _sshd_config(args: argparse.Namespace) -> int:
    from buildworker.ssh.sshd import layout_from_config, render_sshd_config

    config = load_config(args.config)
    layout = layout_from_config(config, _config_path(args.config).absolute(), _executable())
    sys.stdout.write(render_sshd_config(layout))
    return EXIT_OK


def _install(args: argparse.Namespace) -> int:
    from buildworker.ssh.sshd import InstallError, ensure_accounts, install

    config = load_config(args.config)
    try:
        if args.accounts_only:
            done = ensure_accounts(config.ssh.user, config.ssh.keys_user)
        else:
            path = _config_path(args.config).absolute()
            if not path.exists():
                print(f"buildworker ssh install: {path}: no such config file", file=sys.stderr)
                return EXIT_FAILURE
            done = install(config, path, _executable(), accounts=not args.no_accounts)
    except InstallError as exc:
        print(f"buildworker ssh install: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not done and not args.accounts_only:
        done = ["nothing to do: the entry point is installed"]
    for line in done:
        print(line)
    if not args.accounts_only:
        print(
            "next: install systemd/buildworker-sshd.service and "
            "`systemctl enable --now buildworker-sshd` (docs/ssh.md)"
        )
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    action = {
        "authorized-keys": _authorized_keys,
        "shell": _shell,
        "sshd-config": _sshd_config,
        "install": _install,
    }[args.ssh_command]
    return action(args)
