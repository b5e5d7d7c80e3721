"""The command bot: `!`-commands answered from HTTP lookups, and messages filed as tasks.

The bot is the application service's own user. Invited into a room, it
joins (see `AppService`), then sees the room's events in the homeserver's
transactions:

- `!name args` runs a configured command: GET (or POST) a URL template
  filled with the arguments (an ERP, a CRM), and reply with a template
  over the JSON answer. `!help` lists the commands of the room; each
  command may be limited to some rooms.
- A configured reaction on a message, or a `!task` reply to it, POSTs the
  message (sender, body, room, link) to a task tracker's webhook and
  answers in the message's thread with the link from the tracker's answer.
  A message is filed once per tracker.

Replies are sent with a transaction ID derived from the event they answer,
so an event handled twice is still answered once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from . import templates
from .appservice import AppService
from .config import BotSection, BridgesConfig, Command, TaskHook
from .matrix import V3, HomeserverUnavailable, MatrixRequestError, q, retrying
from .messages import escape, text_to_html

logger = logging.getLogger(__name__)

# The fields a task body template may use, and the default body.
DEFAULT_TASK_BODY = {
    "title": "{title}",
    "description": "{body}\n\n{sender} in {room_id}: {link}",
    "sender": "{sender}",
    "body": "{body}",
    "room_id": "{room_id}",
    "event_id": "{event_id}",
    "link": "{link}",
    "reporter": "{reporter}",
    "note": "{note}",
}
TITLE_LENGTH = 120
REPLY_ATTEMPTS = 8


def strip_reply_fallback(body: str) -> str:
    """The body without the `> <@user> quoted` lines older clients put before a reply."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith(">"):
        return body
    while lines and lines[0].startswith(">"):
        lines.pop(0)
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines)


def parse_command(text: str, prefix: str) -> tuple[str, list[str]] | None:
    """(name, args) of `!name arg "quoted arg"`, or None if the text is no command."""
    if not text.startswith(prefix):
        return None
    rest = text[len(prefix) :]
    try:
        words = shlex.split(rest)
    except ValueError:  # an unbalanced quote: split on spaces, as typed
        words = rest.split()
    if not words or rest[:1].isspace():
        return None
    return words[0].lower(), words[1:]


def needed_args(command: Command) -> int:
    """How many arguments the command's templates use: {argN} needs N; {args} in the URL
    or reply needs 1 (the not-found answer may show an empty {args})."""
    needed = 0
    for template in (command.url, command.reply, command.not_found):
        for name in templates.fields(template):
            if name == "args" and template is not command.not_found:
                needed = max(needed, 1)
            elif name.startswith("arg") and name[3:].isdigit():
                needed = max(needed, int(name[3:]))
    return needed


def fill_body(template: Any, data: dict[str, Any]) -> Any:
    """A JSON body template with its strings rendered."""
    if isinstance(template, str):
        return templates.render(template, data)
    if isinstance(template, dict):
        return {key: fill_body(value, data) for key, value in template.items()}
    if isinstance(template, list):
        return [fill_body(value, data) for value in template]
    return template


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


