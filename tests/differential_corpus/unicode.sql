-- Unicode in data, identifiers, errors and COPY; encoding errors.
CREATE TABLE "Ünïcödé tâble" ("naïve col" text, "列" int, "emoji 🐘" text);
INSERT INTO "Ünïcödé tâble" VALUES ('grüße', 1, '🐘🚀'), ('日本語テキスト', 2, '👩‍👩‍👧‍👦'), ('e' || chr(769), 3, 'Ωmega'), ('', 4, NULL);
SELECT * FROM "Ünïcödé tâble" ORDER BY "列";
SELECT "naïve col", length("naïve col"), octet_length("naïve col"), upper("naïve col"), "emoji 🐘" FROM "Ünïcödé tâble" ORDER BY 1;
SELECT 'ÅΣ' AS "résumé", E'\u00e9\U0001F600' AS escapes, U&'d\0061t\+000061' AS uescape;
SELECT chr(128512), ascii('é'), convert_to('ñ', 'UTF8'), convert_from('\xc3b1', 'UTF8');
SELECT 'ß' < 'z', 'Ä' = 'A', normalize('e' || chr(769), NFC) = 'é';
SELECT * FROM "Ünïcödé tâble" WHERE "naïve col" = 'grüße';
SELECT * FROM "nicht vorhanden – 表";
SELECT E'\xff';
SELECT convert_from('\xff', 'UTF8');
COPY "Ünïcödé tâble" FROM STDIN;
κείμενο	5	🦀
\.
COPY "Ünïcödé tâble" TO STDOUT;
SELECT string_agg("naïve col", '·' ORDER BY "列") FROM "Ünïcödé tâble";
SET client_encoding = 'LATIN1';
SELECT 'plain ascii';
SELECT 'grüße';
SELECT '日本';
RESET client_encoding;
