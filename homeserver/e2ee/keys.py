"""Device keys, one-time and fallback keys, cross-signing keys and signatures.

Every key a client uploads is checked before it is stored: it belongs to
the caller, its algorithms and key IDs are well formed, and its signatures
verify (a device's keys are self-signed; self-signing and user-signing keys
are signed by the master key; a signature upload is checked against the key
that claims to have made it). A device's identity keys cannot be swapped
once published: a client that lost them must log in as a new device.
Users of other servers are answered as `failures` (there is no federation
yet), never as errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64

from storage.e2ee import E2EStore, Signature
from storage.engines import Transaction

from ..errors import MatrixError, bad_json, invalid_param
from ..ids import split_user_id
from ..sync.notifier import Notifier
from ..util import now_ms

if TYPE_CHECKING:
    from storage import Storage

JsonDict = dict[str, Any]
CROSS_SIGNING_TYPES = ("master", "self_signing", "user_signing")
# Spec default: clients keep a count of these topped up.
SIGNED_CURVE25519 = "signed_curve25519"
MAX_KEY_ID_LENGTH = 255


def invalid_signature(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_SIGNATURE", msg)


def _without_signatures(value: JsonDict) -> JsonDict:
    return {k: v for k, v in value.items() if k not in ("signatures", "unsigned")}


def _ed25519_key(key_id: str, public_key: Any) -> Any:
    """A VerifyKey for `ed25519:<id>` with unpadded-base64 `public_key`."""
    if not isinstance(public_key, str):
        raise invalid_param(f"Key {key_id} is not a string")
    try:
        return decode_verify_key_bytes(key_id, decode_base64(public_key))
    except Exception:  # noqa: BLE001 - anything undecodable is the client's error
        raise invalid_param(f"Key {key_id} is not a valid ed25519 public key") from None


def _signatures_of(value: JsonDict, user_id: str) -> dict[str, Any]:
    signatures = value.get("signatures", {})
    if not isinstance(signatures, dict) or not all(isinstance(v, dict) for v in signatures.values()):
        raise bad_json("'signatures' must map user IDs to objects")
    mine = signatures.get(user_id, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mine.items()):
        raise bad_json("Signatures must be strings")
    return mine


def _verify(value: JsonDict, user_id: str, key_id: str, verify_key: Any, what: str) -> None:
    if key_id not in _signatures_of(value, user_id):
        raise invalid_signature(f"{what} is not signed by {user_id} with {key_id}")
    try:
        verify_signed_json(value, user_id, verify_key)
    except SignatureVerifyException:
        raise invalid_signature(f"Invalid signature on {what}") from None
    except Exception:  # noqa: BLE001 - e.g. undecodable base64
        raise invalid_signature(f"Malformed signature on {what}") from None


def _check_key_id(key_id: Any, what: str) -> tuple[str, str]:
    """(algorithm, id) of an `algorithm:id` key ID."""
    if not isinstance(key_id, str) or len(key_id) > MAX_KEY_ID_LENGTH or "\x00" in key_id:
        raise invalid_param(f"Invalid {what} key ID")
    algorithm, sep, ident = key_id.partition(":")
    if not sep or not algorithm or not ident:
        raise invalid_param(f"{what} key ID {key_id!r} is not algorithm:id")
    return algorithm, ident


def check_device_keys(keys: Any, user_id: str, device_id: str | None) -> JsonDict:
    """The device keys to store: the caller's own device's, self-signed."""
    if not isinstance(keys, dict):
        raise bad_json("'device_keys' must be an object")
    if keys.get("user_id") != user_id:
        raise invalid_param("'user_id' in device_keys must be your own user ID")
    if not device_id or keys.get("device_id") != device_id:
        raise invalid_param("'device_id' in device_keys must be the device of your access token")
    algorithms = keys.get("algorithms")
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        raise bad_json("'algorithms' must be a list of strings")
    key_map = keys.get("keys")
    if not isinstance(key_map, dict) or not key_map:
        raise bad_json("'keys' must be a non-empty object")
    for key_id, value in key_map.items():
        _algorithm, ident = _check_key_id(key_id, "device")
        if ident != device_id or not isinstance(value, str):
            raise invalid_param(f"Device key {key_id!r} must be '<algorithm>:{device_id}' with a string value")
    signing_key_id = f"ed25519:{device_id}"
    if signing_key_id not in key_map:
        raise invalid_param(f"device_keys must include {signing_key_id}")
    _verify(keys, user_id, signing_key_id, _ed25519_key(signing_key_id, key_map[signing_key_id]), "device_keys")
    return {k: v for k, v in keys.items() if k != "unsigned"}


def _check_one_time_key(key_id: str, value: Any, user_id: str, device_ed25519: Any, what: str) -> None:
    if isinstance(value, str):
        return  # an unsigned key (plain curve25519), as old clients upload
    if not isinstance(value, dict) or not isinstance(value.get("key"), str):
        raise bad_json(f"{what} {key_id!r} must be a string or an object with a 'key'")
    if device_ed25519 is not None:
        _verify(value, user_id, device_ed25519[0], device_ed25519[1], f"{what} {key_id}")


def check_cross_signing_key(key: Any, user_id: str, usage: str) -> str:
    """The public key of a well-formed cross-signing key of `user_id`."""
    if not isinstance(key, dict):
        raise bad_json(f"The {usage} key must be an object")
    if key.get("user_id") != user_id:
        raise invalid_param(f"The {usage} key must belong to {user_id}")
    usages = key.get("usage")
    if not isinstance(usages, list) or usage not in usages:
        raise invalid_param(f"The {usage} key's 'usage' must include {usage!r}")
    key_map = key.get("keys")
    if not isinstance(key_map, dict) or len(key_map) != 1:
        raise invalid_param(f"The {usage} key must have exactly one key")
    ((key_id, public_key),) = key_map.items()
    algorithm, ident = _check_key_id(key_id, usage)
    if algorithm != "ed25519" or ident != public_key:
        raise invalid_param(f"The {usage} key must be 'ed25519:<public key>' mapping to that key")
    _ed25519_key(key_id, public_key)
    return public_key


# The notifier stream that says "these users' one-time or fallback keys
# changed" (it has no positions of its own: it only invalidates and wakes).
KEYS_CHANGED = "one_time_keys"


class E2EKeys:
    def __init__(self, storage: Storage, server_name: str, notifier: Notifier) -> None:
        self.storage = storage
        self.store: E2EStore = storage.e2ee
        self.server_name = server_name
        self.notifier = notifier
        # user -> device -> (one-time key counts, unused fallback algorithms),
        # which every /sync response carries. A user's entry is dropped when
        # their keys change in any process (the notifier's observers);
        # `_generation` keeps a read that raced with a change from being stored.
        self._counts: dict[str, dict[str, tuple[dict[str, int], list[str]]]] = {}
        self._generation = 0
        notifier.observers.append(self._observe)
        # Awaited with (user_ids, position) when device lists change.
        self.listeners: list[Callable[[Collection[str], int], Awaitable[None]]] = []

    def is_local(self, user_id: str) -> bool:
        parts = split_user_id(user_id)
        return parts is not None and parts[1] == self.server_name

    async def _changed(self, user_ids: Collection[str], position: int) -> None:
        for listener in self.listeners:
            await listener(user_ids, position)

    def _observe(self, stream: str | None, users: tuple[str, ...] | None) -> None:
        if stream is None or users is None:
            self._generation += 1
            self._counts.clear()
        elif stream in (KEYS_CHANGED, "device_lists"):
            self._generation += 1
            for user_id in users:
                self._counts.pop(user_id, None)

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        """The device's one-time key counts and unused fallback key algorithms."""
        found = self._counts.get(user_id, {}).get(device_id)
        if found is not None:
            return found
        generation = self._generation
        found = await self.store.key_counts(user_id, device_id)
        if generation == self._generation:
            self._counts.setdefault(user_id, {})[device_id] = found
        return found

    def _keys_changed(self, user_ids: Collection[str]) -> None:
        self.notifier.on_new(KEYS_CHANGED, 0, users=user_ids)

    async def device_list_changed(self, user_id: str) -> None:
        """The user's devices changed in a way their contacts should re-read."""
        await self._changed((user_id,), await self.store.device_list_changed((user_id,)))

    # ----------------------------------------------------------------- upload

    async def upload(self, user_id: str, device_id: str | None, body: JsonDict) -> JsonDict:
        device_keys = body.get("device_keys")
        one_time = body.get("one_time_keys") or {}
        fallback = body.get("fallback_keys", body.get("org.matrix.msc2732.fallback_keys")) or {}
        if not isinstance(one_time, dict) or not isinstance(fallback, dict):
            raise bad_json("'one_time_keys' and 'fallback_keys' must be objects")
        if not device_id:
            if device_keys is not None or one_time or fallback:
                raise invalid_param("Keys can only be uploaded for a device")
            return {"one_time_key_counts": {SIGNED_CURVE25519: 0}}
        new_keys = check_device_keys(device_keys, user_id, device_id) if device_keys is not None else None
        one_time_rows = [(*_check_key_id(k, "one-time"), k, v) for k, v in one_time.items()]
        fallback_rows = [(*_check_key_id(k, "fallback"), k, v) for k, v in fallback.items()]
        if len({alg for alg, *_ in fallback_rows}) != len(fallback_rows):
            raise invalid_param("Only one fallback key per algorithm may be uploaded")

        async def _fn(txn: Transaction) -> tuple[JsonDict, bool]:
            stored = await self.store.get_device_keys_txn(txn, user_id, device_id)
            changed = False
            if new_keys is not None:
                if stored is not None and stored.get("keys") != new_keys["keys"]:
                    raise invalid_param(
                        f"Device {device_id} already has different identity keys; log in as a new device"
                    )
                if stored != new_keys:
                    await self.store.set_device_keys_txn(txn, user_id, device_id, new_keys, now_ms())
                    changed = stored is None or stored.get("keys") != new_keys["keys"]
                    stored = new_keys
            signer = None
            if stored is not None:
                signing_key_id = f"ed25519:{device_id}"
                signer = (signing_key_id, _ed25519_key(signing_key_id, stored["keys"][signing_key_id]))
            for _alg, _ident, key_id, value in one_time_rows + fallback_rows:
                _check_one_time_key(key_id, value, user_id, signer, "key")
            if one_time_rows:
                existing = await self.store.get_one_time_keys_txn(
                    txn, user_id, device_id, [(alg, ident) for alg, ident, *_ in one_time_rows]
                )
                fresh = []
                for alg, ident, key_id, value in one_time_rows:
                    if (alg, ident) in existing:
                        if existing[(alg, ident)] != value:
                            raise invalid_param(f"One-time key {key_id} already exists with different content")
                        continue
                    fresh.append((alg, ident, value))
                await self.store.add_one_time_keys_txn(txn, user_id, device_id, fresh, now_ms())
            for alg, ident, _key_id, value in fallback_rows:
                current = await self.store.get_fallback_key_txn(txn, user_id, device_id, alg)
                # The same key again keeps its "used" mark.
                if current != (ident, value):
                    await self.store.set_fallback_key_txn(txn, user_id, device_id, alg, ident, value)
            counts, _unused = await self.store.key_counts_txn(txn, user_id, device_id)
            return counts, changed

        counts, changed = await self.storage.db.run("e2e_upload_keys", _fn)
        if one_time_rows or fallback_rows:
            self._keys_changed((user_id,))
        if changed:
            await self.device_list_changed(user_id)
        return {"one_time_key_counts": {SIGNED_CURVE25519: 0, **counts}}

    def _local_users(self, wanted: JsonDict) -> tuple[JsonDict, JsonDict]:
        """`wanted` (keyed by user ID) split: this server's users, and a
        failure per other server (there is no federation to ask them)."""
        local: JsonDict = {}
        failures: JsonDict = {}
        for user_id, value in wanted.items():
            parts = split_user_id(user_id)
            if parts is None:
                continue
            if parts[1] != self.server_name:
                failures[parts[1]] = {"status": 503, "message": "Federation is not available on this server"}
                continue
            local[user_id] = value
        return local, failures

    # ------------------------------------------------------------------ query

    async def query(self, requester: str, wanted: JsonDict) -> JsonDict:
        """/keys/query for `wanted` (user -> device IDs, [] for all)."""
        local, failures = self._local_users(wanted)
        existing = await self.store.existing_users(list(local))
        local = {u: d for u, d in local.items() if u in existing}
        found = await self.store.query_devices(local)
        cross = await self.store.get_cross_signing_keys(list(local))
        signatures = await self.store.get_signatures(list(local))
        by_target: dict[tuple[str, str], list[Signature]] = {}
        for sig in signatures:
            by_target.setdefault((sig.target_user_id, sig.target_key_id), []).append(sig)

        def with_signatures(value: JsonDict, user_id: str, key_id: str, visible: Callable[[Signature], bool]) -> JsonDict:
            extra = [s for s in by_target.get((user_id, key_id), ()) if visible(s)]
            if not extra:
                return value
            value = dict(value)
            merged = {u: dict(v) for u, v in value.get("signatures", {}).items()}
            for s in extra:
                merged.setdefault(s.signer_user_id, {})[s.signer_key_id] = s.signature
            value["signatures"] = merged
            return value

        device_keys: JsonDict = {}
        for user_id, devices in found.items():
            out = device_keys[user_id] = {}
            for device_id, (keys, display_name) in devices.items():
                if keys is None:
                    continue
                keys = with_signatures(keys, user_id, device_id, lambda s: True)
                out[device_id] = {**keys, "unsigned": {"device_display_name": display_name}}
        result: JsonDict = {"device_keys": device_keys, "failures": failures}
        masters, self_signing, user_signing = {}, {}, {}
        for user_id, keys in cross.items():
            if "master" in keys:
                public = _public(keys["master"])
                # Others' user-signing signatures of this master key are the signer's business.
                masters[user_id] = with_signatures(
                    keys["master"], user_id, public, lambda s, u=user_id: s.signer_user_id in (u, requester)
                )
            if "self_signing" in keys:
                self_signing[user_id] = keys["self_signing"]
            if "user_signing" in keys and user_id == requester:
                user_signing[user_id] = keys["user_signing"]
        result.update(master_keys=masters, self_signing_keys=self_signing, user_signing_keys=user_signing)
        return result

    # ------------------------------------------------------------------ claim

    async def claim(self, wanted: JsonDict) -> JsonDict:
        local, failures = self._local_users(wanted)
        rows = [
            (user_id, device_id, algorithm)
            for user_id, devices in local.items()
            for device_id, algorithm in devices.items()
        ]
        one_time_keys: JsonDict = {}
        for user_id, device_id, key_id, key in await self.store.claim_keys(rows):
            one_time_keys.setdefault(user_id, {}).setdefault(device_id, {})[key_id] = key
        if one_time_keys:
            # Their counts dropped: their syncs say so (and wake to top up).
            self._keys_changed(list(one_time_keys))
        return {"one_time_keys": one_time_keys, "failures": failures}

    # ---------------------------------------------------------- cross-signing

    async def cross_signing_upload_needs_auth(self, user_id: str, body: JsonDict) -> bool:
        """Whether this upload must pass UIA: not the first upload (the spec
        allows that without), and not one that changes nothing."""
        current = await self._own_keys(user_id)
        if "master" not in current:
            return False
        return any(
            f"{t}_key" in body and body[f"{t}_key"] != current.get(t) for t in CROSS_SIGNING_TYPES
        )

    async def upload_cross_signing(self, user_id: str, body: JsonDict) -> None:
        uploaded = {t: body[f"{t}_key"] for t in CROSS_SIGNING_TYPES if body.get(f"{t}_key") is not None}
        publics = {t: check_cross_signing_key(key, user_id, t) for t, key in uploaded.items()}

        async def _fn(txn: Transaction) -> bool:
            current = await self.store.get_cross_signing_keys_txn(txn, user_id)
            master = uploaded.get("master", current.get("master"))
            if master is None:
                raise invalid_param("A master key is needed before self-signing or user-signing keys")
            master_public = publics.get("master") or _public(master)
            master_key_id = f"ed25519:{master_public}"
            for t in ("self_signing", "user_signing"):
                if t in uploaded:
                    _verify(uploaded[t], user_id, master_key_id, _ed25519_key(master_key_id, master_public), f"the {t} key")
            changed = False
            for t, key in uploaded.items():
                if current.get(t) != key:
                    await self.store.set_cross_signing_key_txn(txn, user_id, t, publics[t], key, now_ms())
                    changed = True
            return changed

        if await self.storage.db.run("e2e_upload_cross_signing", _fn):
            await self.device_list_changed(user_id)

    async def upload_signatures(self, requester: str, body: JsonDict) -> JsonDict:
        """Check and store each signature; failures are reported per key."""
        failures: JsonDict = {}
        accepted: list[Signature] = []
        own = await self._own_keys(requester)
        for target_user, keys in body.items():
            if not isinstance(keys, dict):
                raise bad_json("Each user must map key IDs to signed keys")
            for key_id, signed in keys.items():
                try:
                    accepted.extend(await self._check_signature(requester, own, target_user, key_id, signed))
                except MatrixError as err:
                    failures.setdefault(target_user, {})[key_id] = err.to_json()
        if accepted:
            # Signatures of one's own keys change them for everyone; a
            # user-signing signature of someone else only matters to the
            # signer, whose clients must re-read that user's keys (as Synapse:
            # the signed user appears in the signer's device_lists.changed).
            own_keys = {requester} if any(s.target_user_id == requester for s in accepted) else set()
            others = {(s.target_user_id, requester) for s in accepted if s.target_user_id != requester}

            async def _fn(txn: Transaction) -> int:
                await self.store.add_signatures_txn(txn, accepted)
                return await self.store.device_list_changed_txn(txn, own_keys, others)

            position = await self.storage.db.run("e2e_upload_signatures", _fn, read_committed=True)
            if own_keys:
                await self._changed(own_keys, position)
            else:
                self.notifier.on_new("device_lists", position, users=(requester,))
        return {"failures": failures}

    async def _own_keys(self, user_id: str) -> dict[str, JsonDict]:
        """The user's cross-signing keys by type."""
        return (await self.store.get_cross_signing_keys([user_id])).get(user_id, {})

    async def _check_signature(
        self, requester: str, own: dict[str, JsonDict], target_user: str, key_id: str, signed: Any
    ) -> list[Signature]:
        if not isinstance(signed, dict):
            raise bad_json("A signed key must be an object")
        if not self.is_local(target_user):
            raise MatrixError(400, "M_INVALID_PARAM", "Signing keys of other servers' users is not supported")
        new = _signatures_of(signed, requester)
        if target_user == requester:
            master = own.get("master")
            if master is not None and key_id == _public(master):
                # A device vouching for its user's master key.
                stored = master
                signers = {}
                for signer_id in new:
                    algorithm, device_id = _check_key_id(signer_id, "signing")
                    device = await self._device_keys(requester, device_id)
                    if algorithm == "ed25519" and device is not None:
                        signers[signer_id] = device["keys"].get(signer_id)
            else:
                stored = await self._device_keys(requester, key_id)
                if stored is None:
                    raise MatrixError(404, "M_NOT_FOUND", f"No device {key_id} with keys")
                ssk = own.get("self_signing")
                if ssk is None:
                    raise invalid_signature("You have no self-signing key to sign devices with")
                signers = {f"ed25519:{_public(ssk)}": _public(ssk)}
        else:
            theirs = (await self.store.get_cross_signing_keys([target_user])).get(target_user, {})
            if "master" not in theirs or key_id != _public(theirs["master"]):
                raise MatrixError(404, "M_NOT_FOUND", f"{key_id} is not the master key of {target_user}")
            stored = theirs["master"]
            usk = own.get("user_signing")
            if usk is None:
                raise invalid_signature("You have no user-signing key to sign other users with")
            signers = {f"ed25519:{_public(usk)}": _public(usk)}
        if _without_signatures(signed) != _without_signatures(stored):
            raise invalid_param("The signed object is not the key that is stored")
        made = [(sid, pub) for sid, pub in signers.items() if sid in new and pub is not None]
        if not made:
            raise invalid_signature("No signature by a key that may sign this")
        accepted = []
        for signer_id, public in made:
            only = {**_without_signatures(signed), "signatures": {requester: {signer_id: new[signer_id]}}}
            _verify(only, requester, signer_id, _ed25519_key(signer_id, public), key_id)
            accepted.append(Signature(target_user, key_id, requester, signer_id, new[signer_id]))
        return accepted

    async def _device_keys(self, user_id: str, device_id: str) -> JsonDict | None:
        return await self.storage.db.run(
            "e2e_device_keys", self.store.get_device_keys_txn, user_id, device_id
        )


def _public(cross_signing_key: JsonDict) -> str:
    ((_key_id, public),) = cross_signing_key["keys"].items()
    return public

