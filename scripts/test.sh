#!/usr/bin/env bash
# `make test`: unit and protocol tests (no services), then integration tests against the running
# local stack, then the fault tests (which stop and start services, so they run alone, one at a
# time): services stopped and frozen, network faults through Toxiproxy, and a three-broker Kafka
# cluster (started by its test beside the stack's broker, stopped here afterwards) losing brokers.
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
echo "== integration tests"
cargo test --locked --test setup --test produce --test consume --test group_protocol --test dlq --test foreign --test large --test serve --test browser --test least_privilege --test secured --test operate -- --test-threads=2
echo "== fault tests"
# The fault tests' own brokers: the three-node cluster and the broker behind Toxiproxy.
stop_test_brokers() {
  KAFKA_BROKERS=3 KAFKA_PORT_BASE=19090 scripts/stack/kafka.sh stop || true
  KAFKA_PORT_BASE=29090 scripts/stack/kafka.sh stop || true
}
trap stop_test_brokers EXIT
cargo test --locked --test faults --test storage --test network --test cluster -- --test-threads=1
