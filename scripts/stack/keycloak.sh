#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Keycloak for the secured stack: the OpenID Connect provider `imgstream serve` signs people and
# machines in with. http://127.0.0.1:8180, realm "imgstream" imported from
# stack/keycloak/imgstream-realm.json on every start (test users, the clients, the claim mappers).
#
#   scripts/stack/keycloak.sh install|start|stop|status
#
# install  fetches org.keycloak:keycloak-quarkus-dist (tar.gz) from Maven Central with
#          `mvn dependency:copy`, unpacks it into $CACHE_DIR/keycloak-<version>/ and runs
#          `kc.sh build` once, so every start is an optimized start (no augmentation at start-up).
#          No-op when already installed.
# start    install, then run it in the background (pid/log under .stack/keycloak) and wait until
#          the realm's discovery document answers. The database is in memory (dev-mem): each start
#          is the realm file exactly, nothing left from earlier runs.
# stop     stop it.
# status   one line; exit 0 when up, 1 when down.
#
# Environment:
#   STACK_TIMEOUT     seconds to wait for health (default 180)
#   KEYCLOAK_JAVA     java binary (Java 17 or 21; default: the first found in /usr/lib/jvm)
#   KEYCLOAK_HEAP     JVM max heap (default 512m)
#   KEYCLOAK_NO_WAIT  1: start and return without waiting (stack.sh waits later, in parallel)
# Users (password grant / login page): viewer-a, viewer-ab, admin, nobody; password <name>-password.
# Clients: imgstream-serve (browser sign-in, secret imgstream-serve-local-secret),
#          imgstream-machine (client credentials, secret imgstream-machine-local-secret).
# The master realm's bootstrap admin is admin/admin (the tests rotate the realm's keys with it).
# shellcheck disable=SC2034 # SERVICE is read by say/die in common.sh
SERVICE=keycloak
# shellcheck source=scripts/stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VERSION=26.4.7
APP_DIR="$CACHE_DIR/keycloak-$VERSION"
STAMP="$APP_DIR/.installed"
REALM_FILE="$REPO_ROOT/stack/keycloak/imgstream-realm.json"
RUN_DIR="$STACK_DIR/keycloak"
LOG="$RUN_DIR/keycloak.log"
PIDFILE="$RUN_DIR/keycloak.pid"
PORT=8180
ISSUER="http://127.0.0.1:$PORT/realms/imgstream"
HEAP="${KEYCLOAK_HEAP:-512m}"
# Build-time options: fixed in the optimized server by `kc.sh build`. Changing them means a new
# install (the stamp records them).
BUILD_OPTS=(--db=dev-mem --health-enabled=false --metrics-enabled=false)

java_major() {
  "$1" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p' | head -n1
}

