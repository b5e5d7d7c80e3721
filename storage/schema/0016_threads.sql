-- Thread summaries, kept in the transaction that writes a thread reply (or
-- redacts one), so GET /threads pages a room's threads by latest activity
-- through an index instead of reading every reply, and bundled m.thread
-- aggregations read a count instead of counting. A thread has a row while
-- its root is in the room and it has at least one live (not redacted, not
-- rejected) reply.
CREATE TABLE threads (
    -- the root's event ID
    thread_id               TEXT PRIMARY KEY,
    room_id                 TEXT NOT NULL,
    -- the latest live reply's position in the events stream
    latest_stream_ordering  BIGINT NOT NULL,
    reply_count             BIGINT NOT NULL
);
CREATE INDEX threads_room_latest ON threads (room_id, latest_stream_ordering);

-- Who took part in a thread: the root's sender and every sender of a live reply.
CREATE TABLE thread_participants (
    thread_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    PRIMARY KEY (thread_id, user_id)
);
CREATE INDEX thread_participants_user ON thread_participants (user_id, room_id);

INSERT INTO threads (thread_id, room_id, latest_stream_ordering, reply_count)
SELECT c.thread_id, c.room_id, MAX(c.stream_ordering), COUNT(*)
FROM events c JOIN events r ON r.event_id = c.thread_id AND r.room_id = c.room_id
WHERE c.thread_id IS NOT NULL AND c.redacted_by IS NULL AND NOT c.rejected
GROUP BY c.thread_id, c.room_id;

INSERT INTO thread_participants (thread_id, user_id, room_id)
SELECT c.thread_id, c.sender, c.room_id
FROM events c JOIN threads t ON t.thread_id = c.thread_id AND t.room_id = c.room_id
WHERE c.redacted_by IS NULL AND NOT c.rejected
UNION
SELECT t.thread_id, r.sender, t.room_id FROM threads t JOIN events r ON r.event_id = t.thread_id;

-- A user's annotations of an event, for refusing a duplicate (M_DUPLICATE_ANNOTATION).
CREATE INDEX events_annotations ON events (relates_to_id, sender) WHERE relation_type = 'm.annotation';

-- The latest upgrade of each room: the row is the guard that lets one
-- upgrade of a room run at a time, across processes too, and answers a
-- repeated request for a while after it finished. (A claim never finished
-- is from a process that died; the server takes it over once it is old.)
CREATE TABLE room_upgrades (
    room_id      TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    started_ts   BIGINT NOT NULL,
    -- set when the upgrade finished
    new_room_id  TEXT,
    finished_ts  BIGINT
);
