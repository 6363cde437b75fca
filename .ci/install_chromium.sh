#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the FiftyOne App browser test
# (tests/test_app_browser.py). Idempotent: does nothing when a chromium binary exists.
# Chromium's own downloader cannot work here (registries only), so apt is the one way.
set -euo pipefail
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then
    echo "install_chromium: found $(command -v "$b")"; exit 0
  fi
done
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "install_chromium: installed $(chromium --version)"
