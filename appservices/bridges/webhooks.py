"""Incoming webhooks: `POST /hooks/{token}` becomes a message in the hook's room.

Each hook has a secret URL, a target room, a kind of payload (Slack,
Alertmanager, Grafana or a template over any JSON) and its own ghost user,
which posts its messages. A payload is validated and rendered before
anything is stored: a bad one is answered 4xx and nothing is posted. A good
one goes into the outbox with a transaction ID fixed once, and a single
worker posts the outbox in order, retrying with backoff while the
homeserver is down; the homeserver deduplicates on the transaction ID, so
however many attempts it takes, the message is posted exactly once.

The request waits (up to `response_timeout`) for its message to be posted,
and is answered 200 with the event ID, or 202 when it is queued behind an
outage; 502 if the homeserver refuses the message (e.g. the bridge was
never invited to a private room). Slack hooks answer `ok`, as Slack does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
from typing import Any

from aiohttp import web

from homeserver.errors import MatrixError, bad_json, not_found
from homeserver.http import json_response, read_json

from . import alerts, slack, templates
from .appservice import AppService
from .config import BridgesConfig, Hook, WebhooksSection
from .matrix import MatrixRequestError, retrying
from .messages import Message, PayloadError, escape, text_to_html
from .state import Delivery

logger = logging.getLogger(__name__)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def render_hook(hook: Hook, payload: dict[str, Any]) -> Message:
    """The message a payload becomes, or a PayloadError saying what is wrong with it."""
    if hook.type == "slack":
        message = slack.render(payload)
    elif hook.type == "alertmanager":
        message = alerts.render_alertmanager(payload, hook.name)
    elif hook.type == "grafana":
        message = alerts.render_grafana(payload, hook.name)
    else:
        assert hook.template is not None
        try:
            body = templates.render(hook.template, payload)
            if hook.html_template is not None:
                rich = templates.render(hook.html_template, payload, escape=escape)
            else:
                rich = text_to_html(body)
        except templates.TemplateError as e:
            raise PayloadError(str(e)) from None
        message = Message(body, rich)
    message.msgtype = hook.msgtype
    return message


class WebhooksBridge(AppService):
    name = "webhooks"

    def __init__(self, config: BridgesConfig) -> None:
        section = config.webhooks
        assert section is not None
        super().__init__(config, section)
        self.settings: WebhooksSection = section
        self.by_name = {hook.name: hook for hook in section.hooks}
        self._wakeup = asyncio.Event()
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def ghost_id(self, hook: Hook) -> str:
        return f"@{self.settings.ghost_prefix}{hook.name}:{self.server_name}"

    def is_ours(self, user_id: str) -> bool:
        return user_id == self.bot_user_id or (
            user_id.startswith("@" + self.settings.ghost_prefix) and user_id.endswith(":" + self.server_name)
        )

    def profile_of(self, user_id: str) -> tuple[str | None, str | None]:
        for hook in self.settings.hooks:
            if self.ghost_id(hook) == user_id:
                return hook.display_name or hook.name, hook.avatar_url
        return None, None

    async def start(self) -> None:
        await super().start()
        self.spawn(self._deliver_forever(), "webhook delivery")

    # --------------------------------------------------------------- intake

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/hooks/{token}", self._receive)
        app.router.add_put("/hooks/{token}", self._receive)

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        given = request.match_info["token"].encode()
        # Compared in constant time: the token is the hook's only secret.
        hook = next((h for h in self.settings.hooks if hmac.compare_digest(h.token.encode(), given)), None)
        if hook is None:
            raise not_found("No hook has this URL")
        payload = await self._read_payload(request)
        try:
            message = render_hook(hook, payload)
        except PayloadError as e:
            raise bad_json(f"{hook.type} payload: {e}") from None
        delivery = self.state.enqueue(hook.name, dataclasses.asdict(message))
        posted = asyncio.get_running_loop().create_future()
        self._waiters[delivery.delivery_id] = posted
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(posted), self.settings.response_timeout / 1000)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters.pop(delivery.delivery_id, None)
        status, event_id, error = self.state.outcome(delivery.delivery_id)
        if status == "failed":
            raise MatrixError(502, "M_UNKNOWN", f"the homeserver refused the message: {error}")
        if hook.type == "slack":
            return web.Response(text="ok")
        if status == "sent":
            return json_response({"event_id": event_id})
        return json_response({"queued": True, "delivery_id": delivery.delivery_id}, status=202)

    async def _read_payload(self, request: web.Request) -> dict[str, Any]:
        limit = self.settings.max_body_size
        too_large = MatrixError(413, "M_TOO_LARGE", f"Request body is larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = await request.read()
        if len(body) > limit:
            raise too_large
        # `curl -d '{...}'` says it is a form: a body that is a JSON object is JSON.
        if request.content_type not in FORM_TYPES or body.lstrip().startswith(b"{"):
            return await read_json(request)
        # Slack's other format: the JSON in the `payload` form field.
        form = await request.post()
        raw = form.get("payload")
        if not isinstance(raw, str):
            raise MatrixError(400, "M_NOT_JSON", "A form post carries its JSON in the `payload` field")
        try:
            payload = json.loads(raw)
        except ValueError:
            raise MatrixError(400, "M_NOT_JSON", "The `payload` field is not valid JSON") from None
        if not isinstance(payload, dict):
            raise bad_json("The `payload` field must be a JSON object")
        return payload

    # ------------------------------------------------------------- delivery

    async def _deliver_forever(self) -> None:
        while True:
            delivery = self.state.next_pending()
            if delivery is None:
                self._wakeup.clear()
                if self.state.next_pending() is None:
                    await self._wakeup.wait()
                continue
            await self._deliver(delivery)
            waiter = self._waiters.get(delivery.delivery_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _deliver(self, delivery: Delivery) -> None:
        hook = self.by_name.get(delivery.hook)
        if hook is None:
            self.state.failed(delivery.delivery_id, f"hook {delivery.hook!r} is no longer configured")
            return
        message = Message(**delivery.message)
        try:
            event_id = await retrying(
                lambda: self._post(hook, message, delivery.txn_id), self.section.retry, f"hook {hook.name}"
            )
        except MatrixRequestError as e:
            logger.error("hook %s: the homeserver refused the message for %s: %s", hook.name, hook.room, e)
            self.state.failed(delivery.delivery_id, str(e))
            return
        self.state.delivered(delivery.delivery_id, event_id)
        logger.info("hook %s: posted %s to %s", hook.name, event_id, hook.room)

    async def _post(self, hook: Hook, message: Message, txn_id: str) -> str:
        assert self.client is not None
        ghost = self.ghost_id(hook)
        await self.ensure_user(ghost, hook.display_name or hook.name, hook.avatar_url)
        room_id = await self.ensure_joined(hook.room, ghost)
        reply_to = self.state.message_for(message.reply_to, room_id)
        content = message.content(reply_to)
        try:
            event_id = await self.client.send(room_id, "m.room.message", content, txn_id, user_id=ghost)
        except MatrixRequestError as e:
            if e.status != 403:
                raise
            # Kicked, or the room was left: join again and resend.
            self.forget_joined(room_id, ghost)
            room_id = await self.ensure_joined(hook.room, ghost)
            event_id = await self.client.send(room_id, "m.room.message", content, txn_id, user_id=ghost)
        self.state.remember(message.remember_as, message.forget, room_id, event_id)
        return event_id
