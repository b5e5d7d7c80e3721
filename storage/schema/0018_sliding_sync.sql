-- Simplified Sliding Sync (MSC4186) connections. Each response a client may
-- continue from (its `pos`) names one row: what the connection has been sent
-- (per room: up to where, with which timeline limit and required state), its
-- sticky room subscriptions and extension settings, as JSON. A connection
-- keeps the rows of the positions it has not yet moved past; a request with
-- a position deletes the connection's older ones, a request without one
-- starts the connection afresh. Rows go with their device.
CREATE TABLE sliding_sync_positions (
    pos_id      BIGINT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    conn_id     TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX sliding_sync_positions_conn ON sliding_sync_positions (user_id, device_id, conn_id, pos_id);
