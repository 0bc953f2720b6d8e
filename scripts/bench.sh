#!/usr/bin/env bash
# `make bench`: the end-to-end benchmark against the running local stack (not part of `make test`).
# Writes bench-results/bench-<time>.json and bench-results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export DATABASE_CONNECTION_STRING="${DATABASE_CONNECTION_STRING:-postgres://imgstream:imgstream@127.0.0.1:5432/imgstream_bench}"
exec target/release/imgstream-bench "$@"
