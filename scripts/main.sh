#!/usr/bin/env bash
# slimc's main job on a fresh machine: installs what it needs, builds slimc, then runs the whole
# slimming pipeline on the bundled trees dataset (YOLO11n, nc 1, imgsz 320): train, sparse
# train (proximal L1, sr 1e-2, clipped at 10), bn-hist, prune (ratio 0.5, policy groups), fine-tune, val,
# export, verify.
# Every artefact and summary.md / summary.json go to runs/main/pipeline/. Pass extra options
# through, e.g. `./run main --epochs 60`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --quiet --features mpi
rm -rf runs/main/pipeline
"${CARGO_TARGET_DIR:-target}/release/slimc" pipeline --model yolo11n.yaml --data datasets/trees/trees.yaml --imgsz 320 --batch 8 \
  --epochs 10 --sr 1e-2 --sr-mode proximal --clip 10 --ratio 0.5 --policy groups --project runs/main --name pipeline "$@"
echo "artefacts in runs/main/pipeline/ (summary.md, gamma.png, prune.txt, */results.png, *.slim, *.onnx)"
