#!/usr/bin/env bash
# Builds tools/s3-client-compare (release, niced) and runs the measurement against the local MinIO
# under the shared benchmark lock. Extra arguments go to the binary (e.g. --quick, --rounds 3).
#   tools/s3-client-compare/run.sh                 # the measurement
#   tools/s3-client-compare/run.sh --show-requests # print the request each client sends (no MinIO)
#   tools/s3-client-compare/run.sh --build-cost [object-store|aws-sdk]...
#                                                  # time a cold release build of each client alone
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="$PWD/target"
ENDPOINT="${S3CMP_ENDPOINT:-http://127.0.0.1:9000}"

if [[ "${1:-}" == "--build-cost" ]]; then
    # Each client alone (tokio, futures, bytes, libc, serde_json are in both), from an empty target
    # directory, one after the other. -j is the machine's; the figure depends on its load.
    shift
    features=("$@")
    [[ ${#features[@]} -gt 0 ]] || features=(object-store aws-sdk)
    for feature in "${features[@]}"; do
        dir="$PWD/target/build-cost-$feature"
        rm -rf "$dir"
        start=$(date +%s.%N)
        CARGO_TARGET_DIR="$dir" nice -n 19 cargo build --release --locked --quiet \
            --no-default-features --features "$feature"
        end=$(date +%s.%N)
        count() {
            cargo tree --locked -e "$1" --no-default-features --features "$feature" --prefix none |
                sed 's/ (\*)//' | sort -u | wc -l
        }
        size=$(stat -c %s "$dir/release/s3-client-compare")
        printf '%-13s cold release build %6.1f s; crates (incl. this one): %d normal, %d normal+build; binary %d bytes\n' \
            "$feature" "$(echo "$end - $start" | bc)" "$(count normal)" "$(count normal,build)" "$size"
    done
    exit 0
fi

nice -n 19 cargo build --release --locked --quiet
BIN="$CARGO_TARGET_DIR/release/s3-client-compare"

if [[ "${1:-}" == "--show-requests" ]]; then
    exec "$BIN" --show-requests
fi

code=$(curl -s -o /dev/null -w '%{http_code}' "$ENDPOINT/minio/health/live" || true)
if [[ "$code" != 200 ]]; then
    echo "MinIO at $ENDPOINT is not up (health/live answered '$code'); not starting it" >&2
    exit 1
fi

# The MinIO server process, for its CPU time: the stack's pid file, else the one `minio server`.
pid=""
pidfile=../../.stack/minio/minio.pid
if [[ -f $pidfile ]] && grep -q minio "/proc/$(cat $pidfile)/cmdline" 2>/dev/null; then
    pid=$(cat $pidfile)
else
    pids=$(pgrep -f 'minio server' || true)
    [[ $(wc -w <<<"$pids") == 1 ]] && pid=$pids
fi
[[ -n $pid ]] || { echo "cannot find the MinIO server process" >&2; exit 1; }

mkdir -p results
json="results/s3-client-compare-$(date -u +%Y%m%dT%H%M%SZ).json"
echo "waiting for /tmp/imgstream-bench.lock (shared with the other benchmarks)..." >&2
# "$@" first: the binary takes the first occurrence of an option, so the caller's win.
exec flock /tmp/imgstream-bench.lock "$BIN" "$@" --endpoint "$ENDPOINT" --minio-pid "$pid" --json "$json"
