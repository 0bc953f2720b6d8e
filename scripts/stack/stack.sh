#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The whole local stack: postgres, minio, kafka, registry (registry uses postgres).
# Usage: stack.sh up [--secured]|down|status
#   up      start each service in order; stops at the first failure, naming it (exit 1)
#           --secured: also the HTTPS MinIO (minio.sh start-tls) and Keycloak (keycloak.sh, the
#           OpenID Connect provider serve's sign-in is tested against; it starts first, in the
#           background, and is waited for last, so its JVM start overlaps the others). TLS to
#           PostgreSQL and Kafka's SASL_SSL listener are always there; the demo uses the plain side.
#   down    stop in reverse order (keeps going if one fails, exit 1 if any did)
#   status  one line per service; exit 1 if any is down
set -euo pipefail
SERVICE=stack
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HERE="$REPO_ROOT/scripts/stack"
SERVICES=(postgres minio kafka)
# registry.sh is maintained separately; include it only once it exists.
[[ -f "$HERE/registry.sh" ]] && SERVICES+=(registry)

case "${1:-}" in
  up)
    if [[ "${2:-}" == --secured ]]; then
      bash "$HERE/keycloak.sh" install || die "installing Keycloak failed (see above)"
      KEYCLOAK_NO_WAIT=1 bash "$HERE/keycloak.sh" start || die "Keycloak failed to start (see above)"
    fi
    for s in "${SERVICES[@]}"; do
      bash "$HERE/$s.sh" start || die "$s failed to start (see above); services before it are still running"
    done
    if [[ "${2:-}" == --secured ]]; then
      bash "$HERE/minio.sh" start-tls || die "the HTTPS MinIO failed to start (see above)"
      bash "$HERE/keycloak.sh" wait || die "Keycloak failed to start (see above)"
    fi
    for s in "${SERVICES[@]}"; do bash "$HERE/$s.sh" status || true; done
    # An `if`, not `[[ ]] &&`: as the branch's last command a false test made `up` exit 1.
    if [[ "${2:-}" == --secured ]]; then bash "$HERE/keycloak.sh" status || true; fi
    ;;
  down)
    rc=0
    # The gallery `make demo` leaves running reads from these services: it goes first.
    stop_pidfile "$STACK_DIR/serve.pid"
    bash "$HERE/keycloak.sh" stop || { say "stopping Keycloak failed"; rc=1; }
    bash "$HERE/minio.sh" stop-tls || { say "stopping the HTTPS MinIO failed"; rc=1; }
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
      bash "$HERE/${SERVICES[i]}.sh" stop || { say "stopping ${SERVICES[i]} failed"; rc=1; }
    done
    exit "$rc"
    ;;
  status)
    rc=0
    for s in "${SERVICES[@]}"; do bash "$HERE/$s.sh" status || rc=1; done
    # Keycloak belongs to the secured stack only: it counts once it has been started.
    if [[ -f "$STACK_DIR/keycloak/keycloak.pid" ]]; then bash "$HERE/keycloak.sh" status || rc=1; fi
    exit "$rc"
    ;;
  *) die "usage: stack.sh up [--secured]|down|status" ;;
esac
