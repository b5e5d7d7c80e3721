-- Room and media administration (/_synapse/admin): blocked rooms, room
-- deletions and their outcome, and quarantined media.

-- Rooms nobody may join, knock on or be invited to (PUT .../rooms/{roomId}/block,
-- DELETE .../rooms/{roomId} with "block"). A room can be blocked before this
-- server knows it, and stays blocked after it is purged.
CREATE TABLE blocked_rooms (
    room_id     TEXT PRIMARY KEY,
    -- the admin who blocked it
    user_id     TEXT NOT NULL,
    blocked_ts  BIGINT NOT NULL
);

-- Room deletions (DELETE /_synapse/admin/v2/rooms/{roomId}), read back by
-- .../delete_status for a day after they finish. `result` is the JSON
-- `shutdown_room` object: kicked_users, failed_to_kick_users, local_aliases,
-- new_room_id.
CREATE TABLE room_deletions (
    delete_id   TEXT PRIMARY KEY,
    room_id     TEXT NOT NULL,
    -- scheduled, active, complete or failed
    status      TEXT NOT NULL,
    error       TEXT,
    result      TEXT NOT NULL,
    started_ts  BIGINT NOT NULL,
    updated_ts  BIGINT NOT NULL
);
CREATE INDEX room_deletions_room ON room_deletions (room_id, started_ts);
CREATE INDEX room_deletions_updated ON room_deletions (updated_ts);

-- Set (to the admin's user ID) when the media is quarantined: downloads and
-- thumbnails of it, and of every media ID with the same content, answer 404.
ALTER TABLE local_media ADD COLUMN quarantined_by TEXT;
CREATE INDEX local_media_user_created ON local_media (user_id, created_ts);
