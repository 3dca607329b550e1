#!/usr/bin/env bash
# pgward benchmark: direct Postgres vs PgBouncer (session mode) vs pgward
# (default policy) vs pgward (policy off), plus, on the select-only
# workloads, pgward-audit (default policy, every statement audited to a
# file) and pgbouncer-2, a second PgBouncer identical to the first: the
# control that shows how far apart two identical servers measure here.
# See bench/README.md.
#
#   DURATION=3 ROUNDS=9 bash bench/run.sh
#   AUDIT_ONLY=1 DURATION=10 bash bench/run.sh   # select-only, pgward vs pgward-audit
#
# Environment knobs (defaults in brackets):
#   DURATION [10]      seconds per pgbench run
#   ROUNDS [1]         repeat every workload/target this many times; the table shows the mean
#   SCALE [10]         pgbench -i scale
#   COPY_ROWS [1000000] rows per COPY run;  COPY_REPS [3] runs per target (median shown)
#   IDLE_AUTH_N [1000] authenticated idle clients;  IDLE_RAW_N [10000] pre-startup idle sockets
#   LAT_N [20000]      iterations per protocol and layout of the interleaved latency probe
#   MAX_LOAD [1.5] / LOAD_WAIT_SECS [600]  wait (polling every 30 s) for the 1-min load average
#                      to drop below MAX_LOAD before measuring; LOAD_WAIT_SECS=0 skips
#   AUDIT_ONLY=1       only the select-only workloads, only pgward and pgward-audit
#                      (no PgBouncer, COPY or idle memory): the audit cost, quickly
#   BASE_PORT [25400]  ports BASE+32 .. BASE+39 are used
#   PGWARD_BIN         use this binary instead of `cargo build --release`
#   PGO=1              build with deploy/build-pgo.sh (profile-guided) instead
#   KEEP_TMP=1         keep the temp dir (logs, configs) after the run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/pgbouncer_config.sh
. "$ROOT/bench/pgbouncer_config.sh"
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-1}
SCALE=${SCALE:-10}
COPY_ROWS=${COPY_ROWS:-1000000}
COPY_REPS=${COPY_REPS:-3}
IDLE_AUTH_N=${IDLE_AUTH_N:-1000}
IDLE_RAW_N=${IDLE_RAW_N:-10000}
LAT_N=${LAT_N:-20000}
MAX_LOAD=${MAX_LOAD:-1.5}
LOAD_WAIT_SECS=${LOAD_WAIT_SECS:-600}
BASE=${BASE_PORT:-25400}   # below the ephemeral range (32768+), so churned client sockets cannot squat our ports
PGPORT=$((BASE + 32))   # Postgres
PGBPORT=$((BASE + 33))  # PgBouncer
PWA=$((BASE + 34))      # pgward, built-in defaults (policy on)
PWB=$((BASE + 35))      # pgward, policy off
PWI=$((BASE + 36))      # pgward, idle-memory config (and BASE+37 for the second one)
PWAUD=$((BASE + 38))    # pgward, default policy + audit of every statement to a file
PGB2PORT=$((BASE + 39)) # pgbouncer-2: the same PgBouncer again, as the control
AUDIT_ONLY=${AUDIT_ONLY:-0}

say() { echo "# $*"; }
die() { echo "bench: $*" >&2; exit 1; }

# ---------------------------------------------------------------- file limit
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
say "open-file limit: $(ulimit -n)"

# ---------------------------------------------------------------- 1. build
if [[ -n "${PGWARD_BIN:-}" ]]; then
  PGWARD=$PGWARD_BIN
elif [[ ${PGO:-0} == 1 ]]; then
  say "deploy/build-pgo.sh (profile-guided build)"
  PGWARD=$(bash "$ROOT/deploy/build-pgo.sh")
else
  say "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet)
  PGWARD=$ROOT/target/release/pgward
fi
[[ -x "$PGWARD" ]] || die "no pgward binary at $PGWARD"

# ---------------------------------------------------------------- binaries
PGBIN=${PGBIN:-}
if [[ -z "$PGBIN" ]]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
fi
if [[ -z "$PGBIN" || ! -x "$PGBIN/initdb" ]]; then
  command -v initdb >/dev/null || die "initdb not found (apt-get install postgresql)"
  PGBIN=$(dirname "$(command -v initdb)")
