#!/usr/bin/env bash
# The main job end to end on the local stack: setup → produce N → consume until all are stored →
# a summary counted from the services themselves (not from the producer's tally).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-1000}"
bin=target/demo/imgstream
out=.stack/demo
mkdir -p "$out"
[[ -f .env ]] && echo "using settings from .env"

echo "== imgstream setup"
"$bin" setup

# Records left by an interrupted earlier demo are stored first, so this run's counts are its own.
"$bin" consume --until-idle 2 --json > "$out/leftover.json"
"$bin" status --json > "$out/before.json"

echo "== produce $count images"
start=$(date +%s.%N)
# Keyed by image, so the demo's images spread evenly over every partition (1,000 images over 6:
# 154/173/188/175/152/158). Keyed by source, 16 sources hash unevenly (257/65/63/170/239/206).
"$bin" produce --count "$count" --key image --json > "$out/produce.json"
echo "== consume until every image is stored"
"$bin" consume --until-idle 5 --json > "$out/consume.json"
end=$(date +%s.%N)
"$bin" status --json > "$out/after.json"

python3 - "$count" "$start" "$end" "$out" <<'PY'
import json, sys
count, start, end, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
load = lambda name: json.load(open(f"{out}/{name}.json"))
p, c, before, after = load("produce"), load("consume"), load("before"), load("after")
objects = after["bucket_objects"] - before["bucket_objects"]
rows = after["index_rows"] - before["index_rows"]
letters = after["dlq_depth"] - before["dlq_depth"]
print()
print("== imgstream demo summary (objects, rows and lag counted from the services)")
print(f"  produced (delivery reports)   {p['delivered']} images, {p['bytes_delivered'] / 1e6:.1f} MB, {p['images_per_sec']:.0f} images/s")
print(f"  new objects in bucket         {objects}   (bucket total {after['bucket_objects']})")
print(f"  new rows in index             {rows}   (table total {after['index_rows']})")
print(f"  new dead letters              {letters}")
print(f"  consumer lag                  {after['total_lag']}")
print(f"  consume rate                  {c['busy_images_per_sec']:.0f} images/s, {c['busy_mb_per_sec']:.1f} MB/s while busy "
      f"({c['stored']} stored in {c['busy_secs']:.1f}s)")
print(f"  elapsed (produce + consume)   {end - start:.1f}s, including the consumer's 5s idle check")
print()
print("  MinIO console   http://127.0.0.1:9001  (minioadmin / minioadmin)")
print("  PostgreSQL      psql postgres://imgstream:imgstream@127.0.0.1:5432/imgstream -c 'select count(*) from images'")
ok = objects == count and rows == count and letters == 0 and after["total_lag"] == 0
if not ok:
    print(f"\nDEMO FAILED: expected {count} new objects and rows, no dead letters and no lag", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
"$bin" verify --sample 50 | tail -n 1

# The gallery stays up after the demo so the stored images can be looked at; `make stack-down`
# stops it with the rest of the stack.
addr="${IMGSTREAM_SERVE_ADDR:-127.0.0.1:8080}"
pidfile=.stack/serve.pid
if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  kill "$(cat "$pidfile")" && sleep 1
fi
nohup "$bin" serve --addr "$addr" > .stack/serve.log 2>&1 &
echo $! > "$pidfile"
for _ in $(seq 1 60); do
  curl -fsS -o /dev/null "http://$addr/readyz" 2>/dev/null && break
  sleep 0.25
done
if ! curl -fsS -o /dev/null "http://$addr/readyz" 2>/dev/null; then
  tail -n 5 .stack/serve.log >&2
  echo "the gallery did not start (log: .stack/serve.log)" >&2
  exit 1
fi
echo
echo "  Gallery         http://$addr/   (pipeline http://$addr/pipeline, API http://$addr/api/images)"
echo "                  runs in the background (log .stack/serve.log); make stack-down stops it"
