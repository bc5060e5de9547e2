#!/usr/bin/env bash
# The benchmark set (scripts/benchset.sh) in Ultralytics 8.3.253 itself, not run by CI: its
# dataset check and label scan for each of the four tasks' YAMLs, then one epoch (or EPOCHS) of
# YOLO11n, -seg, -obb and -pose on it at imgsz 160. Ultralytics goes into a throwaway venv ($VENV).
#   bash benches/benchset_check.sh [SET_DIR] [EPOCHS]     (report: runs/bench/benchset-check/report.json)
set -euo pipefail
cd "$(dirname "$0")/.."
SET=${1:-datasets/benchset}
bash scripts/benchset.sh "$SET"
. benches/ultralytics_venv.sh
ultralytics_venv
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$VENV/bin/python" benches/benchset_check.py "$SET" runs/bench/benchset-check "${2:-1}"