fi
PGBENCH=$PGBIN/pgbench; [[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench)
PSQL=$PGBIN/psql;       [[ -x $PSQL ]] || PSQL=$(command -v psql)

if [[ $AUDIT_ONLY != 1 ]] && ! command -v pgbouncer >/dev/null; then
  say "installing pgbouncer (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null
fi
PGBOUNCER=$(command -v pgbouncer || echo pgbouncer)
# The Debian package enables a systemd unit; we never use it (no systemd here).

# ---------------------------------------------------------------- load
load1() { cut -d' ' -f1 /proc/loadavg; }
wait_load() {
  local waited=0
  while (( waited < LOAD_WAIT_SECS )); do
    awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN{exit !(l < m)}' && break
    say "load $(load1) >= $MAX_LOAD, waiting 30 s (${waited}s so far)"
    sleep 30; waited=$((waited + 30))
  done
  say "load average now: $(cat /proc/loadavg)"
}

# ---------------------------------------------------------------- temp dir + cleanup
DIR=$(mktemp -d /tmp/pgward-bench.XXXXXX)
chown postgres: "$DIR"; chmod 755 "$DIR"
PIDS=()
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  for f in "$DIR/pgbouncer.pid" "$DIR/pgb2/pgbouncer.pid"; do
    if [[ -f $f ]]; then kill "$(cat "$f")" 2>/dev/null; sleep 0.5; fi
  done
  if [[ -f $DIR/data/postmaster.pid ]]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1
  fi
  if [[ "${KEEP_TMP:-0}" == 1 || $rc != 0 ]]; then echo "# kept $DIR" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

wait_sql() { # port: wait until `select 1` works through it
  local i
  for i in $(seq 1 100); do
    "$PSQL" -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "nothing answering SQL on port $1"
}

# ---------------------------------------------------------------- 2. Postgres
PG_MAX_CONN=$((IDLE_AUTH_N + 150))
(( PG_MAX_CONN < 300 )) && PG_MAX_CONN=300
wait_load
LOAD_BEFORE=$(cat /proc/loadavg)
say "initdb ($PGBIN)"
runuser -u postgres -- "$PGBIN/initdb" -D "$DIR/data" -U postgres --auth=trust >"$DIR/initdb.log" 2>&1
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" \
  -o "-p $PGPORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=$PG_MAX_CONN -c shared_buffers=512MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  -w start >/dev/null
wait_sql "$PGPORT"

# ---------------------------------------------------------------- 3. PgBouncer (session mode)
if [[ $AUDIT_ONLY != 1 ]]; then
pgbouncer_config "$DIR" "$PGPORT" "$PGBPORT"
# runuser's PAM session would start PgBouncer with the distribution's soft
# limit of 1024 files, too few for the idle reference's 1000 clients: raise
# it to the limit pgward runs with (or to the hard limit runuser leaves).
start_pgbouncer() { # DIR holding its pgbouncer.ini
  runuser -u postgres -- sh -c 'ulimit -n "$1" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$2" -d "$3"' \
    sh "$(ulimit -n)" "$PGBOUNCER" "$1/pgbouncer.ini"
}
start_pgbouncer "$DIR"
wait_sql "$PGBPORT"
# pgbouncer-2: the same binary and configuration in a process (and, as it
# daemonizes, a scheduling group) of its own. Two servers that do the same
# work measure apart by the host's noise and by where each process happens
# to land; their ratio per workload is the resolution of this run, the
# margin inside which pgward and PgBouncer cannot be told apart.
mkdir -p "$DIR/pgb2"; chown postgres: "$DIR/pgb2"
pgbouncer_config "$DIR/pgb2" "$PGPORT" "$PGB2PORT"
start_pgbouncer "$DIR/pgb2"
wait_sql "$PGB2PORT"
fi

# ---------------------------------------------------------------- 4. pgward x3
cat >"$DIR/off.toml" <<'EOF'
# policy off: no statement is parsed or judged; pgward is a plain relay.
[policy]
mode = "off"
EOF
cat >"$DIR/idle.toml" <<EOF
[limits]
max_client_connections = $((IDLE_RAW_N + IDLE_AUTH_N + 100))
[timeouts]
startup_secs = 300
EOF
# pgward-audit: built-in policy, every statement (READ included) audited to
# a file sink with fsync = "interval" (the default), literals redacted.
mkdir -p "$DIR/audit"
cat >"$DIR/audit.toml" <<EOF
[audit.filter]
classes = ["ALL"]
[[audit.sinks]]
type = "file"
path = "$DIR/audit/audit.jsonl"
fsync = "interval"
EOF
"$PGWARD" check "$DIR/off.toml" >/dev/null
"$PGWARD" check "$DIR/idle.toml" >/dev/null
"$PGWARD" check "$DIR/audit.toml" >/dev/null

# Every server runs in a session of its own, as Postgres (pg_ctl) and
# PgBouncer (-d) do by daemonizing. With the kernel's autogroup scheduling
# (sched_autogroup_enabled=1 here) a session is a scheduling group and CPU
# is shared fairly between groups first: a pgward started in this script's
# session would share one group's CPU with pgbench, while PgBouncer has a
# group to itself. (Measured, pgbench -S c16: in the client's group pgward
# paid 18-27 us of system time and 0.2-0.9 voluntary context switches per
# transaction, in its own 16-20 us and 0.15-0.23; PgBouncer 16-20 us, 0.1.)
# Without job control `setsid` execs in place, so $! is pgward's pid.
# pgward A: no config file = built-in defaults (policy on).
setsid "$PGWARD" run --listen "127.0.0.1:$PWA" --upstream "127.0.0.1:$PGPORT" >"$DIR/pgward-default.log" 2>&1 </dev/null &
PIDS+=($!)
setsid "$PGWARD" run --config "$DIR/off.toml" --listen "127.0.0.1:$PWB" --upstream "127.0.0.1:$PGPORT" >"$DIR/pgward-off.log" 2>&1 </dev/null &
PIDS+=($!)
setsid "$PGWARD" run --config "$DIR/audit.toml" --listen "127.0.0.1:$PWAUD" --upstream "127.0.0.1:$PGPORT" >"$DIR/pgward-audit.log" 2>&1 </dev/null &
PIDS+=($!)
wait_sql "$PWA"
wait_sql "$PWB"
wait_sql "$PWAUD"
# sanity: the default policy really is on, policy-off really is off
if "$PSQL" -X -q -h 127.0.0.1 -p "$PWA" -U postgres -d postgres -c 'delete from pgbench_nope' >/dev/null 2>"$DIR/chk"; then
  die "default pgward did not block an unqualified DELETE"
fi
grep -q 'blocked' "$DIR/chk" || die "default pgward: unexpected error: $(cat "$DIR/chk")"
if "$PSQL" -X -q -h 127.0.0.1 -p "$PWB" -U postgres -d postgres -c 'delete from pgbench_nope' >/dev/null 2>"$DIR/chk"; then :; fi
grep -q 'does not exist' "$DIR/chk" || die "policy-off pgward: expected 'does not exist', got: $(cat "$DIR/chk")"
# sanity: pgward-audit writes a READ event for a plain select (batches reach
# the file right away; fsync only decides when they are synced).
"$PSQL" -X -q -h 127.0.0.1 -p "$PWAUD" -U postgres -d postgres -Atc 'select 4242 as audit_probe' >/dev/null
for i in $(seq 1 50); do
  grep -q '"class":"READ".*audit_probe' "$DIR/audit/audit.jsonl" 2>/dev/null && break
  sleep 0.1
done
grep -q '"class":"READ".*audit_probe' "$DIR/audit/audit.jsonl" || die "pgward-audit did not audit a READ statement"
audit_events() { cat "$DIR"/audit/audit*.jsonl 2>/dev/null | grep -c '"type":"statement"' || true; }

# ---------------------------------------------------------------- 5. pgbench -i (directly)
say "pgbench -i -s $SCALE (direct to Postgres)"
"$PGBENCH" -i -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >"$DIR/pgbench-init.log" 2>&1

say "versions: $("$PGBIN/postgres" --version | head -1); $("$PGBOUNCER" --version | head -1); pgward $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
say "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); pgbench, Postgres and the proxies share them"

# ---------------------------------------------------------------- 6. pgbench workloads
TARGETS=(direct pgbouncer pgward pgward-off)
port_of() {
  case $1 in
    direct) echo "$PGPORT" ;; pgbouncer) echo "$PGBPORT" ;; pgbouncer-2) echo "$PGB2PORT" ;;
    pgward) echo "$PWA" ;; pgward-off) echo "$PWB" ;; pgward-audit) echo "$PWAUD" ;;
  esac
}
WORKLOADS=(
  "-S -M simple -c 1"
  "-S -M extended -c 1"
  "-S -M prepared -c 1"
  "-S -M simple -c 16 -j 2"
  "-S -M extended -c 16 -j 2"
  "-S -M prepared -c 16 -j 2"
  "-M prepared -c 8 -j 2"
  "-C -S -c 4 -j 2"
)
WNAMES=(
  "select-only simple c1"
  "select-only extended c1"
  "select-only prepared c1"
  "select-only simple c16"
  "select-only extended c16"
  "select-only prepared c16"
  "tpc-b prepared c8"
  "connect churn -C select c4"
)
if [[ $AUDIT_ONLY == 1 ]]; then
  TARGETS=(pgward pgward-audit)
  WORKLOADS=("${WORKLOADS[@]:0:6}")
  WNAMES=("${WNAMES[@]:0:6}")
