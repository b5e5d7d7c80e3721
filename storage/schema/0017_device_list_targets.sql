-- A device-list change only one user is to hear of: someone's master key
-- newly signed by that user's user-signing key (the signer's clients must
-- re-read the signed user's keys; nobody else's need to). NULL: everyone
-- sharing a room with the changed user.
ALTER TABLE device_lists_stream ADD COLUMN to_user TEXT;
CREATE INDEX device_lists_stream_to_user ON device_lists_stream (to_user, stream_id);
