"""Command line: `homeserver run | generate-config | register-user | migrate | users ...`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .config import Config, ConfigError, generate_config, load_config

if TYPE_CHECKING:
    from storage.users import UserSummary

    from .admin.users import AdminUsers

DEFAULT_DATA_DIR = "data"
CONFIG_NAME = "homeserver.yaml"


class CommandError(Exception):
    """A failure to report in one line, exiting with status 1."""


def _config_path(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    return Path(args.data_dir) / CONFIG_NAME


def _load(args: argparse.Namespace) -> Config:
    path = _config_path(args)
    if not path.exists():
        raise CommandError(
            f"no config file at {path}; create one with "
            f"`homeserver generate-config --server-name example.com -o {path}`"
        )
    return load_config(path)


# ----------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> None:
    from .app import configure_logging, serve

    path = _config_path(args)
    first_run = False
    if not args.config and not path.exists():
        data_dir = Path(args.data_dir)
        text = generate_config(args.server_name, port=args.port)
        load_config_text_check(text, data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        write_private(path, text)
        first_run = True
    config = _load(args)
    configure_logging(config.log_level)
    if first_run:
        _print_welcome(path, config)
    asyncio.run(serve(config))


def _print_welcome(path: Path, config: Config) -> None:
    base = config.base_url.rstrip("/")
    print(
        f"""
First run: wrote {path} (server_name: {config.server_name}),
a signing key and an SQLite database beside it.

  Create the first admin user:
      homeserver register-user -c {path} --admin -u admin
  Point Element (or any Matrix client) at the homeserver URL:
      {base}
  Everything else (PostgreSQL, open registration, a public name) is in
  {path}; every option is described in config.sample.yaml.
""",
        flush=True,
    )


# ------------------------------------------------------------ generate-config


def cmd_generate_config(args: argparse.Namespace) -> None:
    out = Path(args.output) if args.output else Path(args.data_dir) / CONFIG_NAME
    if out.exists():
        raise CommandError(f"{out} already exists; not overwriting it")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = generate_config(
        args.server_name,
        database_url=args.database_url,
        port=args.port,
        public_baseurl=args.public_baseurl,
    )
    load_config_text_check(text, out.parent)
    write_private(out, text)
    print(f"wrote {out}")


def write_private(path: Path, text: str) -> None:
    """Write a new file readable by its owner only (it holds the shared secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def load_config_text_check(text: str, directory: Path) -> None:
    """Refuse to write a config that would not load (e.g. a bad server name)."""
    import yaml

    from .config import parse_config

    parse_config(yaml.safe_load(text), str(directory))


# -------------------------------------------------------------- register-user


def _http_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())
            message = f"{err.get('errcode')}: {err.get('error')}"
        except ValueError:
            message = f"HTTP {e.code}"
        raise CommandError(f"the server refused: {message}") from None
    except urllib.error.URLError as e:
        raise CommandError(f"cannot reach the homeserver at {url}: {e.reason}") from None


def cmd_register_user(args: argparse.Namespace) -> None:
    from .api.admin import registration_mac

    secret = args.shared_secret
    url = args.url
    if secret is None or url is None:
        config = _load(args)
        secret = secret or config.registration_shared_secret
        if url is None:
            listener = config.listeners[0]
            host = listener.bind_addresses[0] if listener.bind_addresses else "localhost"
            if host in ("0.0.0.0", "::"):
                host = "localhost"
            url = f"http://{'[' + host + ']' if ':' in host else host}:{listener.port}"
    if not secret:
        raise CommandError("no registration_shared_secret in the config (or --shared-secret)")
    username = args.user or _ask("New user localpart: ")
    password = args.password or _ask_password()
    admin = args.admin if args.admin is not None else _ask("Make admin [no]: ").lower() in ("y", "yes")
    base = url.rstrip("/")
    nonce = _http_json(f"{base}/_synapse/admin/v1/register")["nonce"]
    body = {
        "nonce": nonce,
        "username": username,
        "password": password,
        "admin": admin,
        "mac": registration_mac(secret, nonce, username, password, admin, args.user_type),
    }
    if args.user_type:
        body["user_type"] = args.user_type
    result = _http_json(f"{base}/_synapse/admin/v1/register", body)
    print(f"Success! Registered {result['user_id']}{' as an admin' if admin else ''}.")


