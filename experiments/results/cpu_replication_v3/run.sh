#!/usr/bin/env bash
# Replication v3 (issue 26), resumable run by run: each finished run's records (summary.json,
# drift.json, eval.json, selection_stats.json, eval_items/, .hydra/config.yaml — no checkpoints)
# are copied under runs/ here and, with COMMIT=1, committed at once; a run whose records are here
# is skipped, so the script continues after any interruption, in any later session.
#   OUT=/work/runs/v3 COMMIT=1 bash experiments/results/cpu_replication_v3/run.sh
# Phase 1: every method x lr at seed 1 (runs/grid/). The lr is chosen per method on the in-domain
# validation rows (eval.tasks.selection_rows, disjoint from the reported test rows). Phase 2, at the
# chosen lr with eval.final (runs/seeds/): the seed-1 run resumed for its eval.final, and seeds 2
# and 3, seed by seed. sft and ssr go through both phases before the other methods start, whose
# grid goes lr by lr, sft's and ssr's chosen lr first for all of them, then the larger. A final
# run whose records lack eval.final.tasks' over-refusal sets (runs trained before that setting
# existed) gets them from `ssr-eval +run=` (EVAL), which adds them to its final records. Then
# ssr-report rebuilds everything here from the committed records alone.
set -euo pipefail
OUT=${OUT:?set OUT to a scratch folder (checkpoints, caches)}
HERE=experiments/results/cpu_replication_v3
export SSR_CACHE=${SSR_CACHE:-$OUT/cache} SSR_DATA_ROOT=${SSR_DATA_ROOT:-../shared/data}
METHODS=${METHODS:-"sft ssr s3ft sdft dft self_only"}
LRS=${LRS:-"3.0e-4 1.0e-3 3.0e-3"}
TRAIN=${TRAIN:-ssr-train}
EVAL=${EVAL:-ssr-eval}
mkdir -p "$OUT" "$HERE/runs"
stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$HERE/timeline.log"; }

keep() {  # keep <run dir> <records dir> <message>: copy the records, commit them with COMMIT=1
  local run=$1 dest=$2
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/.hydra"
  for f in summary.json drift.json eval.json selection_stats.json; do
    [ -f "$run/$f" ] && cp "$run/$f" "$dest.tmp/"
  done
  cp "$run/.hydra/config.yaml" "$dest.tmp/.hydra/"
  [ -d "$run/eval_items" ] && cp -r "$run/eval_items" "$dest.tmp/"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  if [ "${COMMIT:-0}" = 1 ]; then
    git add "$dest" "$HERE/timeline.log" && git commit -q -m "replication v3: $3" -- "$dest" "$HERE/timeline.log"
  fi
}

train() {  # train <phase> <name> <run dir> <overrides...>: one run, skipped when its records are kept
  local phase=$1 name=$2 run=$3; shift 3
  local dest="$HERE/runs/$phase/$name"
  if [ -f "$dest/summary.json" ] && { [ "$phase" = grid ] || [ -d "$dest/eval_items/final" ]; }; then
    return
  fi
  stamp "start $phase/$name"
  $TRAIN experiment=cpu_replication_v3 "$@" hydra.run.dir="$run" < /dev/null
  keep "$run" "$dest" "$phase/$name"
  stamp "done $phase/$name"
}

grid_run() {  # grid_run <method> <lr>: one grid run at seed 1
  train grid "${1}_lr${2}_s1" "$OUT/grid/${1}_lr${2}_s1" method="$1" optim.lr="$2" seed=1
}

grid() {  # grid <methods...>: every lr at seed 1, method by method
  local method lr
  for method in "$@"; do for lr in $LRS; do grid_run "$method" "$lr"; done; done
}

