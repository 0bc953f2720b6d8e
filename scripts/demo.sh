#!/usr/bin/env bash
# The main job end to end on the local stack: setup → produce N → consume until all are stored →
# a summary counted from the services themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-1000}"
bin=target/release/imgstream
[[ -f .env ]] && echo "using settings from .env"

echo "== imgstream setup"
"$bin" setup

# Counts before this run, so a second demo reports what it added.
rows_before=$("$bin" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["index_rows"])')

echo "== produce $count images"
start=$(date +%s.%N)
"$bin" produce --count "$count" --json > .stack/demo-produce.json
python3 -c 'import json; s=json.load(open(".stack/demo-produce.json")); print(f"produced {s[\"delivered\"]} images ({s[\"bytes_delivered\"]/1e6:.1f} MB) in {s[\"elapsed_secs\"]:.1f}s: {s[\"images_per_sec\"]:.0f} images/s")'

echo "== consume until every image is stored"
"$bin" consume --until-idle 5 --json > .stack/demo-consume.json
end=$(date +%s.%N)

"$bin" status --json > .stack/demo-status.json
python3 - "$count" "$rows_before" "$start" "$end" <<'PY'
import json, sys
count, rows_before, start, end = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
p = json.load(open(".stack/demo-produce.json"))
c = json.load(open(".stack/demo-consume.json"))
s = json.load(open(".stack/demo-status.json"))
print()
print("== imgstream demo summary (counted from the services)")
print(f"  produced (delivery reports)   {p['delivered']}")
print(f"  objects in bucket             {s['bucket_objects']}")
print(f"  rows in index                 {s['index_rows']}  (+{s['index_rows'] - rows_before} this run)")
print(f"  dead letters                  {s['dlq_depth']}")
print(f"  consumer lag                  {s['total_lag']}")
print(f"  bytes stored this run         {c['bytes']/1e6:.1f} MB")
print(f"  consume rate                  {c['images_per_sec']:.0f} images/s, {c['mb_per_sec']:.1f} MB/s (incl. {5}s idle wait)")
print(f"  elapsed (produce + consume)   {end - start:.1f}s")
print()
print("  MinIO console   http://127.0.0.1:9001  (minioadmin / minioadmin)")
print("  PostgreSQL      psql postgres://imgstream:imgstream@127.0.0.1:5432/imgstream -c 'select count(*) from images'")
ok = s["index_rows"] - rows_before == count and s["bucket_objects"] >= s["index_rows"] and s["total_lag"] == 0
sys.exit(0 if ok else 1)
PY
"$bin" verify --sample 50 | tail -n 1
