#!/usr/bin/env bash
# `make bench`: the end-to-end benchmark against the running local stack (not part of `make test`).
# Writes bench-results/bench-<time>.json and bench-results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export DATABASE_CONNECTION_STRING="${DATABASE_CONNECTION_STRING:-postgres://imgstream:imgstream@127.0.0.1:5432/imgstream_bench}"
# The sizes turn the guest's free page reporting off while they run and put it back when they
# end (src/bin/imgstream-bench/control.rs, KeptMemory); a bench stopped by a signal cannot, so
# the order it found is put back here too.
reporting=/sys/module/page_reporting/parameters/page_reporting_order
order_before="$(cat "$reporting" 2>/dev/null || true)"
restore_reporting() {
  if [[ -n "$order_before" && -w "$reporting" && "$(cat "$reporting")" != "$order_before" ]]; then
    echo "$order_before" > "$reporting" || true
  fi
}
trap restore_reporting EXIT
trap 'exit 130' INT TERM
target/release/imgstream-bench "$@"
