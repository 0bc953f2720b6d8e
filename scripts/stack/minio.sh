#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Local MinIO built from source (MinIO ships no community binaries/images any more).
# Usage: minio.sh install|start|start-tls|stop|stop-tls|status
# S3 API http://127.0.0.1:9000, console http://127.0.0.1:9001, credentials minioadmin/minioadmin.
# start-tls: a second, separate server over HTTPS at https://127.0.0.1:9010 (console :9011), its
# certificate signed by the stack's CA ($STACK_DIR/tls/ca.crt), same credentials: the secured
# stack's object store. (MinIO serves either HTTP or HTTPS on a port, so it cannot be the first.)
set -euo pipefail
SERVICE=minio
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RELEASE=RELEASE.2025-10-15T17-29-55Z
COMMIT=9e49d5e7a648f00e26f2246f4dc28e6b07f8c84a
MODULE=github.com/minio/minio
# The Go module name of that release's commit (MinIO tags are not semver).
MODVER=v0.0.0-20251015172955-9e49d5e7a648
# go.sum hashes of that module version (zip and go.mod), checked before building.
SUM=h1:6TdolSCLSs2nwm8i0PpWDqf9iX2Ty9WQK8wmr7dCnUM=
GOMODSUM=h1:yCWDkwWO9IWpGsT4mreDDN/B/QVmK2zC666uInRAcqE=

BIN="$CACHE_DIR/bin/minio"
STAMP="$CACHE_DIR/bin/minio.version"
LOCALPROXY="$CACHE_DIR/goproxy"
UPSTREAM="https://proxy.golang.org"

use_instance() { # plain | tls
  if [[ "$1" == tls ]]; then
    DIR="$STACK_DIR/minio-tls" API=127.0.0.1:9010 CONSOLE=127.0.0.1:9011 SCHEME=https NAME=minio-tls
  else
    DIR="$STACK_DIR/minio" API=127.0.0.1:9000 CONSOLE=127.0.0.1:9001 SCHEME=http NAME=minio
  fi
  LOG="$DIR/minio.log" PIDFILE="$DIR/minio.pid"
}
use_instance plain

healthy() { curl -fsS -o /dev/null --max-time 2 --cacert "$TLS_DIR/ca.crt" "$SCHEME://$API/minio/health/live"; }

gobin() { command -v go || { [[ -x /usr/local/go/bin/go ]] && echo /usr/local/go/bin/go; } || true; }

# proxy.golang.org serves this version's .zip and .mod but refuses its .info (HTTP 403),
# and cannot resolve the RELEASE tag, so `go install ...@RELEASE...` fails. We mirror the
# module into a file:// proxy (writing .info ourselves) and put it in front of the real one.
mirror_module() {
  local d="$LOCALPROXY/$MODULE/@v" ext
  [[ -f "$d/$MODVER.zip" ]] && return 0
  mkdir -p "$d"
  for ext in mod zip; do
    curl -fsSL --retry 3 -o "$d/$MODVER.$ext.tmp" "$UPSTREAM/$MODULE/@v/$MODVER.$ext" \
      || die "could not download $MODULE@$MODVER.$ext from $UPSTREAM"
  done
  printf '{"Version":"%s","Time":"2025-10-15T17:29:55Z"}\n' "$MODVER" >"$d/$MODVER.info"
  echo "$MODVER" >"$d/list"
  mv "$d/$MODVER.mod.tmp" "$d/$MODVER.mod" && mv "$d/$MODVER.zip.tmp" "$d/$MODVER.zip"
}

