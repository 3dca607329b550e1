#!/usr/bin/env bash
# Instructions pgward executes per pgbench select-only transaction, audit off
# (built-in policy) vs on (built-in policy + every statement to a file sink,
# fsync = "interval"), counted by valgrind's callgrind. Instruction counts do
# not depend on what else the machine runs, so this compares builds even while
# other jobs compile; TPS (bench/run.sh) does not. See bench/README.md.
# With PgBouncer installed it is counted too, as the reference, and for every
# target the script also prints its hot code: the 64-byte lines of machine
# code run at least once every two transactions (bench/hot_code.py).
#
#   CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release --bin pgward
#   bash bench/callgrind.sh
#
# Environment knobs (defaults in brackets):
#   TX [2000]          transactions counted per protocol (after WARMUP uncounted ones)
#   WARMUP [300]       uncounted transactions first (caches warm), then counters zeroed
#   PGWARD_BIN [target/release/pgward]
#   BASE_PORT [25460]  ports BASE and BASE+1 are used
#   KEEP_TMP=1         keep the temp dir (callgrind files for callgrind_annotate)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/pgbouncer_config.sh
. "$ROOT/bench/pgbouncer_config.sh"
TX=${TX:-2000}
WARMUP=${WARMUP:-300}
BASE=${BASE_PORT:-25460}
PGPORT=$BASE
PORT=$((BASE + 1))
PGWARD=${PGWARD_BIN:-$ROOT/target/release/pgward}
MODES=(simple extended prepared)

die() { echo "callgrind: $*" >&2; exit 1; }
[[ -x "$PGWARD" ]] || die "no pgward binary at $PGWARD (build it first, see the header)"
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[[ -x "$PGBIN/initdb" ]] || die "no Postgres binaries under $PGBIN"

