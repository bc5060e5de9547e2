#!/usr/bin/env bash
# Runs slimc's whole test suite on a fresh machine: installs what it needs (scripts/setup.sh),
# then builds and tests every crate of the workspace in release mode (the interpreter tests run
# real models), with MPI data parallelism (the `mpi` feature; tests/distributed.rs runs
# `mpirun -np 2`). Nothing skips: tract and onnxruntime tests run here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo test --release --workspace --all-targets --features mpi
