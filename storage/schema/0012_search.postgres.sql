CREATE TABLE event_search (
    stream_ordering  BIGINT PRIMARY KEY,
    -- built with the `search.language` text search configuration
    vector           TSVECTOR NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);

-- Existing events, indexed with the default language (english).
INSERT INTO event_search (stream_ordering, vector)
SELECT stream_ordering, to_tsvector('english', value)
FROM (
    SELECT e.stream_ordering,
           (e.json::jsonb) -> 'content' -> CASE e.type
               WHEN 'm.room.message' THEN 'body'
               WHEN 'm.room.name' THEN 'name'
               ELSE 'topic'
           END AS field
    FROM events e
    WHERE e.type IN ('m.room.message', 'm.room.name', 'm.room.topic')
      AND NOT e.rejected AND e.redacted_by IS NULL
) AS searchable
CROSS JOIN LATERAL (SELECT field #>> '{}' AS value) AS v
WHERE jsonb_typeof(field) = 'string' AND btrim(value) <> '';