DIR=$(mktemp -d /tmp/pgward-callgrind.XXXXXX)
chown postgres: "$DIR"; chmod 755 "$DIR"
PW_PID=""
cleanup() {
  local rc=$?
  set +e
  [[ -n $PW_PID ]] && kill "$PW_PID" 2>/dev/null && wait "$PW_PID" 2>/dev/null
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1
  if [[ "${KEEP_TMP:-0}" == 1 || $rc != 0 ]]; then echo "# kept $DIR" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

wait_sql() { # port tries
  local i
  for i in $(seq 1 "$2"); do
    "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "nothing answering SQL on port $1"
}

runuser -u postgres -- "$PGBIN/initdb" -D "$DIR/data" -U postgres --auth=trust >"$DIR/initdb.log" 2>&1
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" \
  -o "-p $PGPORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" -w start >/dev/null
wait_sql "$PGPORT" 50
"$PGBIN/pgbench" -i -s 1 -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >"$DIR/pgbench-init.log" 2>&1

mkdir -p "$DIR/audit"
cat >"$DIR/audit.toml" <<EOF
[audit.filter]
classes = ["ALL"]
[[audit.sinks]]
type = "file"
path = "$DIR/audit/audit.jsonl"
fsync = "interval"
EOF
"$PGWARD" check "$DIR/audit.toml" >/dev/null

# ir FILE: the instruction total of one callgrind dump.
ir() { sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$1" | head -1; }
# sha_ir FILE: instructions inside SHA-256 compression (chain hash, fingerprint).
# Valgrind hides the CPU's SHA extensions, so sha2 runs its portable code here,
# several times the work of a natively run SHA-NI compression.
sha_ir() {
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    awk '/:sha2::sha256::compress256 / { gsub(",", "", $1); if ($1 + 0 > m) m = $1 + 0 } END { print m + 0 }'
}

RES=$DIR/ir.tsv
: >"$RES"
# PgBouncer (session mode) as the reference, when installed: the same
# counts for the proxy bench/run.sh compares against.
TARGETS=(pgward pgward-audit)
if command -v pgbouncer >/dev/null; then
  TARGETS+=(pgbouncer)
  pgbouncer_config "$DIR" "$PGPORT" "$PORT"
fi
for target in "${TARGETS[@]}"; do
  out=$DIR/cg.$target
  # --dump-instr=yes: a cost per instruction address, for hot_code.py.
  vg=(valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out")
  if [[ $target == pgbouncer ]]; then
    # PgBouncer refuses to run as root; setpriv execs, so $! is valgrind.
    setpriv --reuid=postgres --regid=postgres --init-groups \
      "${vg[@]}" pgbouncer "$DIR/pgbouncer.ini" >"$DIR/$target.log" 2>&1 &
  else
    args=(run --listen "127.0.0.1:$PORT" --upstream "127.0.0.1:$PGPORT")
    [[ $target == pgward-audit ]] && args+=(--config "$DIR/audit.toml")
    "${vg[@]}" "$PGWARD" "${args[@]}" >"$DIR/$target.log" 2>&1 &
  fi
  PW_PID=$!
  # callgrind_control must run as the user valgrind runs as (else it hangs).
  as=()
  [[ $target == pgbouncer ]] && as=(setpriv --reuid=postgres --regid=postgres --init-groups)
  wait_sql "$PORT" 300
  n=0
  for mode in "${MODES[@]}"; do
    "$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -S -M "$mode" -c 1 -t "$WARMUP" postgres >"$DIR/warm-$target-$mode.log" 2>&1
    sleep 1 # let the audit pipeline drain the warm-up events uncounted
    "${as[@]}" callgrind_control -z "$PW_PID" >/dev/null
    "$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -S -M "$mode" -c 1 -t "$TX" postgres >"$DIR/run-$target-$mode.log" 2>&1 \
      || die "pgbench $mode through $target failed: $(tail -3 "$DIR/run-$target-$mode.log")"
    sleep 1 # the last batch reaches the file sink inside the counted window
    "${as[@]}" callgrind_control -d "$mode" "$PW_PID" >/dev/null
    n=$((n + 1))
    dump="$out.$n"
    [[ -f $dump ]] || dump=$(ls -t "$out".* | head -1)
    # Code run at least once every two transactions: the per-round-trip path.
    hot=$(python3 "$ROOT/bench/hot_code.py" "$dump" $((TX / 2)))
    printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$target" "$(ir "$dump")" "$(sha_ir "$dump")" "$hot" >>"$RES"
    echo "# $target $mode: $(ir "$dump") instructions for $TX transactions, $hot hot code lines" >&2
  done
  kill "$PW_PID"; wait "$PW_PID" 2>/dev/null || true
  PW_PID=""
done

if [[ -f $DIR/audit/audit.jsonl ]]; then
  events=$(grep -c '"type":"statement"' "$DIR/audit/audit.jsonl" || true)
  echo "# pgward-audit wrote $events statement events" >&2
fi

echo
echo "## Instructions per transaction (callgrind, pgbench -S -c 1 -t $TX, $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo
echo "| protocol | pgward Ir/tx | pgward-audit Ir/tx | audit adds Ir/tx | of which SHA-256 (portable code) | audit/pgward |"
echo "|---|---:|---:|---:|---:|---:|"
awk -F'\t' -v tx="$TX" '
  { ir[$1 SUBSEP $2] = $3; sha[$1 SUBSEP $2] = $4; if (!($1 in seen)) { seen[$1] = 1; m[++n] = $1 } }
  END {
    for (i = 1; i <= n; i++) {
      a = ir[m[i] SUBSEP "pgward"] / tx; b = ir[m[i] SUBSEP "pgward-audit"] / tx
      s = (sha[m[i] SUBSEP "pgward-audit"] - sha[m[i] SUBSEP "pgward"]) / tx
      printf "| %s | %.0f | %.0f | %+.0f | %.0f | %.3f |\n", m[i], a, b, b - a, s, (a > 0 ? b / a : 0)
    }
  }' "$RES"

echo
echo "## Hot code per round trip (64-byte lines of machine code run at least once every two transactions; bench/hot_code.py)"
echo
echo "| protocol | pgward Ir/tx | pgward hot code | pgbouncer Ir/tx | pgbouncer hot code |"
echo "|---|---:|---:|---:|---:|"
awk -F'\t' -v tx="$TX" '
  { ir[$1 SUBSEP $2] = $3; hot[$1 SUBSEP $2] = $5; if (!($1 in seen)) { seen[$1] = 1; m[++n] = $1 } }
  function lines(k) { return (k in hot) ? sprintf("%d lines (%.1f KiB)", hot[k], hot[k] / 16) : "-" }
  function per_tx(k) { return (k in ir) ? sprintf("%.0f", ir[k] / tx) : "-" }
  END {
    for (i = 1; i <= n; i++) {
      p = m[i] SUBSEP "pgward"; b = m[i] SUBSEP "pgbouncer"
      printf "| %s | %s | %s | %s | %s |\n", m[i], per_tx(p), lines(p), per_tx(b), lines(b)
    }
  }' "$RES"

