#!/usr/bin/env bash
# slimc's Ultralytics checkpoints in Ultralytics 8.3.253 itself (not run by CI): yolo11n from
# YAML, the release yolo11n.pt imported and written back (fp32 and fp16), and the release model
# pruned at ratio 0.5 with each policy. For each: YOLO(x) loads, model.info() counts slimc's
# parameters, its eval output on the fixture input equals slimc's (1e-5 relative in fp32, 2e-3 in
# fp16), YOLO(x).export(format="onnx") runs in onnxruntime to the same output, and one epoch on
# trees through a trainer that keeps the loaded model keeps every width (stock YOLO(x).train()
# rebuilds from the YAML: shown on the pruned model). Ultralytics and PyTorch go into a throwaway
# venv ($VENV). Usage: bash benches/pt_roundtrip.sh   (report in runs/bench/pt-roundtrip/report.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=$ROOT/runs/bench/pt-roundtrip
. benches/ultralytics_venv.sh
FIX=$ROOT/tests/fixtures/checkpoints/yolo11n-release
. scripts/setup.sh
cargo build --release --quiet
ultralytics_venv onnx onnxruntime onnxslim
rm -rf "$OUT" && mkdir -p "$OUT"
sed "s|^path: .*|path: $ROOT/datasets/trees|" datasets/trees/trees.yaml > "$OUT/trees.yaml"
S=$ROOT/target/release/slimc
cd "$OUT"
$S export yolo11n.yaml -o yaml32.pt --fp32 --imgsz 320 > /dev/null
$S export "$FIX/yolo11n.pt" -o release32.pt --fp32 > /dev/null
$S export "$FIX/yolo11n.pt" -o release16.pt > /dev/null
for policy in seed groups; do
    $S prune "$FIX/yolo11n.pt" --ratio 0.5 --policy $policy --even-splits -o pruned-$policy.slim 2> /dev/null > /dev/null
    $S prune "$FIX/yolo11n.pt" --ratio 0.5 --policy $policy -o pruned-$policy.pt 2> /dev/null > /dev/null
    $S export pruned-$policy.slim -o pruned-${policy}32.pt --fp32 > /dev/null
done
# slimc's own outputs and parameter counts, for the comparison.
for f in yaml32 release32 release16 pruned-seed pruned-seed32 pruned-groups pruned-groups32; do
    $S run $f.pt --input "$FIX/input.npy" -o $f.slimc.npy > /dev/null
    $S info $f.pt --json > $f.info.json
done
OMP_NUM_THREADS=$(nproc) "$VENV/bin/python" "$ROOT/benches/pt_roundtrip.py" "$FIX/input.npy" "$OUT/trees.yaml" \
    | tee report.md
# The small fixture CI reads back (tests/fixtures/checkpoints/yolo11p-trees/pruned-*): yolo11p
# pruned by slimc, fine-tuned one epoch by Ultralytics through the trainer that keeps it, and
# that checkpoint's eval output on the folder's input.
if [ "${FIXTURE:-0}" = 1 ]; then
    P=$ROOT/tests/fixtures/checkpoints/yolo11p-trees
    $S prune "$P/best.pt" --ratio 0.5 --policy groups -o "$P/pruned-even.pt" 2> /dev/null > /dev/null
    OMP_NUM_THREADS=$(nproc) "$VENV/bin/python" "$ROOT/benches/pt_roundtrip.py" "$P/input.npy" "$OUT/trees.yaml" fixture "$P"
fi
