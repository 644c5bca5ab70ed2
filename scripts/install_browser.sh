#!/usr/bin/env bash
# Installs what the browser tests (tests/test_browser.py) need: Debian's chromium and the Python
# `playwright` package. Playwright's own browser downloads are NOT used (they need the internet);
# the tests launch the system chromium at /usr/bin/chromium.
#   bash scripts/install_browser.sh                 # as root (or with sudo available)
#   PIP_CONSTRAINT=/tmp/torchpin.txt bash scripts/install_browser.sh   # extra pip constraints
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi
PIP="python3 -m pip install --disable-pip-version-check -q"
C="-c scripts/constraints.txt"
# Never run `playwright install`: it downloads browsers from a CDN; we use /usr/bin/chromium.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $PIP $C playwright
chromium --version
python3 -c "from importlib.metadata import version; print('playwright', version('playwright'))"