class CommandBot(AppService):
    name = "bot"

    def __init__(self, config: BridgesConfig) -> None:
        section = config.bot
        assert section is not None
        super().__init__(config, section)
        self.settings: BotSection = section
        self.commands = {command.name: command for command in section.commands}
        self.task_commands = {hook.command: hook for hook in section.task_hooks if hook.command}
        self.task_reactions = {hook.reaction: hook for hook in section.task_hooks if hook.reaction}
        self._room_ids: dict[str, str] = {}
        self._filing: set[tuple[str, str]] = set()

    # -------------------------------------------------------------- events

    async def on_event(self, event: dict[str, Any]) -> None:
        content = event.get("content")
        if not isinstance(content, dict) or not isinstance(event.get("room_id"), str):
            return
        if event.get("type") == "m.room.message":
            await self._on_message(event, content)
        elif event.get("type") == "m.reaction":
            relates = content.get("m.relates_to")
            if isinstance(relates, dict) and relates.get("rel_type") == "m.annotation":
                hook = self.task_reactions.get(relates.get("key"))
                target = relates.get("event_id")
                if hook is not None and isinstance(target, str):
                    if await self._allowed(event["room_id"], hook.rooms):
                        await self._file_task(hook, event, target, note="", announce_duplicate=False)

    async def _on_message(self, event: dict[str, Any], content: dict[str, Any]) -> None:
        body = content.get("body")
        if content.get("msgtype") != "m.text" or not isinstance(body, str):
            return
        relates = content.get("m.relates_to")
        relates = relates if isinstance(relates, dict) else {}
        if relates.get("rel_type") == "m.replace":
            return  # an edit: the command was handled when first sent
        parsed = parse_command(strip_reply_fallback(body), self.settings.command_prefix)
        if parsed is None:
            return
        name, args = parsed
        prefix = self.settings.command_prefix
        room_id = event["room_id"]
        if name == "help":
            await self._reply(event, await self._help(room_id))
        elif name in self.task_commands:
            hook = self.task_commands[name]
            if not await self._allowed(room_id, hook.rooms):
                await self._reply(event, f"{prefix}{name} is not available in this room.")
                return
            in_reply_to = relates.get("m.in_reply_to")
            target = in_reply_to.get("event_id") if isinstance(in_reply_to, dict) else None
            if not isinstance(target, str):
                await self._reply(event, f"Reply to a message with {prefix}{name} to file it in {hook.name}.")
                return
            await self._file_task(hook, event, target, note=" ".join(args), announce_duplicate=True)
        elif name in self.commands:
            command = self.commands[name]
            if not await self._allowed(room_id, command.rooms):
                await self._reply(event, f"{prefix}{name} is not available in this room.")
                return
            await self._run_command(command, event, args)
        else:
            await self._reply(event, f"Unknown command {prefix}{name}. Try {prefix}help.")

    async def _help(self, room_id: str) -> str:
        prefix = self.settings.command_prefix
        lines = ["Commands in this room:"]
        for command in self.commands.values():
            if await self._allowed(room_id, command.rooms):
                usage = f"{prefix}{command.name} {command.usage}".rstrip()
                lines.append(f"{usage} — {command.description}" if command.description else usage)
        for hook in self.settings.task_hooks:
            if await self._allowed(room_id, hook.rooms):
                if hook.command:
                    lines.append(f"{prefix}{hook.command} (in reply to a message) — file it in {hook.name}")
                if hook.reaction:
                    lines.append(f"React with {hook.reaction} to a message — file it in {hook.name}")
        lines.append(f"{prefix}help — this list")
        return "\n".join(lines)

    async def _allowed(self, room_id: str, rooms: list[str]) -> bool:
        if not rooms:
            return True
        for room in rooms:
            if room == room_id or (room.startswith("#") and await self._resolve_alias(room) == room_id):
                return True
        return False

    async def _resolve_alias(self, alias: str) -> str | None:
        assert self.client is not None
        if alias not in self._room_ids:
            try:
                data = await self.client.request("GET", f"{V3}/directory/room/{q(alias)}")
            except MatrixRequestError:
                return None
            if isinstance(data.get("room_id"), str):
                self._room_ids[alias] = data["room_id"]
        return self._room_ids.get(alias)

    # ------------------------------------------------------------ commands

    async def _run_command(self, command: Command, event: dict[str, Any], args: list[str]) -> None:
        assert self.session is not None
        usage = f"{self.settings.command_prefix}{command.name} {command.usage}".rstrip()
        if len(args) < needed_args(command):
            await self._reply(event, f"Usage: {usage}")
            return
        label = f"{self.settings.command_prefix}{command.name}"
        if any(not arg.strip(".") for arg in args):
            # As a path segment, "", "." and ".." would name another resource of the
            # service (/stock/../level is /level), asked for with the bot's credentials.
            await self._reply(event, f"{label}: an argument cannot be empty or only dots.")
            return
        data: dict[str, Any] = {"args": " ".join(args), "sender": event["sender"], "room_id": event["room_id"]}
        data.update({f"arg{i}": arg for i, arg in enumerate(args, 1)})
        url = templates.render(command.url, data, escape=lambda s: quote(s, safe=""))
        request: dict[str, Any] = {"headers": command.headers, "timeout": aiohttp.ClientTimeout(total=command.timeout / 1000)}
        if command.method == "POST":
            request["json"] = {"args": args, "sender": event["sender"], "room_id": event["room_id"]}
        try:
            # Sent as rendered: nothing decoded, no dot segments resolved.
            async with self.session.request(command.method, URL(url, encoded=True), **request) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.warning("%s: %s: %s", label, _host(url), e)
            await self._reply(event, f"{label} failed: could not reach {_host(url)}.")
            return
        if status == 404:
            await self._reply(event, templates.render(command.not_found, data))
            return
        if not 200 <= status < 300:
            await self._reply(event, f"{label} failed: {_host(url)} answered HTTP {status}.")
            return
        try:
            answer = json.loads(raw)
        except ValueError:
            await self._reply(event, f"{label} failed: {_host(url)} did not answer JSON.")
            return
        fields = {"json": answer, **data, **(answer if isinstance(answer, dict) else {})}
        try:
            text = templates.render(command.reply, fields)
            rich = (
                templates.render(command.html_reply, fields, escape=escape)
                if command.html_reply is not None
                else text_to_html(text)
            )
        except templates.TemplateError as e:
            await self._reply(event, f"{label} failed: unexpected answer from {_host(url)} ({e}).")
            return
        await self._reply(event, text, rich)

    # --------------------------------------------------------------- tasks

    async def _file_task(
        self, hook: TaskHook, trigger: dict[str, Any], target_id: str, *, note: str, announce_duplicate: bool
    ) -> None:
        assert self.client is not None and self.session is not None
        room_id = trigger["room_id"]
        key = (target_id, hook.name)
        if key in self._filing:
            return
        existing = self.state.task_link(target_id, hook.name)
        if existing is not None:
            if announce_duplicate:
                await self._reply(trigger, f"Already filed: {existing}")
            return
        self._filing.add(key)
        try:
            try:
                target = await retrying(
                    lambda: self.client.get_event(room_id, target_id, user_id=self.bot_user_id),
                    self.section.retry,
                    "fetching a message to file",
                    attempts=REPLY_ATTEMPTS,
                )
            except MatrixRequestError as e:
                logger.warning("task %s: cannot read %s: %s", hook.name, target_id, e)
                await self._reply(trigger, "That message cannot be read by the bot, so it cannot be filed.")
                return
            content = target.get("content") if isinstance(target.get("content"), dict) else {}
            body = strip_reply_fallback(content.get("body", "")) if isinstance(content.get("body"), str) else ""
            first_line = body.strip().split("\n", 1)[0] if body.strip() else "(no text)"
            data = {
                "sender": target.get("sender", ""),
                "body": body,
                "title": first_line[:TITLE_LENGTH],
                "room_id": room_id,
                "event_id": target_id,
                "link": f"{self.settings.permalink_base}{room_id}/{target_id}?via={self.server_name}",
                "note": note,
                "reporter": trigger["sender"],
            }
            # The config allows only the fields of `data` in these templates.
            request_body = fill_body(DEFAULT_TASK_BODY if hook.body is None else hook.body, data)
            link = await self._post_task(hook, request_body, target, trigger)
            if link is None:
                return
            self.state.add_task(target_id, hook.name, link)
        finally:
            self._filing.discard(key)
        text = templates.render(hook.reply, {**data, "link": link})
        await self._reply(target, text, trigger=trigger, thread=True)

    async def _post_task(
        self, hook: TaskHook, body: Any, target: dict[str, Any], trigger: dict[str, Any]
    ) -> str | None:
        """The link to the created task, or None (the failure is answered in the thread)."""
        assert self.session is not None
        where = _host(hook.url)
        try:
            async with self.session.request(
                hook.method,
                hook.url,
                json=body,
                headers=hook.headers,
                timeout=aiohttp.ClientTimeout(total=hook.timeout / 1000),
            ) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.warning("task hook %s: %s", hook.name, e)
            await self._reply(
                target, f"Could not file the message in {hook.name}: {where} cannot be reached.",
                trigger=trigger, thread=True,
            )
            return None
        if not 200 <= status < 300:
            await self._reply(
                target, f"Could not file the message in {hook.name}: {where} answered HTTP {status}.",
                trigger=trigger, thread=True,
            )
            return None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        link = templates.lookup(answer, hook.link_field)
        if isinstance(link, int) and not isinstance(link, bool):
            link = str(link)  # an issue number, for a reply template such as ".../browse/{link}"
        if not isinstance(link, str) or not link:
            logger.warning("task hook %s: the answer has no %s: %r", hook.name, hook.link_field, raw[:200])
            return "(the tracker gave no link)"
        return link

    # ------------------------------------------------------------- replies

    async def _reply(
        self,
        to: dict[str, Any],
        text: str,
        rich: str | None = None,
        *,
        trigger: dict[str, Any] | None = None,
        thread: bool = False,
    ) -> None:
        """Answer `to` (on behalf of `trigger`, the event that asked: `to` by default).

        In `to`'s thread if it is in one; with `thread`, a top-level message
        gets a thread of its own. One answer per trigger, however often it
        is handled: the transaction ID is derived from the two events.
        """
        assert self.client is not None
        trigger = trigger or to
        content: dict[str, Any] = {
            "msgtype": "m.notice",
            "body": text,
            "format": "org.matrix.custom.html",
            "formatted_body": rich if rich is not None else text_to_html(text),
        }
        relates = to.get("content", {}).get("m.relates_to")
        thread_root = (
            relates.get("event_id")
            if isinstance(relates, dict) and relates.get("rel_type") == "m.thread"
            else None
        )
        if thread_root is None and thread:
            thread_root = to["event_id"]
        if thread_root is not None:
            content["m.relates_to"] = {
                "rel_type": "m.thread",
                "event_id": thread_root,
                "is_falling_back": thread_root == to["event_id"],
                "m.in_reply_to": {"event_id": to["event_id"]},
            }
        else:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": to["event_id"]}}
        txn_id = "bot-" + hashlib.sha256(f"{trigger['event_id']}|{to['event_id']}".encode()).hexdigest()[:40]
        try:
            await retrying(
                lambda: self.client.send(to["room_id"], "m.room.message", content, txn_id, user_id=self.bot_user_id),
                self.section.retry,
                f"answering {to['event_id']}",
                attempts=REPLY_ATTEMPTS,
            )
        except (MatrixRequestError, HomeserverUnavailable) as e:
            logger.error("cannot answer %s in %s: %s", to["event_id"], to["room_id"], e)
