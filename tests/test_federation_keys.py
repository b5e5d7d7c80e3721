"""The server's signing key and the key server (GET /_matrix/key/v2/server)."""

from __future__ import annotations

import json
import multiprocessing
import re
import stat
import time
from pathlib import Path

import pytest
from canonicaljson import encode_canonical_json
from signedjson.key import (
    decode_verify_key_bytes,
    encode_signing_key_base64,
    generate_signing_key,
    get_verify_key,
    write_signing_keys,
)
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64

from federation.keys import KEY_VALIDITY_MS, SigningKeyError, load_or_create_signing_key, server_keys_response
from federation.signing import canonical_json, key_id, sign, verify, verify_key_base64

# `ed25519 <version> <unpadded base64 of the 32-byte seed>`, one key a line.
KEY_LINE = re.compile(r"^ed25519 (a_[A-Za-z0-9_]+) ([A-Za-z0-9+/]{43})$")


# ------------------------------------------------------------------ key file


def test_key_file_is_synapse_format_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "example.com.signing.key"
    key = load_or_create_signing_key(path)
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    m = KEY_LINE.match(text.strip())
    assert m, text
    assert m.group(1) == key.version
    assert m.group(2) == encode_signing_key_base64(key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reloading_gives_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    first = load_or_create_signing_key(path)
    content = path.read_text()
    again = load_or_create_signing_key(path)
    assert (again.version, encode_signing_key_base64(again)) == (first.version, encode_signing_key_base64(first))
    assert path.read_text() == content


def test_reads_a_key_file_written_by_synapse(tmp_path: Path) -> None:
    path = tmp_path / "synapse.signing.key"
    synapse_key = generate_signing_key("a_AbCd")
    with path.open("w") as f:
        write_signing_keys(f, [synapse_key])
    key = load_or_create_signing_key(path)
    assert key_id(key) == "ed25519:a_AbCd"
    assert encode_signing_key_base64(key) == encode_signing_key_base64(synapse_key)


def test_each_server_gets_its_own_key(tmp_path: Path) -> None:
    a = load_or_create_signing_key(tmp_path / "a.key")
    b = load_or_create_signing_key(tmp_path / "b.key")
    assert encode_signing_key_base64(a) != encode_signing_key_base64(b)


def _create_key_in_child(path: str) -> str:
    key = load_or_create_signing_key(Path(path))
    return f"{key.version} {encode_signing_key_base64(key)}"


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    """Several `homeserver run` processes of one server create the missing key file at the same
    moment: none fails, all sign with the one key the file ends up holding, and no temporary file
    is left behind."""
    for attempt in range(5):
        path = tmp_path / f"race{attempt}" / "signing.key"
        with multiprocessing.get_context("fork").Pool(8) as pool:
            keys = pool.map(_create_key_in_child, [str(path)] * 16)
        on_disk = load_or_create_signing_key(path)
        assert set(keys) == {f"{on_disk.version} {encode_signing_key_base64(on_disk)}"}
        assert [p.name for p in path.parent.iterdir()] == ["signing.key"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "content",
    [
        "",
        "\n",
        "not a key file at all\n",
        "ed25519 a_AbCd !!!not-base64!!!\n",
        "ed25519 a_AbCd c2hvcnQ\n",  # base64 of 5 bytes, not a 32-byte seed
        "rsa a_AbCd 2xyJtVlDSkHbNaGfSrDa6pu3xtXJA6nfZLDiA2JNZU8\n",
        "ed25519\n",
    ],
)
def test_corrupt_key_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "signing.key"
    path.write_text(content)
    with pytest.raises(SigningKeyError, match=re.escape(str(path))):
        load_or_create_signing_key(path)
    # The broken file is never replaced by a new key.
    assert path.read_text() == content


# ------------------------------------------------------------------- signing


def test_published_key_is_the_public_key(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k")
    public = verify_key_base64(key)
    assert public == verify_key_base64(get_verify_key(key))
    assert public != encode_signing_key_base64(key), "the private seed must never be published"
    assert decode_base64(public) == bytes(key.verify_key)


def test_server_keys_response_is_self_signed(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k")
    now = 1_700_000_000_000
    raw = server_keys_response("example.com", key, now)
    body = json.loads(raw)
    assert raw == encode_canonical_json(body)
    assert body["valid_until_ts"] == now + KEY_VALIDITY_MS
    verify(body, "example.com", get_verify_key(key))
    with pytest.raises(SignatureVerifyException):
        verify(body, "other.example", get_verify_key(key))


def test_sign_does_not_modify_its_input(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k")
    value = {"a": 1, "signatures": {"other.example": {"ed25519:x": "sig"}}}
    signed = sign(value, "example.com", key)
    assert value == {"a": 1, "signatures": {"other.example": {"ed25519:x": "sig"}}}
    assert set(signed["signatures"]) == {"other.example", "example.com"}
    verify(signed, "example.com", get_verify_key(key))
    tampered = dict(signed, a=2)
    with pytest.raises(SignatureVerifyException):
        verify(tampered, "example.com", get_verify_key(key))


def test_canonical_json() -> None:
    # The spec's appendix: sorted keys, no insignificant whitespace, UTF-8 as is.
    assert canonical_json({"b": "2", "a": 1, "c": {"z": [1, 2], "y": None}}) == (
        b'{"a":1,"b":"2","c":{"y":null,"z":[1,2]}}'
    )
    assert canonical_json({"本": "日本語"}) == '{"本":"日本語"}'.encode()
    assert canonical_json({"a": "\u0001\n"}) == b'{"a":"\\u0001\\n"}'


# -------------------------------------------------------------- over HTTP


def _check_key_response(raw: bytes, server) -> None:
    body = json.loads(raw)
    # The body is exactly the canonical JSON of itself.
    assert raw == encode_canonical_json(body)
    assert body["server_name"] == "test.local"
    assert body["old_verify_keys"] == {}
    now = int(time.time() * 1000)
    assert now + 3600_000 < body["valid_until_ts"] <= now + KEY_VALIDITY_MS + 60_000

    our_key = server.hs.signing_key
    kid = f"ed25519:{our_key.version}"
    assert body["verify_keys"] == {kid: {"key": verify_key_base64(our_key)}}
    assert body["verify_keys"][kid]["key"] != encode_signing_key_base64(our_key)
    assert re.fullmatch(r"ed25519:[A-Za-z0-9_]+", kid)

    # Verify with only what was served, as a remote server does.
    served = decode_verify_key_bytes(kid, decode_base64(body["verify_keys"][kid]["key"]))
    assert list(body["signatures"]) == ["test.local"]
    assert list(body["signatures"]["test.local"]) == [kid]
    verify_signed_json(body, "test.local", served)
    body["valid_until_ts"] += 1
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(body, "test.local", served)


async def _get_raw(server, path: str) -> tuple[int, str, bytes]:
    async with server.http.get(server.url + path) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.read()


async def test_key_server(server) -> None:
    status, content_type, raw = await _get_raw(server, "/_matrix/key/v2/server")
    assert status == 200
    assert content_type.startswith("application/json")
    _check_key_response(raw, server)


async def test_key_server_with_key_id(server) -> None:
    kid = f"ed25519:{server.hs.signing_key.version}"
    status, _, raw = await _get_raw(server, f"/_matrix/key/v2/server/{kid}")
    assert status == 200
    _check_key_response(raw, server)
    # Asking for an unknown key ID still gives the current keys.
    status, _, raw = await _get_raw(server, "/_matrix/key/v2/server/ed25519:unknown")
    assert status == 200
    _check_key_response(raw, server)


async def test_served_key_is_the_key_file(server) -> None:
    key_file = Path(server.hs.config.signing_key_path or "")
    assert key_file.exists()
    assert load_or_create_signing_key(key_file).version == server.hs.signing_key.version
    status, _, raw = await _get_raw(server, "/_matrix/key/v2/server")
    served = json.loads(raw)["verify_keys"]
    assert served == {
        f"ed25519:{server.hs.signing_key.version}": {
            "key": verify_key_base64(load_or_create_signing_key(key_file))
        }
    }
