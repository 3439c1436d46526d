#!/usr/bin/env bash
# The project's own PostgreSQL for tests and benchmarks: a private cluster on 127.0.0.1:55432,
# data under build/pg. Usage: services.sh start|stop|url
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${NABD_PG_PORT:-55432}
DATA=$(pwd)/build/pg
URL="postgresql://nabd@127.0.0.1:$PORT/nabd"
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-start}" in
  start)
    [ -n "$bindir" ] || { echo "services: PostgreSQL is not installed (run make setup)" >&2; exit 1; }
    if as_pg "$bindir/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
      :  # ours, already running
    elif "$bindir/pg_isready" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
      # Another checkout's cluster already serves this port: use it rather than fail.
      echo "services: postgres already answering on $PORT ($URL)"
    else
      if [ ! -f "$DATA/PG_VERSION" ]; then
        rm -rf "$DATA"; mkdir -p "$DATA"
        [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA"
        as_pg "$bindir/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 >/dev/null
        cat >> "$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
fsync = on
max_connections = 100
CONF
      fi
      as_pg "$bindir/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w start >/dev/null
    fi
    as_pg "$bindir/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname='nabd'" | grep -q 1 \
      || as_pg "$bindir/psql" -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE ROLE nabd LOGIN CREATEDB"
    # tests drop their databases WITH (FORCE), which terminates leftover sessions
    as_pg "$bindir/psql" -h 127.0.0.1 -p "$PORT" -U postgres -qc "GRANT pg_signal_backend TO nabd" >/dev/null
    as_pg "$bindir/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='nabd'" | grep -q 1 \
      || as_pg "$bindir/psql" -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE nabd OWNER nabd"
    echo "services: postgres up ($URL)"
    ;;
  stop)
    [ -f "$DATA/PG_VERSION" ] && as_pg "$bindir/pg_ctl" -D "$DATA" -m fast stop >/dev/null || true
    ;;
  url)
    echo "$URL"
    ;;
esac
