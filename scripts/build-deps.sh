#!/usr/bin/env bash
# Native build dependencies of the crate, from Debian's packages.
# librdkafka (built from source by rdkafka-sys) includes curl's headers even with curl disabled,
# and its CMake build needs a C toolchain; TLS and SASL SCRAM link the system's OpenSSL.
SERVICE=build-deps
source "$(dirname "$0")/stack/common.sh"
apt_install build-essential cmake pkg-config libcurl4-openssl-dev zlib1g-dev libssl-dev
