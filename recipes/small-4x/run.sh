#!/usr/bin/env bash
# The whole small-4x recipe: data, RRDB pre-training, flow training, export (about 90 min on
# one CPU core). Rerun it after an interruption: each stage resumes from its last.pt, and a
# finished stage is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/small-4x}
RUNS=${RUNS:-runs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# --resume when RUN/last.pt exists; "done" when it already reached the config's iterations
stage() {
    python - "$1" "$2" <<'PY'
import sys, tomllib
from pathlib import Path
import cinn_sr
last, config = Path(sys.argv[1]) / "last.pt", tomllib.loads(Path(sys.argv[2]).read_text())
if last.exists():
    step = cinn_sr.load_checkpoint(last)["training"]["step"]
    print("done" if step >= config["iterations"] else "--resume")
PY
}

[ -f "$DATA/train_x4.h5" ] || python recipes/small-4x/make_data.py --out "$DATA"
RRDB=$(stage "$RUNS/small-4x-rrdb" recipes/small-4x/pretrain.toml)
[ "$RRDB" = done ] || cinn-sr pretrain "$DATA/train_x4.h5" --config recipes/small-4x/pretrain.toml \
    --out "$RUNS/small-4x-rrdb" $RRDB
FLOW=$(stage "$RUNS/small-4x" recipes/small-4x/train.toml)
[ "$FLOW" = done ] || cinn-sr train "$DATA/train_x4.h5" --config recipes/small-4x/train.toml \
    --encoder "$RUNS/small-4x-rrdb/last.pt" --out "$RUNS/small-4x" $FLOW
cinn-sr export "$RUNS/small-4x/last.pt" --out "$RUNS/small-4x.pt" --half
