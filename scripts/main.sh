#!/usr/bin/env bash
# slimc's main job on a fresh machine: installs what it needs, builds slimc, then lowers
# YOLO11n (nc 1, the bundled dataset's one class) to IR, shows its summary, exports ONNX and
# verifies the export with tract and onnxruntime. Artefacts go to runs/main/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --quiet
slimc=target/release/slimc
out=runs/main
mkdir -p "$out"
$slimc info yolo11n.yaml --nc 1 --imgsz 320
$slimc import yolo11n.yaml --nc 1 --imgsz 320 -o "$out/yolo11n.slim"
$slimc dump "$out/yolo11n.slim" > "$out/yolo11n.slimir"
$slimc export "$out/yolo11n.slim" -o "$out/yolo11n.onnx"
$slimc verify "$out/yolo11n.onnx" --against "$out/yolo11n.slim"
echo "artefacts in $out/: yolo11n.slim, yolo11n.slimir (IR text), yolo11n.onnx"
