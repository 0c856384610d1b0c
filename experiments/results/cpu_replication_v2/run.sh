#!/usr/bin/env bash
# Replication v2 (issue 17), the whole sweep: phase 1 (the lr grid, seed 1) -> the lr chosen per
# method on the in-domain task score -> phase 2 (seeds 2 and 3 at that lr, with eval.final) -> every
# run at a chosen lr without its eval.final evaluation (the seed-1 grid runs) resumed for it ->
# ssr-report. Each step is skipped when its results are there: rerun the script after a stop.
#   OUT=/work/runs/r17 bash experiments/results/cpu_replication_v2/run.sh
# SSR_CACHE (default $OUT/cache) holds own answers, rewrites, verdicts and both base evaluations,
# computed once for the whole sweep. Every step's start and end go to $OUT/timeline.log.
set -euo pipefail
OUT=${OUT:?set OUT to a run folder}
export SSR_CACHE=${SSR_CACHE:-$OUT/cache} SSR_DATA_ROOT=${SSR_DATA_ROOT:-../shared/data}
EXP=experiment=cpu_replication_v2
REPORT=${REPORT:-experiments/results/cpu_replication_v2}
mkdir -p "$OUT"
stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/timeline.log"; }

stamp "start $(grep -o 'avx512_bf16\|amx_bf16\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
if [ ! -f "$OUT/grid/.done" ]; then
  ssr-train -m "$EXP" hydra.sweep.dir="$OUT/grid"
  touch "$OUT/grid/.done"
fi
stamp "phase 1 done"
ssr-report "$OUT/grid" --out "$OUT/grid_report" >/dev/null
python - "$OUT" <<'PY' > "$OUT/chosen.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
chosen = json.loads((out / "grid_report" / "item_stats.json").read_text())["chosen_lr"]
for summary in sorted((out / "grid").glob("*/summary.json")):
    s = json.loads(summary.read_text())
    if chosen.get(s["method"]) == s["lr"]:
        print(s["method"], repr(s["lr"]), summary.parent)
PY
stamp "chosen: $(tr '\n' ';' < "$OUT/chosen.txt")"
while read -r method lr dir; do
  if [ ! -f "$OUT/seeds/$method/.done" ]; then
    ssr-train -m "$EXP" method="$method" optim.lr="$lr" seed=2,3 eval.final.enabled=true \
      hydra.sweep.dir="$OUT/seeds/$method" < /dev/null
    touch "$OUT/seeds/$method/.done"
  fi
  stamp "phase 2 $method done"
done < "$OUT/chosen.txt"
# every run at a chosen lr (the seed-1 grid run, the phase-2 seeds) needs its eval.final evaluation
# at the experiment's final settings; one without it (or with other settings) is resumed for it,
# the paper's comparison first
python - "$OUT" <<'PY' > "$OUT/final_todo.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
want = 300  # docs of ARC-easy in eval.final (conf/experiment/cpu_replication_v2.yaml)
order = ["sft", "ssr", "sdft", "s3ft", "dft", "self_only"]
rows = [line.split() for line in (out / "chosen.txt").read_text().splitlines()]
dirs = [(m, lr, Path(d)) for m, lr, d in rows]
dirs += [(m, lr, p.parent) for m, lr, _ in rows for p in sorted((out / "seeds" / m).glob("*/summary.json"))]
for method, lr, run in sorted(dirs, key=lambda r: order.index(r[0])):
    items = run / "eval_items" / "final" / "lm_eval.ssr_arc_easy.jsonl"
    seed = json.loads((run / "summary.json").read_text())["seed"]
    if not items.is_file() or len(items.read_text().splitlines()) != want:
        print(method, lr, seed, run)
PY
while read -r method lr seed dir; do
  ssr-train "$EXP" method="$method" optim.lr="$lr" seed="$seed" eval.final.enabled=true ckpt_path=last \
    hydra.run.dir="$dir" < /dev/null
  stamp "final evaluation of $dir ($method seed $seed) done"
done < "$OUT/final_todo.txt"
stamp "sweep done"
ssr-report $(cut -d' ' -f3 "$OUT/chosen.txt") "$OUT/seeds" --grid "$OUT/grid" --out "$REPORT"
stamp "report written to $REPORT"
