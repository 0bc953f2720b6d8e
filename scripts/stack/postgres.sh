#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Local PostgreSQL from Debian's packages, as our own cluster in .stack/postgres
# (not Debian's /var/lib/postgresql cluster), listening on 127.0.0.1:5432 only.
# Usage: postgres.sh install|start|stop|status
# Role/password imgstream/imgstream (SUPERUSER: integration tests create and drop
# databases); databases: imgstream, registry (for the schema registry).
set -euo pipefail
SERVICE=postgres
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT=5432
PGROOT="$STACK_DIR/postgres"
DATA="$PGROOT/data"
SOCK="$PGROOT/run" # unix socket here, not /var/run/postgresql (may not exist or be writable)
LOG="$PGROOT/log/postgres.log"

# Debian installs binaries per major version; take the newest installed one.
pgbin() { find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -1; }
pgversion() { "$BIN/postgres" --version | awk '{print $3}'; } # "postgres (PostgreSQL) 15.18 (Debian ...)"
as_pg() { (cd / && runuser -u postgres -- "$@"); } # postgres refuses to run as root
running() { [[ -f "$DATA/PG_VERSION" ]] && as_pg "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

install() {
  if [[ -z "$(pgbin)" ]]; then
    apt_install postgresql
    # The package creates and starts Debian's default cluster on 5432, which would
    # block ours; we just installed it, so stop it and keep it from autostarting.
    local ver
    ver="$(basename "$(dirname "$(pgbin)")")"
    if [[ -f "/etc/postgresql/$ver/main/start.conf" ]]; then
      say "disabling Debian's default cluster $ver/main so our cluster can use port $PORT"
      pg_ctlcluster "$ver" main stop 2>/dev/null || true
      echo manual >"/etc/postgresql/$ver/main/start.conf"
    fi
  fi
  [[ -n "$(pgbin)" ]] || die "no PostgreSQL binaries in /usr/lib/postgresql/*/bin after installing"
  command -v openssl >/dev/null || apt_install openssl # makes the TLS certificates
}

# The postgres OS user needs to reach and own its data dir; the repo is owned by root.
prepare_dirs() {
  mkdir -p "$DATA" "$SOCK" "$(dirname "$LOG")"
  touch "$LOG"
  chown -R postgres:postgres "$PGROOT"
  chmod 700 "$DATA"
  local d="$STACK_DIR"
  while [[ "$d" != / ]]; do
    if ! as_pg test -x "$d"; then say "granting o+x on $d so the postgres user can reach its data"; chmod o+x "$d"; fi
    d="$(dirname "$d")"
  done
}

init_cluster() {
  [[ -f "$DATA/PG_VERSION" ]] && return 0
  say "initializing a new cluster in $DATA"
  as_pg "$BIN/initdb" -D "$DATA" -U postgres --encoding=UTF8 --no-locale \
    --auth-local=peer --auth-host=scram-sha-256 >>"$LOG" 2>&1 || die "initdb failed; see $LOG"
  cat >"$DATA/pg_hba.conf" <<'EOF'
# Managed by scripts/stack/postgres.sh.
# Unix socket: only the postgres OS user, by peer identity (used for bootstrapping).
local all postgres               peer
# TCP: password (SCRAM) for everyone, loopback only.
host  all all      127.0.0.1/32  scram-sha-256
EOF
  chown postgres:postgres "$DATA/pg_hba.conf"
}

# The server offers TLS with a certificate from the stack's CA (clients choose with sslmode; tests
# verify it against the CA with sslmode=verify-full). PostgreSQL wants its key owned by its own
# user, so it reads a copy.
TLS="$PGROOT/tls"
make_tls() {
  issue_cert postgres
  mkdir -p "$TLS"
  cmp -s "$TLS_DIR/postgres.crt" "$TLS/server.crt" || {
    cp "$TLS_DIR/postgres.crt" "$TLS/server.crt"
    cp "$TLS_DIR/postgres.key" "$TLS/server.key"
  }
  chown -R postgres:postgres "$TLS"
  chmod 600 "$TLS/server.key"
}

# Idempotent: (re)asserts the role's attributes and password, creates missing databases.
bootstrap_sql() {
  as_pg "$BIN/psql" -h "$SOCK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt >/dev/null <<'SQL'
SELECT 'CREATE ROLE imgstream' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'imgstream') \gexec
ALTER ROLE imgstream LOGIN SUPERUSER PASSWORD 'imgstream';
SELECT format('CREATE DATABASE %I OWNER imgstream', d) FROM unnest(ARRAY['imgstream', 'registry']) AS d
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = d) \gexec
SQL
}

start() {
  install
  BIN="$(pgbin)"
  if running; then say "already running on 127.0.0.1:$PORT"; return 0; fi
  if port_open "$PORT"; then
    local who
    who="$(pg_lsclusters -h 2>/dev/null | awk -v p="$PORT" '$3 == p && $4 == "online" {print $1 "/" $2}')"
    [[ -n "$who" ]] && die "port $PORT is taken by Debian's PostgreSQL cluster $who, not ours; stop it with: pg_ctlcluster ${who/\// } stop"
    die "port $PORT is already in use by another process (not our PostgreSQL): $(ss -ltnpH "sport = :$PORT" | head -1)"
  fi
  prepare_dirs
  init_cluster
  make_tls
  say "starting PostgreSQL $(pgversion) on 127.0.0.1:$PORT (TLS offered, CA $TLS_DIR/ca.crt); log: $LOG"
  # pg_ctl -w waits for readiness and, unlike polling, notices at once if the server dies.
  if ! as_pg "$BIN/pg_ctl" start -D "$DATA" -l "$LOG" -w -t "$STACK_TIMEOUT" \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$SOCK -c ssl=on -c ssl_cert_file=$TLS/server.crt -c ssl_key_file=$TLS/server.key" >/dev/null; then
    say "last lines of $LOG:"; tail -n 30 "$LOG" >&2
    die "PostgreSQL did not start within ${STACK_TIMEOUT}s"
  fi
  wait_until 30 "$LOG" "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" \
    || die "PostgreSQL runs but does not accept TCP connections on 127.0.0.1:$PORT"
  bootstrap_sql || die "creating role/databases failed"
  say "up: postgresql://imgstream:imgstream@127.0.0.1:$PORT/imgstream"
}

stop() {
  BIN="$(pgbin)"
  if [[ -z "$BIN" ]] || ! running; then say "not running"; return 0; fi
  say "stopping"
  as_pg "$BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 60 >/dev/null || die "pg_ctl stop failed; see $LOG"
  say "stopped"
}

status() {
  BIN="$(pgbin)"
  local ver=unknown
  [[ -n "$BIN" ]] && ver="$(pgversion)"
  if [[ -n "$BIN" ]] && running && "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    printf 'postgres  up  %s  127.0.0.1:%s\n' "$ver" "$PORT"
  else
    printf 'postgres  down  %s  127.0.0.1:%s\n' "$ver" "$PORT"
    return 1
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: postgres.sh install|start|stop|status" ;;
esac