grid_by_lr() {  # grid_by_lr <methods...>: every lr at seed 1, lr by lr: the lr(s) sft and ssr chose
  # first, so that an interrupted budget leaves every method one run at a comparable lr; then the
  # others from the largest down (measured in session 11: at 1e-3, s3ft, sdft and self_only gained
  # +8 to +21 points against sft's +42, so a larger lr is the likelier choice for them)
  local prior lr method
  prior=$(awk -v primary=" $PRIMARY " 'index(primary, " " $1 " ") {print $2}' "$OUT/chosen.txt" | sort -u)
  for lr in $prior $(for lr in $LRS; do grep -qxF -- "$lr" <<< "$prior" || echo "$lr"; done | sort -g -r); do
    for method in "$@"; do grid_run "$method" "$lr"; done
  done
}

choose() {  # the lr per method from the grid so far, on the validation rows -> $OUT/chosen.txt
  ssr-report "$HERE/runs/grid" --out "$OUT/grid_report" > /dev/null
  python - "$OUT/grid_report/item_stats.json" "$LRS" > "$OUT/chosen.txt" <<'PY'
import json, sys
grid = sys.argv[2].split()  # the chosen lr spelled as in LRS (it names the grid run)
for method, lr in json.loads(open(sys.argv[1]).read())["chosen_lr"].items():
    print(method, next(g for g in grid if float(g) == lr))
PY
  stamp "chosen lr: $(tr '\n' ';' < "$OUT/chosen.txt")"
}

over_refusal() {  # over_refusal <name> <run dir>: eval.final.tasks' sets added to a kept final run
  local name=$1 run=$2 dest="$HERE/runs/seeds/$1"
  compgen -G "$dest/eval_items/final/tasks.ood_*_answerable.jsonl" > /dev/null && return
  stamp "start over-refusal seeds/$name"
  $EVAL experiment=cpu_replication_v3 +run="$run" eval.final.enabled=true eval.final.suite.tasks=[] \
    +eval.final.self_drift.enabled=false +eval.final.kl_task.enabled=false \
    +eval.final.ifeval.enabled=false hydra.run.dir="$OUT/over_refusal/$name" < /dev/null
  keep "$run" "$dest" "seeds/$name: over-refusal on every answerable out-of-domain row"
  stamp "done over-refusal seeds/$name"
}

final() {  # final <method> <seed>: a run at the method's chosen lr with eval.final
  local method=$1 seed=$2 lr name dir resume=()
  lr=$(awk -v m="$method" '$1 == m {print $2}' "$OUT/chosen.txt")
  [ -n "$lr" ] || return 0
  name="${method}_lr${lr}_s${seed}"
  dir="$OUT/seeds/$name"
  if [ "$seed" = 1 ]; then  # the seed-1 grid run, resumed from its last checkpoint for eval.final only
    dir="$OUT/grid/$name" resume=(ckpt_path=last)
  fi
  train seeds "$name" "$dir" method="$method" optim.lr="$lr" seed="$seed" eval.final.enabled=true "${resume[@]}"
  over_refusal "$name" "$dir"
}

stamp "machine: $(grep -o 'avx512_bf16\|amx_bf16\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
# the paper's comparison first (sft and ssr: grid, then three seeds with eval.final), so that an
# interrupted budget still answers it; then the other methods (OTHER_SEEDS: as many as it allows)
PRIMARY=${PRIMARY:-"sft ssr"}
OTHERS=$(for m in $METHODS; do case " $PRIMARY " in *" $m "*) ;; *) echo "$m" ;; esac; done)
grid $PRIMARY
choose
for seed in 1 2 3; do for method in $PRIMARY; do final "$method" "$seed"; done; done  # paired seeds first
grid_by_lr $OTHERS
choose
for method in $OTHERS; do final "$method" 1; done
for seed in ${OTHER_SEEDS:-2 3}; do for method in $OTHERS; do final "$method" "$seed"; done; done
ssr-report "$HERE/runs/seeds" --grid "$HERE/runs/grid" --out "$HERE"
stamp "report written"
