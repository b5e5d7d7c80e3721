"""Room aliases (#name:server) and the public room directory.

Aliases live only on the server named in them; this server keeps its own
and, without federation, cannot resolve anyone else's. Who may remove an
alias or publish a room follows Synapse: the alias' creator, a server admin,
or a joined member with the power to change the room's canonical alias.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage import Storage

from ..accounts.auth import Requester
from ..errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from ..events.redaction import state_content
from ..events.validation import is_server_name
from ..util import now_ms
from .summary import OPEN_JOIN_RULES, RoomSummary, summarise_rooms
from .visibility import HISTORY_KEY

if TYPE_CHECKING:
    from .service import Rooms

logger = logging.getLogger(__name__)

CANONICAL_ALIAS_TYPE = "m.room.canonical_alias"
CANONICAL_ALIAS_KEY = (CANONICAL_ALIAS_TYPE, "")
MAX_ALIAS_BYTES = 255
# A createRoom alias reservation older than this was left behind by a crash.
ALIAS_RESERVATION_TTL_MS = 10 * 60 * 1000


def parse_room_alias(alias: str) -> tuple[str, str] | None:
    """(localpart, server name) of a well-formed alias, else None (appendices: Room Aliases)."""
    if not alias.startswith("#"):
        return None
    try:
        if len(alias.encode()) > MAX_ALIAS_BYTES:
            return None
    except UnicodeEncodeError:  # lone surrogates
        return None
    localpart, colon, server_name = alias[1:].partition(":")
    if not colon or not localpart or "\x00" in localpart or not is_server_name(server_name):
        return None
    return localpart, server_name


async def check_canonical_alias(rooms: Rooms, room_id: str, content: dict[str, Any]) -> None:
    """Refuse an m.room.canonical_alias naming aliases that do not lead to this room.

    As Synapse does, only aliases the event adds are checked, so an alias that
    has since moved does not block every later change to the event. Remote
    aliases are checked for syntax only: resolving them needs federation.
    """
    previous = (await rooms.current_state_events(room_id, [CANONICAL_ALIAS_KEY])).get(
        CANONICAL_ALIAS_KEY
    )
    old = state_content(previous) if previous is not None else {}
    old_alt = old.get("alt_aliases")
    old_aliases = {
        a for a in [old.get("alias"), *(old_alt if isinstance(old_alt, list) else [])]
        if isinstance(a, str)
    }
    alias = content.get("alias")
    if alias is not None and not isinstance(alias, str):
        raise invalid_param("'alias' must be a room alias")
    alt_aliases = content.get("alt_aliases", [])
    if not isinstance(alt_aliases, list) or not all(isinstance(a, str) for a in alt_aliases):
        raise invalid_param("'alt_aliases' must be a list of room aliases")
    added = [a for a in dict.fromkeys([alias or "", *alt_aliases]) if a and a not in old_aliases]
    local = []
    for added_alias in added:
        parsed = parse_room_alias(added_alias)
        if parsed is None:
            raise invalid_param(f"Invalid room alias: {added_alias!r}")
        if parsed[1] == rooms.server_name:
            local.append(added_alias)
    mapped = await rooms.storage.directory.get_aliases(local)
    for added_alias in local:
        if mapped.get(added_alias) != room_id:
            raise MatrixError(
                400, "M_BAD_ALIAS", f"The alias {added_alias} does not point to this room"
            )


# ------------------------------------------------------------- /publicRooms


@dataclass(frozen=True)
class PublicRoomsQuery:
    """What a client asks /publicRooms for; `limit` None (or 0, as Synapse) means all."""

    limit: int | None = None
    since: str | None = None
    search_term: str | None = None
    # None: any room type; else the types (None: rooms without a type) wanted.
    room_types: frozenset[str | None] | None = None
    include_all_networks: bool = False
    third_party_instance_id: str | None = None


@dataclass(frozen=True)
class _PageKey:
    """A position in the directory's order: most joined members first, then room ID."""

    joined: int
    room_id: str

    @property
    def sort_key(self) -> tuple[int, str]:
        return (-self.joined, self.room_id)


