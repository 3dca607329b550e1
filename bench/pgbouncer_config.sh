# Sourced by bench/run.sh and bench/callgrind.sh: the PgBouncer both compare
# pgward with, in session mode with trust authentication.
#
# pgbouncer_config DIR PGPORT PORT: write DIR/userlist.txt and
# DIR/pgbouncer.ini for a PgBouncer on 127.0.0.1:PORT in front of the
# Postgres on 127.0.0.1:PGPORT, logging to DIR/pgbouncer-own.log (the
# scripts keep DIR/pgbouncer.log for what they capture themselves), pid in
# DIR/pgbouncer.pid; both files owned by postgres, as PgBouncer runs.
pgbouncer_config() {
  local dir=$1 pgport=$2 port=$3
  printf '"postgres" ""\n' >"$dir/userlist.txt"
  cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pgport
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
max_client_conn = 2000
default_pool_size = 100
logfile = $dir/pgbouncer-own.log
pidfile = $dir/pgbouncer.pid
admin_users = postgres
ignore_startup_parameters = extra_float_digits
INI
  chown postgres: "$dir/userlist.txt" "$dir/pgbouncer.ini"
}
