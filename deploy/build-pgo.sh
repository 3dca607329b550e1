#!/usr/bin/env bash
# A profile-guided release build of pgward. The binary is built once with
# instrumentation and run in front of a throwaway Postgres through a training
# workload. The profile it writes is merged, and the binary is built again
# with that profile, so LLVM lays out and inlines by what runs hot.
#
# The result runs about a quarter fewer instructions per pgbench
# transaction than `cargo build --release`, over a code footprint a third
# smaller (bench/README.md, "Profile-guided build").
#
#   bash deploy/build-pgo.sh        # -> target/pgo/pgward (+ the profile it was built with)
#
# The training covers:
# - pgbench select-only in the simple, extended and prepared protocols at
#   -c 1 and -c 16, TPC-B, and connection churn, through the built-in
#   defaults;
# - COPY out and in, blocked statements, and a multi-statement Query;
# - through a second instance: TLS clients, a soft-delete table and its
#   rewritten DELETE, and every statement audited to a file sink.
# Code the training does not reach is still compiled, only laid out as cold.
#
# Needs:
# - the Postgres server binaries, psql, pgbench and openssl;
# - an llvm-profdata that reads this rustc's profiles: `rustup component add
#   llvm-tools`, or for rustc 1.95 (LLVM 22) Debian's `llvm-19`.
#
# Knobs (defaults in brackets):
#   TRAIN_SECS [3]      seconds per pgbench run of the training
#   BASE_PORT [25480]   ports BASE .. BASE+2
#   LLVM_PROFDATA       the llvm-profdata to use (else searched, see below)
#   KEEP_TMP=1          keep the temp dir (Postgres log, pgward logs, raw profiles)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TRAIN_SECS=${TRAIN_SECS:-3}
BASE=${BASE_PORT:-25480}
PGPORT=$BASE
PORT_A=$((BASE + 1)) # built-in defaults: the hot path as most deployments run it
PORT_B=$((BASE + 2)) # TLS, soft delete, audit of every statement
OUT=$ROOT/target/pgo

