-- The localpart and the display name, punctuation made spaces, as
-- 'simple' (unstemmed, lower-cased) words. Existing rows are filled in by
-- the ALTER itself.
ALTER TABLE profiles ADD COLUMN directory_vector TSVECTOR GENERATED ALWAYS AS (
    to_tsvector(
        'simple',
        translate(
            split_part(substr(user_id, 2), ':', 1) || ' ' || COALESCE(displayname, ''),
            '._=-/+@:',
            '        '
        )
    )
) STORED;
CREATE INDEX profiles_directory_vector ON profiles USING GIN (directory_vector);
