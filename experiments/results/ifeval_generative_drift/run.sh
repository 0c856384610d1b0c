#!/usr/bin/env bash
# Generative drift of the replication-v2 adapters (issue 22): train the sft (lr 3e-3) and ssr (lr 1e-3)
# adapters of conf/experiment/cpu_replication_v2.yaml at seed 1 (the lrs replication v2 chose), then
# measure.py: the base and both adapters on IFEval (LIMIT prompts, MAX_GEN_TOKS new tokens; default
# the published 541 x 1280), refusals, end of turn and over-refusal, with paired CIs.
# Each step is skipped when its result is there: rerun after a stop.
#   OUT=/work/runs/ifeval bash experiments/results/ifeval_generative_drift/run.sh
#   OUT=... LIMIT=120 MAX_GEN_TOKS=256 bash ...   # the stated subset
set -euo pipefail
OUT=${OUT:?set OUT to a run folder}
LIMIT=${LIMIT:-}
MAX_GEN_TOKS=${MAX_GEN_TOKS:-1280}
export SSR_CACHE=${SSR_CACHE:-$OUT/cache} SSR_DATA_ROOT=${SSR_DATA_ROOT:-../shared/data}
HERE=$(dirname "$0")
stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/timeline.log"; }
mkdir -p "$OUT"
stamp "start $(grep -o 'avx512_bf16\|amx_bf16\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
for spec in "sft 3.0e-3" "ssr 1.0e-3"; do
  read -r method lr <<< "$spec"
  if [ ! -f "$OUT/train/$method/adapter/adapter_config.json" ]; then
    ssr-train experiment=cpu_replication_v2 method="$method" optim.lr="$lr" seed=1 \
      eval.callback.enabled=false hydra.run.dir="$OUT/train/$method"
  fi
  stamp "trained $method (lr $lr)"
done
name=${LIMIT:-541}x${MAX_GEN_TOKS}
python "$HERE/measure.py" --out "$OUT/measure_$name" ${LIMIT:+--limit "$LIMIT"} --max-gen-toks "$MAX_GEN_TOKS" \
  --adapter sft="$OUT/train/sft/adapter" --adapter ssr="$OUT/train/ssr/adapter"
stamp "measured $name"
