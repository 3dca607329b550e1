#!/usr/bin/env bash
# psql through pgward (connection from PG* variables, set by compat/run.sh).
# Prints `<check> ok|FAIL: why` lines like every compat program.
set -uo pipefail
PSQL="$COMPAT_PG_BIN/psql -X -q -A -t -v ON_ERROR_STOP=0"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
failed=0
ok() { echo "$1 ok"; }
fail() { echo "$1 FAIL: $(echo "$2" | tr '\n' ' ' | cut -c1-300)"; failed=1; }
# check NAME EXPECTED ACTUAL
check() { if [ "$2" = "$3" ]; then ok "$1"; else fail "$1" "expected [$2] got [$3]"; fi; }

echo "version psql $($COMPAT_PG_BIN/psql --version | awk '{print $3}')"

out=$($PSQL -c '\conninfo' -c 'select current_user' 2>&1)
if grep -q 'SSL connection' <<<"$out" && grep -qx "$PGUSER" <<<"$out"; then
  ok scram_tls
else
  fail scram_tls "$out"
fi

check simple_query "2|x" "$($PSQL -c "select 1 + 1, 'x'" 2>&1)"

check prepared_query "$(printf '42\n8')" "$($PSQL -c 'prepare p(int) as select $1 * 2' -c 'execute p(21)' -c 'execute p(4)' 2>&1)"

check transaction_rollback "0" "$($PSQL 2>&1 <<'SQL'
begin;
insert into items (id, name) values (10, 'rolled back');
rollback;
select count(*) from items where id = 10;
SQL
)"

out=$($PSQL -v VERBOSITY=verbose 2>&1 <<'SQL'
\set VERBOSITY verbose
begin;
insert into items (id, name) values (11, 'doomed');
select 1 / 0;
select 1;
commit;
select 'count=' || count(*) from items where id = 11;
SQL
)
if grep -q '22012' <<<"$out" && grep -q '25P02' <<<"$out" && grep -q 'count=0' <<<"$out"; then
  ok error_in_transaction
else
  fail error_in_transaction "$out"
fi

printf '100\tcopied 100\n101\tcopied 101\n102\tcopied 102\n' >"$T/in.tsv"
check copy_in "COPY 3" "$($COMPAT_PG_BIN/psql -X -c "\\copy items (id, name) from '$T/in.tsv'" 2>&1)"

$PSQL -c "\\copy (select id, name from items where id >= 100 order by id) to '$T/out.tsv'" >/dev/null 2>&1
if cmp -s "$T/in.tsv" "$T/out.tsv"; then ok copy_out; else fail copy_out "$(cat "$T/out.tsv")"; fi

# Waits (up to 10 s) until a statement with this exact text is running.
wait_running() {
  for _ in $(seq 100); do
    [ "$($PSQL -c "select count(*) from pg_stat_activity where query = '$1' and state = 'active'")" = 1 ] && return 0
    sleep 0.1
  done
  return 1
}

# psql sends a CancelRequest on SIGINT.
$PSQL -v VERBOSITY=verbose -c '\set VERBOSITY verbose' -c 'select pg_sleep(30)' >"$T/cancel.out" 2>&1 &
pid=$!
wait_running 'select pg_sleep(30)'
kill -INT $pid
t0=$(date +%s)
wait $pid
if grep -q 57014 "$T/cancel.out" && [ $(($(date +%s) - t0)) -lt 10 ]; then
  ok cancel
else
  fail cancel "$(cat "$T/cancel.out")"
fi

# The listener waits in a statement; the notification arrives with its next one.
$PSQL -c 'listen compat_chan' -c 'select pg_sleep(1.5)' -c 'select 1' >"$T/listen.out" 2>&1 &
pid=$!
wait_running 'select pg_sleep(1.5)'
$PSQL -c "notify compat_chan, 'hello from psql'" >/dev/null 2>&1
wait $pid
if grep -q 'Asynchronous notification "compat_chan" with payload "hello from psql"' "$T/listen.out"; then
  ok listen_notify
else
  fail listen_notify "$(cat "$T/listen.out")"
fi

out=$($PSQL -c '\set VERBOSITY verbose' -c 'truncate items' 2>&1)
n=$($PSQL -c 'select count(*) from items' 2>&1)
if grep -q 'ERROR:  42501: pgward' <<<"$out" && [ "$n" -gt 0 ]; then
  ok blocked_truncate_42501
else
  fail blocked_truncate_42501 "$out / rows: $n"
fi
out=$($COMPAT_PG_BIN/psql -X -c 'delete from items where id = 50' 2>&1)
row=$($PSQL -c 'select deleted_at is not null, deleted_by from items where id = 50' 2>&1)
if [ "$out" = "DELETE 1" ] && [ "$row" = "t|$PGUSER" ]; then
  ok soft_delete_rowcount
else
  fail soft_delete_rowcount "$out / row: $row"
fi
v=$($PSQL -c "select current_setting('app.current_user_id')" 2>&1)
rows=$($PSQL -c 'select owner from notes' 2>&1)
spoof=$($PSQL -c '\set VERBOSITY verbose' -c "set app.current_user_id = 'intruder'" 2>&1)
if [ "$v" = "$PGUSER" ] && [ "$rows" = "$PGUSER" ] && grep -q 'ERROR:  42501' <<<"$spoof"; then
  ok rls_context
else
  fail rls_context "setting [$v] rows [$rows] spoof [$spoof]"
fi
# A client whose client_encoding is LATIN1 sends its text in Latin-1.
want=$(printf 'gr\xfc\xdfe|5')
out=$(printf "select 'gr\xfc\xdfe', length('gr\xfc\xdfe');\n" | PGCLIENTENCODING=LATIN1 $PSQL 2>&1)
if [ "$out" = "$want" ]; then
  ok latin1_client_encoding
else
  fail latin1_client_encoding "$(printf '%s' "$out" | iconv -f LATIN1 -t UTF-8)"
fi
exit $failed
