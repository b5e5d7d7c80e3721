"""Device keys, one-time and fallback keys, claims, cross-signing and
signatures: /keys/upload, /keys/query, /keys/claim, /keys/device_signing/upload
and /keys/signatures/upload, with real ed25519 signatures."""

from __future__ import annotations

import asyncio

from tests.e2ee_helpers import V3, CrossSigning, TestDevice, new_device, signed, upload

PASSWORD = "correct horse battery"


async def query(server, device: TestDevice, users: dict) -> dict:
    resp = await server.post(f"{V3}/keys/query", {"device_keys": users}, token=device.token)
    assert resp.status == 200, resp.body
    return resp.body


async def claim(server, device: TestDevice, wanted: dict) -> dict:
    resp = await server.post(f"{V3}/keys/claim", {"one_time_keys": wanted}, token=device.token)
    assert resp.status == 200, resp.body
    return resp.body


async def sync_counts(server, device: TestDevice) -> tuple[dict, list]:
    resp = await server.get(f"{V3}/sync", token=device.token)
    assert resp.status == 200, resp.body
    return resp.body["device_one_time_keys_count"], resp.body["device_unused_fallback_key_types"]


# ------------------------------------------------------------------ upload


async def test_upload_and_query_device_keys(server):
    alice = await new_device(server, "alice", "ALICE1")
    bob = await new_device(server, "bob", "BOB1")
    await server.put(f"{V3}/devices/ALICE1", {"display_name": "Alice's laptop"}, token=alice.token)
    resp = await upload(server, alice, {"device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys(3)})
    assert resp.status == 200, resp.body
    assert resp.body == {"one_time_key_counts": {"signed_curve25519": 3}}

    body = await query(server, bob, {alice.user_id: [], "@nobody:test": [], "@carol:elsewhere.example": []})
    keys = body["device_keys"][alice.user_id]["ALICE1"]
    assert keys["keys"] == alice.device_keys()["keys"]
    assert keys["signatures"] == alice.device_keys()["signatures"]
    assert keys["unsigned"] == {"device_display_name": "Alice's laptop"}
    assert "@nobody:test" not in body["device_keys"]  # unknown users are simply absent
    assert "elsewhere.example" in body["failures"]  # other servers: a failure, not an error
    # Asking for named devices only.
    body = await query(server, bob, {alice.user_id: ["NOPE"]})
    assert body["device_keys"][alice.user_id] == {}


async def test_a_device_without_keys_is_not_listed(server):
    alice = await new_device(server, "alice", "ALICE1")
    body = await query(server, alice, {alice.user_id: []})
    assert body["device_keys"] == {alice.user_id: {}}


async def test_device_keys_must_be_the_callers_and_self_signed(server):
    alice = await new_device(server, "alice", "ALICE1")
    other = TestDevice(alice.user_id, "OTHER", alice.token)
    resp = await upload(server, alice, {"device_keys": other.device_keys()})
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_PARAM"

    keys = alice.device_keys()
    keys["user_id"] = "@mallory:test"
    resp = await upload(server, alice, {"device_keys": keys})
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_PARAM"

    keys = alice.device_keys()
    keys["keys"][f"curve25519:{alice.device_id}"] = "tampered"  # signature no longer matches
    resp = await upload(server, alice, {"device_keys": keys})
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_SIGNATURE"

    keys = alice.device_keys()
    keys["signatures"] = {}
    resp = await upload(server, alice, {"device_keys": keys})
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_SIGNATURE"

    for bad in ("nope", {"user_id": alice.user_id, "device_id": "ALICE1"},
                {**alice.device_keys(), "keys": {"ed25519:ALICE1": 5}},
                {**alice.device_keys(), "keys": {"ed25519:ALICE1": "not base64!"}},
                {**alice.device_keys(), "algorithms": "m.megolm.v1.aes-sha2"}):
        resp = await upload(server, alice, {"device_keys": bad})
        assert resp.status == 400 and resp.body["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), (bad, resp.body)
    body = await query(server, alice, {alice.user_id: []})
    assert body["device_keys"][alice.user_id] == {}  # nothing was stored


async def test_identity_keys_cannot_be_swapped(server):
    alice = await new_device(server, "alice", "ALICE1")
    assert (await upload(server, alice, {"device_keys": alice.device_keys()})).status == 200
    # The same keys again are fine.
    assert (await upload(server, alice, {"device_keys": alice.device_keys()})).status == 200
    impostor = TestDevice(alice.user_id, "ALICE1", alice.token)
    resp = await upload(server, alice, {"device_keys": impostor.device_keys()})
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_PARAM"
    body = await query(server, alice, {alice.user_id: []})
    assert body["device_keys"][alice.user_id]["ALICE1"]["keys"] == alice.device_keys()["keys"]


async def test_one_time_keys_are_not_duplicated_or_replaced(server):
    alice = await new_device(server, "alice", "ALICE1")
    await upload(server, alice, {"device_keys": alice.device_keys()})
    keys = alice.one_time_keys(2)
    assert (await upload(server, alice, {"one_time_keys": keys})).body["one_time_key_counts"]["signed_curve25519"] == 2
    # Re-uploading the same keys (a retried request) changes nothing.
    assert (await upload(server, alice, {"one_time_keys": keys})).body["one_time_key_counts"]["signed_curve25519"] == 2
    key_id = next(iter(keys))
    changed = {key_id: signed({"key": "ZGlmZmVyZW50"}, alice.user_id, alice.key)}
    resp = await upload(server, alice, {"one_time_keys": changed})
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_PARAM"
    # A one-time key with a bad signature is refused.
    forged = {"signed_curve25519:FORGED": {"key": "a2V5", "signatures": {alice.user_id: {"ed25519:ALICE1": "AAAA"}}}}
    resp = await upload(server, alice, {"one_time_keys": forged})
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_SIGNATURE"
    for bad in ({"no-colon": "x"}, {"signed_curve25519:A": 7}, {"signed_curve25519:A": {"nokey": 1}}):
        resp = await upload(server, alice, {"one_time_keys": bad})
        assert resp.status == 400, (bad, resp.body)
    assert (await sync_counts(server, alice))[0] == {"signed_curve25519": 2}


async def test_keys_need_a_device(server):
    resp = await server.post(f"{V3}/keys/upload", {}, token=None)
    assert resp.status == 401 and resp.body["errcode"] == "M_MISSING_TOKEN"


# ------------------------------------------------------------------- claim


async def test_each_one_time_key_is_claimed_once_then_the_fallback(server):
    alice = await new_device(server, "alice", "ALICE1")
    bob = await new_device(server, "bob", "BOB1")
    otks = alice.one_time_keys(2)
    fallback = alice.one_time_keys(1, fallback=True)
    resp = await upload(server, alice, {"device_keys": alice.device_keys(), "one_time_keys": otks, "fallback_keys": fallback})
    assert resp.status == 200, resp.body
    assert await sync_counts(server, alice) == ({"signed_curve25519": 2}, ["signed_curve25519"])

    wanted = {alice.user_id: {"ALICE1": "signed_curve25519"}}
    got = [(await claim(server, bob, wanted))["one_time_keys"][alice.user_id]["ALICE1"] for _ in range(3)]
    assert got[0] | got[1] == otks  # both one-time keys, each once
    assert got[2] == fallback  # then the fallback key
    assert await sync_counts(server, alice) == ({"signed_curve25519": 0}, [])  # used
    # The fallback key keeps being handed out while nothing else is left.
    assert (await claim(server, bob, wanted))["one_time_keys"][alice.user_id]["ALICE1"] == fallback
    # Re-uploading the same fallback key keeps it used; a new one is unused.
    await upload(server, alice, {"fallback_keys": fallback})
    assert (await sync_counts(server, alice))[1] == []
    await upload(server, alice, {"fallback_keys": alice.one_time_keys(1, fallback=True)})
    assert (await sync_counts(server, alice))[1] == ["signed_curve25519"]


async def test_concurrent_claims_never_share_a_key(server):
    alice = await new_device(server, "alice", "ALICE1")
    bob = await new_device(server, "bob", "BOB1")
    await upload(server, alice, {"device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys(20)})
    wanted = {alice.user_id: {"ALICE1": "signed_curve25519"}}
    results = await asyncio.gather(*(claim(server, bob, wanted) for _ in range(30)))
    handed = [next(iter(r["one_time_keys"][alice.user_id]["ALICE1"])) for r in results if r["one_time_keys"]]
    assert len(handed) == 20 and len(set(handed)) == 20
    assert (await sync_counts(server, alice))[0] == {"signed_curve25519": 0}


async def test_claims_for_unknown_devices_and_servers(server):
    bob = await new_device(server, "bob", "BOB1")
    body = await claim(server, bob, {"@nobody:test": {"X": "signed_curve25519"}, "@x:other.example": {"Y": "signed_curve25519"}})
    assert body["one_time_keys"] == {}
    assert "other.example" in body["failures"]
    for bad in ({"one_time_keys": "x"}, {"one_time_keys": {"@a:test": ["X"]}}, {"one_time_keys": {"@a:test": {"X": 1}}},
                {"one_time_keys": {}, "timeout": "soon"}):
        resp = await server.post(f"{V3}/keys/claim", bad, token=bob.token)
        assert resp.status == 400 and resp.body["errcode"] == "M_BAD_JSON", bad
    for bad in ({"device_keys": []}, {"device_keys": {"@a:test": "X"}}, {}):
        resp = await server.post(f"{V3}/keys/query", bad, token=bob.token)
        assert resp.status == 400 and resp.body["errcode"] == "M_BAD_JSON", bad


# ----------------------------------------------------------- cross-signing


async def test_cross_signing_upload_and_query(server):
    alice = await new_device(server, "alice", "ALICE1")
    bob = await new_device(server, "bob", "BOB1")
    cs = CrossSigning(alice.user_id)
    # The first upload needs no UIA.
    resp = await server.post(f"{V3}/keys/device_signing/upload", cs.upload_body(), token=alice.token)
    assert resp.status == 200, resp.body
    mine = await query(server, alice, {alice.user_id: []})
    assert mine["master_keys"][alice.user_id]["keys"] == {cs.key_id("master"): cs.public("master")}
    assert mine["self_signing_keys"][alice.user_id]["keys"] == {cs.key_id("self_signing"): cs.public("self_signing")}
    assert alice.user_id in mine["user_signing_keys"]
    theirs = await query(server, bob, {alice.user_id: []})
    assert alice.user_id in theirs["master_keys"] and alice.user_id in theirs["self_signing_keys"]
    assert theirs["user_signing_keys"] == {}  # only its owner sees the user-signing key

    # The same keys again: nothing changes, no UIA.
    resp = await server.post(f"{V3}/keys/device_signing/upload", cs.upload_body(), token=alice.token)
    assert resp.status == 200, resp.body
    # Replacing them needs the password.
    new = CrossSigning(alice.user_id)
    resp = await server.post(f"{V3}/keys/device_signing/upload", new.upload_body(), token=alice.token)
    assert resp.status == 401 and "session" in resp.body
    auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
            "password": PASSWORD, "session": resp.body["session"]}
    resp = await server.post(f"{V3}/keys/device_signing/upload", {**new.upload_body(), "auth": auth}, token=alice.token)
    assert resp.status == 200, resp.body
    mine = await query(server, alice, {alice.user_id: []})
    assert mine["master_keys"][alice.user_id]["keys"] == {new.key_id("master"): new.public("master")}


async def test_cross_signing_keys_are_checked(server):
    alice = await new_device(server, "alice", "ALICE1")
    cs = CrossSigning(alice.user_id)
    body = cs.upload_body()
    body["self_signing_key"] = CrossSigning(alice.user_id).upload_body()["self_signing_key"]  # signed by another master
    resp = await server.post(f"{V3}/keys/device_signing/upload", body, token=alice.token)
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_SIGNATURE"
    resp = await server.post(f"{V3}/keys/device_signing/upload", {"self_signing_key": cs.upload_body()["self_signing_key"]}, token=alice.token)
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_PARAM"  # no master key yet
    for bad in ({**cs.key("master"), "user_id": "@bob:test"}, {**cs.key("master"), "usage": ["self_signing"]},
                {**cs.key("master"), "keys": {"ed25519:abc": "def"}}, "x", {**cs.key("master"), "keys": {}}):
        resp = await server.post(f"{V3}/keys/device_signing/upload", {"master_key": bad}, token=alice.token)
        assert resp.status == 400 and resp.body["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), (bad, resp.body)
    assert (await query(server, alice, {alice.user_id: []}))["master_keys"] == {}


async def test_signatures_upload(server):
    alice = await new_device(server, "alice", "ALICE1")
    bob = await new_device(server, "bob", "BOB1")
    carol = await new_device(server, "carol", "CAROL1")
    alice_cs, bob_cs = CrossSigning(alice.user_id), CrossSigning(bob.user_id)
    await upload(server, alice, {"device_keys": alice.device_keys()})
    for device, cs in ((alice, alice_cs), (bob, bob_cs)):
        resp = await server.post(f"{V3}/keys/device_signing/upload", cs.upload_body(), token=device.token)
        assert resp.status == 200, resp.body

    # Alice's self-signing key signs her device; her device signs her master key.
    device_sig = alice_cs.sign_with("self_signing", alice.device_keys())
    master_sig = signed(alice_cs.key("master"), alice.user_id, alice.key)
    # Alice's user-signing key signs Bob's master key.
    bob_master = (await query(server, alice, {bob.user_id: []}))["master_keys"][bob.user_id]
    bob_sig = alice_cs.sign_with("user_signing", bob_master)
    forged = alice_cs.sign_with("user_signing", bob_master)
    forged["signatures"][alice.user_id][alice_cs.key_id("user_signing")] = "AAAA" + "A" * 82
    resp = await server.post(
        f"{V3}/keys/signatures/upload",
        {
            alice.user_id: {"ALICE1": device_sig, alice_cs.public("master"): master_sig, "NODEVICE": device_sig},
            bob.user_id: {bob_cs.public("master"): bob_sig},
            carol.user_id: {"whatever": forged},
        },
        token=alice.token,
    )
    assert resp.status == 200, resp.body
    failures = resp.body["failures"]
    assert set(failures) == {alice.user_id, carol.user_id}
    assert set(failures[alice.user_id]) == {"NODEVICE"}
    assert failures[carol.user_id]["whatever"]["errcode"]

    seen_by_bob = await query(server, bob, {alice.user_id: [], bob.user_id: []})
    sigs = seen_by_bob["device_keys"][alice.user_id]["ALICE1"]["signatures"][alice.user_id]
    assert alice_cs.key_id("self_signing") in sigs
    assert "ed25519:ALICE1" in seen_by_bob["master_keys"][alice.user_id]["signatures"][alice.user_id]
    # Alice's signature of Bob's master key is shown to Alice, not to Bob or Carol.
    assert alice.user_id not in seen_by_bob["master_keys"][bob.user_id].get("signatures", {})
    seen_by_alice = await query(server, alice, {bob.user_id: []})
    assert alice_cs.key_id("user_signing") in seen_by_alice["master_keys"][bob.user_id]["signatures"][alice.user_id]

    # A bad signature, or one over content that is not the stored key, is a failure.
    bad = alice_cs.sign_with("self_signing", {**alice.device_keys(), "algorithms": []})
    resp = await server.post(f"{V3}/keys/signatures/upload", {alice.user_id: {"ALICE1": bad}}, token=alice.token)
    assert resp.body["failures"][alice.user_id]["ALICE1"]["errcode"] == "M_INVALID_PARAM"
    bad = alice.device_keys()
    bad["signatures"][alice.user_id][alice_cs.key_id("self_signing")] = "B" * 86
    resp = await server.post(f"{V3}/keys/signatures/upload", {alice.user_id: {"ALICE1": bad}}, token=alice.token)
    assert resp.body["failures"][alice.user_id]["ALICE1"]["errcode"] == "M_INVALID_SIGNATURE"
    resp = await server.post(f"{V3}/keys/signatures/upload", {alice.user_id: "x"}, token=alice.token)
    assert resp.status == 400 and resp.body["errcode"] == "M_BAD_JSON"
