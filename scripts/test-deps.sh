#!/usr/bin/env bash
# What the tests use beyond the build: headless Chromium and its WebDriver for the browser tests
# of `imgstream serve` (tests/browser.rs), from Debian's packages.
SERVICE=test-deps
source "$(dirname "$0")/stack/common.sh"
apt_install chromium chromium-driver fonts-dejavu-core
