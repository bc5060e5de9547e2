#!/usr/bin/env bash
# The fuzz harness (tests/fuzz.rs) in its long mode, not part of CI: every reader's mutation
# generators for as long as asked, each case under a 4 GiB address-space cap and a time limit.
#   bash scripts/fuzz.sh [SECONDS=1800] [SEED=now]
# Prints the cases run per reader; a failing case's input is kept beside the report.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
SLIMC_FUZZ_SECONDS="${1:-1800}" SLIMC_FUZZ_SEED="${2:-$(date +%s)}" \
  cargo test --release --test fuzz -- --nocapture
