-- FTS5 rows are addressed by an integer rowid; `profiles` has none that
-- is stable (an implicit rowid may change on VACUUM), so user_directory
-- gives each profile one. user_directory_search holds the localpart and
-- the display name; unicode61 splits them into words at punctuation,
-- folds case and diacritics.
CREATE TABLE user_directory (
    id       INTEGER PRIMARY KEY,
    user_id  TEXT NOT NULL UNIQUE
);
CREATE VIRTUAL TABLE user_directory_search USING fts5(
    words,
    tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TRIGGER user_directory_profile_added AFTER INSERT ON profiles BEGIN
    INSERT INTO user_directory (user_id) VALUES (new.user_id);
    INSERT INTO user_directory_search (rowid, words)
    SELECT id, substr(new.user_id, 2, instr(new.user_id, ':') - 2) || ' '
               || COALESCE(new.displayname, '')
    FROM user_directory WHERE user_id = new.user_id;
END;

CREATE TRIGGER user_directory_profile_changed AFTER UPDATE OF displayname ON profiles BEGIN
    UPDATE user_directory_search
    SET words = substr(new.user_id, 2, instr(new.user_id, ':') - 2) || ' '
                || COALESCE(new.displayname, '')
    WHERE rowid = (SELECT id FROM user_directory WHERE user_id = new.user_id);
END;

CREATE TRIGGER user_directory_profile_removed AFTER DELETE ON profiles BEGIN
    DELETE FROM user_directory_search
    WHERE rowid = (SELECT id FROM user_directory WHERE user_id = old.user_id);
    DELETE FROM user_directory WHERE user_id = old.user_id;
END;

-- Existing profiles.
INSERT INTO user_directory (user_id) SELECT user_id FROM profiles;
INSERT INTO user_directory_search (rowid, words)
SELECT d.id, substr(p.user_id, 2, instr(p.user_id, ':') - 2) || ' ' || COALESCE(p.displayname, '')
FROM user_directory d JOIN profiles p ON p.user_id = d.user_id;
