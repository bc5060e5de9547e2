#!/usr/bin/env bash
# Training parity with Ultralytics 8.3.253 over seeds, side by side in one run (not run by CI):
# MODEL (default yolov8n.yaml) from scratch on the bundled trees dataset at imgsz 320, batch 8, for
# EPOCHS epochs (default 30), seeds SEEDS (default "0 1 2"), slimc and Ultralytics (PyTorch, CPU)
# at the same time with one thread each. Reports each run's best mAP50 and mAP50-95 (the best
# epoch of results.csv, as each trainer picks best.pt / best.slim) and whether slimc's fall
# within the range of Ultralytics' seeds. Ultralytics goes into a throwaway venv ($VENV).
# Usage: MODEL=yolov8n.yaml EPOCHS=30 SEEDS="0 1 2" bash benches/train_parity.sh
#        (results in runs/bench/train-parity/<model>/report.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODEL=${MODEL:-yolov8n.yaml}
EPOCHS=${EPOCHS:-30}
SEEDS=${SEEDS:-0 1 2}
. benches/ultralytics_venv.sh
OUT=${OUT:-$ROOT/runs/bench/train-parity/${MODEL%.yaml}}
DATA=$ROOT/datasets/trees/trees.yaml
. scripts/setup.sh
cargo build --release --quiet
ultralytics_venv
rm -rf "$OUT" && mkdir -p "$OUT"
sed "s|^path: .*|path: $ROOT/datasets/trees|" "$DATA" > "$OUT/trees.yaml"
# A copy of the binary, so a rebuild during the run does not change it between seeds.
cp target/release/slimc "$OUT/slimc"
(
    for s in $SEEDS; do
        RAYON_NUM_THREADS=1 "$OUT/slimc" train "$MODEL" --data "$DATA" --epochs "$EPOCHS" --imgsz 320 --batch 8 \
            --seed "$s" --no-plots --device cpu --project "$OUT" --name "slimc-seed$s" 2> "$OUT/slimc-seed$s.log"
    done
) &
slimc_jobs=$!
(
    cd "$OUT"
    for s in $SEEDS; do
        OMP_NUM_THREADS=1 "$VENV/bin/python" - "$MODEL" "$OUT/trees.yaml" "$EPOCHS" "$s" "$OUT" > "$OUT/ultralytics-seed$s.log" 2>&1 <<'PY'
import sys
import torch
from ultralytics import YOLO
model, data, epochs, seed, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(1)
YOLO(model).train(data=data, epochs=epochs, imgsz=320, batch=8, device="cpu", workers=0, project=out,
                  name=f"ultralytics-seed{seed}", exist_ok=True, amp=False, plots=False, seed=seed, verbose=False)
PY
    done
)
wait $slimc_jobs
python3 benches/train_parity_report.py "$OUT" "$MODEL" "$EPOCHS" $SEEDS | tee "$OUT/report.md"
