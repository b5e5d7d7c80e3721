"""Command line: `python3 -m appservices.bridges webhooks | bot | generate-registration | check-config`."""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import yaml

from homeserver.__main__ import write_private
from homeserver.app import configure_logging

from .appservice import AppService, serve
from .config import BRIDGES, BridgesConfig, ConfigError, WebhooksSection, load_config


class CommandError(Exception):
    """A failure to report in one line, exiting with status 1."""


def _bridge(config: BridgesConfig, name: str) -> AppService:
    if name == "webhooks":
        from .webhooks import WebhooksBridge

        config.section("webhooks")
        return WebhooksBridge(config)
    from .bot import CommandBot

    config.section("bot")
    return CommandBot(config)


def cmd_run(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    configure_logging(config.log_level)
    bridge = _bridge(config, args.command)
    asyncio.run(serve(bridge))


def registration(config: BridgesConfig, name: str) -> dict[str, Any]:
    """A new registration for the bridge, with fresh tokens."""
    section = config.section(name)
    server = re.escape(config.homeserver.server_name)
    if isinstance(section, WebhooksSection):
        users = [{"exclusive": True, "regex": f"@{re.escape(section.ghost_prefix)}.*:{server}"}]
    else:
        users = []
    # The bridge user itself is reserved to the bridge too.
    users.append({"exclusive": True, "regex": f"@{re.escape(section.sender_localpart or '')}:{server}"})
    return {
        "id": section.id,
        "url": section.bridge_url,
        "as_token": secrets.token_urlsafe(32),
        "hs_token": secrets.token_urlsafe(32),
        "sender_localpart": section.sender_localpart,
        "rate_limited": False,
        "receive_ephemeral": False,
        "namespaces": {"users": users, "aliases": [], "rooms": []},
    }


def cmd_generate_registration(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    name = args.bridge
    if name is None:
        configured = [b for b in BRIDGES if getattr(config, b) is not None]
        if len(configured) != 1:
            raise CommandError("name the bridge to register: " + " or ".join(configured))
        name = configured[0]
    section = config.section(name)
    if args.output:
        out = Path(args.output)
    elif section.registration:
        out = config.resolve_path(section.registration)
    else:
        raise CommandError(f"give -o FILE, or set {name}.registration in the config")
    if out.exists():
        if not args.force:
            raise CommandError(f"{out} already exists; --force replaces it (and its tokens)")
        out.unlink()
    section.id = section.id or name
    text = (
        f"# Application-service registration of the {name} bridge.\n"
        "# Add this file to the homeserver's app_service_config_files, and point\n"
        f"# {name}.registration in the bridges config at it. Keep it secret.\n"
        + yaml.safe_dump(registration(config, name), sort_keys=False, allow_unicode=True)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_private(out, text)
    print(f"wrote {out}")


def cmd_check_config(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    print(f"{args.config}: OK")
    if config.webhooks is not None:
        base = config.webhooks.bridge_url.rstrip("/")
        for hook in config.webhooks.hooks:
            print(f"  hook {hook.name} ({hook.type}) -> {hook.room}: {base}/hooks/{hook.token}")
    if config.bot is not None:
        prefix = config.bot.command_prefix
        for command in config.bot.commands:
            print(f"  command {prefix}{command.name}: {command.method} {command.url}")
        for task in config.bot.task_hooks:
            print(f"  task hook {task.name}: {task.reaction or '-'} / {prefix}{task.command or '-'} -> {task.url}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m appservices.bridges", description="The bundled bridges and bots."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", required=True, help="the bridges YAML file")
        return p

    with_config(sub.add_parser("webhooks", help="run the incoming-webhooks bridge")).set_defaults(func=cmd_run)
    with_config(sub.add_parser("bot", help="run the command and task bot")).set_defaults(func=cmd_run)
    gen = with_config(sub.add_parser("generate-registration", help="write a bridge's AS registration file"))
    gen.add_argument("bridge", nargs="?", choices=BRIDGES, help="which bridge (needed when both are configured)")
    gen.add_argument("-o", "--output", help="where to write it (default: the section's `registration`)")
    gen.add_argument("--force", action="store_true", help="replace an existing file (new tokens)")
    gen.set_defaults(func=cmd_generate_registration)
    with_config(sub.add_parser("check-config", help="validate the config, list the hook URLs")).set_defaults(
        func=cmd_check_config
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CommandError, ConfigError) as e:
        print(f"bridges: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(f"bridges: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
