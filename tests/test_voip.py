"""GET /voip/turnServer (TURN REST API credentials) and /thirdparty/protocols."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from tests.conftest import with_config

V3 = "/_matrix/client/v3"
URIS = ["turn:turn.example.com:3478?transport=udp"]


async def test_no_turn_server_configured(server):
    token = (await server.register_user("alice"))["access_token"]
    resp = await server.get(f"{V3}/voip/turnServer", token=token)
    assert resp.status == 200 and resp.body == {}
    assert (await server.get(f"{V3}/voip/turnServer")).status == 401


@with_config(turn_uris=URIS, turn_shared_secret="s3cret", turn_user_lifetime="10m")
async def test_shared_secret_credentials(server):
    reg = await server.register_user("alice")
    resp = await server.get(f"{V3}/voip/turnServer", token=reg["access_token"])
    assert resp.status == 200, resp.body
    body = resp.body
    assert body["uris"] == URIS and body["ttl"] == 600
    expiry, user = body["username"].split(":", 1)
    assert user == reg["user_id"] and abs(int(expiry) - (time.time() + 600)) < 30
    expected = base64.b64encode(hmac.new(b"s3cret", body["username"].encode(), hashlib.sha1).digest()).decode()
    assert body["password"] == expected


@with_config(turn_uris=URIS, turn_username="u", turn_password="p")
async def test_fixed_credentials(server):
    token = (await server.register_user("alice"))["access_token"]
    body = (await server.get(f"{V3}/voip/turnServer", token=token)).body
    assert (body["username"], body["password"], body["uris"]) == ("u", "p", URIS)


async def test_thirdparty_protocols_empty(server):
    token = (await server.register_user("alice"))["access_token"]
    resp = await server.get(f"{V3}/thirdparty/protocols", token=token)
    assert resp.status == 200 and resp.body == {}
