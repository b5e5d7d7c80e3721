-- Application services: how far each has been sent, and the transactions
-- built for it and not yet acknowledged.

-- One row per application service: the position in each stream up to which
-- everything has been looked at (and, if of interest, put in a transaction),
-- and the last transaction ID handed out, never reused.
CREATE TABLE appservice_state (
    appservice_id      TEXT PRIMARY KEY,
    events_position    BIGINT NOT NULL,
    receipts_position  BIGINT NOT NULL,
    typing_position    BIGINT NOT NULL,
    presence_position  BIGINT NOT NULL,
    last_txn_id        BIGINT NOT NULL
);

-- Transactions waiting to be acknowledged, sent in txn_id order. `body` is
-- the JSON exactly as sent, so a retry carries the same content.
CREATE TABLE appservice_txns (
    appservice_id  TEXT NOT NULL,
    txn_id         BIGINT NOT NULL,
    body           TEXT NOT NULL,
    event_count    INTEGER NOT NULL,
    created_ts     BIGINT NOT NULL,
    PRIMARY KEY (appservice_id, txn_id)
);
