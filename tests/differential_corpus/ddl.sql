-- DDL: tables, constraints, indexes, views, sequences, types, functions.
CREATE TABLE accounts (
  id bigserial PRIMARY KEY,
  email text NOT NULL UNIQUE,
  balance numeric(12,2) NOT NULL DEFAULT 0 CHECK (balance >= 0),
  created date NOT NULL DEFAULT '2024-01-01'
);
CREATE TABLE IF NOT EXISTS accounts (id int);
CREATE INDEX accounts_created_idx ON accounts (created);
CREATE UNIQUE INDEX accounts_lower_email ON accounts (lower(email));
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS int CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE SEQUENCE ticket_seq START 100 INCREMENT 5;
CREATE TABLE tickets (id int DEFAULT nextval('ticket_seq') PRIMARY KEY, account_id bigint REFERENCES accounts (id) ON DELETE CASCADE, m mood, qty positive_int);
ALTER TABLE tickets ADD COLUMN note text;
ALTER TABLE tickets ALTER COLUMN note SET DEFAULT 'none';
ALTER TABLE tickets RENAME COLUMN note TO remark;
COMMENT ON TABLE tickets IS 'support tickets';
CREATE VIEW rich AS SELECT id, email FROM accounts WHERE balance > 100;
CREATE MATERIALIZED VIEW ticket_counts AS SELECT account_id, count(*) AS n FROM tickets GROUP BY account_id;
CREATE FUNCTION add_one(i int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT i + 1';
CREATE FUNCTION greet(who text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN 'hello ' || who; END $$;
SELECT add_one(41), greet('pgward');
CREATE SCHEMA app;
CREATE TABLE app.settings (k text PRIMARY KEY, v jsonb);
SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = 'tickets' ORDER BY ordinal_position;
SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'accounts' ORDER BY indexname;
SELECT obj_description('tickets'::regclass, 'pg_class');
ALTER TABLE tickets DROP COLUMN remark;
DROP VIEW rich;
DROP MATERIALIZED VIEW ticket_counts;
DROP TABLE app.settings;
DROP TABLE IF EXISTS no_such_table;
CREATE TABLE accounts (id int);
CREATE TEMP TABLE scratch (x int) ON COMMIT DELETE ROWS;
