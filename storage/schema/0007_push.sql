-- Push: users' push rules, the push actions computed for each event and
-- recipient (which unread counts and /notifications read), and pushers.

-- A user's own push rules, and their overrides of server-default rules
-- (rule IDs starting with '.'): for those only `actions` and `enabled` are
-- used, NULL meaning "as the default". `priority` orders a user's rules of
-- one kind, lowest first (the most important).
CREATE TABLE push_rules (
    user_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    rule_id     TEXT NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    -- JSON list, for override and underride rules
    conditions  TEXT,
    -- for content rules
    pattern     TEXT,
    -- JSON list
    actions     TEXT,
    enabled     BOOLEAN,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- The account-data stream position of each user's latest push rule change,
-- so /sync knows when to send `m.push_rules` again.
CREATE TABLE push_rules_stream (
    user_id    TEXT PRIMARY KEY,
    stream_id  BIGINT NOT NULL
);
-- Whose rules changed since a position: other processes drop cached rulesets.
CREATE INDEX push_rules_stream_position ON push_rules_stream (stream_id);

-- What a user's push rules decided for an event they received: one row per
-- (event, recipient) whose matching rule had actions. `thread_id` is 'main'
-- for the main timeline, else the thread root, as threaded receipts name them.
-- `push_position` (the 'push_actions' stream, one position per event) orders
-- the rows as they were stored, which pushers follow: actions for an earlier
-- event of another room may be stored after those of a later one.
CREATE TABLE event_push_actions (
    user_id          TEXT NOT NULL,
    push_position    BIGINT NOT NULL,
    room_id          TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    thread_id        TEXT NOT NULL,
    actions          TEXT NOT NULL,
    notif            BOOLEAN NOT NULL,
    highlight        BOOLEAN NOT NULL,
    received_ts      BIGINT NOT NULL,
    PRIMARY KEY (user_id, push_position)
);
-- Unread counts: the actions after a receipt, per user and room.
CREATE INDEX event_push_actions_counts ON event_push_actions (user_id, room_id, stream_ordering);
-- The pusher owner: whose actions were stored since it last looked.
CREATE INDEX event_push_actions_position ON event_push_actions (push_position);
INSERT INTO stream_positions (stream, position) VALUES ('push_actions', 0);

-- HTTP pushers (POST /pushers/set). `last_push_position` is how far the
-- pusher has sent; `device_id` is the device that set it.
CREATE TABLE pushers (
    user_id               TEXT NOT NULL,
    app_id                TEXT NOT NULL,
    pushkey               TEXT NOT NULL,
    kind                  TEXT NOT NULL,
    app_display_name      TEXT NOT NULL,
    device_display_name   TEXT NOT NULL,
    profile_tag           TEXT,
    lang                  TEXT NOT NULL,
    data                  TEXT NOT NULL,
    device_id             TEXT,
    -- when the pushkey was last set, in milliseconds
    pushkey_ts            BIGINT NOT NULL,
    last_push_position    BIGINT NOT NULL,
    PRIMARY KEY (app_id, pushkey, user_id)
);
CREATE INDEX pushers_user ON pushers (user_id);
