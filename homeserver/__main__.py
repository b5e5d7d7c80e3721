"""Command line: `homeserver run | generate-config | register-user | migrate`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from . import __version__
from .config import Config, ConfigError, generate_config, load_config

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
        _write_private(path, text)
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
    _write_private(out, text)
    print(f"wrote {out}")


def _write_private(path: Path, text: str) -> None:
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