die() { echo "build-pgo: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }

HOST=$(rustc -vV | sed -n 's/^host: //p')
[[ -n $HOST ]] || die "rustc not found"
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[[ -x ${PGBIN:-}/initdb ]] || PGBIN=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
[[ -x $PGBIN/initdb ]] || die "no Postgres server binaries (initdb); on Debian: apt-get install postgresql"
PSQL=$PGBIN/psql; [[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql not found"
PGBENCH=$PGBIN/pgbench; [[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
command -v openssl >/dev/null || die "openssl not found (the training's TLS certificate)"

# llvm-profdata candidates, best first: the one named, rustup's llvm-tools
# (always this rustc's LLVM), then any installed, newest first. The first
# that can merge the raw profiles is used.
profdata_candidates() {
  [[ -n ${LLVM_PROFDATA:-} ]] && echo "$LLVM_PROFDATA"
  local sysroot
  sysroot=$(rustc --print sysroot)
  echo "$sysroot/lib/rustlib/$HOST/bin/llvm-profdata"
  ls -d /usr/lib/llvm-*/bin/llvm-profdata 2>/dev/null | sort -V -r
  command -v llvm-profdata 2>/dev/null || true
}
have_profdata=0
while read -r c; do [[ -x $c ]] && have_profdata=1; done < <(profdata_candidates)
[[ $have_profdata == 1 ]] || die "no llvm-profdata: rustup component add llvm-tools, or apt-get install llvm-19"

DIR=$(mktemp -d /tmp/pgward-pgo.XXXXXX)
chmod 755 "$DIR"
# initdb and postgres refuse to run as root.
as_pg=()
if [[ $(id -u) == 0 ]]; then
  id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run Postgres as"
  chown postgres: "$DIR"
  as_pg=(runuser -u postgres --)
fi
PIDS=()
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1
  if [[ ${KEEP_TMP:-0} == 1 || $rc != 0 ]]; then echo "build-pgo: kept $DIR" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

wait_sql() { # port [sslmode]
  local i
  for i in $(seq 1 100); do
    PGSSLMODE=${2:-disable} "$PSQL" -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "nothing answering SQL on port $1"
}

# ---------------------------------------------------------------- 1. instrumented build
say "instrumented build (target/pgo-generate)"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$DIR/profiles" \
  cargo build --manifest-path "$ROOT/Cargo.toml" --release --locked --bin pgward \
  --target "$HOST" --target-dir "$ROOT/target/pgo-generate"
TRAINEE=$ROOT/target/pgo-generate/$HOST/release/pgward
# Only the training's own runs go into the profile.
rm -rf "$DIR/profiles"

# ---------------------------------------------------------------- 2. Postgres
say "throwaway Postgres on port $PGPORT"
"${as_pg[@]}" "$PGBIN/initdb" -D "$DIR/data" -U postgres --auth=trust >"$DIR/initdb.log" 2>&1
"${as_pg[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" \
  -o "-p $PGPORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=100" \
  -w start >/dev/null
wait_sql "$PGPORT"
"$PGBENCH" -i -s 1 -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >"$DIR/pgbench-init.log" 2>&1
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres <<'SQL'
create table items (id int primary key, name text, deleted_at timestamptz, deleted_by text);
insert into items select g, 'item ' || g from generate_series(1, 1000) g;
create table accounts_copy (like pgbench_accounts);
SQL

# ---------------------------------------------------------------- 3. training
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -keyout "$DIR/server.key" -out "$DIR/server.pem" >/dev/null 2>&1
cat >"$DIR/features.toml" <<EOF
[upstream]
host = "127.0.0.1"
port = $PGPORT

[client_tls]
mode = "allow"
cert_file = "$DIR/server.pem"
key_file = "$DIR/server.key"

[[policy.soft_delete]]
table = "public.items"
[soft_delete_check]
databases = ["postgres"]
[soft_delete_check.credentials]
user = "postgres"

[audit.filter]
classes = ["ALL"]
[[audit.sinks]]
type = "file"
path = "$DIR/audit.jsonl"
fsync = "interval"
EOF
"$TRAINEE" check "$DIR/features.toml" >/dev/null

say "training: built-in defaults on port $PORT_A, TLS + soft delete + audit on port $PORT_B"
setsid "$TRAINEE" run --listen "127.0.0.1:$PORT_A" --upstream "127.0.0.1:$PGPORT" >"$DIR/pgward-a.log" 2>&1 </dev/null &
PIDS+=($!)
setsid "$TRAINEE" run --config "$DIR/features.toml" --listen "127.0.0.1:$PORT_B" --upstream "127.0.0.1:$PGPORT" >"$DIR/pgward-b.log" 2>&1 </dev/null &
PIDS+=($!)
wait_sql "$PORT_A"
wait_sql "$PORT_B" require

bench() { # port pgbench-args...
  local port=$1
  shift
  "$PGBENCH" -h 127.0.0.1 -p "$port" -U postgres -n "$@" postgres >>"$DIR/training.log" 2>&1 \
    || die "pgbench $* through port $port failed: $(tail -3 "$DIR/training.log")"
}
for mode in simple extended prepared; do
  bench "$PORT_A" -S -M "$mode" -c 16 -j 2 -T "$TRAIN_SECS"
  bench "$PORT_A" -S -M "$mode" -c 1 -T 1
done
bench "$PORT_A" -M prepared -c 8 -j 2 -T "$TRAIN_SECS"
bench "$PORT_A" -C -S -c 4 -j 2 -T 1

# Statements the policy blocks fail with 42501; psql goes on past them.
"$PSQL" -X -q -h 127.0.0.1 -p "$PORT_A" -U postgres -d postgres >>"$DIR/training.log" 2>&1 <<SQL || true
\copy pgbench_accounts to '$DIR/accounts.csv'
\copy accounts_copy from '$DIR/accounts.csv'
select count(*) from accounts_copy; select 1; select 2;
truncate pgbench_history;
delete from pgbench_history;
update pgbench_branches set bbalance = 0 where 1 = 1;
SQL

PGSSLMODE=require bench "$PORT_B" -S -M extended -c 4 -j 2 -T "$TRAIN_SECS"
bench "$PORT_B" -S -M simple -c 4 -j 2 -T "$TRAIN_SECS"
PGSSLMODE=require "$PSQL" -X -q -h 127.0.0.1 -p "$PORT_B" -U postgres -d postgres >>"$DIR/training.log" 2>&1 <<'SQL' || true
select count(*) from items where deleted_at is null;
delete from items where id between 1 and 10;
delete from items where id = 11 returning id;
insert into items (id, name) values (2001, 'new');
update items set name = 'renamed' where id = 12;
delete from items;
SQL

# The profile is written when pgward exits: stop both cleanly.
for p in "${PIDS[@]}"; do kill -TERM "$p"; done
for p in "${PIDS[@]}"; do wait "$p" || die "a training instance exited with $? (see $DIR/pgward-*.log)"; done
PIDS=()
ls "$DIR"/profiles/*.profraw >/dev/null 2>&1 || die "the training wrote no profile"

# ---------------------------------------------------------------- 4. merge
merged=""
while read -r c; do
  [[ -x $c ]] || continue
  if "$c" merge -o "$DIR/merged.profdata" "$DIR"/profiles/*.profraw 2>"$DIR/merge.log"; then
    merged=$c
    break
  fi
  echo "build-pgo: $c cannot read this rustc's profiles: $(head -1 "$DIR/merge.log")" >&2
done < <(profdata_candidates)
[[ -n $merged ]] || die "no llvm-profdata here reads LLVM $(rustc -vV | sed -n 's/^LLVM version: //p')'s profiles: rustup component add llvm-tools"
say "profile merged with $merged"
# Cargo sees RUSTFLAGS, not the profile's contents: a name per profile makes
# a new profile rebuild everything it applies to.
mkdir -p "$OUT"
rm -f "$OUT"/pgward-*.profdata
PROFILE=$OUT/pgward-$(sha256sum "$DIR/merged.profdata" | cut -c1-16).profdata
cp "$DIR/merged.profdata" "$PROFILE"

# ---------------------------------------------------------------- 5. optimised build
say "profile-guided build (target/pgo-use)"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PROFILE" \
  cargo build --manifest-path "$ROOT/Cargo.toml" --release --locked --bin pgward \
  --target "$HOST" --target-dir "$ROOT/target/pgo-use"
cp "$ROOT/target/pgo-use/$HOST/release/pgward" "$OUT/pgward.tmp"
mv "$OUT/pgward.tmp" "$OUT/pgward"

# ---------------------------------------------------------------- 6. check the result
say "checking the built binary in front of the same Postgres"
setsid "$OUT/pgward" run --listen "127.0.0.1:$PORT_A" --upstream "127.0.0.1:$PGPORT" >"$DIR/pgward-check.log" 2>&1 </dev/null &
PIDS+=($!)
wait_sql "$PORT_A"
bench "$PORT_A" -S -M extended -c 4 -j 2 -t 200
blocked=$("$PSQL" -X -q -h 127.0.0.1 -p "$PORT_A" -U postgres -d postgres -c 'truncate pgbench_history' 2>&1 || true)
[[ $blocked == *"blocked by rule"* ]] || die "the built binary did not block TRUNCATE: $blocked"
echo "$OUT/pgward"
