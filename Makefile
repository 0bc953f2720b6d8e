# imgstream — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
STACK := scripts/stack/stack.sh
DEMO_COUNT ?= 1000
export PATH := $(HOME)/.cargo/bin:$(PATH)

FUZZ_CASES ?= 200000

.PHONY: fuzz soak demo demo-build test stack-up stack-up-secured stack-down stack-status deps build release fmt lint unit bench bench-browse clean-stack check-deploy

# The stack first, then the build: on 2 cores, starting the stack (a Go build of MinIO) while
# imgstream builds made a cold demo slower (713 s against 569 s), as both are CPU-bound.
demo: stack-up demo-build
	scripts/demo.sh $(DEMO_COUNT)

# The demo's binary: the `demo` profile (Cargo.toml) builds in about three quarters of the time
# `release` takes, which is most of a first run's wait.
demo-build: deps
	cargo build --profile demo --locked --bin imgstream

# The tests also need the secured side of the stack (HTTPS MinIO; TLS and SASL_SSL are always on).
test: stack-up-secured
	scripts/test.sh

stack-up:
	$(STACK) up

stack-up-secured:
	$(STACK) up --secured

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

# Native build dependencies (librdkafka needs curl's headers and cmake), from Debian's packages.
deps:
	scripts/build-deps.sh

build: deps
	cargo build --locked

release: deps
	cargo build --release --locked --bin imgstream

fmt:
	cargo fmt --all

lint: deps
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

# Unit and protocol tests: no service needed, seconds once built.
unit: deps
	cargo test --locked --lib --bins --test protocol --test fuzz

# The fuzz suite (tests/fuzz.rs) at length: bytes -> wire format -> Avro -> validation -> refusal ->
# dead letter, FUZZ_CASES cases per generator (a few minutes on 2 cores). `make test` runs 300.
fuzz: deps
	IMGSTREAM_FUZZ_CASES=$(FUZZ_CASES) cargo test --release --locked --test fuzz

bench: stack-up deps
	cargo build --release --locked --bins
	scripts/bench.sh

# Thirty minutes at half the PUT ceiling with consumers killed, joining and leaving, and a MinIO
# and a PostgreSQL outage; exact counts and the steady consumer's RSS over time (not in `make test`).
# SOAK_MINUTES=5 for a shorter run.
SOAK_MINUTES ?= 30
soak: stack-up deps
	cargo build --release --locked --bins
	scripts/bench.sh --soak --minutes $(SOAK_MINUTES)

# `imgstream serve` on an index of 1,000,000 rows: API and gallery p50/p99, cold thumbnails, and
# sign-in on against off (Keycloak, hence the secured stack).
bench-browse: stack-up-secured deps
	cargo build --release --locked --bins
	scripts/bench.sh --browse

# Deployment files (deploy/): compose-go, helm lint + kubeconform, hadolint, and a self-test that
# breaks each on purpose. No container engine needed; tools are cached in ~/.cache/imgstream/tools.
check-deploy:
	scripts/check-deploy.sh

clean-stack: stack-down
	rm -rf .stack
