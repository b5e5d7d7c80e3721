-- The position each stream has reached. Allocating a position updates its
-- row, whose lock is held until commit: positions therefore commit in the
-- order they are handed out, on every engine and across processes, and a
-- reader that sees position N committed has seen everything before it.
CREATE TABLE stream_positions (
    stream    TEXT PRIMARY KEY,
    position  BIGINT NOT NULL
);
INSERT INTO stream_positions (stream, position)
    SELECT 'events', COALESCE(MAX(stream_ordering), 0) FROM events;
INSERT INTO stream_positions (stream, position) VALUES
    ('receipts', 0), ('typing', 0), ('account_data', 0), ('presence', 0),
    ('to_device', 0), ('device_lists', 0);

-- Stored sync filters (POST /user/{userId}/filter).
CREATE TABLE user_filters (
    user_id     TEXT NOT NULL,
    filter_id   BIGINT NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

-- The latest receipt of each type per user, room and thread ('' = unthreaded),
-- filed under its position in the receipts stream. Push counts read it too.
CREATE TABLE receipts (
    room_id          TEXT NOT NULL,
    receipt_type     TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    thread_id        TEXT NOT NULL DEFAULT '',
    event_id         TEXT NOT NULL,
    -- where the receipted event sits in the events stream
    event_stream_ordering  BIGINT NOT NULL,
    data             TEXT NOT NULL,
    stream_id        BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_id);
CREATE INDEX receipts_room_stream ON receipts (room_id, stream_id);
