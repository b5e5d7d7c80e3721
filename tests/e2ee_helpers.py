"""Real ed25519 keys for the E2EE tests: devices and cross-signing keys
signed the way clients sign them (signedjson over canonical JSON)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
from signedjson.key import generate_signing_key
from signedjson.sign import sign_json
from unpaddedbase64 import encode_base64

V3 = "/_matrix/client/v3"


def _public(key: Any) -> str:
    return encode_base64(key.verify_key.encode())


def signed(value: dict[str, Any], user_id: str, key: Any) -> dict[str, Any]:
    return sign_json(copy.deepcopy(value), user_id, key)


@dataclass
class TestDevice:
    """A client device: its identity keys and a source of signed one-time keys."""

    __test__ = False

    user_id: str
    device_id: str
    token: str
    key: Any = field(init=False)
    curve: str = field(init=False)
    _next_otk: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.key = generate_signing_key(self.device_id)
        self.curve = encode_base64(nacl.signing.SigningKey.generate().verify_key.encode())

    @property
    def ed25519(self) -> str:
        return _public(self.key)

    def device_keys(self) -> dict[str, Any]:
        return signed(
            {
                "user_id": self.user_id,
                "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {f"curve25519:{self.device_id}": self.curve, f"ed25519:{self.device_id}": self.ed25519},
            },
            self.user_id,
            self.key,
        )

    def one_time_keys(self, n: int, *, fallback: bool = False) -> dict[str, Any]:
        keys = {}
        for _ in range(n):
            self._next_otk += 1
            content: dict[str, Any] = {"key": encode_base64(bytes([self._next_otk % 256]) * 32)}
            if fallback:
                content["fallback"] = True
            keys[f"signed_curve25519:AAAA{self._next_otk:04d}"] = signed(content, self.user_id, self.key)
        return keys


@dataclass
class CrossSigning:
    """A user's master, self-signing and user-signing keys (each key's
    version is its public key, so its signatures are filed under
    `ed25519:<public key>`)."""

    user_id: str
    keys: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.keys = {}
        for which in ("master", "self_signing", "user_signing"):
            key = generate_signing_key("x")
            key.version = _public(key)
            self.keys[which] = key

    def public(self, which: str) -> str:
        return _public(self.keys[which])

    def key_id(self, which: str) -> str:
        return f"ed25519:{self.public(which)}"

    def key(self, which: str) -> dict[str, Any]:
        """The published form of a key (unsigned)."""
        return {"user_id": self.user_id, "usage": [which], "keys": {self.key_id(which): self.public(which)}}

    def sign_with(self, which: str, value: dict[str, Any]) -> dict[str, Any]:
        return signed(value, self.user_id, self.keys[which])

    def upload_body(self) -> dict[str, Any]:
        return {
            "master_key": self.key("master"),
            "self_signing_key": self.sign_with("master", self.key("self_signing")),
            "user_signing_key": self.sign_with("master", self.key("user_signing")),
        }


async def new_device(server: Any, localpart: str, device_id: str, *, register: bool = True) -> TestDevice:
    if register:
        await server.register_user(localpart)
    login = await server.login(localpart, device_id=device_id)
    return TestDevice(login["user_id"], device_id, login["access_token"])


async def upload(server: Any, device: TestDevice, body: dict[str, Any]) -> Any:
    return await server.post(f"{V3}/keys/upload", body, token=device.token)
