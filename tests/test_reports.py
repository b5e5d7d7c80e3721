"""Reporting events and rooms, and the admin API that reads the reports, over
real HTTP on both engines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V3 = "/_matrix/client/v3"
ADMIN = "/_synapse/admin/v1/event_reports"
ALICE, BOB = "@alice:test.local", "@bob:test.local"


def q(identifier: str) -> str:
    return quote(identifier, safe="")


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert (resp.status, resp.body.get("errcode")) == (status, errcode), resp.body


async def ok(resp_coro: Any) -> Any:
    resp = await resp_coro
    assert resp.status == 200, resp.body
    return resp.body


class Setup:
    def __init__(self, admin: str, alice: str, bob: str, eve: str, room: str, message: str) -> None:
        self.admin, self.alice, self.bob, self.eve = admin, alice, bob, eve
        self.room, self.message = room, message


@pytest.fixture
async def setup(server: TestServer) -> Setup:
    """Alice's room "Sales" (#sales), Bob joined, a message by Alice; Eve is an outsider."""
    admin = (await server.register_user("admin", admin=True))["access_token"]
    alice, bob, eve = [
        (await server.register_user(n))["access_token"] for n in ("alice", "bob", "eve")
    ]
    room = (
        await ok(
            server.post(
                f"{V3}/createRoom",
                {"preset": "public_chat", "name": "Sales", "room_alias_name": "sales"},
                token=alice,
            )
        )
    )["room_id"]
    await ok(server.post(f"{V3}/rooms/{q(room)}/join", {}, token=bob))
    message = (
        await ok(
            server.put(
                f"{V3}/rooms/{q(room)}/send/m.room.message/t1",
                {"msgtype": "m.text", "body": "buy now"},
                token=alice,
            )
        )
    )["event_id"]
    return Setup(admin, alice, bob, eve, room, message)


async def report(server: TestServer, token: str, room: str, event: str, body: Any) -> Response:
    return await server.post(f"{V3}/rooms/{q(room)}/report/{q(event)}", body, token=token)


# ------------------------------------------------------------ reporting events


async def test_report_event_and_admin_reads_it(server, setup):
    resp = await report(
        server, setup.bob, setup.room, setup.message, {"reason": "spam", "score": -100}
    )
    assert (resp.status, resp.body) == (200, {})

    listing = await ok(server.get(ADMIN, token=setup.admin))
    assert listing["total"] == 1 and "next_token" not in listing
    (entry,) = listing["event_reports"]
    assert entry == {
        "id": entry["id"],
        "received_ts": entry["received_ts"],
        "room_id": setup.room,
        "name": "Sales",
        "event_id": setup.message,
        "user_id": BOB,
        "reason": "spam",
        "score": -100,
        "sender": ALICE,
        "canonical_alias": "#sales:test.local",
    }
    assert isinstance(entry["id"], int) and entry["received_ts"] > 0

    detail = await ok(server.get(f"{ADMIN}/{entry['id']}", token=setup.admin))
    assert {k: v for k, v in detail.items() if k != "event_json"} == entry
    assert detail["event_json"]["content"] == {"msgtype": "m.text", "body": "buy now"}
    assert detail["event_json"]["room_id"] == setup.room
    assert "signatures" in detail["event_json"]


async def test_reason_and_score_are_optional(server, setup):
    await ok(report(server, setup.bob, setup.room, setup.message, {}))
    (entry,) = (await ok(server.get(ADMIN, token=setup.admin)))["event_reports"]
    assert entry["reason"] is None and entry["score"] is None


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"score": 1}, "M_INVALID_PARAM"),
        ({"score": -101}, "M_INVALID_PARAM"),
        ({"score": "-5"}, "M_BAD_JSON"),
        ({"score": True}, "M_BAD_JSON"),
        ({"score": -5.5}, "M_BAD_JSON"),
        ({"reason": 3}, "M_BAD_JSON"),
    ],
)
async def test_bad_report_bodies(server, setup, body, errcode):
    assert_error(await report(server, setup.bob, setup.room, setup.message, body), 400, errcode)
    assert (await ok(server.get(ADMIN, token=setup.admin)))["total"] == 0


async def test_report_needs_a_json_body_and_a_token(server, setup):
    path = f"{V3}/rooms/{q(setup.room)}/report/{q(setup.message)}"
    assert_error(await server.post(path, data="nope", token=setup.bob), 400, "M_NOT_JSON")
    assert_error(await server.post(path, {"reason": "x"}), 401, "M_MISSING_TOKEN")


async def test_events_the_reporter_cannot_see_are_not_found(server, setup):
    # Eve is not in the room.
    assert_error(await report(server, setup.eve, setup.room, setup.message, {}), 404, "M_NOT_FOUND")
    # Unknown events and rooms, and an event of another room.
    assert_error(await report(server, setup.bob, setup.room, "$nope", {}), 404, "M_NOT_FOUND")
    assert_error(
        await report(server, setup.bob, "!nowhere:test.local", setup.message, {}),
        404,
        "M_NOT_FOUND",
    )
    other = (await ok(server.post(f"{V3}/createRoom", {}, token=setup.bob)))["room_id"]
    assert_error(await report(server, setup.bob, other, setup.message, {}), 404, "M_NOT_FOUND")
    assert_error(
        await report(server, setup.bob, "bad-room", setup.message, {}), 400, "M_INVALID_PARAM"
    )
    assert (await ok(server.get(ADMIN, token=setup.admin)))["total"] == 0


