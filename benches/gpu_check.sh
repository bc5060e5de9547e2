#!/usr/bin/env bash
# The GPU check: the first thing to run on a machine with a real GPU (not run by CI; under 8
# minutes). Figures come out on stdout and in runs/bench/gpu-check/report.md:
#   1. the machine: CPU model, the GPU (nvidia-smi where there is one), the adapters wgpu finds;
#   2. the kernel suite (tests/kernels.rs) on the best adapter — on a GPU with the tiled implicit
#      GEMM lowering — against the CPU backend, and every convolution lowering;
#   3. tests/train_step.rs: one training step of yolo11p against Ultralytics' gradients, on the
#      CPU backend and on the adapter;
#   4. `cargo bench --bench gpu`: convolution GFLOP/s on the CPU backend and both GPU lowerings,
#      with the best forward rate as a share of the adapter's f32 peak (looked up by name below;
#      GPU_PEAK_TFLOPS overrides);
#   5. one epoch of `slimc train` on the bundled trees dataset, --device gpu against --device cpu,
#      images/s of each (imgsz 640, batch 16; on a software adapter such as lavapipe, 320 and 8 so
#      the check stays under its time; IMGSZ and BATCH override).
#
# Usage:
#   bash benches/gpu_check.sh              build here (cargo), then run
#   bash benches/gpu_check.sh --bundle     build without MPI into target/gpu-check and pack the
#                                          binaries and the Vulkan loader into gpu-check-bundle/
#                                          and gpu-check-bundle.tar.xz (about 28 MB: carry that to
#                                          a machine without Rust or network, beside a checkout)
#   bash benches/gpu_check.sh --prebuilt   run from gpu-check-bundle/ (unpacked from the .tar.xz
#                                          if need be; no cargo, no network)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODE=${1:-build}
OUT=$ROOT/runs/bench/gpu-check
BUNDLE=$ROOT/gpu-check-bundle
start=$(date +%s)

# Test and bench executables cargo builds for `cargo SUBCOMMAND ARGS`, by target name.
executables() {
    cargo "$@" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"][0] in ("test", "bench"):
        print(m["target"]["name"], m["executable"])'
}