def _ask(prompt: str) -> str:
    if not sys.stdin.isatty():
        raise CommandError(f"missing value for '{prompt.strip(': ')}' (pass it as an option)")
    value = input(prompt).strip()
    if not value:
        raise CommandError("no value given")
    return value


def _ask_password() -> str:
    if not sys.stdin.isatty():
        raise CommandError("missing password (pass -p/--password)")
    password = getpass.getpass("Password: ")
    if not password:
        raise CommandError("password cannot be empty")
    if getpass.getpass("Confirm password: ") != password:
        raise CommandError("passwords do not match")
    return password


# -------------------------------------------------------------------- migrate


def cmd_migrate(args: argparse.Namespace) -> None:
    from storage.migrations import migrate

    from .app import database_for

    config = _load(args)

    async def _run() -> None:
        db = database_for(config)
        await db.open()
        try:
            applied = await migrate(db)
        finally:
            await db.close()
        if applied:
            for m in applied:
                print(f"applied {m.version:04d}_{m.name}")
        else:
            print("the database schema is up to date")

    asyncio.run(_run())


# ---------------------------------------------------------------------- users
#
# `homeserver users ...` works on the database the config names, as `migrate`
# does, so it needs no admin access token and works with the server stopped
# (the first admin can be made this way). It calls the same code as the admin
# API. A running server sees the changes at once: tokens are checked against
# the database on every request. Its contacts' /sync requests learn of a
# deactivated user's removed devices on their next wake-up rather than at once.


def _users_action(
    args: argparse.Namespace, action: Callable[[AdminUsers], Awaitable[None]]
) -> None:
    """Run `await action(AdminUsers)` against the config's (migrated) database."""
    from storage.migrations import current_version, latest_version

    from .admin.users import AdminUsers
    from .app import HomeServer
    from .errors import MatrixError

    config = _load(args)

    async def _run() -> None:
        # The server's own services (a deactivated user leaves their rooms
        # through the room writer), without its listeners or background tasks.
        hs = HomeServer(config)
        db = hs.db
        await db.open()
        try:
            version = await current_version(db)
            if version != latest_version():
                raise CommandError(
                    f"the database schema is at version {version}, this release uses "
                    f"{latest_version()}: run `homeserver migrate` first"
                )
            await action(AdminUsers(config, hs.storage, hs.accounts))
        except MatrixError as e:
            raise CommandError(f"{e.errcode}: {e.error}") from None
        finally:
            await db.close()

    asyncio.run(_run())


def cmd_users_list(args: argparse.Namespace) -> None:
    page = 500

    async def _list(admin: AdminUsers) -> None:
        found: list[UserSummary] = []
        while True:
            users, _total = await admin.storage.users.list_users(
                offset=len(found), limit=page, name=args.name,
                deactivated=None if args.deactivated else False,
            )
            found.extend(users)
            if len(users) < page:
                break
        width = max((len(u.user_id) for u in found), default=0)
        for user in found:
            flags = [
                flag for flag, on in (
                    ("admin", user.admin), ("guest", user.is_guest), ("deactivated", user.deactivated),
                ) if on
            ]
            if user.user_type:
                flags.append(user.user_type)
            print(f"{user.user_id:<{width}}  {' '.join(flags)}".rstrip())
        print(f"{len(found)} user{'' if len(found) == 1 else 's'}")

    _users_action(args, _list)


def cmd_users_deactivate(args: argparse.Namespace) -> None:
    async def _deactivate(admin: AdminUsers) -> None:
        await admin.deactivate(args.user_id)
        print(f"deactivated {args.user_id}")

    _users_action(args, _deactivate)


def cmd_users_reset_password(args: argparse.Namespace) -> None:
    password = args.password or _ask_password()

    async def _reset(admin: AdminUsers) -> None:
        await admin.reset_password(args.user_id, password, logout_devices=not args.keep_devices)
        signed_out = "" if args.keep_devices else "; signed out of every device"
        print(f"changed the password of {args.user_id}{signed_out}")

    _users_action(args, _reset)