async def test_history_hidden_from_the_reporter_is_not_found(server, setup):
    await ok(
        server.put(
            f"{V3}/rooms/{q(setup.room)}/state/m.room.history_visibility/",
            {"history_visibility": "joined"},
            token=setup.alice,
        )
    )
    before = (
        await ok(
            server.put(
                f"{V3}/rooms/{q(setup.room)}/send/m.room.message/t2",
                {"msgtype": "m.text", "body": "before eve"},
                token=setup.alice,
            )
        )
    )["event_id"]
    await ok(server.post(f"{V3}/rooms/{q(setup.room)}/join", {}, token=setup.eve))
    assert_error(await report(server, setup.eve, setup.room, before, {}), 404, "M_NOT_FOUND")


async def test_former_members_and_redacted_events(server, setup):
    await ok(server.post(f"{V3}/rooms/{q(setup.room)}/leave", {}, token=setup.bob))
    assert_error(await report(server, setup.bob, setup.room, setup.message, {}), 404, "M_NOT_FOUND")
    await ok(
        server.put(
            f"{V3}/rooms/{q(setup.room)}/redact/{q(setup.message)}/r1", {}, token=setup.alice
        )
    )
    await ok(server.post(f"{V3}/rooms/{q(setup.room)}/join", {}, token=setup.eve))
    assert_error(await report(server, setup.eve, setup.room, setup.message, {}), 404, "M_NOT_FOUND")


# ------------------------------------------------------------- reporting rooms


async def test_report_room(server, setup):
    path = f"{V3}/rooms/{q(setup.room)}/report"
    # Reporting a room needs no membership.
    assert (await ok(server.post(path, {"reason": ""}, token=setup.eve))) == {}
    rows = await server.hs.db.fetchall("t", "SELECT room_id, user_id, reason FROM room_reports")
    assert [tuple(r) for r in rows] == [(setup.room, "@eve:test.local", "")]

    assert_error(await server.post(path, {}, token=setup.eve), 400, "M_MISSING_PARAM")
    assert_error(await server.post(path, {"reason": 1}, token=setup.eve), 400, "M_BAD_JSON")
    unknown = f"{V3}/rooms/{q('!nowhere:test.local')}/report"
    assert_error(await server.post(unknown, {"reason": "x"}, token=setup.eve), 404, "M_NOT_FOUND")


# ------------------------------------------------------------------ admin API


async def test_admin_listing_pages_filters_and_orders(server, setup):
    other = (await ok(server.post(f"{V3}/createRoom", {"name": "Other"}, token=setup.bob)))[
        "room_id"
    ]
    other_msg = (
        await ok(
            server.put(
                f"{V3}/rooms/{q(other)}/send/m.room.message/t1",
                {"msgtype": "m.text", "body": "x"},
                token=setup.bob,
            )
        )
    )["event_id"]
    for reason in ("one", "two", "three"):
        await ok(report(server, setup.bob, setup.room, setup.message, {"reason": reason}))
    await ok(report(server, setup.alice, setup.room, setup.message, {"reason": "four"}))
    await ok(report(server, setup.bob, other, other_msg, {"reason": "five"}))

    async def reasons(**params: Any) -> tuple[list[str], dict[str, Any]]:
        body = await ok(
            server.get(ADMIN, token=setup.admin, params={k: str(v) for k, v in params.items()})
        )
        return [r["reason"] for r in body["event_reports"]], body

    assert (await reasons())[0] == ["five", "four", "three", "two", "one"]
    assert (await reasons(dir="f"))[0] == ["one", "two", "three", "four", "five"]
    page, body = await reasons(dir="f", limit=2)
    assert page == ["one", "two"] and body["next_token"] == 2 and body["total"] == 5
    page, body = await reasons(dir="f", limit=2, **{"from": 4})
    assert page == ["five"] and "next_token" not in body
    assert (await reasons(user_id=ALICE))[0] == ["four"]
    # Synapse's filters match parts of IDs.
    assert (await reasons(user_id="alice"))[0] == ["four"]
    page, body = await reasons(room_id=other)
    assert page == ["five"] and body["total"] == 1
    assert body["event_reports"][0]["name"] == "Other"
    assert body["event_reports"][0]["canonical_alias"] is None
    # LIKE wildcards are taken literally.
    assert (await reasons(user_id="%"))[0] == []
    assert (await reasons(room_id=setup.room, user_id=BOB))[0] == ["three", "two", "one"]


async def test_admin_api_refuses_non_admins(server, setup):
    await ok(report(server, setup.bob, setup.room, setup.message, {"reason": "spam"}))
    report_id = (await ok(server.get(ADMIN, token=setup.admin)))["event_reports"][0]["id"]
    assert_error(await server.get(ADMIN, token=setup.alice), 403, "M_FORBIDDEN")
    assert_error(await server.get(f"{ADMIN}/{report_id}", token=setup.alice), 403, "M_FORBIDDEN")
    assert_error(await server.get(ADMIN), 401, "M_MISSING_TOKEN")


@pytest.mark.parametrize(
    "params", [{"from": "-1"}, {"limit": "-1"}, {"limit": "ten"}, {"dir": "x"}]
)
async def test_admin_listing_bad_parameters(server, setup, params):
    assert_error(await server.get(ADMIN, token=setup.admin, params=params), 400, "M_INVALID_PARAM")


async def test_admin_report_detail_refusals(server, setup):
    assert_error(await server.get(f"{ADMIN}/12345", token=setup.admin), 404, "M_NOT_FOUND")
    for bad in ("abc", "-1", "1.5", "99999999999999999999999"):
        assert_error(await server.get(f"{ADMIN}/{bad}", token=setup.admin), 400, "M_INVALID_PARAM")
