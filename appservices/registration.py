"""Application-service registration files: loading, validation, namespaces.

A registration (spec: Application Service API, "Registration") is a YAML
file the operator lists in `app_service_config_files`, as in Synapse. Every
problem is a `ConfigError` naming the file and the field, raised at start-up
so a bridge with a typo never half-works.

Namespaces match as Synapse matches them: the regex must match at the start
of the ID (`re.match`), so `@_irc_.*` and `@_irc_.*:example\\.org` both work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from homeserver.config import Config, ConfigError, read_yaml
from homeserver.ids import split_user_id, user_id

NAMESPACE_KINDS = ("users", "aliases", "rooms")
# The unstable name of `receive_ephemeral` (MSC2409), which bridges still write.
EPHEMERAL_UNSTABLE = "de.sorunome.msc2409.push_ephemeral"
# Opting into to-device messages (MSC4203, MSC2409's follow-up): unstable name first.
TO_DEVICE_KEYS = ("org.matrix.msc4203.receive_to_device", "receive_to_device")
# Opting into device management (MSC4190): Synapse's and mautrix's name first.
DEVICE_MANAGEMENT_KEYS = ("io.element.msc4190", "org.matrix.msc4190")


@dataclass(frozen=True)
class Namespace:
    regex: re.Pattern[str]
    exclusive: bool

    def matches(self, value: str) -> bool:
        return self.regex.match(value) is not None


@dataclass(frozen=True)
class ApplicationService:
    id: str
    url: str | None
    as_token: str
    hs_token: str
    sender: str
    users: tuple[Namespace, ...] = ()
    aliases: tuple[Namespace, ...] = ()
    rooms: tuple[Namespace, ...] = ()
    rate_limited: bool = True
    receive_ephemeral: bool = False
    # To-device messages of its users' devices (only together with receive_ephemeral).
    receive_to_device: bool = False
    # MSC4190: creates and deletes its users' devices without logging in or UIA.
    device_management: bool = False
    protocols: tuple[str, ...] = ()
    server_name: str = field(default="", compare=False)
    source: str = field(default="", compare=False)

    # -------------------------------------------------------------- users

    def is_interested_in_user(self, uid: str) -> bool:
        """Its sender, and local users its namespaces match (spec: only local users)."""
        if uid == self.sender:
            return True
        parts = split_user_id(uid)
        return parts is not None and parts[1] == self.server_name and _any(self.users, uid)

    def is_exclusive_user(self, uid: str) -> bool:
        return uid == self.sender or _any(self.users, uid, exclusive=True)

    @property
    def sends_to_device(self) -> bool:
        """Whether its transactions carry its users' to-device messages (MSC2409/MSC4203)."""
        return self.receive_ephemeral and self.receive_to_device

    # ------------------------------------------------------ aliases, rooms

    def is_interested_in_alias(self, alias: str) -> bool:
        return _any(self.aliases, alias)

    def is_exclusive_alias(self, alias: str) -> bool:
        return _any(self.aliases, alias, exclusive=True)

    def is_interested_in_room_id(self, room_id: str) -> bool:
        return _any(self.rooms, room_id)


def _any(namespaces: Iterable[Namespace], value: str, *, exclusive: bool = False) -> bool:
    return any(ns.matches(value) for ns in namespaces if ns.exclusive or not exclusive)


# ------------------------------------------------------------------- loading


def load_application_services(config: Config) -> list[ApplicationService]:
    """Every registration `app_service_config_files` lists, validated together."""
    services: list[ApplicationService] = []
    seen: dict[tuple[str, str], str] = {}
    for name in config.app_service_config_files:
        path = config.resolve_path(name)
        service = load_registration(path, config.server_name)
        for key, value in (
            ("id", service.id),
            ("as_token", service.as_token),
            ("hs_token", service.hs_token),
            ("sender_localpart", service.sender),
        ):
            other = seen.get((key, value))
            if other is not None:
                raise ConfigError(
                    f"app_service_config_files: {path}: {key}: the same as in {other};"
                    " each application service needs its own"
                )
            seen[(key, value)] = str(path)
        services.append(service)
    return services


