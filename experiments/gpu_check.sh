#!/usr/bin/env bash
# The prepared GPU check (experiments/gpu_check.py): the CUDA paths of ssr on one GPU in <= 8 minutes,
# one report (experiments/results/gpu_check/REPORT.{json,md}). Arguments go to gpu_check.py.
#   bash experiments/gpu_check.sh                 # with the gpu extra: pip install -e '.[gpu]'
# On a machine without network: experiments/gpu_check_prepare.sh (run where PyPI is reachable) packs
# the missing wheels, the tokenizer and the evaluation data into .gpu_check/, used here when present.
# Without a CUDA GPU it stops at once (exit 3) and runs nothing.
# On a lent GPU machine (8 files come back at most): prepare here, carry .gpu_check, and run
#   bash experiments/gpu_check.sh --out /tmp/gpu_check; cp /tmp/gpu_check/REPORT.* $OUT/;
#   tar czf $OUT/gpu_check_logs.tgz -C /tmp gpu_check
# then commit REPORT.json and REPORT.md under experiments/results/gpu_check/.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then  # this checkout's .venv (setup.sh), else the machine's python3
  PYTHON=python3
  [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
if [ -d .gpu_check/whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_check_site \
    .gpu_check/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpu_check/ssr_cache ] && export SSR_CACHE=${SSR_CACHE:-$PWD/.gpu_check/ssr_cache}
[ -d .gpu_check/data ] && export SSR_DATA_ROOT=${SSR_DATA_ROOT:-$PWD/.gpu_check/data}
exec timeout 480 "$PYTHON" experiments/gpu_check.py "$@"
