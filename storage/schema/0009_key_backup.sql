-- Server-side key backups: each user's backup versions and the encrypted
-- room keys stored in them. The server never sees a key in the clear.

-- A user's backup versions, numbered 1, 2, ... per user. A deleted version
-- keeps its row (deleted = TRUE, its keys gone) so that its number is never
-- handed out again. `etag` counts the changes to the version's keys.
CREATE TABLE e2e_room_keys_versions (
    user_id    TEXT NOT NULL,
    version    BIGINT NOT NULL,
    algorithm  TEXT NOT NULL,
    -- JSON object
    auth_data  TEXT NOT NULL,
    etag       BIGINT NOT NULL DEFAULT 0,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, version)
);

-- One backed-up key per (user, version, room, session).
CREATE TABLE e2e_room_keys (
    user_id              TEXT NOT NULL,
    version              BIGINT NOT NULL,
    room_id              TEXT NOT NULL,
    session_id           TEXT NOT NULL,
    first_message_index  BIGINT NOT NULL,
    forwarded_count      BIGINT NOT NULL,
    is_verified          BOOLEAN NOT NULL,
    -- JSON object, encrypted by the client
    session_data         TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