# find_java: a JDK Keycloak 26.4 supports (17 or 21).
find_java() {
  local c v
  for c in "${KEYCLOAK_JAVA:-}" /usr/lib/jvm/java-17-openjdk-amd64/bin/java /usr/lib/jvm/*/bin/java \
      "$(command -v java || true)"; do
    [[ -n "$c" && -x "$c" ]] || continue
    v="$(java_major "$c")"
    [[ "$v" == 17 || "$v" == 21 ]] && { echo "$c"; return 0; }
  done
  return 1
}

installed() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$VERSION ${BUILD_OPTS[*]}" ]]; }

cmd_install() {
  installed && return 0
  command -v mvn >/dev/null 2>&1 || apt_install maven
  local java
  java="$(find_java)" || die "Keycloak $VERSION needs Java 17 or 21; none found (set KEYCLOAK_JAVA)"
  local t0=$SECONDS tmp="$APP_DIR.tmp.$$" artifact="org.keycloak:keycloak-quarkus-dist:$VERSION:tar.gz"
  say "installing Keycloak $VERSION from Maven Central into $APP_DIR"
  rm -rf "$tmp" && mkdir -p "$tmp"
  # dependency:copy resolves through ~/.m2 (and whatever settings.xml says) and puts the file here.
  if ! mvn -B -q dependency:copy -Dartifact="$artifact" -DoutputDirectory="$tmp" \
      >"$CACHE_DIR/keycloak-install.log" 2>&1; then
    tail -n 30 "$CACHE_DIR/keycloak-install.log" >&2
    rm -rf "$tmp"
    die "fetching $artifact failed (full log: $CACHE_DIR/keycloak-install.log)"
  fi
  local tarball="$tmp/keycloak-quarkus-dist-$VERSION.tar.gz"
  [[ -f "$tarball" ]] || { rm -rf "$tmp"; die "$tarball is missing after mvn dependency:copy"; }
  tar -xzf "$tarball" -C "$tmp" --strip-components=1 || { rm -rf "$tmp"; die "unpacking $tarball failed"; }
  rm -f "$tarball"
  # The optimized server: augmentation happens once here instead of at every start.
  if ! JAVA="$java" "$tmp/bin/kc.sh" build "${BUILD_OPTS[@]}" >>"$CACHE_DIR/keycloak-install.log" 2>&1; then
    tail -n 30 "$CACHE_DIR/keycloak-install.log" >&2
    rm -rf "$tmp"
    die "kc.sh build failed (full log: $CACHE_DIR/keycloak-install.log)"
  fi
  rm -rf "$APP_DIR" && mv "$tmp" "$APP_DIR"
  echo "$VERSION ${BUILD_OPTS[*]}" >"$STAMP"
  say "installed in $((SECONDS - t0))s"
}

healthy() { curl -fsS -m 5 "$ISSUER/.well-known/openid-configuration" >/dev/null 2>&1; }

cmd_status() {
  if pid_alive "$PIDFILE" && healthy; then
    printf 'keycloak  up  %s  %s\n' "$VERSION" "$ISSUER"
    return 0
  fi
  printf 'keycloak  down  %s  %s\n' "$VERSION" "$ISSUER"
  return 1
}

cmd_wait() {
  local deadline=$((SECONDS + STACK_TIMEOUT)) t0=$SECONDS
  until healthy; do
    if ! pid_alive "$PIDFILE"; then
      say "keycloak exited; last lines of $LOG:"
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
  say "up (waited $((SECONDS - t0))s): $ISSUER"
}

cmd_start() {
  if pid_alive "$PIDFILE"; then
    healthy && { say "already running (pid $(cat "$PIDFILE"))"; return 0; }
    say "process $(cat "$PIDFILE") exists but is not healthy yet; waiting"
  else
    rm -f "$PIDFILE"
    port_open "$PORT" && die "port $PORT is already in use by another process"
    cmd_install
    local java
    java="$(find_java)" || die "Java 17 or 21 not found (set KEYCLOAK_JAVA)"
    mkdir -p "$RUN_DIR" "$APP_DIR/data/import"
    # --import-realm reads $APP_DIR/data/import; the in-memory database makes it import every time.
    cp "$REALM_FILE" "$APP_DIR/data/import/imgstream-realm.json"
    if [[ -f "$LOG" ]] && (($(stat -c %s "$LOG") > 20 * 1024 * 1024)); then mv -f "$LOG" "$LOG.1"; fi
    printf '\n===== %s start =====\n' "$(date -Is)" >>"$LOG"
    say "starting Keycloak $VERSION with $java"
    # C1 only: a test stack's provider wants a quick start more than peak throughput.
    (exec env JAVA="$java" KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD=admin \
        JAVA_OPTS_KC_HEAP="-Xms64m -Xmx$HEAP" \
        JAVA_OPTS_APPEND="-XX:TieredStopAtLevel=1" \
        setsid "$APP_DIR/bin/kc.sh" start --optimized --http-enabled=true --http-host=127.0.0.1 \
        --http-port="$PORT" --hostname-strict=false --cache=local --import-realm \
        </dev/null >>"$LOG" 2>&1) &
    echo $! >"$PIDFILE"
  fi
  [[ "${KEYCLOAK_NO_WAIT:-}" == 1 ]] && return 0
  cmd_wait
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
  wait) cmd_wait ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 install|start|wait|stop|status" >&2; exit 2 ;;
esac
