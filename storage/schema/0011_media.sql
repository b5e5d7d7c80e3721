-- The media repository's metadata. The bytes live on disk under
-- media_store_path, named by their sha256 (docs/media.md), so identical
-- uploads share one file.

-- One row per local mxc://server/media_id. A row made by
-- POST /_matrix/media/v1/create has no content yet (upload_ts NULL) and
-- lapses at unused_expires_ts unless its owner uploads to it first.
CREATE TABLE local_media (
    media_id           TEXT PRIMARY KEY,
    user_id            TEXT NOT NULL,
    created_ts         BIGINT NOT NULL,
    unused_expires_ts  BIGINT,
    upload_ts          BIGINT,
    content_type       TEXT,
    upload_name        TEXT,
    media_length       BIGINT,
    sha256             TEXT
);
-- A user's pending (created, not yet uploaded) media IDs, counted at create.
CREATE INDEX local_media_pending ON local_media (user_id, unused_expires_ts)
    WHERE upload_ts IS NULL;
CREATE INDEX local_media_sha256 ON local_media (sha256);

-- Thumbnails, keyed by the content they were made from (so deduplicated
-- uploads share them) and their actual size; stored in the same
-- content-addressed files as uploads.
CREATE TABLE media_thumbnails (
    sha256            TEXT NOT NULL,
    width             INTEGER NOT NULL,
    height            INTEGER NOT NULL,
    method            TEXT NOT NULL,
    animated          BOOLEAN NOT NULL,
    content_type      TEXT NOT NULL,
    thumbnail_sha256  TEXT NOT NULL,
    length            BIGINT NOT NULL,
    PRIMARY KEY (sha256, width, height, method, animated)
);