def cmd_users_set_admin(args: argparse.Namespace) -> None:
    admin_flag = args.admin == "true"

    async def _set(admin: AdminUsers) -> None:
        await admin.set_admin(None, args.user_id, admin_flag)
        print(f"{args.user_id} is {'now' if admin_flag else 'no longer'} an admin")

    _users_action(args, _set)


# ----------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homeserver", description="A Matrix homeserver.")
    parser.add_argument("--version", action="version", version=f"homeserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help="config file (default: DATA_DIR/homeserver.yaml)")
        p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="data directory (default: ./data)")

    run = sub.add_parser("run", help="run the homeserver (writes a config on first run)")
    common(run)
    run.add_argument("--server-name", default="localhost", help="server name for a first run")
    run.add_argument("--port", type=int, default=8008, help="port for a first run")
    run.set_defaults(func=cmd_run)

    gen = sub.add_parser("generate-config", help="write a new config file")
    gen.add_argument("--server-name", required=True, help="the domain in user IDs (@alice:NAME)")
    gen.add_argument("--database-url", help="postgresql://user:pass@host/db (default: SQLite)")
    gen.add_argument("--public-baseurl", help="the URL clients reach the server at")
    gen.add_argument("--port", type=int, default=8008)
    gen.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    gen.add_argument("-o", "--output", help="file to write (default: DATA_DIR/homeserver.yaml)")
    gen.set_defaults(func=cmd_generate_config)

    reg = sub.add_parser("register-user", help="create a user via shared-secret registration")
    common(reg)
    reg.add_argument("-u", "--user", help="localpart of the new user")
    reg.add_argument("-p", "--password")
    admin = reg.add_mutually_exclusive_group()
    admin.add_argument("-a", "--admin", dest="admin", action="store_true", default=None)
    admin.add_argument("--no-admin", dest="admin", action="store_false")
    reg.add_argument("-t", "--user-type", help="e.g. bot, support")
    reg.add_argument("--shared-secret", help="instead of reading it from the config")
    reg.add_argument("--url", help="homeserver URL (default: the config's first listener)")
    reg.set_defaults(func=cmd_register_user)

    mig = sub.add_parser("migrate", help="bring the database schema up to date and exit")
    common(mig)
    mig.set_defaults(func=cmd_migrate)

    users = sub.add_parser("users", help="list and administer user accounts (on the database)")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    ulist = users_sub.add_parser("list", help="list local users")
    common(ulist)
    ulist.add_argument("--deactivated", action="store_true", help="include deactivated users")
    ulist.add_argument("--name", help="only users whose localpart or display name contains this")
    ulist.set_defaults(func=cmd_users_list)
    udeact = users_sub.add_parser("deactivate", help="deactivate an account (signs it out everywhere)")
    common(udeact)
    udeact.add_argument("user_id", help="e.g. @alice:example.com")
    udeact.set_defaults(func=cmd_users_deactivate)
    ureset = users_sub.add_parser("reset-password", help="set a new password (prompts for it)")
    common(ureset)
    ureset.add_argument("user_id", help="e.g. @alice:example.com")
    ureset.add_argument("-p", "--password", help="instead of prompting (visible to other local users)")
    ureset.add_argument("--keep-devices", action="store_true", help="do not sign the user out")
    ureset.set_defaults(func=cmd_users_reset_password)
    uadmin = users_sub.add_parser("set-admin", help="make a user an admin, or not")
    common(uadmin)
    uadmin.add_argument("user_id", help="e.g. @alice:example.com")
    uadmin.add_argument("admin", choices=("true", "false"))
    uadmin.set_defaults(func=cmd_users_set_admin)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CommandError, ConfigError) as e:
        print(f"homeserver: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a clear line, not a traceback, for operator errors
        import sqlite3

        import psycopg
        import psycopg_pool

        from federation.keys import SigningKeyError
        from storage.migrations import SchemaError

        operator_errors = (
            SchemaError, SigningKeyError, OSError, sqlite3.Error, psycopg.Error,
            psycopg_pool.PoolTimeout,
        )
        if isinstance(e, operator_errors):
            print(f"homeserver: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
