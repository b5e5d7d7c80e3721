-- End-to-end encryption: what clients publish for each other. The server
-- stores public keys and signatures and relays opaque to-device payloads;
-- it never holds a private key or a plaintext.

-- The identity keys of a device, as the device signed them (without the
-- signatures others added later: those live in e2e_signatures).
CREATE TABLE e2e_device_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    ts         BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys: each is handed out by /keys/claim exactly once (the row is
-- deleted by the claim).
CREATE TABLE e2e_one_time_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    ts         BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

-- The fallback key of each algorithm per device, given out when no one-time
-- key is left (and then marked used, until the device uploads a new one).
CREATE TABLE e2e_fallback_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    used       BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys: master, self_signing, user_signing (the latest of each).
CREATE TABLE e2e_cross_signing_keys (
    user_id    TEXT NOT NULL,
    keytype    TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    ts         BIGINT NOT NULL,
    PRIMARY KEY (user_id, keytype)
);

-- Signatures uploaded with /keys/signatures/upload, merged into the signed
-- key when it is queried. target_key_id is a device ID or a cross-signing
-- public key of target_user_id.
CREATE TABLE e2e_signatures (
    target_user_id  TEXT NOT NULL,
    target_key_id   TEXT NOT NULL,
    signer_user_id  TEXT NOT NULL,
    signer_key_id   TEXT NOT NULL,
    signature       TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- The device_lists stream: a user's devices or cross-signing keys changed.
CREATE TABLE device_lists_stream (
    stream_id  BIGINT NOT NULL,
    user_id    TEXT NOT NULL,
    PRIMARY KEY (stream_id, user_id)
);
CREATE INDEX device_lists_stream_user ON device_lists_stream (user_id, stream_id);

-- To-device messages waiting for their device; deleted once the device has
-- synced past them (it acknowledged them) or is deleted itself.
CREATE TABLE device_inbox (
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    stream_id     BIGINT NOT NULL,
    message_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_id)
);

-- Transaction IDs of /sendToDevice, so a retried request is not delivered twice.
CREATE TABLE device_inbox_txns (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    event_type TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    ts         BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, event_type, txn_id)
);
