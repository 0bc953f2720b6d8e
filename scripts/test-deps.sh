#!/usr/bin/env bash
# What the tests use beyond the build:
# - headless Chromium and its WebDriver for the browser tests of `imgstream serve`
#   (tests/browser.rs), from Debian's packages;
# - MinIO's client `mc`, built with `go install`, to create the least-privilege S3 user and policy
#   the tests run the consumer with (tests/least_privilege.rs).
SERVICE=test-deps
source "$(dirname "$0")/stack/common.sh"
apt_install chromium chromium-driver fonts-dejavu-core

MC_VERSION=v0.0.0-20250313080218-cf909e1063a9
MC="$CACHE_DIR/bin/mc"
if [[ ! -x "$MC" || "$(cat "$MC.version" 2>/dev/null)" != "$MC_VERSION" ]]; then
  go="$(command -v go || echo /usr/local/go/bin/go)"
  [[ -x "$go" ]] || die "Go is not installed; building mc needs it"
  say "building MinIO's mc $MC_VERSION with go install into $MC (first run only)"
  t0=$SECONDS
  GOTOOLCHAIN=local GOBIN="$CACHE_DIR/bin" "$go" install "github.com/minio/mc@$MC_VERSION" \
    || die "go install of github.com/minio/mc@$MC_VERSION failed (see output above)"
  echo "$MC_VERSION" >"$MC.version"
  say "built $MC in $((SECONDS - t0))s"
fi
