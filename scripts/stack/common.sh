# Shared helpers for the local stack scripts. Sourced, not executed.
# Layout:
#   $STACK_DIR/<service>/{data,log}  runtime state, git-ignored (repo/.stack)
#   $CACHE_DIR                       downloads and builds, outside git, survives re-clones
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STACK_DIR="${IMGSTREAM_STACK_DIR:-$REPO_ROOT/.stack}"
CACHE_DIR="${IMGSTREAM_CACHE_DIR:-$HOME/.cache/imgstream}"
STACK_TIMEOUT="${STACK_TIMEOUT:-180}"
mkdir -p "$STACK_DIR" "$CACHE_DIR"

say() { printf '[%s] %s\n' "${SERVICE:-stack}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${SERVICE:-stack}" "$*" >&2; exit 1; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive PIDFILE: true when the pid in PIDFILE is a running process.
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_until TIMEOUT LOGFILE CMD...: polls CMD until it succeeds; on timeout prints the log tail and fails.
wait_until() {
  local timeout="$1" log="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      say "not healthy after ${timeout}s; last lines of $log:"
      tail -n 30 "$log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.5
  done
}

# stop_pidfile PIDFILE: TERM, wait up to 30 s, then KILL.
stop_pidfile() {
  local pidfile="$1" pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# apt_install PKG...: installs Debian packages that are missing (apt-get update once per run).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]} == 0)) && return 0
  say "installing Debian packages: ${missing[*]}"
  if [[ ! -f "$CACHE_DIR/.apt-updated" ]] || [[ -n "$(find "$CACHE_DIR/.apt-updated" -mmin +720)" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && touch "$CACHE_DIR/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The stack's own certificate authority, made once per stack directory: every TLS listener of the
# stack (PostgreSQL, Kafka's SASL_SSL listener, the HTTPS MinIO) has a certificate it signed, so
# one file, $TLS_DIR/ca.crt, is what clients trust.
TLS_DIR="$STACK_DIR/tls"

ensure_ca() {
  [[ -f "$TLS_DIR/ca.crt" && -f "$TLS_DIR/ca.key" ]] && return 0
  command -v openssl >/dev/null || apt_install openssl
  say "making the stack's certificate authority in $TLS_DIR"
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=imgstream local CA" \
    -keyout "$TLS_DIR/ca.key.tmp" -out "$TLS_DIR/ca.crt.tmp" 2>/dev/null || die "making the CA failed"
  chmod 600 "$TLS_DIR/ca.key.tmp"
  mv "$TLS_DIR/ca.key.tmp" "$TLS_DIR/ca.key" && mv "$TLS_DIR/ca.crt.tmp" "$TLS_DIR/ca.crt"
}

# issue_cert NAME: $TLS_DIR/NAME.{crt,key}, a server certificate for 127.0.0.1 signed by the
# stack's CA. Only the IP is in it (not "localhost"), so a client that connects by another name
# sees a real hostname mismatch; the tests rely on that.
issue_cert() {
  local name="$1"
  ensure_ca
  if [[ -f "$TLS_DIR/$name.crt" ]] && openssl verify -CAfile "$TLS_DIR/ca.crt" "$TLS_DIR/$name.crt" >/dev/null 2>&1; then
    return 0
  fi
  say "issuing a certificate for $name (IP 127.0.0.1)"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$TLS_DIR/$name.key" -out "$TLS_DIR/$name.csr" 2>/dev/null || die "making the $name key failed"
  printf 'subjectAltName=IP:127.0.0.1\n' >"$TLS_DIR/$name.ext"
  openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days 3650 -extfile "$TLS_DIR/$name.ext" -out "$TLS_DIR/$name.crt" 2>/dev/null \
    || die "signing the $name certificate failed"
  chmod 600 "$TLS_DIR/$name.key"
}
