#!/usr/bin/env bash
# Turns the local broker's request log (kafka.request.logger: every request with its queue,
# local, remote and send times) on or off at runtime, without a restart (KIP-412 broker loggers).
# `BENCH_BROKER_REQUEST_LOG=1 make bench` has the bench turn it on for each latency window only,
# so the broker's own timings can be read beside the clients' (.stack/kafka/cluster-1/*/kafka.log).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/stack/common.sh
case "${1:-}" in
  on) level=DEBUG ;;
  off) level=WARN ;;
  *) echo "usage: $0 on|off" >&2; exit 2 ;;
esac
libs="$(ls -dt "$CACHE_DIR"/kafka/*/ 2>/dev/null | head -n1)"
[[ -n "$libs" ]] || { echo "broker-request-log: no Kafka jars under $CACHE_DIR/kafka; run make stack-up first" >&2; exit 1; }
java -Xmx256m -cp "$libs*" -Dlog4j2.configurationFile="$PWD/stack/kafka/log4j2.properties" \
  -Dkafka.log.target=SYSTEM_ERR -Dkafka.root.level=WARN kafka.admin.ConfigCommand \
  --bootstrap-server "${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}" --alter --entity-type broker-loggers \
  --entity-name 1 --add-config "kafka.request.logger=$level" >/dev/null
