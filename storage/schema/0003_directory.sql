-- Room aliases (#name:server) of this server, and the public room directory.

-- room_id is NULL while createRoom holds the alias for a room it is still
-- creating; such a reservation is bound to the room or released right after,
-- and one left behind by a crash expires (see DirectoryStore.reserve_alias).
CREATE TABLE room_aliases (
    room_alias  TEXT PRIMARY KEY,
    room_id     TEXT,
    creator     TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- The published rooms, for /publicRooms.
CREATE INDEX rooms_public ON rooms (room_id) WHERE is_public;
