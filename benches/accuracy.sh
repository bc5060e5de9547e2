#!/usr/bin/env bash
# The accuracy frontier (issue 38; not run by CI): slimc's slimming against the baselines users
# would pick instead, at equal training budgets, on the benchmark set. Resumable: each finished
# row leaves docs/benchmarks/accuracy/results/<row>.json and is not run again. About 8 hours of a
# 2-core machine in all; Ultralytics and Torch-Pruning go into a throwaway venv ($VENV).
#   bash benches/accuracy.sh [--rows NAME,...] [--lanes slimc,python] [--report]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/benchset.sh
. scripts/setup.sh
cargo build --release --quiet --features mpi
. benches/ultralytics_venv.sh
ultralytics_venv torch-pruning==1.6.1
# A copy of the binary named by the commit it was built from, so a rebuild while the bench runs
# does not change it between rows and each row records what made it.
commit=$(git rev-parse --short HEAD)$( [ -z "$(git status --porcelain --untracked-files=no)" ] || echo +dirty)
mkdir -p runs/bench/accuracy
cp target/release/slimc "runs/bench/accuracy/slimc-$commit"
SLIMC=$PWD/runs/bench/accuracy/slimc-$commit SLIMC_COMMIT=$commit VENV=$VENV python3 benches/accuracy.py "$@"
