#!/usr/bin/env bash
# slimc's predict, validation plots' numbers and confusion matrix against Ultralytics 8.3.253 on
# the same checkpoint and images (not run by CI). Without MODEL, trains yolo11n with Ultralytics
# on the bundled trees dataset (EPOCHS, default 30, at IMGSZ 320) and uses its best.pt, which
# slimc reads as it is. Ultralytics and PyTorch go into a throwaway venv ($VENV).
# Usage: bash benches/vs_ultralytics_predict.sh [MODEL.pt]   (report in runs/bench/vs-ultralytics-predict/report.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
IMGSZ=${IMGSZ:-320}
EPOCHS=${EPOCHS:-30}
OUT=$ROOT/runs/bench/vs-ultralytics-predict
. benches/ultralytics_venv.sh
. scripts/setup.sh
cargo build --release --quiet
ultralytics_venv
mkdir -p "$OUT"
echo "machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# Ultralytics resolves the YAML's relative `path` against the working directory.
sed "s|^path: .*|path: $ROOT/datasets/trees|" datasets/trees/trees.yaml > "$OUT/trees.yaml"
MODEL=${1:-}
if [ -z "$MODEL" ]; then
    echo "Ultralytics: training yolo11n for $EPOCHS epochs at $IMGSZ ..."
    (cd "$OUT" && OMP_NUM_THREADS=$(nproc) "$VENV/bin/python" "$ROOT/benches/vs_ultralytics_predict.py" train \
        "$OUT/trees.yaml" "$IMGSZ" "$EPOCHS" "$OUT" > "$OUT/train.log" 2>&1)
    MODEL=$OUT/train/weights/best.pt
fi
rm -rf "$OUT/slimc"
mkdir -p "$OUT/slimc"
echo "slimc: predict and val of $MODEL ..."
target/release/slimc predict "$MODEL" --source datasets/trees/images/val --imgsz "$IMGSZ" --save-json \
    --save-txt --save-conf --device cpu --project "$OUT/slimc" --name predict > "$OUT/slimc/predict.log" 2>&1
target/release/slimc predict "$MODEL" --source datasets/trees/images/val --imgsz "$IMGSZ" --save-json --conf 0.01 \
    --no-save --device cpu --project "$OUT/slimc" --name predict-conf0.01 > "$OUT/slimc/predict-conf0.01.log" 2>&1
target/release/slimc val "$MODEL" --data datasets/trees/trees.yaml --imgsz "$IMGSZ" --batch 16 --device cpu \
    --save-json "$OUT/slimc/val.json" --project "$OUT/slimc" --name val > "$OUT/slimc/val.log" 2>&1
# slimc names images by the dataset YAML's relative path; Ultralytics by the absolute one.
python3 - "$OUT/slimc/val.json" "$ROOT" <<'PY'
import json, os, sys
rows = json.load(open(sys.argv[1]))
for r in rows:
    r["image"] = os.path.normpath(os.path.join(sys.argv[2], r["image"]))
json.dump(rows, open(sys.argv[1], "w"))
PY
echo "Ultralytics: predict, val and the same-predictions check ..."
(cd "$OUT" && OMP_NUM_THREADS=$(nproc) "$VENV/bin/python" "$ROOT/benches/vs_ultralytics_predict.py" compare \
    "$MODEL" "$OUT/trees.yaml" "$IMGSZ" "$OUT/slimc" "$OUT/report.md" 2> "$OUT/ultralytics.log")
