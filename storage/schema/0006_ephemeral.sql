-- Per-user data and ephemeral room data: account data (global and per
-- room, tags included), typing and presence. Each row carries the position
-- of its latest change in its stream, so sync reads "changed since" with an
-- indexed range. (Receipts are in 0005_streams.sql.)

-- Account data: room_id '' is the user's global account data.
CREATE TABLE account_data (
    user_id    TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    content    TEXT NOT NULL,
    stream_id  BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_user_stream ON account_data (user_id, stream_id);

-- Who is typing where. Kept in the database so every process sharing it
-- sees the same set. A user who stops (or times out) keeps their row with
-- expires_ts 0, filed under the position of that stop, so syncs see the
-- room's typing set change.
CREATE TABLE typing (
    room_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    expires_ts  BIGINT NOT NULL,
    stream_id   BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX typing_stream ON typing (stream_id);
CREATE INDEX typing_expires ON typing (expires_ts);

-- Each user's presence. last_active_ts: their last pro-active action;
-- last_seen_ts: their last sync or presence update (minute granularity),
-- after which a long silence marks them offline.
CREATE TABLE presence (
    user_id           TEXT PRIMARY KEY,
    state             TEXT NOT NULL,
    status_msg        TEXT,
    last_active_ts    BIGINT NOT NULL,
    last_seen_ts      BIGINT NOT NULL,
    currently_active  BOOLEAN NOT NULL,
    stream_id         BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_id);
-- The timeout sweep reads only users who are not offline.
CREATE INDEX presence_seen ON presence (last_seen_ts) WHERE state <> 'offline';
