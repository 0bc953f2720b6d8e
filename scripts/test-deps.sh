#!/usr/bin/env bash
# What the tests use beyond the build:
# - headless Chromium and its WebDriver for the browser tests of `imgstream serve`
#   (tests/browser.rs), from Debian's packages;
# - MinIO's client `mc`, built with `go install`, to create the least-privilege S3 user and policy
#   the tests run the consumer with (tests/least_privilege.rs);
# - Toxiproxy's server, built with `go install`, the TCP proxy the network-fault tests put between
#   imgstream and each service (tests/network.rs).
SERVICE=test-deps
source "$(dirname "$0")/stack/common.sh"
apt_install chromium chromium-driver fonts-dejavu-core

# go_tool NAME MODULE VERSION: $CACHE_DIR/bin/NAME built once with `go install MODULE@VERSION`.
go_tool() {
  local name="$1" module="$2" version="$3" bin="$CACHE_DIR/bin/$1" go t0
  [[ -x "$bin" && "$(cat "$bin.version" 2>/dev/null)" == "$version" ]] && return 0
  go="$(command -v go || echo /usr/local/go/bin/go)"
  [[ -x "$go" ]] || die "Go is not installed; building $name needs it"
  say "building $name ($module@$version) with go install into $bin (first run only)"
  t0=$SECONDS
  local gobin
  gobin="$(mktemp -d)"
  GOTOOLCHAIN=local GOBIN="$gobin" "$go" install "$module@$version" \
    || die "go install of $module@$version failed (see output above)"
  mkdir -p "$CACHE_DIR/bin"
  mv "$gobin/$(basename "$module")" "$bin" && rmdir "$gobin"
  echo "$version" >"$bin.version"
  say "built $bin in $((SECONDS - t0))s"
}

go_tool mc github.com/minio/mc v0.0.0-20250313080218-cf909e1063a9
go_tool toxiproxy github.com/Shopify/toxiproxy/v2/cmd/server v2.12.0

# A foreign Kafka client, the one most producers in the field use: confluent-kafka-python with its
# bundled librdkafka (every codec) and its Avro serializer, in a virtualenv of its own. 2.11.1, not
# newer: 2.16's deserializer calls a registry API that Apicurio lacks. tests/foreign.rs runs it.
FOREIGN_VENV="$CACHE_DIR/venv-confluent-kafka-2.11.1"
if [[ ! -x "$FOREIGN_VENV/bin/python" ]] || ! "$FOREIGN_VENV/bin/python" -c 'import confluent_kafka, fastavro' 2>/dev/null; then
  say "installing confluent-kafka 2.11.1 into $FOREIGN_VENV (first run only)"
  python3 -m venv "$FOREIGN_VENV" || die "python3 -m venv failed; install python3-venv"
  "$FOREIGN_VENV/bin/pip" install --quiet "confluent-kafka[avro,schemaregistry]==2.11.1" \
    || die "pip install of confluent-kafka 2.11.1 failed (see output above)"
fi
