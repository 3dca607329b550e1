-- Schema every driver's database starts with (compat/run.sh loads it directly,
-- not through pgward). `items` is what the checks write, copy and truncate.
CREATE TABLE items (
    id int PRIMARY KEY,
    name text NOT NULL,
    deleted_at timestamptz,
    deleted_by text
);
INSERT INTO items (id, name) SELECT g, 'item ' || g FROM generate_series(1, 3) g;
-- Row 50 is what the soft-delete check deletes (pgward marks it instead).
INSERT INTO items (id, name) VALUES (50, 'soft-deleted by the check');