def load_registration(path: Path, server_name: str) -> ApplicationService:
    """One registration file; ConfigError names the file and the field at fault."""

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"app_service_config_files: {path}: {key}: {problem}")

    try:
        data = read_yaml(path, "registration file")
    except ConfigError as exc:
        raise ConfigError(f"app_service_config_files: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"app_service_config_files: {path}: expected a mapping of registration fields")

    for key in ("id", "as_token", "hs_token", "sender_localpart"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise fail(key, "required, a non-empty string")
    # Missing and null differ: null turns pushing off on purpose, a missing
    # key is more likely a mistake (Synapse refuses it too).
    if "url" not in data:
        raise fail("url", "required: the application service's URL, or null to send it nothing")
    url = data["url"]
    if url is not None and (not isinstance(url, str) or not re.match(r"^https?://[^/]+", url)):
        raise fail("url", f"expected an http(s) URL or null, got {url!r}")
    localpart = data["sender_localpart"]
    if quote(localpart) != localpart or localpart != localpart.lower():
        raise fail("sender_localpart", f"{localpart!r} is not a valid lower-case user ID localpart")

    namespaces = data.get("namespaces")
    if not isinstance(namespaces, dict):
        raise fail("namespaces", "required, a mapping of users/aliases/rooms lists")
    parsed: dict[str, tuple[Namespace, ...]] = {}
    for kind in NAMESPACE_KINDS:
        entries = namespaces.get(kind) or []
        if not isinstance(entries, list):
            raise fail(f"namespaces.{kind}", "expected a list of {exclusive, regex} entries")
        items = []
        for i, entry in enumerate(entries):
            where = f"namespaces.{kind}[{i}]"
            if not isinstance(entry, dict):
                raise fail(where, "expected a mapping with 'exclusive' and 'regex'")
            if not isinstance(entry.get("exclusive"), bool):
                raise fail(f"{where}.exclusive", "required, true or false")
            regex = entry.get("regex")
            if not isinstance(regex, str) or not regex:
                raise fail(f"{where}.regex", "required, a non-empty regular expression")
            try:
                compiled = re.compile(regex)
            except re.error as exc:
                raise fail(f"{where}.regex", f"{regex!r} is not a valid regular expression: {exc}") from None
            items.append(Namespace(compiled, entry["exclusive"]))
        parsed[kind] = tuple(items)

    rate_limited = data.get("rate_limited", True)
    if not isinstance(rate_limited, bool):
        raise fail("rate_limited", "expected true or false")
    ephemeral = data.get("receive_ephemeral", data.get(EPHEMERAL_UNSTABLE, False))
    if not isinstance(ephemeral, bool):
        raise fail("receive_ephemeral", "expected true or false")
    to_device = _flag(data, TO_DEVICE_KEYS, fail)
    device_management = _flag(data, DEVICE_MANAGEMENT_KEYS, fail)
    protocols = data.get("protocols") or []
    if not isinstance(protocols, list) or not all(isinstance(p, str) for p in protocols):
        raise fail("protocols", "expected a list of protocol names")

    return ApplicationService(
        id=data["id"],
        url=url.rstrip("/") if url else None,
        as_token=data["as_token"],
        hs_token=data["hs_token"],
        sender=user_id(localpart, server_name),
        users=parsed["users"],
        aliases=parsed["aliases"],
        rooms=parsed["rooms"],
        rate_limited=rate_limited,
        receive_ephemeral=ephemeral,
        receive_to_device=to_device,
        device_management=device_management,
        protocols=tuple(protocols),
        server_name=server_name,
        source=str(path),
    )


def _flag(data: dict[str, Any], keys: tuple[str, ...], fail: Callable[[str, str], ConfigError]) -> bool:
    """A true/false field that has several names: the first one present counts."""
    for key in keys:
        if key in data:
            if not isinstance(data[key], bool):
                raise fail(key, "expected true or false")
            return data[key]
    return False
