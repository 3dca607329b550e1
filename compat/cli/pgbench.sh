#!/usr/bin/env bash
# pgbench through pgward in each -M mode. `pgbench -i` runs directly against
# Postgres (it sends TRUNCATE and VACUUM, which the default policy blocks);
# the benchmark itself goes through pgward over TLS (PG* variables).
set -uo pipefail
BIN=$COMPAT_PG_BIN
failed=0
echo "version pgbench $($BIN/pgbench --version | awk '{print $3}')"
if ! out=$($BIN/pgbench -i -q -s 1 -h "$COMPAT_WORK/sock" -p "$COMPAT_PG_PORT" 2>&1); then
  echo "init FAIL: $(echo "$out" | tr '\n' ' ' | cut -c1-300)"
  exit 1
fi
# Checks read pgbench's output from a here-string, not `echo | grep -q`:
# under pipefail, grep -q exiting at its first match can kill echo with
# SIGPIPE and fail a check that matched.
psql_direct() { $BIN/psql -X -q -A -t -h "$COMPAT_WORK/sock" -p "$COMPAT_PG_PORT" -c "$1"; }
for mode in simple extended prepared; do
  before=$(psql_direct 'select count(*) from pgbench_history')
  out=$($BIN/pgbench -n -M $mode -c 4 -j 2 -t 100 2>&1)
  rc=$?
  after=$(psql_direct 'select count(*) from pgbench_history')
  if [ $rc -eq 0 ] && [ $((after - before)) -eq 400 ] && grep -q 'number of failed transactions: 0' <<<"$out"; then
    echo "mode_$mode ok"
  else
    # The whole summary: which of the three checks failed must be visible.
    echo "mode_$mode FAIL: rc=$rc history+$((after - before)) $(grep -v '^progress' <<<"$out" | tail -12 | tr '\n' ' ')"
    failed=1
  fi
done
exit $failed
