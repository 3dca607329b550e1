-- Large results: many rows, wide rows, one huge value, big arrays.
SELECT g, md5(g::text), repeat(chr(65 + g % 26), g % 200) FROM generate_series(1, 20000) g;
SELECT repeat('pgward', 400000) AS big;
SELECT length(repeat('é', 1000000));
SELECT array_agg(g) FROM generate_series(1, 50000) g;
SELECT string_agg(md5(g::text), ',') FROM generate_series(1, 20000) g;
CREATE TABLE wide AS SELECT g AS id, repeat('w', 3000) AS a, repeat('v', 3000) AS b, g * 1.5 AS c FROM generate_series(1, 3000) g;
SELECT * FROM wide ORDER BY id;
SELECT count(*), sum(length(a)) FROM wide;
UPDATE wide SET a = repeat('z', 5000) WHERE id % 3 = 0;
DELETE FROM wide WHERE id > 2500;
SELECT decode(repeat('00ff', 100000), 'hex');
