#!/usr/bin/env bash
# The YOLOv8, YOLOv5u and YOLO12 families against Ultralytics 8.3.253 itself (not run by CI).
# Ultralytics and PyTorch go into a throwaway venv ($VENV).
#   bash benches/families.sh counts     parameters and GFLOPs of every scale (tests/model_info.rs)
#   bash benches/families.sh fixtures   regenerate the tiny fixtures under tests/fixtures
#   bash benches/families.sh pt         checkpoints slimc writes for each family, from YAML and
#                                       pruned, loaded by YOLO() and run against slimc
#                                       (report in runs/bench/families/pt.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. benches/ultralytics_venv.sh
ultralytics_venv safetensors onnx onnxruntime
PY="$VENV/bin/python"
case "${1:-}" in
    counts) "$PY" benches/families.py counts ;;
    fixtures)
        OUT=$(mktemp -d)
        "$PY" benches/families.py fixtures "$OUT"
        cp -r "$OUT"/* tests/fixtures/
        rm -rf "$OUT" ;;
    pt)
        . scripts/setup.sh
        cargo build --release --quiet
        S=$ROOT/target/release/slimc
        OUT=$ROOT/runs/bench/families && rm -rf "$OUT" && mkdir -p "$OUT" && cd "$OUT"
        "$PY" -c "import numpy as np; np.save('x.npy', np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32))"
        # File names that are not release names: YOLO() would fetch those.
        for m in yolov8n yolov8n-p2 yolov8n-p6 yolov5nu yolo12n yolo12l; do
            $S export $m.yaml --nc 2 --imgsz 128 --fp32 -o slimc-$m.pt > /dev/null
            $S prune slimc-$m.pt --ratio 0.5 --policy seed -o slimc-$m-pruned.pt > /dev/null 2>&1
            for f in slimc-$m slimc-$m-pruned; do
                cp x.npy $f.input.npy
                $S run $f.pt --input x.npy -o $f.slimc.npy > /dev/null
            done
        done
        # A trained model: the release yolov8n of the shared reference set, where the checkout has it.
        REL=$ROOT/../shared/fixtures/checkpoints/yolov8n-release
        if [ -f "$REL/yolov8n.pt" ]; then
            $S prune "$REL/yolov8n.pt" --ratio 0.5 --policy seed -o slimc-release-v8n-pruned.pt > /dev/null 2>&1
            cp "$REL/input.npy" slimc-release-v8n-pruned.input.npy
            $S run slimc-release-v8n-pruned.pt --input "$REL/input.npy" -o slimc-release-v8n-pruned.slimc.npy > /dev/null
        fi
        "$PY" "$ROOT/benches/families.py" pt . | tee pt.md ;;
    *) sed -n 2,8p "$0"; exit 2 ;;
esac