def _encode_token(forward: bool, key: _PageKey) -> str:
    raw = json.dumps(["n" if forward else "p", key.joined, key.room_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[bool, _PageKey]:
    """(forward, position) of a next_batch / prev_batch token."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        direction, joined, room_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise invalid_param("Invalid pagination token") from None
    if direction not in ("n", "p") or not isinstance(joined, int) or not isinstance(room_id, str):
        raise invalid_param("Invalid pagination token")
    return direction == "n", _PageKey(joined, room_id)


def _is_listed(summary: RoomSummary) -> bool:
    """Synapse's extra filter: published rooms nobody could join or read stay hidden."""
    return summary.join_rule in OPEN_JOIN_RULES or summary.world_readable


def _matches(entry: dict[str, Any], alt_aliases: Sequence[str], query: PublicRoomsQuery) -> bool:
    if query.room_types is not None and entry.get("room_type") not in query.room_types:
        return False
    if query.search_term:
        term = query.search_term.casefold()
        texts = [entry.get("name"), entry.get("topic"), entry.get("canonical_alias"), *alt_aliases]
        return any(isinstance(t, str) and term in t.casefold() for t in texts)
    return True


class Directory:
    def __init__(self, storage: Storage, rooms: Rooms, server_name: str) -> None:
        self.storage = storage
        self.store = storage.directory
        self.rooms = rooms
        self.server_name = server_name
        # Hooks (the application services): `check_alias_namespace(alias,
        # appservice_id)` raises M_EXCLUSIVE for an alias the requester may
        # not create or delete; `query_alias(alias)` asks the service whose
        # namespace holds an unknown alias, True if it created it.
        self.check_alias_namespace: Callable[[str, str | None], None] | None = None
        self.query_alias: Callable[[str], Awaitable[bool]] | None = None

    # ------------------------------------------------------------- aliases

    def check_local_alias(self, alias: str) -> None:
        """400 M_INVALID_PARAM unless `alias` is a well-formed alias of this server."""
        parsed = parse_room_alias(alias)
        if parsed is None:
            raise invalid_param(f"Invalid room alias: {alias!r}")
        if parsed[1] != self.server_name:
            raise invalid_param(f"Room aliases must be on this server ({self.server_name})")

    async def resolve_alias(self, alias: str) -> str:
        """The room an alias maps to, or 404 M_NOT_FOUND."""
        parsed = parse_room_alias(alias)
        if parsed is None:
            raise invalid_param(f"Invalid room alias: {alias!r}")
        if parsed[1] != self.server_name:
            raise not_found(
                f"Room alias {alias} belongs to another server, and resolving it needs"
                " federation, which is not enabled"
            )
        mapping = await self.store.get_alias(alias)
        if mapping is None and self.query_alias is not None and await self.query_alias(alias):
            mapping = await self.store.get_alias(alias)
        if mapping is None:
            raise not_found(f"Room alias {alias} not found")
        return mapping.room_id

    async def servers_for_room(self, room_id: str) -> list[str]:
        """Servers that can help join the room: this one, then its members' servers."""
        members = await self.storage.events.members_of_room(room_id)
        others = {m.user_id.partition(":")[2] for m in members} - {self.server_name, ""}
        return [self.server_name, *sorted(others)]

    async def create_alias(self, requester: Requester, alias: str, room_id: str) -> None:
        """PUT /directory/room: joined members (and server admins) may add aliases."""
        self.check_local_alias(alias)
        self._check_namespace(alias, requester.app_service_id)
        await self.rooms.require_room(room_id)
        if not requester.admin:
            membership = await self.rooms.membership(room_id, requester.user_id)
            if membership is None or membership.membership != "join":
                raise forbidden("You must be in the room to create an alias for it")
        if not await self.store.create_alias(alias, room_id, requester.user_id, now_ms()):
            raise MatrixError(409, "M_UNKNOWN", f"Room alias {alias} already exists")
        logger.info("%s mapped %s to %s", requester.user_id, alias, room_id)

    async def delete_alias(self, requester: Requester, alias: str) -> None:
        """DELETE /directory/room: the alias' creator, or who may edit the room's directory entry."""
        self.check_local_alias(alias)
        self._check_namespace(alias, requester.app_service_id)
        mapping = await self.store.get_alias(alias)
        if mapping is None:
            raise not_found(f"Room alias {alias} not found")
        if mapping.creator != requester.user_id and not await self.can_edit_directory(
            requester, mapping.room_id
        ):
            raise forbidden("You don't have permission to delete this alias")
        if not await self.store.delete_alias(alias, mapping.room_id):
            raise not_found(f"Room alias {alias} not found")
        logger.info("%s removed %s from %s", requester.user_id, alias, mapping.room_id)
        await self._drop_from_canonical_alias(requester.user_id, mapping.room_id, alias)

    async def _drop_from_canonical_alias(self, user_id: str, room_id: str, alias: str) -> None:
        """Take a deleted alias out of m.room.canonical_alias, if the user may.

        The spec recommends the deletion stand even when the event cannot be
        updated, so a refusal here is only logged.
        """
        state = await self.rooms.current_state_events(room_id, [CANONICAL_ALIAS_KEY])
        event = state.get(CANONICAL_ALIAS_KEY)
        if event is None:
            return
        content = dict(state_content(event))
        alt_aliases = content.get("alt_aliases")
        changed = False
        if content.get("alias") == alias:
            del content["alias"]
            changed = True
        if isinstance(alt_aliases, list) and alias in alt_aliases:
            content["alt_aliases"] = [a for a in alt_aliases if a != alias]
            changed = True
        if not changed:
            return
        try:
            await self.rooms.send_event(user_id, room_id, CANONICAL_ALIAS_TYPE, content, state_key="")
        except MatrixError as err:
            logger.info("not updating the canonical alias of %s: %s", room_id, err.error)

    async def can_edit_directory(self, requester: Requester, room_id: str) -> bool:
        """Server admins, and joined members with the power to send m.room.canonical_alias."""
        if requester.admin:
            return True
        membership = await self.rooms.membership(room_id, requester.user_id)
        if membership is None or membership.membership != "join":
            return False
        levels = await self.rooms.power_levels(room_id)
        required = levels.required_level(CANONICAL_ALIAS_TYPE, is_state=True)
        return levels.user_level(requester.user_id) >= required

    async def local_aliases(self, requester: Requester, room_id: str) -> list[str]:
        """GET /rooms/{roomId}/aliases: joined members, anyone if world-readable, and admins."""
        self.rooms.check_room_id(room_id)
        if requester.admin:
            await self.rooms.require_room(room_id)
        else:
            membership = await self.rooms.membership(room_id, requester.user_id)
            if membership is None or membership.membership != "join":
                hv = (await self.rooms.current_state_events(room_id, [HISTORY_KEY])).get(HISTORY_KEY)
                if hv is None or state_content(hv).get("history_visibility") != "world_readable":
                    raise forbidden("You are not a member of the room")
        return await self.store.aliases_for_room(room_id)

    def _check_namespace(self, alias: str, appservice_id: str | None) -> None:
        if self.check_alias_namespace is not None:
            self.check_alias_namespace(alias, appservice_id)

    async def create_room(
        self, user_id: str, body: dict[str, Any], *, appservice_id: str | None = None
    ) -> str:
        """createRoom; `room_alias_name` is reserved first, so a taken alias creates no room."""
        alias = self._new_room_alias(body)
        if alias is None:
            return await self.rooms.create_room(user_id, body)
        self._check_namespace(alias, appservice_id)
        now = now_ms()
        if not await self.store.reserve_alias(alias, user_id, now, now - ALIAS_RESERVATION_TTL_MS):
            raise MatrixError(400, "M_ROOM_IN_USE", f"Room alias {alias} is already taken")
        try:
            room_id = await self.rooms.create_room(user_id, body, canonical_alias=alias)
        except BaseException:
            await self.store.release_reserved_alias(alias)
            raise
        await self.store.bind_reserved_alias(alias, room_id)
        return room_id

    def _new_room_alias(self, body: dict[str, Any]) -> str | None:
        """The full alias `room_alias_name` asks for (whitespace refused, as Synapse does)."""
        name = body.get("room_alias_name")
        if name is None:
            return None
        if not isinstance(name, str):
            raise bad_json("'room_alias_name' must be a string")
        if ":" in name:
            raise invalid_param("room_alias_name is the alias' local part only: ':' is not allowed")
        if any(c.isspace() for c in name):
            raise invalid_param("room_alias_name may not contain whitespace")
        alias = f"#{name}:{self.server_name}"
        if parse_room_alias(alias) is None:
            raise invalid_param(f"Invalid room alias: {alias!r}")
        return alias

    # ------------------------------------------------------------ directory

    async def get_visibility(self, room_id: str) -> str:
        self.rooms.check_room_id(room_id)
        is_public = await self.store.is_room_public(room_id)
        if is_public is None:
            raise not_found("Room not found")
        return "public" if is_public else "private"

    async def set_visibility(self, requester: Requester, room_id: str, visibility: str) -> None:
        """Publish or hide a room: needs the power to change its canonical alias (or admin)."""
        if visibility not in ("public", "private"):
            raise invalid_param("visibility must be 'public' or 'private'")
        self.rooms.check_room_id(room_id)
        if await self.store.is_room_public(room_id) is None:
            raise not_found("Room not found")
        if not await self.can_edit_directory(requester, room_id):
            raise forbidden(
                "You need the power to change the room's canonical alias to publish or hide it"
            )
        await self.store.set_room_public(room_id, visibility == "public")
        logger.info("%s set %s to %s in the directory", requester.user_id, room_id, visibility)

    def check_directory_server(self, server: str | None) -> None:
        """Only this server's directory can be listed: others need federation."""
        if server is None or server == self.server_name:
            return
        if not is_server_name(server):
            raise invalid_param(f"Invalid server name: {server!r}")
        raise forbidden(
            f"Listing the room directory of {server} needs federation, which is not enabled"
        )

    async def public_rooms(self, query: PublicRoomsQuery) -> dict[str, Any]:
        """A /publicRooms page: published rooms, most joined members first.

        Every published room's summary state is read in a few batched
        queries (events come from the cache) and filtered here; pagination
        tokens are positions in the order, so pages stay stable as rooms
        come and go.
        """
        if query.include_all_networks and query.third_party_instance_id is not None:
            raise invalid_param("include_all_networks cannot be used with third_party_instance_id")
        since = _decode_token(query.since) if query.since else None
        if query.third_party_instance_id is not None:
            return {"chunk": [], "total_room_count_estimate": 0}  # no bridged networks yet
        entries = await self._listed_rooms(query)
        entries.sort(key=lambda e: (-e["num_joined_members"], e["room_id"]))
        keys = [(-e["num_joined_members"], e["room_id"]) for e in entries]
        limit = query.limit or len(entries)
        if since is None:
            start = 0
            end = min(limit, len(entries))
        elif since[0]:
            start = bisect.bisect_right(keys, since[1].sort_key)
            end = min(start + limit, len(entries))
        else:
            end = bisect.bisect_left(keys, since[1].sort_key)
            start = max(0, end - limit)
        page = entries[start:end]
        response: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(entries)}
        if page and end < len(entries):
            response["next_batch"] = _encode_token(True, self._key(page[-1]))
        if page and start > 0:
            response["prev_batch"] = _encode_token(False, self._key(page[0]))
        return response

    @staticmethod
    def _key(entry: dict[str, Any]) -> _PageKey:
        return _PageKey(entry["num_joined_members"], entry["room_id"])

    async def _listed_rooms(self, query: PublicRoomsQuery) -> list[dict[str, Any]]:
        """Chunk entries of every published room that is listed and matches the filter."""
        summaries = await summarise_rooms(self.storage.events, await self.store.public_rooms())
        entries = []
        for summary in summaries.values():
            entry = summary.chunk()
            contents = summary.state
            alt = contents.get(CANONICAL_ALIAS_TYPE, {}).get("alt_aliases")
            alt_aliases = [a for a in alt if isinstance(a, str)] if isinstance(alt, list) else []
            if _is_listed(summary) and _matches(entry, alt_aliases, query):
                entries.append(entry)
        return entries

