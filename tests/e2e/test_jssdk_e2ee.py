"""End-to-end encryption with matrix-js-sdk's Rust crypto, on both engines.

tests/e2e/js/e2ee.mjs runs five independent js-sdk clients (each its own
in-memory Rust crypto, sharing nothing but the homeserver): alice's phone and
laptop and bob's phone chat in an encrypted room and each decrypts everyone;
alice bootstraps cross-signing (with UIA when the server asks), secret storage
and a key backup, and cross-signs her laptop; bob's laptop signs in later,
the others learn of it through /sync device_lists and it reads what is sent
after; a brand new device of alice's restores the backup through her recovery
key and decrypts the old messages; bob verifies alice with SAS over to-device
messages and signs her identity; bob uses up all the one-time keys of alice's
laptop and then its fallback key; last, bob replaces his cross-signing keys.
The script prints what each client saw, with the raw keys/query answers; this
test checks all of it.

The `node` fixture (tests/e2e/conftest.py) provides Node 22 and js-sdk.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .conftest import run_node_script, unexpected_refusals

if TYPE_CHECKING:
    from pathlib import Path

    from ..conftest import TestServer

V3 = "/_matrix/client/v3"
PASSWORD = "a long enough password"
ALICE, BOB = "@alice:test.local", "@bob:test.local"
FIRST = ["alice phone", "alice laptop", "bob phone"]
EVERYONE = [*FIRST, "bob laptop"]


def _by_text(decrypted: dict[str, str], ids: list[str]) -> list[str]:
    return [decrypted[i] for i in ids]


async def test_jssdk_end_to_end_encryption(server: TestServer, node: Path) -> None:
    alice = await server.register_user("alice", PASSWORD)
    await server.register_user("bob", PASSWORD)

    result = await run_node_script(
        node, "e2ee.mjs",
        {"baseUrl": server.url, "password": PASSWORD, "alice": "alice", "bob": "bob", "timeoutMs": 70000},
    )
    unexpected = unexpected_refusals(result)
    assert "error" not in result, (
        f"the clients failed at step {result['step']!r}: {result['error']}\n"
        f"refused requests: {json.dumps(unexpected, indent=1)}\n{result.get('stack')}"
    )
    assert result["step"] == "done"
    assert not unexpected, json.dumps(unexpected, indent=1)

    # keys/query lists the devices that uploaded keys (not the registration's).
    assert result["aliceDeviceKeysSeenByBob"] == sorted([result["devices"]["alice1"], result["devices"]["alice2"]])

    # Cross-signing and secret storage, from alice's phone.
    assert result["aliceIsCrossSigningReady"] is True
    assert result["crossSigningStatus"] == {
        "publicKeysOnDevice": True,
        "privateKeysInSecretStorage": True,
        "privateKeysCachedLocally": {"masterKey": True, "userSigningKey": True, "selfSigningKey": True},
    }
    assert result["secretStorageReady"] is True
    # A first upload of cross-signing keys may go without UIA; if the server
    # asks, it is for the password.
    for uia in (result["crossSigningUia"], result["bobCrossSigningUia"]):
        assert uia == "not required" or ["m.login.password"] in [f["stages"] for f in uia["flows"]], uia

    # Every device decrypted every message, its own included.
    round1, round2 = result["round1"], result["round2"]
    for label in FIRST:
        assert _by_text(result["round1Decrypted"][label], round1) == [f"hello from {d}" for d in FIRST], label
    for label in EVERYONE:
        assert _by_text(result["round2Decrypted"][label], round2) == [f"again from {d}" for d in EVERYONE], label
    # keys/changes between alice's sync tokens from before and after it came.
    changes = result["keyChanges"]
    assert BOB in changes["changed"] and ALICE not in changes["changed"], changes
    # bob's laptop came later: it holds no keys for what was sent before.
    assert [m["id"] for m in result["bob2Round1"]] == round1
    assert all(m["body"] is None and m["failure"] for m in result["bob2Round1"]), result["bob2Round1"]

    # The backup: every megolm session went up, and came back on the new device.
    backup = result["backup"]
    assert backup["algorithm"] == "m.megolm_backup.v1.curve25519-aes-sha2"
    assert backup["activeOnAlice1"] == backup["version"]
    sessions = result["sessionCount"]
    assert sessions >= len(EVERYONE)
    assert result["backedUp"] == sessions
    assert all(m["body"] is None for m in result["alice3BeforeRestore"]), result["alice3BeforeRestore"]
    assert result["alice3BackupCheck"] == {"version": backup["version"], "trusted": True, "matchesDecryptionKey": True}
    assert result["restored"] == {"total": sessions, "imported": sessions}
    assert _by_text(result["alice3Decrypted"], round1 + round2) == (
        [f"hello from {d}" for d in FIRST] + [f"again from {d}" for d in EVERYONE]
    )
    # The new device took the cross-signing keys from secret storage: no new upload, no UIA.
    assert result["alice3CrossSigningUia"] is None
    assert result["alice3CrossSigningStatus"]["privateKeysCachedLocally"] == {
        "masterKey": True, "userSigningKey": True, "selfSigningKey": True,
    }

    # Trust: every alice device is signed by her self-signing key, as everyone
    # sees it; devices holding her private keys trust her identity, the laptop
    # (cross-signed, but never given the keys) and bob (before verifying) don't.
    trust = result["trust"]
    signed = {"signedByOwner": True, "crossSigningVerified": True, "verified": True}
    unverified = {"signedByOwner": True, "crossSigningVerified": False, "verified": False}
    for viewer in ("alice phone", "alice new laptop"):
        assert trust[viewer] == {
            "alice1": signed, "alice2": signed, "alice3": signed,
            "aliceHasCrossSigningKeys": True, "aliceIdentityVerified": True,
        }, viewer
    assert trust["alice laptop"] == {
        "alice1": unverified, "alice2": {**unverified, "verified": True}, "alice3": unverified,
        "aliceHasCrossSigningKeys": True, "aliceIdentityVerified": False,
    }
    assert trust["bob phone"] == {
        "alice1": unverified, "alice2": unverified, "alice3": unverified,
        "aliceHasCrossSigningKeys": True, "aliceIdentityVerified": False,
    }

    # SAS over to-device: both sides showed the same emoji, and bob now trusts alice.
    assert len(result["sas"]["bob"]) == 7 and result["sas"]["bob"] == result["sas"]["alice"]
    phases = result["verificationPhases"]
    assert phases["bob"] == phases["alice"] == phases["done"]
    assert result["bobTrustsAlice"] is True
    assert result["bobTrustAfter"] == {"alice1": signed, "alice2": signed, "alice3": signed}

    # Every device's /sync counts the one-time keys it uploaded and its unused fallback key.
    for label, counts in result["keyCounts"].items():
        assert counts["oneTimeKeys"]["signed_curve25519"] > 0, label
        assert counts["unusedFallbackKeyTypes"] == ["signed_curve25519"], label
    # Claiming them all: each one-time key once, then the fallback key (marked
    # so) again and again; /sync shows none left and the fallback key used.
    fallback = result["fallback"]
    uploaded = result["keyCounts"]["alice laptop"]["oneTimeKeys"]["signed_curve25519"]
    one_time = fallback["claims"][:uploaded]
    assert not any(c["fallback"] for c in one_time)
    assert len({c["keyId"] for c in one_time}) == uploaded
    assert [c["fallback"] for c in fallback["claims"][uploaded:]] == [True, True]
    assert fallback["claims"][-1]["keyId"] == fallback["claims"][-2]["keyId"] and fallback["sameFallbackKey"]
    assert fallback["laptopHeld"] == {"oneTimeKeys": {"signed_curve25519": 0}, "unusedFallbackKeyTypes": []}
    # Once its sync resumed, the laptop read bob and uploaded new one-time keys.
    assert list(fallback["wakeDecrypted"].values()) == ["are you back?"]
    assert fallback["laptopReplenished"]["oneTimeKeys"]["signed_curve25519"] > 0
    assert fallback["laptopReplenished"]["unusedFallbackKeyTypes"] == []

    # The server's side of it, from the clients' raw keys/query answers after
    # the verification: who may see which signatures (users never see
    # signatures made by other users' user-signing keys).
    queries = result["queries"]
    (bob_usk,) = queries["bobByBob"]["user_signing_keys"][BOB]["keys"]
    assert bob_usk in queries["aliceByBob"]["master_keys"][ALICE]["signatures"].get(BOB, {})
    assert BOB not in queries["aliceByAlice"]["master_keys"][ALICE].get("signatures", {})
    assert ALICE in queries["aliceByAlice"]["user_signing_keys"]
    assert ALICE not in queries["aliceByBob"].get("user_signing_keys", {})
    assert BOB in queries["bobByAlice"]["master_keys"] and BOB in queries["bobByAlice"]["self_signing_keys"]
    assert BOB not in queries["bobByAlice"].get("user_signing_keys", {})
    # Every device with keys carries its self-signing key's signature.
    (alice_ssk,) = queries["aliceByAlice"]["self_signing_keys"][ALICE]["keys"]
    devices = queries["aliceByAlice"]["device_keys"][ALICE]
    assert set(devices) == {result["devices"][d] for d in ("alice1", "alice2", "alice3")}
    for device_id, keys in devices.items():
        assert alice_ssk in keys["signatures"][ALICE], device_id

    # Replacing cross-signing keys that exist takes UIA; the others see the new ones.
    reset = result["bobReset"]
    assert ["m.login.password"] in [flow["stages"] for flow in reset["uia"]["flows"]], reset
    assert reset["replaced"] is True
    # (She had verified bob's old identity: her client says so, and that this one is not.)
    assert reset["aliceSeesNewKey"] == {"master": True, "verified": False, "wasVerified": True}

    # And the backup the new device restored from is still alice's current one.
    resp = await server.get(f"{V3}/room_keys/version", token=alice["access_token"])
    assert resp.status == 200, resp.body
    assert resp.body["version"] == backup["version"] and resp.body["count"] == sessions