case "$MODE" in
--bundle)
    . scripts/setup.sh
    export CARGO_TARGET_DIR=$ROOT/target/gpu-check
    cargo build --release --quiet --bin slimc
    rm -rf "$BUNDLE"
    mkdir -p "$BUNDLE"
    cp "$CARGO_TARGET_DIR/release/slimc" "$BUNDLE/"
    executables test --release --test kernels --test train_step >"$BUNDLE/list"
    executables bench --bench gpu >>"$BUNDLE/list"
    while read -r name exe; do cp "$exe" "$BUNDLE/$name"; done <"$BUNDLE/list"
    rm "$BUNDLE/list"
    strip "$BUNDLE"/* 2>/dev/null || true
    # The Vulkan loader: a machine with only the GPU driver may lack it (the driver brings the ICD).
    cp -L "$(ldconfig -p | awk '/libvulkan.so.1 /{print $NF; exit}')" "$BUNDLE/libvulkan.so.1"
    tar -C "$BUNDLE" -cf - . | xz -T0 -6 >"$BUNDLE.tar.xz"
    du -sh "$BUNDLE" "$BUNDLE.tar.xz"
    exit 0
    ;;
--prebuilt)
    if [ ! -x "$BUNDLE/slimc" ] && [ -f "$BUNDLE.tar.xz" ]; then
        mkdir -p "$BUNDLE" && xz -dc "$BUNDLE.tar.xz" | tar -C "$BUNDLE" -xf -
    fi
    [ -x "$BUNDLE/slimc" ] || { echo "no $BUNDLE: run benches/gpu_check.sh --bundle on a machine with Rust" >&2; exit 1; }
    export LD_LIBRARY_PATH=$BUNDLE${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export CARGO_MANIFEST_DIR=$ROOT
    ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-}
    SLIMC=$BUNDLE/slimc
    run_test() { "$BUNDLE/$1" --test-threads 1; }
    run_bench() { "$BUNDLE/gpu" --bench; }
    ;;
build)
    . scripts/setup.sh
    cargo build --release --quiet --bin slimc
    cargo test --release --quiet --no-run --test kernels --test train_step 2>/dev/null
    cargo bench --quiet --no-run --bench gpu 2>/dev/null
    SLIMC=$ROOT/target/release/slimc
    run_test() { cargo test --release --quiet --test "$1" -- --test-threads 1; }
    run_bench() { cargo bench --quiet --bench gpu; }
    ;;
*)
    echo "usage: bash benches/gpu_check.sh [--bundle | --prebuilt]" >&2
    exit 2
    ;;
esac

# Every Vulkan driver on the machine, not only lavapipe (scripts/setup.sh points the loader at
# lavapipe alone, for CI); slimc takes a hardware adapter first.
icds=$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2>/dev/null | tr '\n' ':' || true)
if [ -n "$icds" ]; then export VK_ICD_FILENAMES=${icds%:}; else unset VK_ICD_FILENAMES; fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}

rm -rf "$OUT"
mkdir -p "$OUT"
report=$OUT/report.md
say() { echo "$@" | tee -a "$report"; }

say "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
say ""
say "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) threads"
if command -v nvidia-smi >/dev/null; then
    say "- nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | head -1)"
fi
say ""
say '```'
"$SLIMC" info --devices | tee -a "$report"
say '```'
adapter=$("$SLIMC" info --devices --json | python3 -c 'import json, sys
a = json.load(sys.stdin)
print("%s|%s" % (a[0]["name"], str(a[0]["hardware"]).lower()) if a else "|")')
name=${adapter%|*}
hardware=${adapter#*|}
[ -n "$name" ] || { say "no GPU adapter: nothing to check"; exit 1; }

# f32 peak (TFLOP/s, boost clock, no tensor cores) of common data-centre and desktop GPUs.
if [ -z "${GPU_PEAK_TFLOPS:-}" ]; then
    case "$name" in
    *H200* | *"H100 80GB HBM3"* | *"H100 SXM"*) GPU_PEAK_TFLOPS=66.9 ;;
    *H100*) GPU_PEAK_TFLOPS=51.2 ;;
    *A100*) GPU_PEAK_TFLOPS=19.5 ;;
    *L40S*) GPU_PEAK_TFLOPS=91.6 ;;
    *L40*) GPU_PEAK_TFLOPS=90.5 ;;
    *L4*) GPU_PEAK_TFLOPS=30.3 ;;
    *A10G*) GPU_PEAK_TFLOPS=31.2 ;;
    *A10*) GPU_PEAK_TFLOPS=31.2 ;;
    *T4*) GPU_PEAK_TFLOPS=8.1 ;;
    *V100*) GPU_PEAK_TFLOPS=15.7 ;;
    *"RTX 4090"*) GPU_PEAK_TFLOPS=82.6 ;;
    *"RTX 3090"*) GPU_PEAK_TFLOPS=35.6 ;;
    esac
fi
export GPU_PEAK_TFLOPS=${GPU_PEAK_TFLOPS:-}
say ""
say "Adapter under test: $name (hardware: $hardware; f32 peak: ${GPU_PEAK_TFLOPS:-unknown} TFLOP/s)"

status=0
step() {
    local title=$1
    shift
    local t0=$(date +%s)
    say ""
    say "## $title"
    say '```'
    if "$@" 2>&1 | tee -a "$report" | tail -25; then r=ok; else r=FAILED; status=1; fi
    say '```'
    say "$title: $r in $(($(date +%s) - t0)) s"
}

step "kernel suite on the adapter (tests/kernels.rs)" run_test kernels
step "one training step against Ultralytics (tests/train_step.rs)" run_test train_step
step "convolution throughput (benches/gpu.rs, GFLOP/s)" run_bench

if [ "$hardware" = true ]; then IMGSZ=${IMGSZ:-640} BATCH=${BATCH:-16}; else IMGSZ=${IMGSZ:-320} BATCH=${BATCH:-8}; fi
epoch() {
    local device=$1
    "$SLIMC" train yolo11n.yaml --data datasets/trees/trees.yaml --epochs 1 --imgsz "$IMGSZ" --batch "$BATCH" \
        --no-plots --device "$device" --project "$OUT" --name "train-$device" 2>&1 | tr '\r' '\n' | grep -E "epoch 1/1|error" | tail -2
}
say ""
say "## one epoch of slimc train on trees, imgsz $IMGSZ, batch $BATCH"
for device in gpu cpu; do
    line=$(epoch $device) || status=1
    rate=$(echo "$line" | grep -oE '[0-9.]+ img/s' | tail -1)
    say "- --device $device: ${rate:-failed} ($line)"
    [ -n "$rate" ] || status=1
done

say ""
say "GPU check: $([ $status = 0 ] && echo passed || echo FAILED) in $(($(date +%s) - start)) s"
exit $status
