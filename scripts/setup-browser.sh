#!/usr/bin/env bash
# Headless Chromium for the dashboard test (tests/test_dashboard.py opens the real MLflow UI).
# Used by `make test`; kept out of scripts/setup.sh so that `make demo` does not need a browser.
# As root on Debian/Ubuntu it installs the distribution's `chromium` package with apt-get;
# otherwise it says how, and the browser test is skipped (every other test still runs).
set -euo pipefail

for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null; then
    exit 0
  fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup-browser: installing chromium with apt-get (for the MLflow dashboard test)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  command -v chromium >/dev/null && exit 0
  echo "setup-browser: apt-get installed no chromium binary" >&2
  exit 1
fi
if [ -n "${CI:-}" ]; then
  echo "setup-browser: CI needs chromium for the dashboard test, and this user cannot install it" >&2
  exit 1
fi
cat >&2 <<'MSG'
setup-browser: no chromium on PATH; the MLflow dashboard browser test will be skipped.
Install one to run it:  sudo apt-get install chromium   (Debian)   |   sudo apt-get install chromium-browser (Ubuntu)
MSG
