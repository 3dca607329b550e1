-- COPY in both directions, text, CSV and binary, and a failing COPY.
CREATE TABLE measures (id int PRIMARY KEY, label text, value double precision, taken date);
COPY measures FROM STDIN;
1	first	1.5	2024-01-01
2	second	\N	2024-01-02
3	tab\there	-0.25	2024-01-03
\.
COPY measures (id, label) FROM STDIN WITH (FORMAT csv, HEADER true);
id,label
4,"quoted, with comma"
5,"multi
line"
\.
COPY measures TO STDOUT;
COPY measures TO STDOUT WITH (FORMAT csv, HEADER true, FORCE_QUOTE *);
COPY (SELECT id, label FROM measures WHERE id > 2 ORDER BY id) TO STDOUT;
COPY (SELECT g, md5(g::text) FROM generate_series(1, 2000) g) TO STDOUT;
COPY (SELECT id, value, taken FROM measures ORDER BY id) TO STDOUT WITH (FORMAT binary);
COPY measures FROM STDIN;
6	ok	1	2024-01-06
7	bad	not-a-number	2024-01-07
\.
COPY measures FROM STDIN;
1	duplicate	1	2024-01-01
\.
COPY measures FROM STDIN WITH (FORMAT csv);
\.
SELECT count(*) FROM measures;
COPY no_such_table FROM STDIN;
\.
COPY measures TO '/tmp/should-not-be-written';
