-- Schema every driver's database starts with (compat/run.sh loads it directly,
-- not through pgward). `items` is what the checks write, copy and truncate.
CREATE TABLE items (
    id int PRIMARY KEY,
    name text NOT NULL,
    deleted_at timestamptz
);
INSERT INTO items (id, name) SELECT g, 'item ' || g FROM generate_series(1, 3) g;
