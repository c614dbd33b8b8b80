"""`buildworker admin`: users and tokens of the API tier, from the server's shell.

    buildworker admin user add NAME [--email E]
    buildworker admin user list
    buildworker admin user password NAME   (the web sign-in password, from a prompt or stdin)
    buildworker admin token create USER --scopes "jobs:read jobs:write" [--name N]
    buildworker admin token list USER
    buildworker admin token revoke ID
    buildworker admin ssh-key add USER FILE   (a .pub file, or - for stdin; one key a line)
    buildworker admin ssh-key list USER
    buildworker admin ssh-key remove USER ID
    buildworker admin gen-key          (a Fernet key for [api] secret-key)
    buildworker admin migrate          (bring the database to the latest schema)

A created token is printed once, on stdout alone (so `T=$(buildworker admin token create
...)` works); only its hash is stored.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from buildworker.api.accounts import (
    AccountError,
    create_token,
    create_user,
    get_user,
    list_tokens,
    revoke_token,
)
from buildworker.api.auth import KNOWN_SCOPES
from buildworker.api.crypto import generate_key
from buildworker.config import load_config
from buildworker.db.engine import make_engine, make_sessionmaker
from buildworker.db.migrate import upgrade
from buildworker.db.models import User
from buildworker.exitcodes import EXIT_OK, EXIT_REFUSED

NAME = "admin"
HELP = "manage users, web passwords, API tokens and SSH keys (a token is printed once)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    groups = parser.add_subparsers(dest="admin_command", metavar="WHAT", required=True)

    user = groups.add_parser("user", help="users").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    add = user.add_parser("add", help="create a user")
    add.add_argument("username")
    add.add_argument("--email", default=None)
    user.add_parser("list", help="list users")
    password = user.add_parser(
        "password",
        help="set a user's web sign-in password (asked twice on a terminal, else one line of stdin)",
    )
    password.add_argument("username")

    token = groups.add_parser("token", help="API tokens").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    create = token.add_parser("create", help="create a token and print it once")
    create.add_argument("username")
    create.add_argument(
        "--scopes",
        required=True,
        help=f"space- or comma-separated: {', '.join(KNOWN_SCOPES)} or *",
    )
    create.add_argument("--name", default=None, help="a label to recognise the token by")
    tlist = token.add_parser("list", help="list a user's tokens (never the tokens themselves)")
    tlist.add_argument("username")
    revoke = token.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)

    key = groups.add_parser("ssh-key", help="users' SSH keys (for SSH into builds)")
    key_actions = key.add_subparsers(dest="action", metavar="ACTION", required=True)
    kadd = key_actions.add_parser("add", help="add the keys of a .pub file (- for stdin)")
    kadd.add_argument("username")
    kadd.add_argument("file")
    klist = key_actions.add_parser("list", help="list a user's SSH keys")
    klist.add_argument("username")
    kremove = key_actions.add_parser("remove", help="remove one of a user's SSH keys by id")
    kremove.add_argument("username")
    kremove.add_argument("id", type=int)

    groups.add_parser("gen-key", help="print a new Fernet key for [api] secret-key")
    groups.add_parser("migrate", help="migrate the database to the latest schema")


def _user_add(session: Session, args: argparse.Namespace) -> None:
    user = create_user(session, args.username, args.email)
    session.commit()
    print(f"created user ~{user.username} (id {user.id})")


def _user_list(session: Session, args: argparse.Namespace) -> None:
    for user in session.scalars(select(User).order_by(User.id)):
        print(f"{user.id}\t~{user.username}\t{user.email or ''}")


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("New password: ")
        if getpass.getpass("Repeat it: ") != first:
            raise AccountError("the two passwords differ; nothing changed")
        return first
    line = sys.stdin.readline()
    if not line:
        raise AccountError("no password on standard input")
    return line.removesuffix("\n").removesuffix("\r")


def _user_password(session: Session, args: argparse.Namespace) -> None:
    from buildworker.web.passwords import PasswordError, set_password

    user = get_user(session, args.username)
    try:
        set_password(user, _read_password())
    except PasswordError as exc:
        raise AccountError(str(exc)) from None
    session.commit()
    print(f"password set for ~{user.username}; their web sessions have ended")


def _token_create(session: Session, args: argparse.Namespace) -> None:
    user = get_user(session, args.username)
    created = create_token(session, user, args.scopes, args.name)
    session.commit()
    print(f"token {created.id} for ~{user.username}: {created.scopes}", file=sys.stderr)
    print(created.token)


def _token_list(session: Session, args: argparse.Namespace) -> None:
    user = get_user(session, args.username)
    for token in list_tokens(session, user):
        state = "revoked" if token.revoked else "active"
        used = token.last_used.isoformat() if token.last_used else "never"
        print(f"{token.id}\t{state}\t{token.name or '-'}\t{token.scopes}\tlast used {used}")


def _token_revoke(session: Session, args: argparse.Namespace) -> None:
    token = revoke_token(session, args.id)
    session.commit()
    print(f"revoked token {token.id}")


def _key_lines(source: str) -> list[tuple[int, str]]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AccountError(f"{source}: cannot read: {exc}") from None
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise AccountError(f"{source}: no key in it")
    return lines


def _ssh_key_add(session: Session, args: argparse.Namespace) -> None:
    from buildworker.api.ssh_keys import SshKeyRefused, add_ssh_key

    user = get_user(session, args.username)
    refused = []
    for number, line in _key_lines(args.file):
        try:
            key = add_ssh_key(session, user, line)
        except SshKeyRefused as exc:
            refused.append(f"{args.file}:{number}: {exc.reason}")
            continue
        print(f"added key {key.id} for ~{user.username}: {key.fingerprint} {key.comment or ''}")
    if refused:
        raise AccountError("; ".join(refused))


def _ssh_key_list(session: Session, args: argparse.Namespace) -> None:
    from buildworker.db.models import SshKey

    user = get_user(session, args.username)
    keys = session.scalars(select(SshKey).where(SshKey.user_id == user.id).order_by(SshKey.id))
    for key in keys:
        used = key.last_used.isoformat() if key.last_used else "never"
        kind = key.key.split(" ", 1)[0]
        print(f"{key.id}\t{key.fingerprint}\t{kind}\t{key.comment or '-'}\tlast used {used}")


def _ssh_key_remove(session: Session, args: argparse.Namespace) -> None:
    from buildworker.api.ssh_keys import delete_ssh_key

    user = get_user(session, args.username)
    if not delete_ssh_key(session, user, args.id):
        raise AccountError(f"~{user.username} has no SSH key with id {args.id}")
    print(f"removed SSH key {args.id} of ~{user.username}")


_ACTIONS: dict[tuple[str, str], Callable[[Session, argparse.Namespace], None]] = {
    ("user", "add"): _user_add,
    ("user", "list"): _user_list,
    ("user", "password"): _user_password,
    ("token", "create"): _token_create,
    ("token", "list"): _token_list,
    ("token", "revoke"): _token_revoke,
    ("ssh-key", "add"): _ssh_key_add,
    ("ssh-key", "list"): _ssh_key_list,
    ("ssh-key", "remove"): _ssh_key_remove,
}


def run(args: argparse.Namespace) -> int:
    if args.admin_command == "gen-key":
        print(generate_key())
        return EXIT_OK
    config = load_config(args.config)
    url = config.database.url
    engine = make_engine(url)
    try:
        upgrade(url, engine=engine)
        if args.admin_command == "migrate":
            print("database is at the latest schema")
            return EXIT_OK
        action = _ACTIONS[(args.admin_command, args.action)]
        with make_sessionmaker(engine)() as session:
            try:
                action(session, args)
            except AccountError as exc:
                print(f"buildworker admin: {exc}", file=sys.stderr)
                return EXIT_REFUSED
    finally:
        engine.dispose()
    return EXIT_OK
