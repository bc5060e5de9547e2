#!/usr/bin/env bash
# The accuracy frontier's two Python baselines (issue 38), not run by CI: `small` (Ultralytics'
# YOLO11 with its width cut to a GFLOPs target, trained from scratch) and `tp` (Torch-Pruning 1.6.1's
# BNScalePruner on the dense model: sparse training, one-shot pruning to the target, fine-tuning by
# Ultralytics). Ultralytics 8.3.253, Torch-Pruning, onnx and onnxruntime go into a throwaway venv
# ($VENV). Each run writes OUT/result.json; the options are benches/accuracy_baselines.py's.
#   bash benches/accuracy_baselines.sh small --data datasets/benchset/detect.yaml --target-gflops 55% \
#       --epochs 30 --out runs/bench/accuracy/small-55
#   bash benches/accuracy_baselines.sh tp --data datasets/benchset/detect.yaml --dense dense.pt \
#       --target-gflops 55% --sparse-epochs 10 --finetune-epochs 30 --out runs/bench/accuracy/tp-55
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/ultralytics_venv.sh
ultralytics_venv torch-pruning==1.6.1 onnx onnxruntime
exec "$VENV/bin/python" benches/accuracy_baselines.py "$@"
