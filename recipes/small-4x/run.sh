#!/usr/bin/env bash
# The whole small-4x recipe: data, RRDB pre-training, flow training (about 2 h on one CPU
# core). Resumable: rerun it and each stage continues from its last.pt.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/small-4x}
RUNS=${RUNS:-runs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f "$DATA/train_x4.h5" ] || python recipes/small-4x/make_data.py --out "$DATA"
resume() { [ -f "$1/last.pt" ] && echo --resume || true; }
cinn-sr pretrain "$DATA/train_x4.h5" --config recipes/small-4x/pretrain.toml \
    --out "$RUNS/small-4x-rrdb" $(resume "$RUNS/small-4x-rrdb")
cinn-sr train "$DATA/train_x4.h5" --config recipes/small-4x/train.toml \
    --encoder "$RUNS/small-4x-rrdb/last.pt" --out "$RUNS/small-4x" $(resume "$RUNS/small-4x")
