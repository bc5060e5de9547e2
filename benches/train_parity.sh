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
OUT=$ROOT/runs/bench/train-parity/${MODEL%.yaml}
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
python3 - "$OUT" "$MODEL" "$EPOCHS" $SEEDS <<'PY' | tee "$OUT/report.md"
import csv, sys
out, model, epochs, seeds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def best(path):
    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(open(path))]
    # Both trainers keep the epoch of best fitness (0.1 mAP50 + 0.9 mAP50-95) as best.*
    fit = lambda r: 0.1 * float(r["metrics/mAP50(B)"]) + 0.9 * float(r["metrics/mAP50-95(B)"])
    b = max(rows, key=fit)
    return float(b["metrics/mAP50(B)"]), float(b["metrics/mAP50-95(B)"]), max(float(r["metrics/mAP50(B)"]) for r in rows)
s = {x: best(f"{out}/slimc-seed{x}/results.csv") for x in seeds}
u = {x: best(f"{out}/ultralytics-seed{x}/results.csv") for x in seeds}
print(f"# {model}: {epochs} epochs on trees, imgsz 320, batch 8\n")
print("| seed | slimc best mAP50 | slimc mAP50-95 | Ultralytics best mAP50 | Ultralytics mAP50-95 |")
print("|---:|---:|---:|---:|---:|")
for x in seeds:
    print(f"| {x} | {s[x][0]:.4f} | {s[x][1]:.4f} | {u[x][0]:.4f} | {u[x][1]:.4f} |")
lo, hi = min(v[0] for v in u.values()), max(v[0] for v in u.values())
inside = [lo <= v[0] <= hi for v in s.values()]
print(f"\n(best = the epoch of best fitness, 0.1·mAP50 + 0.9·mAP50-95, as best.pt/best.slim.) Ultralytics' range of best mAP50: "
      f"{lo:.4f} to {hi:.4f}; slimc's seeds inside it: {sum(inside)} of {len(inside)}; slimc mean "
      f"{sum(v[0] for v in s.values())/len(s):.4f}, Ultralytics mean {sum(v[0] for v in u.values())/len(u):.4f}")
PY
