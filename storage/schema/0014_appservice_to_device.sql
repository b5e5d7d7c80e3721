-- To-device messages for application services (MSC2409/MSC4203): how far
-- each service has read the to_device stream, and an index to read the
-- device inbox by stream range.

-- A service already known starts at the stream's current position, as a
-- service seen for the first time does (it is sent what happens from now on).
ALTER TABLE appservice_state ADD COLUMN to_device_position BIGINT NOT NULL DEFAULT 0;
UPDATE appservice_state SET to_device_position =
    (SELECT position FROM stream_positions WHERE stream = 'to_device');

CREATE INDEX device_inbox_stream ON device_inbox (stream_id, user_id);
