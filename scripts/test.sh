#!/usr/bin/env bash
# `make test`: unit and protocol tests (no services), then the service outages (which stop the
# stack's own services, so they run alone, one at a time), then every other test in two lanes at
# once: the integration tests, and the faults that bring their own services (network faults through
# Toxiproxy, MinIO drives of their own, a three-broker cluster) with the archive's lifetime and the
# consumers killed, which balance the lanes.
# Most of a fault test's time is spent waiting out its fault, so two lanes on two cores cost little
# more than the longer of them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-deps.sh
scripts/test-deps.sh

# Integration tests create one database per test from this connection; the harness refuses any
# database whose name does not say "test".
export DATABASE_CONNECTION_STRING="${IMGSTREAM_TEST_DATABASE_URL:-postgres://imgstream:imgstream@127.0.0.1:5432/imgstream_test}"
export RUST_BACKTRACE=0

echo "== unit, protocol and fuzz tests (no services; a short fuzz run, \`make fuzz\` for a long one)"
cargo test --locked --lib --bins --test protocol --test fuzz

INTEGRATION=(setup produce consume group_protocol dlq foreign large serve signin browser least_privilege operate)
# `secured` talks to the shared stack like the integration tests; it runs in the second lane only
# to even the lanes out (806 s against 609 s in the last run with it in the first).
OWN_SERVICES=(network storage lifetime kills secured cluster)
ALONE=(faults)

# The test binaries, built once; the lanes run them directly, as two `cargo test` at once would
# wait for each other on the build directory's lock.
declare -A BINARY
targets=()
for t in "${INTEGRATION[@]}" "${OWN_SERVICES[@]}" "${ALONE[@]}"; do targets+=(--test "$t"); done
while IFS=$'\t' read -r name path; do BINARY[$name]=$path; done < <(
  cargo test --locked --no-run --message-format=json-render-diagnostics "${targets[@]}" |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"], sep="\t")')

# run_binaries THREADS NAME...: each binary in turn with its wall time (the figure to watch when
# the suite grows); all of them run, and the lane fails if any failed.
run_binaries() {
  local threads="$1" name t0 failed=()
  shift
  for name in "$@"; do
    echo "-- $name"
    t0=$SECONDS
    if [[ -z "${BINARY[$name]:-}" ]]; then
      echo "-- no test binary named $name was built"
      failed+=("$name")
    elif "${BINARY[$name]}" --test-threads="$threads"; then
      echo "-- $name passed in $((SECONDS - t0))s"
    else
      echo "-- $name FAILED after $((SECONDS - t0))s"
      failed+=("$name")
    fi
  done
  ((${#failed[@]} == 0)) || { echo "-- failed: ${failed[*]}"; return 1; }
}

# The fault tests' own brokers: the three-node cluster and the broker behind Toxiproxy.
stop_test_brokers() {
  KAFKA_BROKERS=3 KAFKA_PORT_BASE=19090 scripts/stack/kafka.sh stop || true
  KAFKA_PORT_BASE=29090 scripts/stack/kafka.sh stop || true
}
trap stop_test_brokers EXIT

echo "== service outages (alone)"
run_binaries 1 "${ALONE[@]}"

echo "== integration tests, and beside them the faults that bring their own services"
logs="$(mktemp -d)"
run_binaries 2 "${INTEGRATION[@]}" >"$logs/integration" 2>&1 &
integration=$!
# Network faults and drives of their own run side by side inside their binaries (each test has
# its own proxy, broker or MinIO); the cluster's brokers are heavy, so it runs on its own.
{
  lane=0
  run_binaries 3 network || lane=1
  run_binaries 2 storage lifetime kills secured || lane=1
  run_binaries 1 cluster || lane=1
  exit "$lane"
} >"$logs/own-services" 2>&1 &
own_services=$!
status=0
wait "$integration" || status=1
echo "== lane: integration tests"
cat "$logs/integration"
wait "$own_services" || status=1
echo "== lane: faults with their own services, the archive's lifetime, consumers killed, the secured stack"
cat "$logs/own-services"
rm -rf "$logs"
exit "$status"
