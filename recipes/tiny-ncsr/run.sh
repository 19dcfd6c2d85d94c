#!/usr/bin/env bash
# Tiny NCSR against tiny SRFlow on the same data (the figures of README's "NCSR" section):
# train both, then score each on the eight held-out crops (RGB, no border crop).
#   python recipes/small-4x/make_data.py --out data/small-4x   (once: the patch file)
#   bash recipes/tiny-ncsr/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
for kind in srflow ncsr; do
    out=runs/tiny-ncsr/$kind
    if [ -f "$out/last.pt" ]; then  # rerun after an interruption: continue exactly
        cinn-sr train data/small-4x/train_x4.h5 --out "$out" --resume
    else
        cinn-sr train data/small-4x/train_x4.h5 --config "recipes/tiny-ncsr/$kind.toml" \
            --out "$out"
    fi
    cinn-sr eval "$out/last.pt" recipes/small-4x/val --nll --psnr --lr-psnr --temperature 0 \
        --out "runs/tiny-ncsr/${kind}_t0.json"
    cinn-sr eval "$out/last.pt" recipes/small-4x/val --lpips --lr-psnr --diversity \
        --temperature 0.9 --out "runs/tiny-ncsr/${kind}_t09.json"
done
