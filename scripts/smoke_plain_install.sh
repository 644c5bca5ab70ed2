#!/usr/bin/env bash
# The new user's path, checked in CI before any test extra is installed: a clean virtual
# environment (no system site-packages), the README's first command only (scripts/install.sh),
# then `--help` for every command and one short real run on the embedded SmolLM2.
# A runtime import missing from pyproject.toml's dependencies fails here.
#   bash scripts/smoke_plain_install.sh [VENV_DIR]     # default: a fresh temporary directory
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-$(mktemp -d /tmp/sparsecodes-plain.XXXXXX)}"
WORK="$(mktemp -d /tmp/sparsecodes-smoke.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONNOUSERSITE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
t0=$SECONDS
if [[ -e "$VENV" && -n "$(ls -A "$VENV")" ]]; then
  echo "smoke: $VENV exists and is not empty; give a new directory"; exit 2
fi
python3 -m venv "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
[[ "$(python3 -c 'import sys; print(sys.prefix)')" == "$(cd "$VENV" && pwd -P)" ]] \
  || { echo "smoke: python3 is not the fresh venv's"; exit 1; }
bash scripts/install.sh
echo "smoke: plain install took $((SECONDS - t0)) s"
# the package must come from this venv, not from anywhere else on the machine
REPO="$PWD" python3 - <<'PY'
import os, site, sys
import sparsecodes
src = os.path.join(os.environ["REPO"], "src", "sparsecodes")
assert os.path.dirname(os.path.realpath(sparsecodes.__file__)) == os.path.realpath(src), (
    f"sparsecodes imported from {sparsecodes.__file__}, not from this checkout {src}"
)
outside = [p for p in site.getsitepackages() if not p.startswith(sys.prefix)]
assert not outside and sys.prefix != sys.base_prefix, f"not a clean venv: {outside}"
print("smoke: python", sys.executable, "sparsecodes", sparsecodes.__file__)
PY
# every module imports, those for an extra too (extras are imported lazily inside functions:
# tests/test_dependencies.py)
python3 - <<'PY'
import importlib, pkgutil, sparsecodes
names = [m.name for m in pkgutil.walk_packages(sparsecodes.__path__, "sparsecodes.")]
for name in names:
    importlib.import_module(name)
print(f"smoke: all {len(names)} modules import")
PY
sparsecodes --help > "$WORK/help.txt"
mapfile -t CMDS < <(python3 -c 'from sparsecodes.cli import COMMANDS; print("\n".join(COMMANDS))')
[[ ${#CMDS[@]} -gt 0 ]] || { echo "smoke: no commands in sparsecodes.cli.COMMANDS"; exit 1; }
for cmd in "${CMDS[@]}"; do
  grep -qw -- "$cmd" "$WORK/help.txt" || { echo "smoke: 'sparsecodes --help' omits $cmd"; exit 1; }
  sparsecodes "$cmd" --help > /dev/null || { echo "smoke: 'sparsecodes $cmd --help' failed"; exit 1; }
done
echo "smoke: --help ok for ${#CMDS[@]} commands: ${CMDS[*]}"
t1=$SECONDS
sparsecodes circuit --task ioi --no-reference --seeds 1 --out "$WORK/circuit"
ls "$WORK"/circuit/*.json > /dev/null || { echo "smoke: circuit wrote no results JSON"; exit 1; }
echo "smoke: circuit run took $((SECONDS - t1)) s; whole smoke check $((SECONDS - t0)) s"
deactivate
rm -rf "$VENV"
