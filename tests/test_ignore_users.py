"""Ignoring users (spec: Ignoring Users, `m.ignored_user_list` account data),
over real HTTP on both engines: what an ignored user sends, but for state
events, is left out of /sync, /messages, /context, unread counts,
/notifications and pushes (to a real local push gateway); their invites are
not shown; the list takes effect at once and its change reaches /sync.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from .test_push import LOCAL_GATEWAYS, V3, Gateway, count, counts, pusher_body, q, room_with, send
from .test_push import gateway  # noqa: F401 - the push gateway fixture

if TYPE_CHECKING:
    from .conftest import Response, TestServer

IGNORED_USER_LIST = "m.ignored_user_list"


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return LOCAL_GATEWAYS


async def ignore(server: TestServer, user: dict[str, Any], content: Any) -> None:
    resp = await server.put(
        f"{V3}/user/{q(user['user_id'])}/account_data/{IGNORED_USER_LIST}", content, token=user["access_token"]
    )
    assert resp.status == 200, resp.body


def ignoring(*users: dict[str, Any]) -> dict[str, Any]:
    return {"ignored_users": {u["user_id"]: {} for u in users}}


async def sync(server: TestServer, user: dict[str, Any], since: str | None = None, **params: Any) -> dict[str, Any]:
    query = {**({"since": since} if since else {}), **{k: str(v) for k, v in params.items()}}
    resp = await server.get(f"{V3}/sync", token=user["access_token"], params=query)
    assert resp.status == 200, resp.body
    return resp.body


def timeline(body: dict[str, Any], room_id: str) -> list[str]:
    section = body["rooms"]["join"].get(room_id)
    return [e["event_id"] for e in section["timeline"]["events"]] if section else []


def account_data(body: dict[str, Any]) -> dict[str, Any]:
    return {e["type"]: e["content"] for e in body["account_data"]["events"]}


async def set_topic(server: TestServer, user: dict[str, Any], room_id: str, topic: str) -> str:
    resp = await server.put(f"{V3}/rooms/{q(room_id)}/state/m.room.topic/", {"topic": topic}, token=user["access_token"])
    assert resp.status == 200, resp.body
    return resp.body["event_id"]


async def messages(server: TestServer, user: dict[str, Any], room_id: str) -> list[str]:
    resp = await server.get(
        f"{V3}/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "50"}, token=user["access_token"]
    )
    assert resp.status == 200, resp.body
    return [e["event_id"] for e in resp.body["chunk"]]


async def context(server: TestServer, user: dict[str, Any], room_id: str, event_id: str) -> Response:
    return await server.get(
        f"{V3}/rooms/{q(room_id)}/context/{q(event_id)}", params={"limit": "10"}, token=user["access_token"]
    )


async def notified(server: TestServer, user: dict[str, Any]) -> list[str]:
    resp = await server.get(f"{V3}/notifications", token=user["access_token"])
    assert resp.status == 200, resp.body
    return [n["event"]["event_id"] for n in resp.body["notifications"]]


async def test_ignored_users_events_are_left_out_but_their_state_events(server: TestServer) -> None:
    room_id, (alice, bob, carol) = await room_with(server, "alice", "bob", "carol")
    before = await send(server, alice["access_token"], room_id, "before")
    since = (await sync(server, bob))["next_batch"]
    await ignore(server, bob, ignoring(alice))
    body = await sync(server, bob, since)
    assert account_data(body)[IGNORED_USER_LIST] == ignoring(alice)
    since = body["next_batch"]

    hidden = await send(server, alice["access_token"], room_id, "you cannot see me")
    topic = await set_topic(server, alice, room_id, "still shown")
    shown = await send(server, carol["access_token"], room_id, "hello bob")

    body = await sync(server, bob, since)
    assert timeline(body, room_id) == [topic, shown]
    assert hidden in timeline(await sync(server, carol), room_id)
    initial = timeline(await sync(server, bob), room_id)
    assert hidden not in initial and before not in initial
    assert initial[-2:] == [topic, shown]

    history = await messages(server, bob, room_id)
    assert hidden not in history and before not in history
    assert history[:2] == [shown, topic]
    assert hidden in await messages(server, carol, room_id)

    resp = await context(server, bob, room_id, hidden)
    assert (resp.status, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    resp = await context(server, bob, room_id, topic)
    assert resp.status == 200, resp.body
    assert hidden not in [e["event_id"] for e in resp.body["events_before"]]
    assert [e["event_id"] for e in resp.body["events_after"]] == [shown]
    assert (await context(server, carol, room_id, hidden)).status == 200

    # Not counted, not in /notifications (the earlier one, from before, neither).
    assert await counts(server, bob, room_id) == count(2)  # `before` and `shown`
    assert await notified(server, bob) == [shown]

    # Un-ignored: what Alice sends now is shown again.
    await ignore(server, bob, {"ignored_users": {}})
    body = await sync(server, bob, body["next_batch"])
    assert account_data(body)[IGNORED_USER_LIST] == {"ignored_users": {}}
    again = await send(server, alice["access_token"], room_id, "back")
    assert timeline(await sync(server, bob, body["next_batch"]), room_id) == [again]
    assert await counts(server, bob, room_id) == count(3)
    assert hidden in await messages(server, bob, room_id)


async def test_invites_from_ignored_users_are_not_shown(server: TestServer) -> None:
    alice, bob, carol = [await server.register_user(name) for name in ("alice", "bob", "carol")]
    await ignore(server, bob, ignoring(alice))
    since = (await sync(server, bob))["next_batch"]
    rooms = {}
    for inviter in (alice, carol):
        resp = await server.post(
            f"{V3}/createRoom", {"invite": [bob["user_id"]]}, token=inviter["access_token"]
        )
        assert resp.status == 200, resp.body
        rooms[inviter["user_id"]] = resp.body["room_id"]
    from_carol = rooms[carol["user_id"]]
    assert list((await sync(server, bob, since))["rooms"]["invite"]) == [from_carol]
    assert list((await sync(server, bob))["rooms"]["invite"]) == [from_carol]
    # Nor is it a notification (Carol's is).
    invites = await notified(server, bob)
    assert len(invites) == 1
    event = await server.hs.storage.events.get_event(invites[0])
    assert event is not None and event.sender == carol["user_id"]


async def test_ignored_users_are_not_pushed(server: TestServer, gateway: Gateway) -> None:
    room_id, (alice, bob, carol) = await room_with(server, "alice", "bob", "carol")
    assert (await server.post(f"{V3}/pushers/set", pusher_body(gateway.url), token=bob["access_token"])).status == 200
    await ignore(server, bob, ignoring(alice))
    await send(server, alice["access_token"], room_id, "ignored", **{"m.mentions": {"user_ids": [bob["user_id"]]}})
    shown = await send(server, carol["access_token"], room_id, "heard")
    received = await gateway.wait_for(1)
    await asyncio.sleep(0.2)
    assert [r["notification"]["event_id"] for r in received] == [shown]
    assert received[0]["notification"]["counts"] == {"unread": 1}


async def test_a_change_of_the_list_wakes_a_waiting_sync(server: TestServer) -> None:
    _room_id, (alice, bob) = await room_with(server, "alice", "bob")
    since = (await sync(server, bob))["next_batch"]
    waiting = asyncio.create_task(sync(server, bob, since, timeout=10000))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await ignore(server, bob, ignoring(alice))
    body = await asyncio.wait_for(waiting, 5)
    assert account_data(body)[IGNORED_USER_LIST] == ignoring(alice)


async def test_a_malformed_list_ignores_nobody(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    for content in ({"ignored_users": [alice["user_id"]]}, {"ignored_users": "everyone"}, {}):
        await ignore(server, bob, content)
        event_id = await send(server, alice["access_token"], room_id, "seen")
        assert event_id in timeline(await sync(server, bob), room_id)
        assert event_id in await messages(server, bob, room_id)
    assert await counts(server, bob, room_id) == count(3)
