#!/usr/bin/env bash
# Driver compatibility suite: real drivers, installed from their registries,
# talk to a throwaway PostgreSQL 15 through pgward (TLS to the client, SCRAM
# users). Every driver program runs the same checks and prints
# `<check> ok` or `<check> FAIL: <why>`; this script prefixes the driver,
# prints one line per driver and check, writes docs/compatibility.md and
# ends with `N passed, M failed` (exit 1 on any failure).
#
#   compat/run.sh                 # everything
#   compat/run.sh psycopg psql    # only these drivers (docs are not rewritten)
#
# Installs are idempotent (apt only when something is missing; the Python
# venv and the Rust build are cached under $PGWARD_COMPAT_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
COMPAT=$ROOT/compat
CACHE=${PGWARD_COMPAT_CACHE:-/tmp/pgward-compat-cache}
ALL_DRIVERS=(psql pgbench psycopg asyncpg node-pg postgres-js pgjdbc tokio-postgres sqlx)
DRIVERS=("$@")
[ ${#DRIVERS[@]} -gt 0 ] || DRIVERS=("${ALL_DRIVERS[@]}")
started=$(date +%s)

log() { echo "== compat: $*" >&2; }
wants() { local d; for d in "${DRIVERS[@]}"; do [ "$d" = "$1" ] && return 0; done; return 1; }

# ---------------------------------------------------------------- installs
need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if wants node-pg || wants postgres-js; then
  command -v node >/dev/null || need_apt+=(nodejs)
  command -v npm >/dev/null || need_apt+=(npm)
fi
if wants pgjdbc; then
  command -v javac >/dev/null || need_apt+=(openjdk-17-jdk-headless)
  [ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
mkdir -p "$CACHE"

if wants psycopg || wants asyncpg; then
  VENV=$CACHE/venv
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # pip skips what is already installed at the pinned version.
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$COMPAT/python/requirements.txt"
fi
if wants node-pg || wants postgres-js; then
  if ! (cd "$COMPAT/node" && npm ls --silent >/dev/null 2>&1); then
    log "npm ci"
    (cd "$COMPAT/node" && npm ci --silent --no-audit --no-fund >/dev/null)
  fi
fi
if wants tokio-postgres || wants sqlx; then
  log "building compat/rust (debug: a cold build takes a third of a release one)"
  CARGO_TARGET_DIR=$ROOT/target/compat-rust cargo build --quiet \
    --manifest-path "$COMPAT/rust/Cargo.toml"
fi
log "building pgward"
cargo build --quiet --bin pgward
PGWARD=$ROOT/target/debug/pgward

# ---------------------------------------------------------------- cluster
BIN=$(ls -d /usr/lib/postgresql/15/bin 2>/dev/null || dirname "$(command -v initdb)")
WORK=$(mktemp -d /tmp/pgward-compat.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -f "$WORK/data/postmaster.pid" ]; then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh postgres
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port)
PROXY_PORT=$(free_port)
chmod 755 "$WORK"
mkdir "$WORK/data" "$WORK/sock"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/data" "$WORK/sock"
echo postgres >"$WORK/pwfile"
chmod 644 "$WORK/pwfile"
log "initdb (postgres $("$BIN/postgres" --version | awk '{print $3}'))"
as_pg "$BIN/initdb" -D "$WORK/data" -U postgres --pwfile="$WORK/pwfile" \
  --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/sock'
password_encryption = 'scram-sha-256'
fsync = off
max_connections = 100
EOF
as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/data/server.log" -w start >/dev/null
psql_admin() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK/sock" -p "$PG_PORT" -U postgres "$@"; }

# Each driver gets its own database with the same schema, owned by a SCRAM user.
COMPAT_USER=compat_app
COMPAT_PASSWORD='compat-Secret_1'
psql_admin -d postgres -c "CREATE ROLE $COMPAT_USER LOGIN PASSWORD '$COMPAT_PASSWORD'"
DBS=()
for d in "${DRIVERS[@]}"; do
  db=compat_${d//-/_}
  DBS+=("$db")
  psql_admin -d postgres -c "CREATE DATABASE $db OWNER $COMPAT_USER"
  psql_admin -d "$db" -U "$COMPAT_USER" <"$COMPAT/schema.sql"
done

# ---------------------------------------------------------------- TLS + pgward
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=pgward-compat-ca -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$WORK/ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/ext" -out "$WORK/server.crt" 2>/dev/null

cat >"$WORK/pgward.toml" <<EOF
[listen]
addresses = ["127.0.0.1:$PROXY_PORT"]
[upstream]
host = "127.0.0.1"
port = $PG_PORT
[client_tls]
# TLS is required: a driver that logs in has done so over TLS.
mode = "require"
cert_file = "$WORK/server.crt"
key_file = "$WORK/server.key"
[admin]
listen = ""
[log]
level = "warn"
[policy]
# pgJDBC's LargeObjectManager calls these through FunctionCall (fast path).
function_call_allow = ["lo_open", "lo_close", "loread", "lowrite", "lo_lseek", "lo_lseek64",
  "lo_creat", "lo_create", "lo_tell", "lo_tell64", "lo_unlink", "lo_truncate", "lo_truncate64"]
# DELETE on items becomes an UPDATE that marks the row; the driver still sees DELETE n.
[[policy.soft_delete]]
table = "public.items"
deleted_by = "deleted_by"
# RLS context: pinned by pgward after login, not writable by the client.
[context]
"app.current_user_id" = "{user}"
protect = ["app.*"]
[soft_delete_check]
databases = [$(printf '"%s",' "${DBS[@]}")]
[soft_delete_check.credentials]
user = "$COMPAT_USER"
password_env = "PGWARD_CHECK_PASSWORD"
EOF
export PGWARD_CHECK_PASSWORD=$COMPAT_PASSWORD
"$PGWARD" run --config "$WORK/pgward.toml" 2>"$WORK/pgward.log" &
PIDS+=($!)
for _ in $(seq 100); do
  PGPASSWORD=$COMPAT_PASSWORD "$BIN/psql" -X -q "host=127.0.0.1 port=$PROXY_PORT user=$COMPAT_USER dbname=postgres sslmode=require" \
    -c 'select 1' >/dev/null 2>&1 && break
  sleep 0.1
done

# ---------------------------------------------------------------- drivers
export PGHOST=127.0.0.1 PGPORT=$PROXY_PORT PGUSER=$COMPAT_USER PGPASSWORD=$COMPAT_PASSWORD
export PGSSLROOTCERT=$WORK/ca.crt PGSSLMODE=verify-full PGCHANNELBINDING=disable
export COMPAT_PG_BIN=$BIN COMPAT_WORK=$WORK COMPAT_PG_PORT=$PG_PORT
RESULTS=$WORK/results.tsv
: >"$RESULTS"
VERSIONS=$WORK/versions.tsv
: >"$VERSIONS"

driver_cmd() {
  case $1 in
    psql | pgbench) echo "bash $COMPAT/cli/$1.sh" ;;
    psycopg) echo "$CACHE/venv/bin/python $COMPAT/python/psycopg_check.py" ;;
    asyncpg) echo "$CACHE/venv/bin/python $COMPAT/python/asyncpg_check.py" ;;
    node-pg) echo "node $COMPAT/node/node_pg.js" ;;
    postgres-js) echo "node $COMPAT/node/postgres_js.mjs" ;;
    pgjdbc) echo "bash $COMPAT/java/run.sh" ;;
    tokio-postgres | sqlx) echo "$ROOT/target/compat-rust/debug/pgward-compat-rust $1" ;;
    *) echo "unknown driver $1 (known: ${ALL_DRIVERS[*]})" >&2; return 1 ;;
  esac
}

