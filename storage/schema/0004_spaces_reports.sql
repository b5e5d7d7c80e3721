-- Reports of events and rooms by users, read by the server's admins
-- (/_synapse/admin/v1/event_reports), and the pagination sessions of the
-- space hierarchy API.

CREATE TABLE event_reports (
    id           BIGINT PRIMARY KEY,
    received_ts  BIGINT NOT NULL,
    room_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    -- the reporting user
    user_id      TEXT NOT NULL,
    reason       TEXT,
    score        INTEGER
);
CREATE INDEX event_reports_received ON event_reports (received_ts, id);

CREATE TABLE room_reports (
    id           BIGINT PRIMARY KEY,
    received_ts  BIGINT NOT NULL,
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    reason       TEXT NOT NULL
);

-- GET /hierarchy pages through a walk of the space tree: `state` holds the
-- walk's queue and the rooms it has seen (JSON). Sessions expire after a
-- few minutes (see SpaceStore).
CREATE TABLE hierarchy_sessions (
    token           TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    suggested_only  BOOLEAN NOT NULL,
    max_depth       INTEGER,
    state           TEXT NOT NULL,
    created_ts      BIGINT NOT NULL
);
CREATE INDEX hierarchy_sessions_created ON hierarchy_sessions (created_ts);
