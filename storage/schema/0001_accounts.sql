-- Accounts: users, profiles, devices, access and refresh tokens,
-- registration tokens and user-interactive-auth sessions.

CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    password_hash  TEXT,
    creation_ts    BIGINT NOT NULL,
    admin          BOOLEAN NOT NULL DEFAULT FALSE,
    is_guest       BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated    BOOLEAN NOT NULL DEFAULT FALSE,
    user_type      TEXT,
    appservice_id  TEXT
);

CREATE TABLE profiles (
    user_id      TEXT PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    displayname  TEXT,
    avatar_url   TEXT
);

CREATE TABLE devices (
    user_id               TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    device_id             TEXT NOT NULL,
    display_name          TEXT,
    created_ts            BIGINT NOT NULL,
    last_seen_ts          BIGINT,
    last_seen_ip          TEXT,
    last_seen_user_agent  TEXT,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE refresh_tokens (
    token_hash       TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    created_ts       BIGINT NOT NULL,
    -- end of the login session (session_lifetime); NULL: no end
    session_expires_ts  BIGINT,
    -- the refresh token that replaced this one; this one is revoked as
    -- soon as its successor (or the successor's access token) is used
    next_token_hash  TEXT,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);
CREATE INDEX refresh_tokens_next ON refresh_tokens (next_token_hash);

CREATE TABLE access_tokens (
    token_hash          TEXT PRIMARY KEY,
    user_id             TEXT NOT NULL,
    device_id           TEXT NOT NULL,
    created_ts          BIGINT NOT NULL,
    expires_ts          BIGINT,
    refresh_token_hash  TEXT,
    used                BOOLEAN NOT NULL DEFAULT FALSE,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);
CREATE INDEX access_tokens_refresh ON access_tokens (refresh_token_hash);

CREATE TABLE registration_tokens (
    token         TEXT PRIMARY KEY,
    uses_allowed  INTEGER,
    pending       INTEGER NOT NULL DEFAULT 0,
    completed     INTEGER NOT NULL DEFAULT 0,
    expiry_time   BIGINT
);

CREATE TABLE ui_auth_sessions (
    session_id   TEXT PRIMARY KEY,
    created_ts   BIGINT NOT NULL,
    method       TEXT NOT NULL,
    uri          TEXT NOT NULL,
    -- JSON: the request body first sent, stages completed, server-side data
    clientdict   TEXT NOT NULL,
    completed    TEXT NOT NULL,
    serverdict   TEXT NOT NULL
);
CREATE INDEX ui_auth_sessions_created ON ui_auth_sessions (created_ts);

CREATE TABLE admin_registration_nonces (
    nonce       TEXT PRIMARY KEY,
    created_ts  BIGINT NOT NULL
);