install() {
  [[ -x "$BIN" && "$(cat "$STAMP" 2>/dev/null)" == "$RELEASE" ]] && return 0
  apt_install curl ca-certificates
  local go
  go="$(gobin)"
  [[ -n "$go" ]] || die "Go is not installed; MinIO $RELEASE needs Go >= 1.24 (Debian's golang package is too old; install from go.dev)"
  say "building MinIO $RELEASE from source with $("$go" version | awk '{print $3}') into $BIN (takes several minutes)"
  mirror_module
  # sum.golang.org is unreachable here and has no entry for this version via the proxy,
  # so checksum-db lookups are skipped for this one module and the pinned hashes checked instead.
  export GOTOOLCHAIN=local GOPROXY="file://$LOCALPROXY,$UPSTREAM" GONOSUMDB="$MODULE" GOBIN="$CACHE_DIR/bin"
  local got
  got="$("$go" mod download -json "$MODULE@$MODVER")" || die "go mod download of $MODULE@$MODVER failed"
  if ! grep -q "\"Sum\": \"$SUM\"" <<<"$got" || ! grep -q "\"GoModSum\": \"$GOMODSUM\"" <<<"$got"; then
    die "checksum mismatch for $MODULE@$MODVER (expected $SUM / $GOMODSUM): $got"
  fi
  local t0=$SECONDS x=github.com/minio/minio/cmd
  # Same version stamping as MinIO's buildscripts/gen-ldflags.go, so `minio --version` shows the release.
  "$go" install -trimpath -ldflags "-s -w -X $x.Version=2025-10-15T17:29:55Z -X $x.ReleaseTag=$RELEASE \
    -X $x.CommitID=$COMMIT -X $x.ShortCommitID=${COMMIT:0:12} -X $x.CopyrightYear=2025" \
    "$MODULE@$MODVER" || die "go install of MinIO $RELEASE failed (see output above)"
  echo "$RELEASE" >"$STAMP"
  say "built $BIN in $((SECONDS - t0))s"
}

start() {
  install
  if pid_alive "$PIDFILE" && healthy; then say "already running at $SCHEME://$API"; return 0; fi
  if ! pid_alive "$PIDFILE"; then
    local port
    for port in "${API##*:}" "${CONSOLE##*:}"; do
      port_open "$port" && die "port $port is already in use by another process (not our MinIO): $(ss -ltnpH "sport = :$port" | head -1)"
    done
    mkdir -p "$DIR/data"
    local certs=()
    if [[ "$SCHEME" == https ]]; then
      issue_cert minio
      mkdir -p "$DIR/certs/CAs"
      cp "$TLS_DIR/minio.crt" "$DIR/certs/public.crt" && cp "$TLS_DIR/minio.key" "$DIR/certs/private.key"
      cp "$TLS_DIR/ca.crt" "$DIR/certs/CAs/ca.crt"
      certs=(--certs-dir "$DIR/certs")
    fi
    [[ -f "$LOG" ]] && mv "$LOG" "$LOG.prev"
    say "starting MinIO $RELEASE (API $SCHEME://$API, console $SCHEME://$CONSOLE); log: $LOG"
    # Deleted objects go to the drive's .minio.sys/tmp/.trash, which MinIO empties every five
    # minutes by default: the gigabytes a benchmark step deleted were then removed in the middle
    # of a later measurement (33 GB were waiting once). Every ten seconds, they go while the
    # benchmark waits for them (imgstream-bench's settle_disk).
    # setsid: detach from our process group so Ctrl-C in the calling shell doesn't kill it.
    # shellcheck disable=SC2016 # $$ and $@ expand in the child shell
    MINIO_ROOT_USER=minioadmin MINIO_ROOT_PASSWORD=minioadmin MINIO_UPDATE=off \
      MINIO_API_DELETE_CLEANUP_INTERVAL=10s \
      setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
      "$BIN" server "${certs[@]}" --address "$API" --console-address "$CONSOLE" "$DIR/data" >"$LOG" 2>&1 </dev/null &
  fi
  wait_until "$STACK_TIMEOUT" "$LOG" healthy || die "MinIO did not become healthy within ${STACK_TIMEOUT}s"
  say "up: $SCHEME://$API (minioadmin/minioadmin)"
}

stop() {
  pid_alive "$PIDFILE" || { say "$NAME not running"; rm -f "$PIDFILE"; return 0; }
  say "stopping $NAME"
  stop_pidfile "$PIDFILE"
  say "stopped $NAME"
}

status() {
  if pid_alive "$PIDFILE" && healthy; then
    printf '%s  up  %s  %s://%s\n' "$NAME" "$RELEASE" "$SCHEME" "$API"
  else
    printf '%s  down  %s  %s://%s\n' "$NAME" "$RELEASE" "$SCHEME" "$API"
    return 1
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  start-tls) use_instance tls; start ;;
  # The plain server only (tests stop it for outages); stop-tls for the HTTPS one.
  stop) stop ;;
  stop-tls) use_instance tls; stop ;;
  # The HTTPS server reports only when it runs (it is not part of the plain stack).
  status) rc=0; status || rc=1; use_instance tls; if pid_alive "$PIDFILE"; then status || rc=1; fi; exit "$rc" ;;
  *) die "usage: minio.sh install|start|start-tls|stop|stop-tls|status" ;;
esac
