-- Rooms and the event graph: events with their prev/auth edges, forward
-- extremities, state groups (snapshot + delta) for the state at every event,
-- current state and current membership.

CREATE TABLE rooms (
    room_id        TEXT PRIMARY KEY,
    room_version   TEXT NOT NULL,
    creator        TEXT NOT NULL,
    created_ts     BIGINT NOT NULL,
    -- published in the public room directory
    is_public      BOOLEAN NOT NULL DEFAULT FALSE
);

-- One row per persisted event. stream_ordering is the global order clients
-- sync by; (topological_ordering, stream_ordering) orders a room's history
-- for pagination. json is the signed PDU exactly as hashed.
CREATE TABLE events (
    stream_ordering       BIGINT PRIMARY KEY,
    event_id              TEXT NOT NULL UNIQUE,
    room_id               TEXT NOT NULL,
    type                  TEXT NOT NULL,
    state_key             TEXT,
    sender                TEXT NOT NULL,
    topological_ordering  BIGINT NOT NULL,
    origin_server_ts      BIGINT NOT NULL,
    json                  TEXT NOT NULL,
    rejected              BOOLEAN NOT NULL DEFAULT FALSE,
    -- local delivery data, never part of the PDU
    txn_id                TEXT,
    device_id             TEXT,
    -- the state group holding the room state AFTER this event
    state_group           BIGINT NOT NULL,
    -- relations (m.relates_to), for threads, edits, reactions and references
    relates_to_id         TEXT,
    relation_type         TEXT,
    thread_id             TEXT,
    contains_url          BOOLEAN NOT NULL DEFAULT FALSE,
    -- for a state event, the event it replaced in the room state
    replaces_state        TEXT,
    -- set when a redaction of this event has been accepted
    redacted_by           TEXT
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_room_topo ON events (room_id, topological_ordering, stream_ordering);
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts);
CREATE INDEX events_relates ON events (relates_to_id, relation_type);
CREATE INDEX events_thread ON events (room_id, thread_id, stream_ordering);
-- A client's transaction IDs are scoped, as Synapse scopes them by request
-- path, to its device, the room and the event type.
CREATE UNIQUE INDEX events_txn ON events (room_id, sender, device_id, txn_id, type);

CREATE TABLE event_edges (
    event_id       TEXT NOT NULL,
    prev_event_id  TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE event_auth (
    event_id  TEXT NOT NULL,
    auth_id   TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_id)
);

CREATE TABLE event_forward_extremities (
    room_id   TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- State groups: a group is either a full snapshot (prev_group NULL) or a
-- delta over prev_group. Chains are kept short so reads stay cheap; groups
-- never change once written, so they cache forever.
CREATE TABLE state_groups (
    id          BIGINT PRIMARY KEY,
    room_id     TEXT NOT NULL,
    prev_group  BIGINT,
    chain_len   INTEGER NOT NULL
);
CREATE TABLE state_group_entries (
    state_group  BIGINT NOT NULL,
    type         TEXT NOT NULL,
    state_key    TEXT NOT NULL,
    -- NULL in a delta means "removed" (never happens in Matrix state, kept for completeness of deltas)
    event_id     TEXT,
    PRIMARY KEY (state_group, type, state_key)
);

CREATE TABLE current_state_events (
    room_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);

-- Current membership, for "rooms of a user" and "members of a room".
CREATE TABLE room_memberships (
    room_id          TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    membership       TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    displayname      TEXT,
    avatar_url       TEXT,
    -- set when the user forgets a room they have left
    forgotten        BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_memberships_user ON room_memberships (user_id, membership);
CREATE INDEX room_memberships_room ON room_memberships (room_id, membership);