fi
# The targets of workload $1: pgward-audit and the control pgbouncer-2 join
# the select-only ones.
targets_of() {
  if [[ $AUDIT_ONLY != 1 && ${WNAMES[$1]} == select-only* ]]; then
    echo "${TARGETS[@]}" pgward-audit pgbouncer-2
  else
    echo "${TARGETS[@]}"
  fi
}
# pid_of TARGET: the proxy process whose CPU a run is charged to (none for direct).
pid_of() {
  case $1 in
    pgbouncer) cat "$DIR/pgbouncer.pid" ;; pgbouncer-2) cat "$DIR/pgb2/pgbouncer.pid" ;;
    pgward) echo "${PIDS[0]}" ;; pgward-off) echo "${PIDS[1]}" ;; pgward-audit) echo "${PIDS[2]}" ;;
  esac
}
# cpu_ticks PID: user and system clock ticks of the whole process (all threads).
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat" 2>/dev/null || echo "0 0"; }
CLK_TCK=$(getconf CLK_TCK)
AUDIT_TX=0
RES=$DIR/pgbench.tsv
: >"$RES"
say "pgbench: ${#WORKLOADS[@]} workloads x ${#TARGETS[@]} targets x ${ROUNDS} round(s) x ${DURATION}s, load now $(load1)"
for ((r = 0; r < ROUNDS; r++)); do
  for ((w = 0; w < ${#WORKLOADS[@]}; w++)); do
    read -r -a wt <<<"$(targets_of "$w")"
    for ((k = 0; k < ${#wt[@]}; k++)); do
      t=${wt[$(((k + w + r) % ${#wt[@]}))]}   # rotate the order per workload/round
      out=$DIR/pgbench-$r-$w-$t.log
      pid=$(pid_of "$t")
      cpu=$'-\t-'
      # The proxy's own CPU for this run: only one target is busy at a time.
      [[ -n $pid ]] && read -r u0 s0 < <(cpu_ticks "$pid")
      # shellcheck disable=SC2086
      if "$PGBENCH" -h 127.0.0.1 -p "$(port_of "$t")" -U postgres -n -T "$DURATION" ${WORKLOADS[$w]} postgres >"$out" 2>&1; then
        tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -1)
        lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -1)
        failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -1)
        ntx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -1)
        if [[ $t == pgward-audit ]]; then
          AUDIT_TX=$((AUDIT_TX + ntx))
        fi
        if [[ -n $pid && ${ntx:-0} -gt 0 ]]; then
          read -r u1 s1 < <(cpu_ticks "$pid")
          cpu=$(awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$ntx" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f\t%.3f", u * 1e6 / hz / n, s * 1e6 / hz / n }')
        fi
        [[ -n "$failed" && "$failed" != 0 ]] && say "WARNING: $t ${WNAMES[$w]}: $failed failed transactions"
      else
        say "FAILED: $t ${WNAMES[$w]}: $(tail -3 "$out" | tr '\n' ' ')"
        tps=0; lat=0
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${WNAMES[$w]}" "$t" "${tps:-0}" "${lat:-0}" "$r" "$cpu" >>"$RES"
      say "round $((r + 1)) ${WNAMES[$w]} $t: tps=$tps lat=${lat}ms (load $(load1))"
    done
  done
done

# Every pgbench transaction through pgward-audit is one audited statement
# (the last batches may still be on their way to the file).
for i in $(seq 1 20); do
  AUDIT_EVENTS=$(audit_events)
  (( AUDIT_EVENTS >= AUDIT_TX )) && break
  sleep 0.5
done
(( AUDIT_EVENTS >= AUDIT_TX )) || die "pgward-audit: $AUDIT_EVENTS statement events for $AUDIT_TX transactions"

if [[ $AUDIT_ONLY != 1 ]]; then
# ---------------------------------------------------------------- 6b. added latency, interleaved
# pgbench at -c 1 cannot separate proxies that differ by microseconds: each
# run measures one placement of client, proxy thread and backend on the
# cores, and a round trip that crosses to an idle core costs tens of
# microseconds on this VM. bench/latency.py sends every query to each target
# in turn from one client. "one core": every process (client, Postgres with
# all its backends, PgBouncer, pgward) pinned to the last core, so no round
# trip crosses cores and the difference is each proxy's own path.
# "unpinned": the scheduler's choice, which stays as it is for a
# connection's life, so this layout measures one placement per target.
# Connections are long-lived in both (see latency.py on --reconnect).
LATRES=$DIR/latency.txt
: >"$LATRES"
LAT_CPU=$(($(nproc) - 1))
pin_all() { # CPU list: Postgres (postmaster and every backend), PgBouncer, pgward
  local pm p
  pm=$(head -1 "$DIR/data/postmaster.pid")
  for p in "$pm" $(pgrep -P "$pm") "$(pid_of pgbouncer)" "$(pid_of pgbouncer-2)" "${PIDS[@]}"; do
    taskset -a -cp "$1" "$p" >/dev/null 2>&1 || true
  done
}
LAT_TARGETS=()
for t in "${TARGETS[@]}" pgward-audit pgbouncer-2; do LAT_TARGETS+=("$t=127.0.0.1:$(port_of "$t")"); done
for layout in "one core" unpinned; do
  for mode in simple extended prepared; do
    say "latency: $mode, $layout, $LAT_N iterations"
    if [[ $layout == "one core" ]]; then
      pin_all "$LAT_CPU"
      taskset -c "$LAT_CPU" python3 "$ROOT/bench/latency.py" --n "$LAT_N" --mode "$mode" "${LAT_TARGETS[@]}" >"$DIR/latency.out"
      pin_all "0-$LAT_CPU"
    else
      python3 "$ROOT/bench/latency.py" --n "$LAT_N" --mode "$mode" "${LAT_TARGETS[@]}" >"$DIR/latency.out"
    fi
    { echo "### $mode, $layout"; echo; echo '```'; cat "$DIR/latency.out"; echo '```'; echo; } >>"$LATRES"
  done
done

# ---------------------------------------------------------------- 6c. CPU per query, split
# bench/cpu_split.py, everything pinned to one core: the client's, the
# proxy's and the backend's own CPU per query, one target at a time. A
# proxy's cost shows in its own CPU and in what the client and the backend
# lose when its code and data have evicted theirs (see bench/README.md).
SPLITRES=$DIR/split.txt
: >"$SPLITRES"
SPLIT_TARGETS=("direct=127.0.0.1:$PGPORT")
for t in pgbouncer pgward pgward-off pgbouncer-2; do
  SPLIT_TARGETS+=("$t=127.0.0.1:$(port_of "$t"):$(pid_of "$t")")
done
for mode in simple extended prepared; do
  say "cpu split: $mode, one core"
  pin_all "$LAT_CPU"
  taskset -c "$LAT_CPU" python3 "$ROOT/bench/cpu_split.py" --mode "$mode" "${SPLIT_TARGETS[@]}" >"$DIR/split.out"
  pin_all "0-$LAT_CPU"
  { echo "### $mode, one core"; echo; echo '```'; cat "$DIR/split.out"; echo '```'; echo; } >>"$SPLITRES"
done

# ---------------------------------------------------------------- 7. COPY
COPYRES=$DIR/copy.tsv
: >"$COPYRES"
COPY_OUT_SQL="COPY (SELECT g, md5(g::text) FROM generate_series(1,$COPY_ROWS) g) TO STDOUT"
"$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c "$COPY_OUT_SQL" >"$DIR/copy.dat"
COPY_BYTES=$(stat -c %s "$DIR/copy.dat")
"$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c 'CREATE UNLOGGED TABLE copy_in (a int, b text)' >/dev/null
now() { date +%s.%N; }
say "COPY: $COPY_ROWS rows, $COPY_BYTES bytes, $COPY_REPS runs per target"
for ((i = 0; i < COPY_REPS; i++)); do
  for ((k = 0; k < ${#TARGETS[@]}; k++)); do
    t=${TARGETS[$(((k + i) % ${#TARGETS[@]}))]}
    p=$(port_of "$t")
    t0=$(now)
    "$PSQL" -X -q -h 127.0.0.1 -p "$p" -U postgres -d postgres -c "$COPY_OUT_SQL" >/dev/null
    t1=$(now)
    printf 'copy out\t%s\t%s\n' "$t" "$(echo "$t1 - $t0" | bc -l)" >>"$COPYRES"
    # COPY IN: empty the table directly (pgward would rightly block TRUNCATE), load through the target.
    "$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c 'TRUNCATE copy_in' >/dev/null
    t0=$(now)
    "$PSQL" -X -q -h 127.0.0.1 -p "$p" -U postgres -d postgres -c 'COPY copy_in FROM STDIN' <"$DIR/copy.dat" >/dev/null
    t1=$(now)
    printf 'copy in\t%s\t%s\n' "$t" "$(echo "$t1 - $t0" | bc -l)" >>"$COPYRES"
  done
done
n=$("$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -Atc 'select count(*) from copy_in')
[[ "$n" == "$COPY_ROWS" ]] || die "COPY IN loaded $n rows, expected $COPY_ROWS"

# ---------------------------------------------------------------- 8. idle-connection memory
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
nfds() { ls "/proc/$1/fd" | wc -l; }
IDLERES=$DIR/idle.tsv
: >"$IDLERES"
# idle_measure LABEL PID PORT N [--no-startup]
idle_measure() {
  local label=$1 pid=$2 port=$3 n=$4 mode=${5:-} before after fds0 fds i py out=$DIR/idle-$1.out
  sleep 1
  before=$(rss_kib "$pid"); fds0=$(nfds "$pid")
  # shellcheck disable=SC2086
  python3 "$ROOT/bench/idle_clients.py" 127.0.0.1 "$port" "$n" $mode >"$out" 2>&1 &
  py=$!
  for i in $(seq 1 600); do
    grep -q -e READY -e FAILED "$out" && break
    kill -0 "$py" 2>/dev/null || break
    sleep 0.5
  done
  if ! grep -q READY "$out"; then
    say "idle $label: clients did not get ready: $(tail -2 "$out" | tr '\n' ' ')"
    kill "$py" 2>/dev/null || true; wait "$py" 2>/dev/null || true
    printf '%s\t%s\tFAILED\t-\t-\t-\n' "$label" "$n" >>"$IDLERES"
    return 0
  fi
  # wait until the server process really holds the sockets (the kernel completes
  # connect() from the backlog before accept()).
  for i in $(seq 1 120); do
    fds=$(nfds "$pid"); (( fds - fds0 >= n )) && break; sleep 0.5
  done
  sleep 2
  after=$(rss_kib "$pid"); fds=$(nfds "$pid")
  kill "$py"; wait "$py" 2>/dev/null || true
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$n" "$before" "$after" "$((fds - fds0))" \
    "$(echo "scale=1; ($after - $before) / $n" | bc -l)" >>"$IDLERES"
  say "idle $label: n=$n rss ${before} -> ${after} KiB, +$((fds - fds0)) fds"
}
start_idle_pgward() { # port
  IDLE_PORT=$1
  setsid "$PGWARD" run --config "$DIR/idle.toml" --listen "127.0.0.1:$IDLE_PORT" --upstream "127.0.0.1:$PGPORT" >>"$DIR/pgward-idle.log" 2>&1 </dev/null &
  IDLE_PID=$!
  PIDS+=("$IDLE_PID")
  wait_sql "$IDLE_PORT"
}
stop_idle_pgward() { kill "$IDLE_PID"; wait "$IDLE_PID" 2>/dev/null || true; }

say "idle memory: $IDLE_AUTH_N authenticated clients, $IDLE_RAW_N pre-startup sockets"
start_idle_pgward "$PWI"
idle_measure "pgward authenticated (startup done, 1 backend each)" "$IDLE_PID" "$PWI" "$IDLE_AUTH_N"
stop_idle_pgward
start_idle_pgward $((PWI + 1))
idle_measure "pgward pre-startup (TCP only, no startup packet)" "$IDLE_PID" $((PWI + 1)) "$IDLE_RAW_N" --no-startup
stop_idle_pgward
idle_measure "pgbouncer authenticated (reference)" "$(pid_of pgbouncer)" "$PGBPORT" "$IDLE_AUTH_N"
fi

LOAD_AFTER=$(cat /proc/loadavg)

# ---------------------------------------------------------------- report
# awk: the median of the per-round ratios of target to reference. Both ran
# in the same round, one right after the other, so slow drifts of this
# shared machine cancel in each ratio, and one disturbed run moves a median
# of three or more rounds less than it moves a mean.
MEDIAN_AWK='
  # ratios: fill v with the per-round ratios of t to ref of workload w,
  # sorted; returns how many. (Membership is tested first: reading a
  # missing element would create it.)
  function ratios(w, t, ref, v,   r, m, i, j, x) {
    m = 0
    for (r = 0; r < rounds; r++) if ((w SUBSEP t SUBSEP r) in rt && (w SUBSEP ref SUBSEP r) in rt && rt[w SUBSEP ref SUBSEP r] > 0)
      v[++m] = rt[w SUBSEP t SUBSEP r] / rt[w SUBSEP ref SUBSEP r]
    for (i = 2; i <= m; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
    return m
  }
  function median(v, m) { return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
  function paired(w, t, ref,   m, v) {
    m = ratios(w, t, ref, v)
    return m ? median(v, m) : -1
  }'

echo
echo "## pgbench (DURATION=${DURATION}s, ROUNDS=$ROUNDS, scale $SCALE; TPS and latency are the mean over rounds)"
echo
echo "The last column is the median over rounds of the ratio to PgBouncer measured within one round."
echo
awk -F'\t' -v rounds="$ROUNDS" "$MEDIAN_AWK"'
  { k = $1 SUBSEP $2; if (!(k in n)) { order[++no] = k } n[k]++; tps[k] += $3; lat[k] += $4; rt[$1 SUBSEP $2 SUBSEP $5] = $3 }
  END {
    print "| workload | target | TPS | avg latency ms | +latency vs direct ms | ratio to direct | ratio to pgbouncer | median per-round ratio to pgbouncer |"
    print "|---|---|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= no; i++) { k = order[i]; split(k, p, SUBSEP); wl[p[1]] = 1 }
    nw = 0
    for (i = 1; i <= no; i++) { split(order[i], p, SUBSEP); if (!(p[1] in seen)) { seen[p[1]] = 1; ws[++nw] = p[1] } }
    nt = split("direct pgbouncer pgbouncer-2 pgward pgward-off pgward-audit", ts, " ")
    for (w = 1; w <= nw; w++) for (j = 1; j <= nt; j++) {
      k = ws[w] SUBSEP ts[j]; if (!(k in n)) continue
      d = ws[w] SUBSEP "direct"; b = ws[w] SUBSEP "pgbouncer"
      T = tps[k] / n[k]; L = lat[k] / n[k]
      # AUDIT_ONLY runs have no direct/pgbouncer reference: "-".
      if (d in n) { TD = tps[d] / n[d]; dl = sprintf("%+.3f", L - lat[d] / n[d]); dr = sprintf("%.3f", TD > 0 ? T / TD : 0) } else { dl = "-"; dr = "-" }
      if (b in n) { TB = tps[b] / n[b]; br = sprintf("%.3f", TB > 0 ? T / TB : 0) } else { br = "-" }
      pm = paired(ws[w], ts[j], "pgbouncer"); pr = (pm < 0 ? "-" : sprintf("%.3f", pm))
      printf "| %s | %s | %.0f | %.3f | %s | %s | %s | %s |\n", ws[w], ts[j], T, L, dl, dr, br, pr
    }
  }' "$RES"

if [[ $AUDIT_ONLY != 1 ]]; then
# Parity: is pgward ahead of PgBouncer, level with it, or behind? Each
# round gives one ratio per select-only workload (target and PgBouncer ran
# back to back); the table shows their median with a confidence interval
# for it that assumes nothing about their distribution (order statistics:
# with n ratios, the k-th smallest and the k-th largest bound the median
# with probability 1 - 2 P(Bin(n, 1/2) < k), k chosen for at least 95 %
# where n allows it). A row is "ahead" or "behind" only when the whole
# interval is on one side of 1, and only with an interval of at least 90 %
# (five rounds or more); with fewer it says "too few rounds". pgbouncer-2
# is PgBouncer again: the control column is what "level" looks like on
# this host in this run, and
# pgward is compared with both instances, since rounds average out the
# host's noise but not what sets one process apart from an identical one.
echo
echo "## Parity with PgBouncer: median of the per-round TPS ratios, with its confidence interval"
echo
awk -F'\t' -v rounds="$ROUNDS" "$MEDIAN_AWK"'
  function below(n, k,   j, c, s) { c = 1; s = 0; for (j = 0; j < k; j++) { s += c; c = c * (n - j) / (j + 1) } return s / 2 ^ n }
  function cell(w, t, ref,   m, v, k, lo, hi, med, cover, word) {
    m = ratios(w, t, ref, v)
    if (m == 0) return "- | -"
    k = 1
    while (k + 1 <= (m + 1) / 2 && below(m, k + 1) <= 0.025) k++
    lo = v[k]; hi = v[m + 1 - k]
    med = median(v, m)
    cover = 1 - 2 * below(m, k)
    word = cover < 0.9 ? "too few rounds" : (lo > 1 ? "ahead" : (hi < 1 ? "behind" : "level"))
    return sprintf("%.3f [%.3f, %.3f] (%.1f %%, n=%d) | %s", med, lo, hi, 100 * cover, m, word)
  }
  $1 ~ /^select-only/ { if (!($1 in seen)) { seen[$1] = 1; ws[++nw] = $1 } rt[$1 SUBSEP $2 SUBSEP $5] = $3 }
  END {
    print "| workload | pgward / pgbouncer | | pgward / pgbouncer-2 | | pgbouncer-2 / pgbouncer (control) | |"
    print "|---|---|---|---|---|---|---|"
    for (w = 1; w <= nw; w++)
      printf "| %s | %s | %s | %s |\n", ws[w], cell(ws[w], "pgward", "pgbouncer"), cell(ws[w], "pgward", "pgbouncer-2"), cell(ws[w], "pgbouncer-2", "pgbouncer")
  }' "$RES"
# The proxy's own CPU per transaction, from /proc/PID/stat around each run
# (clock ticks, so a 3 s run of 20 000 transactions resolves 0.5 us). TPS
# at c16 is shared out by the whole machine's CPU; this is the proxy's part
# of it, and moves far less from run to run than TPS does.
echo
echo "## Proxy CPU per transaction (µs of user / system time of the proxy process, all threads; mean over rounds)"
echo
awk -F'\t' '
  NF >= 7 && $6 != "-" { k = $1 SUBSEP $2; if (!($1 in seen)) { seen[$1] = 1; ws[++nw] = $1 } n[k]++; u[k] += $6; s[k] += $7 }
  END {
    nt = split("pgbouncer pgbouncer-2 pgward pgward-off pgward-audit", ts, " ")
    printf "| workload |"; for (j = 1; j <= nt; j++) printf " %s |", ts[j]; print ""
    printf "|---|"; for (j = 1; j <= nt; j++) printf "---:|"; print ""
    for (w = 1; w <= nw; w++) {
      printf "| %s |", ws[w]
      for (j = 1; j <= nt; j++) { k = ws[w] SUBSEP ts[j]; if (k in n) printf " %.2f / %.2f |", u[k] / n[k], s[k] / n[k]; else printf " - |" }
      print ""
    }
  }' "$RES"
echo
echo "## Added latency per query, interleaved (bench/latency.py; one client, queries alternate between targets)"
echo
cat "$LATRES"
echo
echo "## CPU per query: client, proxy, backend (bench/cpu_split.py; one core, one target at a time)"
echo
cat "$SPLITRES"
fi

echo
echo "## Audit cost (select-only; pgward-audit = default policy + every statement to a file sink, fsync = interval)"
echo
echo "$AUDIT_EVENTS statement events written for $AUDIT_TX pgward-audit transactions."
echo
awk -F'\t' -v rounds="$ROUNDS" "$MEDIAN_AWK"'
  $2 == "pgward" || $2 == "pgward-audit" { k = $1 SUBSEP $2; if (!($1 in seen)) { seen[$1] = 1; ws[++nw] = $1 } n[k]++; tps[k] += $3; rt[$1 SUBSEP $2 SUBSEP $5] = $3 }
  END {
    print "| workload | pgward TPS | pgward-audit TPS | ratio audit/pgward | audit cost | median per-round audit cost |"
    print "|---|---:|---:|---:|---:|---:|"
    for (w = 1; w <= nw; w++) {
      a = ws[w] SUBSEP "pgward"; b = ws[w] SUBSEP "pgward-audit"
      if (!(a in n) || !(b in n)) continue
      A = tps[a] / n[a]; B = tps[b] / n[b]; r = (A > 0 ? B / A : 0)
      pm = paired(ws[w], "pgward-audit", "pgward")
      printf "| %s | %.0f | %.0f | %.3f | %.1f %% | %.1f %% |\n", ws[w], A, B, r, (1 - r) * 100, (1 - pm) * 100
    }
  }' "$RES"

if [[ $AUDIT_ONLY != 1 ]]; then
echo
echo "## COPY ($COPY_ROWS rows, $(awk -v b="$COPY_BYTES" 'BEGIN{printf "%.1f", b / 1e6}') MB of text per run; median of $COPY_REPS runs, psql wall time)"
echo
echo "| direction | target | seconds | MB/s | ratio to direct (throughput) |"
echo "|---|---|---:|---:|---:|"
for dirn in "copy out" "copy in"; do
  dmed=""
  for t in "${TARGETS[@]}"; do
    med=$(awk -F'\t' -v d="$dirn" -v t="$t" '$1 == d && $2 == t {print $3}' "$COPYRES" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
    [[ -z "$dmed" ]] && dmed=$med
    printf '| %s | %s | %.3f | %.1f | %.3f |\n' "$dirn" "$t" "$med" \
      "$(echo "$COPY_BYTES / $med / 1000000" | bc -l)" "$(echo "$dmed / $med" | bc -l)"
  done
done

echo
echo "## Idle-connection memory (VmRSS of the server process before/after; fresh pgward process per measurement)"
echo
echo "| what | clients | RSS before KiB | RSS after KiB | sockets held (+fds) | KiB per client |"
echo "|---|---:|---:|---:|---:|---:|"
awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}' "$IDLERES"
fi

echo
echo "load average before: $LOAD_BEFORE"
echo "load average after:  $LOAD_AFTER"
