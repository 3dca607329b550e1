-- Schema every driver's database starts with (compat/run.sh loads it directly,
-- not through pgward). `items` is what the checks write, copy and truncate.
CREATE TABLE items (
    id int PRIMARY KEY,
    name text NOT NULL,
    deleted_at timestamptz,
    deleted_by text
);
INSERT INTO items (id, name) SELECT g, 'item ' || g FROM generate_series(1, 3) g;
-- RLS keyed on the context setting pgward pins (app.current_user_id = {user}):
-- each session sees only its own notes, even as the table's owner.
CREATE TABLE notes (owner text NOT NULL, body text NOT NULL);
INSERT INTO notes VALUES (current_user, 'mine'), ('someone_else', 'theirs');
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON notes USING (owner = current_setting('app.current_user_id', true));
-- Row 50 is what the soft-delete check deletes (pgward marks it instead).
INSERT INTO items (id, name) VALUES (50, 'soft-deleted by the check');
