#!/bin/bash
# Short fine-tuning experiments of benchmarks/csp_diagnosis.py: continue the shipped checkpoint
# for MINUTES on one thread with a modified loss, then evaluate it on the first 500 Perov-5 test
# crystals (N = 10 and 50; results/csp_diagnosis.json, key NAME).
#
#   benchmarks/csp_diagnosis.sh NAME MINUTES [section.key=value ...]
#   benchmarks/csp_diagnosis.sh e0_control 9
#   benchmarks/csp_diagnosis.sh e1_rollout 9 method.rollout_prob=0.5
#   benchmarks/csp_diagnosis.sh e2_weight_cap 9 method.coord_weight_cap=100
set -euo pipefail
name=$1; minutes=$2; shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${CRYSRAY_RUNS:-$repo/../runs-csp}
# the checkpoint shipped before the fix: git show 5950ee5:checkpoints/crysbfn_perov5.pt
init=${CRYSRAY_INIT:-$runs/old_shipped.pt}
mkdir -p "$runs"
cd "$repo"
export PYTHONPATH=$repo OMP_NUM_THREADS=1
python -m crysray.cli --config crysbfn_perov5 --run-dir "$runs/$name" --export "$runs/$name.pt" \
    train.max_minutes="$minutes" train.threads=1 train.init_from="$init" \
    train.lr=0.0003 train.min_lr=0.0001 train.ema_decay=0.995 train.ema_start=0 "$@" \
    > "$runs/$name.log" 2>&1
python benchmarks/csp_diagnosis.py sampler --checkpoint "$runs/$name.pt" --steps 10 50 --quick \
    --label "$name" >> "$runs/$name.log" 2>&1
