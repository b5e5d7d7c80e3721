"""The user directory (POST /user_directory/search) over real HTTP on both
engines: matching by user ID and display name, changes seen at once,
deactivated users, the search_all_users modes, limits and refusals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from homeserver.api.admin import registration_mac
from storage.migrations import available_migrations

from .conftest import SHARED_SECRET, with_config

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V3 = "/_matrix/client/v3"
SEARCH = f"{V3}/user_directory/search"


def uid(name: str) -> str:
    return f"@{name}:test.local"


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert (resp.status, (resp.body or {}).get("errcode")) == (status, errcode), resp.body


async def register(server: TestServer, *names: str) -> dict[str, str]:
    return {name: (await server.register_user(name))["access_token"] for name in names}


async def set_displayname(server: TestServer, token: str, name: str, displayname: str | None) -> None:
    resp = await server.put(
        f"{V3}/profile/{quote(uid(name))}/displayname", {"displayname": displayname}, token=token
    )
    assert resp.status == 200, resp.body


async def directory(server: TestServer, token: str, term: str, **extra: Any) -> dict[str, Any]:
    resp = await server.post(SEARCH, {"search_term": term, **extra}, token=token)
    assert resp.status == 200, resp.body
    return resp.body


async def found(server: TestServer, token: str, term: str) -> list[str]:
    return [r["user_id"] for r in (await directory(server, token, term))["results"]]


async def test_matches_user_ids_and_display_name_words_by_prefix(server):
    tokens = await register(server, "alice.smith", "bob", "carol_jones")
    alice = tokens["alice.smith"]
    await set_displayname(server, tokens["bob"], "bob", "Robert Smith-Taylor")
    await set_displayname(server, tokens["carol_jones"], "carol_jones", "Carol Jönsson")

    assert set(await found(server, alice, "smi")) == {uid("alice.smith"), uid("bob")}
    assert await found(server, alice, "ROB") == [uid("bob")]
    assert await found(server, alice, "taylor") == [uid("bob")]
    assert await found(server, alice, "robert smi") == [uid("bob")]
    assert await found(server, alice, "robert jones") == []
    assert await found(server, alice, "jones") == [uid("carol_jones")]
    assert await found(server, alice, "jöns") == [uid("carol_jones")]
    # A full user ID finds its user, whatever the server name.
    assert await found(server, alice, uid("carol_jones")) == [uid("carol_jones")]
    assert await found(server, alice, "local") == []
    body = await directory(server, alice, "rob")
    assert body == {
        "limited": False,
        "results": [{"user_id": uid("bob"), "display_name": "Robert Smith-Taylor"}],
    }


async def test_profile_changes_and_new_users_are_found_at_once(server):
    tokens = await register(server, "alice", "bob")
    alice = tokens["alice"]
    assert await found(server, alice, "zebra") == []
    await set_displayname(server, tokens["bob"], "bob", "Zebra Keeper")
    assert await found(server, alice, "zebra") == [uid("bob")]
    await set_displayname(server, tokens["bob"], "bob", "Lion Tamer")
    assert await found(server, alice, "zebra") == []
    assert await found(server, alice, "lion") == [uid("bob")]
    # Removing the display name leaves the user ID to find him by.
    await set_displayname(server, tokens["bob"], "bob", None)
    assert await found(server, alice, "lion") == []
    assert (await directory(server, alice, "bob"))["results"] == [{"user_id": uid("bob")}]

    await register(server, "zoe")
    assert await found(server, alice, "zo") == [uid("zoe")]
    # The avatar is shown.
    resp = await server.put(
        f"{V3}/profile/{quote(uid('bob'))}/avatar_url", {"avatar_url": "mxc://x/y"}, token=tokens["bob"]
    )
    assert resp.status == 200
    assert (await directory(server, alice, "bob"))["results"] == [
        {"user_id": uid("bob"), "avatar_url": "mxc://x/y"}
    ]


async def test_deactivated_and_support_users_are_not_listed(server):
    tokens = await register(server, "alice", "bob", "bobby")
    assert await found(server, tokens["alice"], "bob") == [uid("bob"), uid("bobby")]
    await server.hs.accounts.deactivate(uid("bobby"))
    assert await found(server, tokens["alice"], "bob") == [uid("bob")]
    nonce = (await server.get("/_synapse/admin/v1/register")).body["nonce"]
    resp = await server.post(
        "/_synapse/admin/v1/register",
        {
            "nonce": nonce, "username": "bobsupport", "password": "pw", "admin": False,
            "user_type": "support",
            "mac": registration_mac(SHARED_SECRET, nonce, "bobsupport", "pw", False, "support"),
        },
    )
    assert resp.status == 200, resp.body
    assert await found(server, tokens["alice"], "bob") == [uid("bob")]


@with_config(user_directory={"search_all_users": False})
async def test_without_search_all_users_only_room_mates_and_public_rooms(server):
    tokens = await register(server, "alice", "sam", "pat", "kim", "lee")
    alice = tokens["alice"]
    assert await found(server, alice, "sam") == []
    # A private room shared with alice.
    resp = await server.post(
        f"{V3}/createRoom", {"preset": "private_chat", "invite": [uid("sam")]}, token=alice
    )
    private = resp.body["room_id"]
    assert await found(server, alice, "sam") == []  # invited, not joined
    resp = await server.post(f"{V3}/join/{quote(private)}", {}, token=tokens["sam"])
    assert resp.status == 200
    assert await found(server, alice, "sam") == [uid("sam")]
    assert await found(server, tokens["sam"], "alice") == [uid("alice")]
    # pat is alone in a public room; kim in a private but world-readable one.
    resp = await server.post(f"{V3}/createRoom", {"preset": "public_chat"}, token=tokens["pat"])
    public = resp.body["room_id"]
    resp = await server.post(
        f"{V3}/createRoom",
        {
            "preset": "private_chat",
            "initial_state": [
                {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}
            ],
        },
        token=tokens["kim"],
    )
    readable = resp.body["room_id"]
    await server.post(f"{V3}/createRoom", {"preset": "private_chat"}, token=tokens["lee"])
    assert await found(server, alice, "pat") == [uid("pat")]
    assert await found(server, alice, "kim") == [uid("kim")]
    assert await found(server, alice, "lee") == []
    # Leaving takes effect at once; so does a room turning private.
    resp = await server.post(f"{V3}/rooms/{quote(private)}/leave", {}, token=tokens["sam"])
    assert resp.status == 200
    assert await found(server, alice, "sam") == []
    resp = await server.put(
        f"{V3}/rooms/{quote(public)}/state/m.room.join_rules", {"join_rule": "invite"},
        token=tokens["pat"],
    )
    assert resp.status == 200
    assert await found(server, alice, "pat") == []
    resp = await server.put(
        f"{V3}/rooms/{quote(readable)}/state/m.room.history_visibility",
        {"history_visibility": "shared"}, token=tokens["kim"],
    )
    assert resp.status == 200
    assert await found(server, alice, "kim") == []


async def test_everyone_is_found_by_default(server):
    tokens = await register(server, "alice", "hermit")
    assert await found(server, tokens["alice"], "herm") == [uid("hermit")]


@with_config(user_directory={"enabled": False})
async def test_a_disabled_directory_finds_nobody(server):
    tokens = await register(server, "alice", "bob")
    assert await directory(server, tokens["alice"], "bob") == {"limited": False, "results": []}


async def test_limit_and_limited(server):
    names = [f"team{i}" for i in range(12)]
    tokens = await register(server, "alice", *names)
    alice = tokens["alice"]
    body = await directory(server, alice, "team")
    assert len(body["results"]) == 10 and body["limited"] is True
    body = await directory(server, alice, "team", limit=12)
    assert len(body["results"]) == 12 and body["limited"] is False
    body = await directory(server, alice, "team", limit=3)
    assert len(body["results"]) == 3 and body["limited"] is True
    body = await directory(server, alice, "team", limit=0)
    assert body == {"limited": True, "results": []}


@pytest.mark.parametrize(
    "term", ['"', "*", "NEAR(", "bob*", "OR", "-", "'", "(", "\\", ":*", "&|!", "", "   ", "😀", "@"]
)
async def test_odd_search_terms_are_not_errors(server, term):
    tokens = await register(server, "alice", "bob")
    resp = await server.post(SEARCH, {"search_term": term}, token=tokens["alice"])
    assert resp.status == 200, resp.body
    expected = [uid("bob")] if "bob" in term else []
    assert [r["user_id"] for r in resp.body["results"]] == expected


async def test_bad_requests_are_refused(server):
    tokens = await register(server, "alice")
    alice = tokens["alice"]
    assert_error(await server.post(SEARCH, {"search_term": "a"}), 401, "M_MISSING_TOKEN")
    assert_error(await server.post(SEARCH, {}, token=alice), 400, "M_MISSING_PARAM")
    assert_error(await server.post(SEARCH, {"search_term": 5}, token=alice), 400, "M_BAD_JSON")
    assert_error(await server.post(SEARCH, {"search_term": "a", "limit": "5"}, token=alice), 400, "M_BAD_JSON")
    assert_error(await server.post(SEARCH, {"search_term": "a", "limit": 2.5}, token=alice), 400, "M_BAD_JSON")
    assert_error(await server.post(SEARCH, {"search_term": "a", "limit": -1}, token=alice), 400, "M_INVALID_PARAM")
    assert_error(await server.post(SEARCH, data="[", token=alice), 400, "M_NOT_JSON")
    assert_error(await server.post(SEARCH, ["a"], token=alice), 400, "M_BAD_JSON")


async def test_the_migration_backfills_the_sqlite_index(server):
    """On SQLite the 0013 back-fill builds the index the triggers keep (on
    PostgreSQL the generated column needs no back-fill of ours)."""
    tokens = await register(server, "alice", "bob")
    await set_displayname(server, tokens["bob"], "bob", "Robert")
    db = server.hs.db
    if db.dialect != "sqlite":
        return
    read = (
        "SELECT d.user_id, s.words FROM user_directory d"
        " JOIN user_directory_search s ON s.rowid = d.id ORDER BY 1"
    )
    live = await db.fetchall("test", read)
    assert live == [(uid("alice"), "alice alice"), (uid("bob"), "bob Robert")]
    (migration,) = [m for m in available_migrations("sqlite") if m.version == 13]
    backfill = migration.sql[migration.sql.index("-- Existing profiles."):]
    await db.execute("test", "DELETE FROM user_directory_search")
    await db.execute("test", "DELETE FROM user_directory")
    for statement in backfill.split(";")[:-1]:
        await db.execute("test", statement)
    assert await db.fetchall("test", read) == live
