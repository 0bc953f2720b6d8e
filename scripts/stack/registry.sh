#!/usr/bin/env bash
# Schema registry for the local stack: Apicurio Registry 3.x (Quarkus, JVM) with its
# Confluent-compatible API at http://127.0.0.1:8081/apis/ccompat/v7.
#
#   scripts/stack/registry.sh install|start|stop|status
#
# install  resolves the Apicurio distribution from Maven Central with stack/registry/pom.xml into
#          $CACHE_DIR/registry-<version>/ (Maven repository: ~/.m2). No-op when already installed.
# start    install, then run it in the background (pid/log under .stack/registry), wait until the
#          ccompat API answers. Storage is PostgreSQL on 127.0.0.1:5432, database "registry".
# stop     stop it.
# status   one line; exit 0 when up, 1 when down.
#
# Environment:
#   STACK_TIMEOUT        seconds to wait for health (default 180)
#   REGISTRY_STORAGE     postgresql (default) | h2  (h2: file database under .stack/registry/data)
#   REGISTRY_HEAP        JVM max heap (default 512m)
#   REGISTRY_JAVA        java binary to use (needs Java 21+; default: first suitable JDK found)
#   REGISTRY_DB_HOST/REGISTRY_DB_PORT/REGISTRY_DB_NAME  PostgreSQL location (127.0.0.1/5432/registry)
# shellcheck disable=SC2034 # SERVICE is read by say/die in common.sh
SERVICE=registry
# shellcheck source=scripts/stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

POM="$REPO_ROOT/stack/registry/pom.xml"
CONF="$REPO_ROOT/stack/registry/application.properties"
VERSION="$(sed -n 's:.*<apicurio.version>\(.*\)</apicurio.version>.*:\1:p' "$POM" | head -n1)"
[[ -n "$VERSION" ]] || die "cannot read <apicurio.version> from $POM"
APP_DIR="$CACHE_DIR/registry-$VERSION"
STAMP="$APP_DIR/.installed"
RUN_DIR="$STACK_DIR/registry"
LOG_DIR="$RUN_DIR/log"
LOG="$LOG_DIR/registry.log"
PIDFILE="$RUN_DIR/registry.pid"
PORT=8081
URL="http://127.0.0.1:$PORT/apis/ccompat/v7"
STORAGE="${REGISTRY_STORAGE:-postgresql}"
HEAP="${REGISTRY_HEAP:-512m}"
DB_HOST="${REGISTRY_DB_HOST:-127.0.0.1}"
DB_PORT="${REGISTRY_DB_PORT:-5432}"
DB_NAME="${REGISTRY_DB_NAME:-registry}"
DB_USER=imgstream
DB_PASSWORD=imgstream

# java_major BIN: prints the feature version of a java binary (e.g. 17, 25).
java_major() {
  "$1" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p' | head -n1
}

