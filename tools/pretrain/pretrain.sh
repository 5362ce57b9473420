#!/usr/bin/env bash
# Reproduce imgcls's formula-pretrained small_resnet: generate the set, split it, write the
# config, train on ONE CPU thread. Every step is idempotent, so running this again continues
# where it stopped: images that exist are skipped, splits and config are kept, and an
# unfinished run is continued with `ml-train --resume .../weights/last.pt`.
#
#   tools/pretrain/pretrain.sh                 # everything, in the foreground
#   OMP_NUM_THREADS=1 nohup tools/pretrain/pretrain.sh > /work/pretrain/train.out 2>&1 &
#
# Environment (defaults in brackets): PRETRAIN_DIR [/work/pretrain] (work folder: data, configs/,
# runs/), CLASSES [256], PER_CLASS [480], SIZE [64], SEED [0], EPOCHS [the config's, 10],
# VENV [the repository's .venv].
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PRETRAIN_DIR="${PRETRAIN_DIR:-/work/pretrain}"
CLASSES="${CLASSES:-256}"; PER_CLASS="${PER_CLASS:-480}"; SIZE="${SIZE:-64}"; SEED="${SEED:-0}"
VENV="${VENV:-$REPO/.venv}"
DATA="$PRETRAIN_DIR/formula"
RUN="$PRETRAIN_DIR/runs/formula_fold_0"
# one thread for everything torch, numpy and the BLAS libraries do: the other core is not ours
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
[ -f "$VENV/bin/activate" ] && . "$VENV/bin/activate"
mkdir -p "$PRETRAIN_DIR"; cd "$PRETRAIN_DIR"   # configs/ and runs/ land here, not in the repo
echo "== $(date -u +%FT%TZ) generate ($CLASSES classes x $PER_CLASS images, $SIZE px, seed $SEED)"
python "$HERE/generate.py" "$DATA" --classes "$CLASSES" --per_class "$PER_CLASS" --size "$SIZE" \
    --seed "$SEED" --workers 1 --sheet "$PRETRAIN_DIR/formula_sheet.png"

echo "== $(date -u +%FT%TZ) split"
if [ ! -f "$DATA/splits/test.txt" ]; then
    ml-split --raw_data "$DATA/raw" --folds 1 --test_ratio 0.02 --val_ratio 0.02 \
        --near_dup_distance 0
else echo "$DATA/splits: kept"; fi

echo "== $(date -u +%FT%TZ) config"
if [ ! -f configs/formula_config.yaml ]; then
    # what imgcls's recipe writes, kept for comparison ...
    ml-init-config "$DATA" --out_dir configs/init --force
    # ... and the pretraining config used (tools/pretrain/formula_config.yaml, this data folder)
    sed "s#/work/pretrain/formula#$DATA#" "$HERE/formula_config.yaml" > configs/formula_config.yaml
    diff configs/init/formula_config.yaml configs/formula_config.yaml || true
else echo "configs/formula_config.yaml: kept"; fi

echo "== $(date -u +%FT%TZ) train"
EXTRA=(); [ -n "${EPOCHS:-}" ] && EXTRA=(--num_epochs "$EPOCHS")
if [ -f "$RUN/summary.json" ] && [ -z "${EPOCHS:-}" ]; then
    echo "$RUN: finished (summary.json); EPOCHS=N $0 extends it"
elif [ ! -f "$RUN/weights/last.pt" ] && [ -f "$HERE/state/last.pt" ]; then
    # a run begun in an earlier sitting on another machine: its checkpoint is kept in the repo
    mkdir -p "$RUN/weights" && cp "$HERE/state/last.pt" "$RUN/weights/last.pt"
    ml-train --resume "$RUN/weights/last.pt" "${EXTRA[@]}"
elif [ -f "$RUN/weights/last.pt" ]; then
    ml-train --resume "$RUN/weights/last.pt" "${EXTRA[@]}"
else
    ml-train --config configs/formula_config.yaml "${EXTRA[@]}"
fi
echo "== $(date -u +%FT%TZ) done: $RUN"
