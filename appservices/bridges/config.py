"""The bridges' configuration: one YAML file for every bundled bridge and bot.

Each bridge is its own application service (its own registration, tokens,
listener and state file): `webhooks` turns HTTP posts into room messages,
`bot` answers `!`-commands and turns messages into tasks. Sections a
deployment does not use are left out. The loader is the homeserver's (same
types, same error messages); unlike the homeserver config, an unknown key
is an error here, because a misspelt hook option would otherwise silently
do nothing.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from homeserver.config import ConfigError, Duration, load_dataclass, read_yaml

from . import templates

__all__ = ["BridgesConfig", "ConfigError", "load_config", "parse_config"]

# Localparts of the users a bridge acts as (the spec's user ID grammar).
_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
_ROOM = re.compile(r"^[!#][^:]+:.+$")
MIN_HOOK_TOKEN_LENGTH = 16
# What a command's URL (and not_found) template and a task's body and reply may use.
COMMAND_FIELDS = ("args", "argN", "sender", "room_id")
TASK_FIELDS = ("sender", "body", "title", "room_id", "event_id", "link", "note", "reporter")


@dataclass
class HomeserverSection:
    # The client-server API base URL, as the bridges reach it.
    url: str = ""
    # The homeserver's server_name: the part after ':' in user IDs.
    server_name: str = ""


@dataclass
class Listen:
    host: str = "127.0.0.1"
    # Default 9000 for webhooks, 9001 for bot.
    port: int | None = None


@dataclass
class Backoff:
    """Retrying a homeserver that is down: `initial`, doubling up to `max`."""

    initial: Duration = Duration(500)
    max: Duration = Duration(60_000)


@dataclass
class BridgeSection:
    """What every bridge has: its application-service identity and listener."""

    # The registration file written by `generate-registration`; the tokens,
    # id and sender_localpart are read from it. Alternatively give
    # as_token/hs_token (and id/sender_localpart) here directly.
    registration: str | None = None
    id: str | None = None
    as_token: str | None = None
    hs_token: str | None = None
    sender_localpart: str | None = None
    # The bridge's own HTTP server: the homeserver sends transactions here.
    listen: Listen = field(default_factory=Listen)
    # The URL at which the homeserver reaches `listen` (goes into the
    # registration); default http://{listen.host}:{listen.port}.
    url: str | None = None
    # SQLite file of the bridge's small state (relative to this file).
    state_path: str = ""
    display_name: str | None = None
    avatar_url: str | None = None
    retry: Backoff = field(default_factory=Backoff)

    @property
    def bridge_url(self) -> str:
        return self.url or f"http://{self.listen.host}:{self.listen.port}"


@dataclass
class Hook:
    # Unique; the hook's ghost user is @{ghost_prefix}{name}:{server_name}.
    name: str = ""
    # slack: Slack-compatible incoming webhook; alertmanager: Prometheus
    # Alertmanager webhook (v4); grafana: Grafana alerting webhook contact
    # point; template: any JSON object, rendered with `template`.
    type: Literal["slack", "alertmanager", "grafana", "template"] = "slack"
    # The secret in the hook URL /hooks/{token}; at least 16 characters.
    token: str = ""
    # Room ID (!...) or alias (#...) the messages go to.
    room: str = ""
    display_name: str | None = None
    avatar_url: str | None = None
    msgtype: Literal["m.text", "m.notice"] = "m.text"
    # type template: the message, with {field} / {nested.field} from the JSON.
    template: str | None = None
    # Optional HTML version of `template`; field values are HTML-escaped.
    html_template: str | None = None


@dataclass
class WebhooksSection(BridgeSection):
    ghost_prefix: str = "_webhook_"
    # How long a hook request waits for its message to be posted before it
    # is answered 202 (queued: it is posted once the homeserver is back).
    response_timeout: Duration = Duration(5_000)
    max_body_size: int = 1024 * 1024
    hooks: list[Hook] = field(default_factory=list)


@dataclass
class Command:
    # `!{name} args...`
    name: str = ""
    description: str = ""
    # Shown in !help and on a wrong number of arguments, e.g. "SKU".
    usage: str = ""
    # URL template: {args} (all arguments), {arg1}, {arg2}, ..., {sender},
    # {room_id}; values are URL-encoded, and the URL is sent as written (no
    # dot segments resolved), so write it percent-encoded.
    url: str = ""
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    # Reply template over the JSON answer ({field}, {nested.field}, {json}
    # for the whole answer), plus {args}/{argN}/{sender}.
    reply: str = ""
    html_reply: str | None = None
    # Reply when the lookup answers 404.
    not_found: str = "Nothing found for {args}."
    timeout: Duration = Duration(10_000)
    # Room IDs or aliases where the command may be used; empty: everywhere.
    rooms: list[str] = field(default_factory=list)


@dataclass
class TaskHook:
    name: str = ""
    # A reaction that files the message it reacts to (None: no reaction).
    reaction: str | None = "✅"
    # `!{command}` sent as a reply to a message files that message.
    command: str | None = "task"
    url: str = ""
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    # JSON body template: strings in it are templates over {sender},
    # {body}, {title} (first line), {room_id}, {event_id}, {link}, {note}
    # (text after the command), {reporter}. Default: all of those as fields.
    body: Any = None
    # Where the created task's link is in the tracker's JSON answer.
    link_field: str = "url"
    reply: str = "Task created: {link}"
    timeout: Duration = Duration(10_000)
    rooms: list[str] = field(default_factory=list)


@dataclass
class BotSection(BridgeSection):
    command_prefix: str = "!"
    # Base of the event links sent to the tracker.
    permalink_base: str = "https://matrix.to/#/"
    commands: list[Command] = field(default_factory=list)
    task_hooks: list[TaskHook] = field(default_factory=list)


@dataclass
class BridgesConfig:
    homeserver: HomeserverSection = field(default_factory=HomeserverSection)
    webhooks: WebhooksSection | None = None
    bot: BotSection | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    config_dir: str = field(default=".", metadata={"internal": True})

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.config_dir) / p

    def section(self, name: str) -> BridgeSection:
        section = getattr(self, name)
        if section is None:
            raise ConfigError(f"{name}: this bridge has no section in the config file")
        return section


BRIDGES = ("webhooks", "bot")
_DEFAULTS = {
    "webhooks": {"id": "webhooks", "sender_localpart": "_webhooks", "port": 9000},
    "bot": {"id": "bot", "sender_localpart": "_bot", "port": 9001},
}


# ------------------------------------------------------------------ loading


def parse_config(data: Any, config_dir: str = ".") -> BridgesConfig:
    if not isinstance(data, dict):
        raise ConfigError("the bridges configuration must be a YAML mapping of option: value")
    unknown: list[str] = []
    config = load_dataclass(BridgesConfig, data, "", unknown)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown option")
    config.config_dir = config_dir
    _validate(config)
    return config


def load_config(path: str | Path) -> BridgesConfig:
    path = Path(path)
    data = read_yaml(path)
    return parse_config(data, str(path.resolve().parent))


def _validate(config: BridgesConfig) -> None:
    hs = config.homeserver
    if not re.match(r"^https?://[^/]+", hs.url):
        raise ConfigError(f"homeserver.url: expected the homeserver's http(s) URL, got {hs.url!r}")
    if not hs.server_name:
        raise ConfigError("homeserver.server_name: required (the part after ':' in user IDs)")
    if config.webhooks is None and config.bot is None:
        raise ConfigError("configure at least one bridge: a `webhooks` or a `bot` section")
    for name in BRIDGES:
        section = getattr(config, name)
        if section is not None:
            _validate_bridge(config, name, section)
    if config.webhooks is not None:
        _validate_webhooks(config.webhooks)
    if config.bot is not None:
        _validate_bot(config.bot)


def _validate_bridge(config: BridgesConfig, name: str, section: BridgeSection) -> None:
    if section.registration is not None:
        _apply_registration(config, name, section)
    section.id = section.id or _DEFAULTS[name]["id"]
    section.sender_localpart = section.sender_localpart or _DEFAULTS[name]["sender_localpart"]
    section.state_path = section.state_path or f"{name}-state.db"
    if section.listen.port is None:
        section.listen.port = _DEFAULTS[name]["port"]
    if not _LOCALPART.match(section.sender_localpart):
        raise ConfigError(f"{name}.sender_localpart: {section.sender_localpart!r} is not a valid localpart")
    if not 0 <= section.listen.port <= 65535:
        raise ConfigError(f"{name}.listen.port: {section.listen.port} is not a TCP port")
    if section.url is not None and not re.match(r"^https?://[^/]+", section.url):
        raise ConfigError(f"{name}.url: expected an http(s) URL, got {section.url!r}")
    if section.avatar_url is not None and not section.avatar_url.startswith("mxc://"):
        raise ConfigError(f"{name}.avatar_url: expected an mxc:// URI, got {section.avatar_url!r}")
    if section.retry.initial <= 0 or section.retry.max < section.retry.initial:
        raise ConfigError(f"{name}.retry: initial must be positive and at most max")


def _apply_registration(config: BridgesConfig, name: str, section: BridgeSection) -> None:
    """Fill the tokens and identity from the registration file, if it exists yet.

    The file is read and checked by the homeserver's own loader, so the
    bridge refuses exactly what the homeserver would.
    """
    from appservices.registration import load_registration

    path = config.resolve_path(section.registration or "")
    if not path.exists():
        # `generate-registration` is about to write it; running needs it.
        return
    try:
        service = load_registration(path, config.homeserver.server_name)
    except ConfigError as e:
        raise ConfigError(f"{name}.registration: {e}") from None
    localpart = service.sender[1:].split(":", 1)[0]
    for key, value in (
        ("id", service.id),
        ("as_token", service.as_token),
        ("hs_token", service.hs_token),
        ("sender_localpart", localpart),
    ):
        if getattr(section, key) not in (None, value):
            raise ConfigError(f"{name}.{key}: differs from the one in {path}; give it in one place")
        setattr(section, key, value)


def _validate_webhooks(section: WebhooksSection) -> None:
    if not _LOCALPART.match(section.ghost_prefix):
        raise ConfigError(f"webhooks.ghost_prefix: {section.ghost_prefix!r} is not a valid localpart")
    if section.response_timeout < 0:
        raise ConfigError("webhooks.response_timeout: must not be negative")
    names: set[str] = set()
    tokens: set[str] = set()
    for i, hook in enumerate(section.hooks):
        where = f"webhooks.hooks[{i}]"
        if not hook.name or not _LOCALPART.match(hook.name):
            raise ConfigError(f"{where}.name: required; lower-case letters, digits and ._=-/+ only")
        if hook.name in names:
            raise ConfigError(f"{where}.name: {hook.name!r} is used by two hooks")
        names.add(hook.name)
        if len(hook.token) < MIN_HOOK_TOKEN_LENGTH or not re.fullmatch(r"[A-Za-z0-9_\-]+", hook.token):
            raise ConfigError(
                f"{where}.token: a secret of at least {MIN_HOOK_TOKEN_LENGTH} letters, digits, - or _"
                " (e.g. from `python3 -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
            )
        if hook.token in tokens:
            raise ConfigError(f"{where}.token: used by two hooks")
        tokens.add(hook.token)
        _check_room(f"{where}.room", hook.room)
        if hook.avatar_url is not None and not hook.avatar_url.startswith("mxc://"):
            raise ConfigError(f"{where}.avatar_url: expected an mxc:// URI, got {hook.avatar_url!r}")
        if hook.type == "template":
            if not hook.template:
                raise ConfigError(f"{where}.template: required for a template hook")
            check_template(f"{where}.template", hook.template)
        elif hook.template is not None or hook.html_template is not None:
            raise ConfigError(f"{where}.template: only template hooks take a template")
        if hook.html_template is not None:
            check_template(f"{where}.html_template", hook.html_template)


def _validate_bot(section: BotSection) -> None:
    if not section.command_prefix or any(c.isspace() for c in section.command_prefix):
        raise ConfigError("bot.command_prefix: a non-empty prefix without spaces, such as '!'")
    names = {"help"}
    for i, command in enumerate(section.commands):
        where = f"bot.commands[{i}]"
        if not re.fullmatch(r"[a-z0-9_\-]+", command.name):
            raise ConfigError(f"{where}.name: required; lower-case letters, digits, - and _ only")
        if command.name in names:
            raise ConfigError(f"{where}.name: {command.name!r} is taken (help is built in)")
        names.add(command.name)
        if not re.match(r"^https?://", command.url):
            raise ConfigError(f"{where}.url: expected an http(s) URL template, got {command.url!r}")
        if any(c.isspace() or not c.isascii() or not c.isprintable() for c in command.url):
            # The bot sends the URL exactly as rendered (arguments percent-encoded).
            raise ConfigError(f"{where}.url: write the URL percent-encoded, without spaces or non-ASCII characters")
        check_template(f"{where}.url", command.url, COMMAND_FIELDS)
        if not command.reply:
            raise ConfigError(f"{where}.reply: required (a template over the JSON answer)")
        check_template(f"{where}.reply", command.reply)
        check_template(f"{where}.not_found", command.not_found, COMMAND_FIELDS)
        if command.html_reply is not None:
            check_template(f"{where}.html_reply", command.html_reply)
        for j, room in enumerate(command.rooms):
            _check_room(f"{where}.rooms[{j}]", room)
    reactions: set[str] = set()
    for i, hook in enumerate(section.task_hooks):
        where = f"bot.task_hooks[{i}]"
        if not hook.name:
            raise ConfigError(f"{where}.name: required")
        if hook.reaction is None and hook.command is None:
            raise ConfigError(f"{where}: give a reaction, a command, or both")
        if hook.reaction is not None:
            if hook.reaction in reactions:
                raise ConfigError(f"{where}.reaction: {hook.reaction!r} is used by two task hooks")
            reactions.add(hook.reaction)
        if hook.command is not None:
            if not re.fullmatch(r"[a-z0-9_\-]+", hook.command):
                raise ConfigError(f"{where}.command: lower-case letters, digits, - and _ only")
            if hook.command in names:
                raise ConfigError(f"{where}.command: {hook.command!r} is already a command")
            names.add(hook.command)
        if not re.match(r"^https?://", hook.url):
            raise ConfigError(f"{where}.url: expected the tracker's http(s) URL, got {hook.url!r}")
        if not hook.link_field:
            raise ConfigError(f"{where}.link_field: required (where the link is in the answer)")
        check_template(f"{where}.reply", hook.reply, TASK_FIELDS)
        _check_body_template(f"{where}.body", hook.body)
        for j, room in enumerate(hook.rooms):
            _check_room(f"{where}.rooms[{j}]", room)


def _check_room(where: str, room: str) -> None:
    if not _ROOM.match(room):
        raise ConfigError(f"{where}: expected a room ID (!id:server) or alias (#name:server), got {room!r}")


def _check_body_template(where: str, body: Any) -> None:
    if isinstance(body, str):
        check_template(where, body, TASK_FIELDS)
    elif isinstance(body, dict):
        for key, value in body.items():
            _check_body_template(f"{where}.{key}", value)
    elif isinstance(body, list):
        for i, value in enumerate(body):
            _check_body_template(f"{where}[{i}]", value)


def check_template(where: str, template: str, allowed: tuple[str, ...] | None = None) -> None:
    """Refuse a template `str.format` cannot parse, one using fields it will never have, or
    one whose format specs `templates.render` refuses, at start rather than per message."""
    try:
        templates.check(template)
        for _, field_name, _, _ in string.Formatter().parse(template):
            if field_name is None:
                continue
            if not field_name.strip():
                raise ValueError("empty field {}; write {{ and }} for literal braces")
            if allowed is not None and field_name not in allowed and not (
                "argN" in allowed and re.fullmatch(r"arg[1-9][0-9]?", field_name)
            ):
                raise ValueError(f"unknown field {{{field_name}}}; the fields are " + ", ".join(allowed))
    except ValueError as e:
        raise ConfigError(f"{where}: not a valid template: {e}") from None
