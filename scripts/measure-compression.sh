#!/usr/bin/env bash
# Measures producer compression on generated images: bytes on the broker's disk and produce rate,
# for each codec librdkafka offers here. Usage: scripts/measure-compression.sh [count]
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-300}"
bin=target/release/imgstream
data_dirs=(.stack/kafka/cluster-1/node1/data)
run="$(date +%s)"
printf '%-8s %12s %10s %10s\n' codec "disk bytes" "vs none" "images/s"
base=""
for codec in none lz4 snappy gzip; do
  topic="compress-$codec-$run"
  export KAFKA_DATA_TOPIC="$topic" MINIO_BUCKET_NAME="$topic" KAFKA_COMPRESSION_TYPE="$codec"
  "$bin" setup >/dev/null
  rate=$("$bin" produce --count "$count" --seed 11 --json 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["images_per_sec"]))')
  sleep 1
  bytes=$(du -sb "${data_dirs[0]}/$topic"-* | awk '{s+=$1} END {print s}')
  base="${base:-$bytes}"
  printf '%-8s %12d %10s %10s\n' "$codec" "$bytes" "$(python3 -c "print(f'{$bytes/$base:.3f}')")" "$rate"
done
