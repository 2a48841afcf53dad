#!/usr/bin/env bash
# Reproduce the bundled default model end to end (resumable: rerun after an interruption).
#   bash experiments/default_model.sh [WORK]      (default WORK: runs/default_model)
# Then: cp -r WORK/runs/final/final src/dap/weights/<name>   (see docs/models.md)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-runs/default_model}"
data=data/default_model
run() { bash scripts/with-venv.sh "$@"; }
run dap synth --count 6000 --out "$data/photo_mixed" --resolution 128x256 --style photo --seed 0 --workers 2 --shard-size 200
run dap synth --count 96 --out "$data/val_photo" --resolution 128x256 --style photo --seed 900000 --shard-size 96
run dap synth --count 96 --out "$data/val_clean" --resolution 128x256 --style clean --seed 900000 --shard-size 96
run dap curate run --config configs/default_model.yaml --work "$work"
