#!/usr/bin/env bash
# Prepare .carry/ for a GPU run of a preset: the dataset folder and the item-embedding matrix (computed here, on
# the CPU, because the GPU machine has no sentence-encoder weights and no access to ../shared).
# Usage: benchmarks/stage_gpu.sh configs/beauty.yaml amazon-beauty
set -euo pipefail
config=$1
dataset=$2
root=${SIDREC_DATA:-../shared/data}
mkdir -p .carry/data
cp -r "$root/$dataset" .carry/data/
.venv/bin/python - "$config" <<'PY'
import shutil
import sys

import numpy as np

from sidrec.config import load_config
from sidrec.pipeline import Run

cfg = load_config(sys.argv[1], ["run_dir=.carry/stage-run"])
run = Run(cfg)
emb = run.stage_embed(run.stage_prepare())
name = cfg.data.name
with open(f".carry/{name}-emb.npy", "wb") as f:
    np.save(f, emb, allow_pickle=False)
shutil.rmtree(".carry/stage-run")
print(f".carry/{name}-emb.npy", emb.shape)
PY
grep -qxF '/.carry/' .git/info/exclude || echo '/.carry/' >> .git/info/exclude
