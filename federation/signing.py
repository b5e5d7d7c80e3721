"""Canonical JSON and ed25519 signatures, used by everything that signs.

Thin wrappers over canonicaljson and signedjson so that the rest of the code
base signs and verifies one way: the spec's "Signing JSON" appendix.
"""

from __future__ import annotations

import copy
from typing import Any

import nacl.signing
from canonicaljson import encode_canonical_json
from signedjson.key import SigningKey, VerifyKey, encode_verify_key_base64
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json

__all__ = [
    "SignatureVerifyException",
    "canonical_json",
    "key_id",
    "sign",
    "verify",
]


def canonical_json(value: Any) -> bytes:
    """The spec's canonical JSON encoding (sorted keys, no spaces, UTF-8)."""
    return encode_canonical_json(value)


def key_id(key: SigningKey | VerifyKey) -> str:
    """`ed25519:<version>`, the ID under which a key's signatures are filed."""
    return f"{key.alg}:{key.version}"


def sign(value: dict[str, Any], server_name: str, key: SigningKey) -> dict[str, Any]:
    """A copy of `value` with this server's signature added under `signatures`."""
    return sign_json(copy.deepcopy(value), server_name, key)


def verify(value: dict[str, Any], server_name: str, key: VerifyKey) -> None:
    """Raise SignatureVerifyException unless `server_name` signed `value` with `key`."""
    verify_signed_json(value, server_name, key)


def verify_key_base64(key: SigningKey | VerifyKey) -> str:
    """The public key, unpadded base64; for a signing key, its public half."""
    # signedjson's SigningKey is a typing Protocol that isinstance never
    # matches; the objects are nacl's, and a SigningKey's encode() would be
    # its private seed.
    verify_key = key.verify_key if isinstance(key, nacl.signing.SigningKey) else key
    return encode_verify_key_base64(verify_key)
