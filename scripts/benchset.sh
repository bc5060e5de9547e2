#!/usr/bin/env bash
# Generates slimc's accuracy benchmark set (Fashion-MNIST products on aerial tree photos, labels
# for detect, segment, OBB and pose; see benchset/src/lib.rs) into OUT, idempotently: a whole set
# with the same settings is left as it is. Installs what it needs (scripts/setup.sh installs
# Debian's dataset-fashion-mnist).
#   bash scripts/benchset.sh [OUT] [--train N] [--val N] [--size PX] [--seed S]
# Defaults: datasets/benchset, 2000 train + 1000 val scenes of 160 px, seed 0.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
out=datasets/benchset
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then out=$1; shift; fi
cargo build --release --quiet -p slimc-benchset
"${CARGO_TARGET_DIR:-target}/release/slimc-benchset" --out "$out" --keep "$@"