# find_java: prints a java binary of version 21 or newer (Apicurio 3.3 is built for release 21).
find_java() {
  local c v
  for c in "${REGISTRY_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" \
      /usr/lib/jvm/temurin-25-jdk-amd64/bin/java /usr/lib/jvm/*/bin/java "$(command -v java || true)"; do
    [[ -n "$c" && -x "$c" ]] || continue
    v="$(java_major "$c")"
    [[ -n "$v" ]] && ((v >= 21)) && { echo "$c"; return 0; }
  done
  return 1
}

installed() { [[ -f "$STAMP" && -f "$APP_DIR/quarkus-run.jar" ]]; }

cmd_install() {
  if installed; then return 0; fi
  command -v mvn >/dev/null 2>&1 || apt_install maven
  find_java >/dev/null || die "Apicurio Registry $VERSION needs Java 21+; none found (set REGISTRY_JAVA)"
  say "installing Apicurio Registry $VERSION from Maven Central into $APP_DIR"
  local tmp="$APP_DIR.tmp.$$"
  rm -rf "$tmp"
  local t0=$SECONDS
  if ! mvn -B -q -f "$POM" package -Dregistry.dir="$tmp" >"$CACHE_DIR/registry-install.log" 2>&1; then
    tail -n 40 "$CACHE_DIR/registry-install.log" >&2
    rm -rf "$tmp"
    die "maven build failed (full log: $CACHE_DIR/registry-install.log)"
  fi
  [[ -f "$tmp/quarkus-run.jar" ]] || { rm -rf "$tmp"; die "quarkus-run.jar missing after build"; }
  rm -rf "$APP_DIR"
  mv "$tmp" "$APP_DIR"
  echo "$VERSION" >"$STAMP"
  say "installed in $((SECONDS - t0))s"
}

healthy() { curl -fsS -m 5 "$URL/subjects" >/dev/null 2>&1; }

cmd_status() {
  if pid_alive "$PIDFILE" && healthy; then
    printf 'registry  up  %s  %s\n' "$VERSION" "$URL"
    return 0
  fi
  printf 'registry  down  %s  %s\n' "$VERSION" "$URL"
  return 1
}

check_postgres() {
  port_open "$DB_PORT" 2>/dev/null || [[ "$DB_HOST" != 127.0.0.1 ]] ||
    die "PostgreSQL is not reachable on $DB_HOST:$DB_PORT (start it first: scripts/stack/postgres.sh start)"
  if command -v psql >/dev/null 2>&1; then
    PGPASSWORD="$DB_PASSWORD" PGCONNECT_TIMEOUT=5 psql -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" \
      -d "$DB_NAME" -Atqc 'select 1' >/dev/null 2>&1 ||
      die "cannot log in to PostgreSQL database '$DB_NAME' on $DB_HOST:$DB_PORT as $DB_USER (does the database exist?)"
  fi
}

cmd_start() {
  if pid_alive "$PIDFILE"; then
    if healthy; then say "already running (pid $(cat "$PIDFILE"))"; return 0; fi
    say "process $(cat "$PIDFILE") exists but is not healthy yet; waiting"
  else
    rm -f "$PIDFILE"
    port_open "$PORT" && die "port $PORT is already in use by another process"
    cmd_install
    local java
    java="$(find_java)" || die "Java 21+ not found (set REGISTRY_JAVA)"
    mkdir -p "$LOG_DIR" "$RUN_DIR/config" "$RUN_DIR/data"
    cp "$CONF" "$RUN_DIR/config/application.properties"
    local -a env=()
    case "$STORAGE" in
      postgresql)
        check_postgres
        env=(APICURIO_STORAGE_SQL_KIND=postgresql
             "APICURIO_DATASOURCE_URL=jdbc:postgresql://$DB_HOST:$DB_PORT/$DB_NAME")
        ;;
      h2)
        env=(APICURIO_STORAGE_SQL_KIND=h2
             "APICURIO_DATASOURCE_URL=jdbc:h2:file:$RUN_DIR/data/registry"
             APICURIO_DATASOURCE_USERNAME=sa APICURIO_DATASOURCE_PASSWORD=sa)
        ;;
      *) die "REGISTRY_STORAGE must be postgresql or h2, not '$STORAGE'" ;;
    esac
    say "starting Apicurio Registry $VERSION ($STORAGE storage) with $java"
    # keep one previous log once it grows past 20 MB (access log lines add up)
    if [[ -f "$LOG" ]] && (($(stat -c %s "$LOG") > 20 * 1024 * 1024)); then mv -f "$LOG" "$LOG.1"; fi
    printf '\n===== %s start (storage=%s) =====\n' "$(date -Is)" "$STORAGE" >>"$LOG"
    # Run from $RUN_DIR so Quarkus reads config/application.properties; own session so the
    # registry outlives this shell.
    (cd "$RUN_DIR" && exec env "${env[@]}" setsid "$java" "-Xmx$HEAP" -XX:+UseSerialGC \
        -Djava.util.logging.manager=org.jboss.logmanager.LogManager \
        -jar "$APP_DIR/quarkus-run.jar" </dev/null >>"$LOG" 2>&1) &
    echo $! >"$PIDFILE"
  fi
  local deadline=$((SECONDS + STACK_TIMEOUT)) t0=$SECONDS
  until healthy; do
    if ! pid_alive "$PIDFILE"; then
      say "registry process exited; last lines of $LOG:"
      tail -n 40 "$LOG" >&2 || true
      rm -f "$PIDFILE"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      say "not healthy after ${STACK_TIMEOUT}s; last lines of $LOG:"
      tail -n 40 "$LOG" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  say "up in $((SECONDS - t0))s: $URL"
}

cmd_stop() {
  if pid_alive "$PIDFILE"; then
    say "stopping (pid $(cat "$PIDFILE"))"
    stop_pidfile "$PIDFILE"
  else
    rm -f "$PIDFILE"
    say "not running"
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