# Failures the project knows about and has not fixed yet: reported as known
# failures (not passes); one that starts passing fails the run until removed.
known_failure() {
  awk -F'\t' -v d="$1" -v c="$2" '$1==d && $2==c { print $3; exit }' "$COMPAT/known_failures.tsv"
}

for d in "${DRIVERS[@]}"; do
  cmd=$(driver_cmd "$d")
  export PGDATABASE=compat_${d//-/_}
  out=$WORK/$d.out
  t0=$(date +%s)
  # Each program prints `version <v>`, then `<check> ok|FAIL: …` lines.
  set +e
  timeout 180 $cmd >"$out" 2>"$WORK/$d.err"
  rc=$?
  set -e
  secs=$(($(date +%s) - t0))
  printf '%s\t%s\n' "$d" "$(awk '$1=="version"{ $1=""; sub(/^ /,""); print; exit }' "$out")" >>"$VERSIONS"
  nchecks=0
  while IFS= read -r line; do
    check=${line%% *}
    rest=${line#* }
    [ "$check" = version ] && continue
    nchecks=$((nchecks + 1))
    known=$(known_failure "$d" "$check")
    if [ "$rest" = ok ] && [ -z "$known" ]; then
      printf '%s\t%s\tpass\t\n' "$d" "$check" >>"$RESULTS"
      printf '%-15s %-22s pass\n' "$d" "$check"
    elif [ "$rest" = ok ]; then
      why="passed, but compat/known_failures.tsv says it fails: remove that line"
      printf '%s\t%s\tfail\t%s\n' "$d" "$check" "$why" >>"$RESULTS"
      printf '%-15s %-22s FAIL %s\n' "$d" "$check" "$why"
    elif [ -n "$known" ]; then
      printf '%s\t%s\tknown\t%s\n' "$d" "$check" "${rest#FAIL: }" >>"$RESULTS"
      printf '%-15s %-22s known failure: %s\n' "$d" "$check" "${rest#FAIL: }"
    else
      printf '%s\t%s\tfail\t%s\n' "$d" "$check" "${rest#FAIL: }" >>"$RESULTS"
      printf '%-15s %-22s FAIL %s\n' "$d" "$check" "${rest#FAIL: }"
    fi
  done <"$out"
  # A crash or a program that reported nothing is a failure of its own.
  if [ $rc -ne 0 ] && ! grep -q 'FAIL' "$out"; then
    why="exit $rc: $(tail -c 300 "$WORK/$d.err" | tr '\n\t' '  ')"
    printf '%s\t%s\tfail\t%s\n' "$d" program "$why" >>"$RESULTS"
    printf '%-15s %-22s FAIL %s\n' "$d" program "$why"
  elif [ $nchecks -eq 0 ]; then
    printf '%s\t%s\tfail\t%s\n' "$d" program "reported no checks" >>"$RESULTS"
    printf '%-15s %-22s FAIL reported no checks\n' "$d" program
  fi
  [ -s "$WORK/$d.err" ] && [ $rc -ne 0 ] && sed 's/^/    /' "$WORK/$d.err" | tail -20 >&2
  log "$d: ${secs}s"
done

passed=$(awk -F'\t' '$3=="pass"' "$RESULTS" | wc -l)
failed=$(awk -F'\t' '$3=="fail"' "$RESULTS" | wc -l)
known=$(awk -F'\t' '$3=="known"' "$RESULTS" | wc -l)
if [ $# -eq 0 ]; then
  python3 "$COMPAT/matrix.py" "$RESULTS" "$VERSIONS" "$COMPAT/known_failures.tsv" \
    "$("$BIN/postgres" --version | awk '{print $3}')" >"$ROOT/docs/compatibility.md"
  log "wrote docs/compatibility.md"
fi
if [ "$failed" -gt 0 ]; then
  log "pgward log:"
  tail -20 "$WORK/pgward.log" >&2
fi
log "$(($(date +%s) - started))s in all"
[ "$known" -gt 0 ] && echo "$known known failures (compat/known_failures.tsv, see docs/compatibility.md)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
