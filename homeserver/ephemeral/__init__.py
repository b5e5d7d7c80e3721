"""Ephemeral and per-user data: typing, receipts and read markers, account
data (room tags included) and presence.

None of it is part of a room's event graph: each change is a row filed
under a position of its own stream, and sync asks each service what
changed between two positions (`get_updates`). After every write the
service wakes the syncs it concerns through the notifier.
"""

from __future__ import annotations

from ..errors import forbidden
from ..rooms.service import Rooms


async def require_joined(rooms: Rooms, user_id: str, room_id: str) -> None:
    """403 unless the user is joined to the room (400 for a malformed room ID)."""
    rooms.check_room_id(room_id)
    membership = await rooms.membership(room_id, user_id)
    if membership is None or membership.membership != "join":
        raise forbidden("You are not joined to this room")
