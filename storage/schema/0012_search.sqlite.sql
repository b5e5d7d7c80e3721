-- rowid = events.stream_ordering. Porter stemming over Unicode words, with
-- diacritics folded ("cafe" finds "café"); bm25 ranks the matches.
CREATE VIRTUAL TABLE event_search USING fts5(
    value,
    tokenize = 'porter unicode61 remove_diacritics 2'
);

-- Existing events.
INSERT INTO event_search (rowid, value)
SELECT stream_ordering, json_extract(json, path)
FROM (
    SELECT e.stream_ordering, e.json,
           CASE e.type
               WHEN 'm.room.message' THEN '$.content.body'
               WHEN 'm.room.name' THEN '$.content.name'
               ELSE '$.content.topic'
           END AS path
    FROM events e
    WHERE e.type IN ('m.room.message', 'm.room.name', 'm.room.topic')
      AND NOT e.rejected AND e.redacted_by IS NULL
)
WHERE json_type(json, path) = 'text' AND trim(json_extract(json, path)) <> '';
