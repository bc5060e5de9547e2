#!/usr/bin/env bash
# Data-parallel training figures on this machine (not run by CI). Reports go to
# runs/bench/distributed/ (report-speed.md, report-sparsity.md).
#   benches/distributed.sh speed     images/s of one epoch of yolo11n on trees (imgsz 320, global
#                                    batch 8): 1 process x 2 threads against 2 ranks x 1 thread;
#                                    bytes all-reduced per optimizer step and the all-reduce's time
#                                    for yolo11n and yolo11x (examples/collective_time.rs)
#   benches/distributed.sh sparsity  the main job's sparse stage (from its trained model: proximal,
#                                    sr 1e-2, clip 10, 10 epochs, no warm-up, nbs 8) and the
#                                    subgradient mode over 30 epochs, each in one process and under
#                                    mpirun -np 2 with the same global batch of 8: the share of
#                                    |gamma| < 1e-2 after the last epoch, for each seed of SEEDS
#                                    (default "0 1 2"): one-process runs differ by seed too
# The trained model comes from runs/main/pipeline/1-train/weights/best.slim (./run main).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/runs/bench/distributed}
DATA=$ROOT/datasets/trees/trees.yaml
. scripts/setup.sh
cargo build --release --quiet --features mpi --bin slimc --example collective_time
mkdir -p "$OUT"
cp target/release/slimc "$OUT/slimc"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe -np 2)
SEEDS=${SEEDS:-0 1 2}
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -1)

# The img/s of the last "epoch N/M" line of a log.
rate() { grep -o '[0-9.]* img/s' "$1" | tail -1 | cut -d' ' -f1; }
# The sparsity share of the last epoch (percent) of a log.
share() { grep -o 'gamma<1e-2 [0-9.]*%' "$1" | tail -1 | cut -d' ' -f2 | tr -d %; }

speed() {
    local common=(train yolo11n.yaml --data "$DATA" --imgsz 320 --batch 8 --epochs 1 --no-plots --device cpu --project "$OUT")
    rm -rf "$OUT/speed-"*
    RAYON_NUM_THREADS=2 "$OUT/slimc" "${common[@]}" --name speed-1x2 2> "$OUT/speed-1x2.log"
    RAYON_NUM_THREADS=1 "${MPIRUN[@]}" "$OUT/slimc" "${common[@]}" --name speed-2x1 2> "$OUT/speed-2x1.log"
    # The same 2-rank epoch with the op profile: the all-reduce's share of each rank's step.
    SLIMC_PROFILE_OPS=1 RAYON_NUM_THREADS=1 "${MPIRUN[@]}" "$OUT/slimc" "${common[@]}" --name speed-2x1-profile \
        2> "$OUT/speed-2x1-profile.log"
    "${MPIRUN[@]}" target/release/examples/collective_time yolo11n.yaml yolo11x.yaml > "$OUT/collective.txt"
    {
        echo "# Data-parallel speed on this machine ($CPU, $(nproc) cores)"
        echo
        echo "| yolo11n, trees, imgsz 320, global batch 8, one epoch | training-loop images/s |"
        echo "|---|---:|"
        echo "| 1 process x 2 threads | $(rate "$OUT/speed-1x2.log") |"
        echo "| 2 ranks x 1 thread (mpirun -np 2) | $(rate "$OUT/speed-2x1.log") |"
        echo
        echo "The all-reduce in each rank's training step over the epoch (SLIMC_PROFILE_OPS; seconds, share of the"
        echo "step's op time, calls; the time includes waiting for the other rank):"
        echo
        grep -E '^all_reduce ' "$OUT/speed-2x1-profile.log" | sed 's/^/    /'
        echo
        echo "All-reduce per optimizer step, 2 ranks on this machine (shared memory):"
        echo
        sed 's/^/    /' "$OUT/collective.txt"
    } > "$OUT/report-speed.md"
    cat "$OUT/report-speed.md"
}

sparsity() {
    local trained=${TRAINED:-$ROOT/runs/main/pipeline/1-train/weights/best.slim}
    [ -f "$trained" ] || { echo "no $trained: run ./run main first (or set TRAINED)" >&2; exit 1; }
    local common=(train "$trained" --data "$DATA" --imgsz 320 --batch 8 --nbs 8 --warmup-epochs 0 --sr 1e-2 --clip 10
        --no-plots --device cpu --project "$OUT")
    local modes=("proximal 10" "subgradient 30")
    for mode in "${modes[@]}"; do
        set -- $mode
        for s in $SEEDS; do
            # A finished run is kept (delete its log to redo it).
            local one="$OUT/sparse-$1-1-seed$s" two="$OUT/sparse-$1-2-seed$s"
            if ! grep -q "epochs completed" "$one.log" 2>/dev/null; then
                rm -rf "$one"
                RAYON_NUM_THREADS=2 "$OUT/slimc" "${common[@]}" --sr-mode "$1" --epochs "$2" --seed "$s" \
                    --name "$(basename "$one")" 2> "$one.log"
            fi
            if ! grep -q "epochs completed" "$two.log" 2>/dev/null; then
                rm -rf "$two"
                RAYON_NUM_THREADS=1 "${MPIRUN[@]}" "$OUT/slimc" "${common[@]}" --sr-mode "$1" --epochs "$2" --seed "$s" \
                    --name "$(basename "$two")" 2> "$two.log"
            fi
        done
    done
    {
        echo "# Sparsity under data parallelism ($CPU, $(nproc) cores)"
        echo
        echo "Share of BN gammas with |gamma| < 1e-2 after the last epoch, global batch 8 in both runs (seed: shuffle"
        echo "and augmentation)."
        echo
        echo "| sparse stage | seed | one process | mpirun -np 2 | difference (points) |"
        echo "|---|---:|---:|---:|---:|"
        for mode in "${modes[@]}"; do
            set -- $mode
            local ones=() twos=()
            for s in $SEEDS; do
                local a b
                a=$(share "$OUT/sparse-$1-1-seed$s.log"); b=$(share "$OUT/sparse-$1-2-seed$s.log")
                ones+=("$a"); twos+=("$b")
                echo "| $1, sr 1e-2, $2 epochs | $s | $a% | $b% | $(python3 -c "print(f'{abs($a - $b):.1f}')") |"
            done
            python3 - "$1" "${ones[*]}" "${twos[*]}" <<'PY'
import statistics as st, sys
mode, one, two = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
sd = lambda v: st.stdev(v) if len(v) > 1 else 0.0
print(f"| {mode}: mean (sd) over seeds | | {st.mean(one):.1f}% ({sd(one):.1f}) | {st.mean(two):.1f}% ({sd(two):.1f}) | "
      f"{abs(st.mean(one) - st.mean(two)):.1f} |")
PY
        done
    } > "$OUT/report-sparsity.md"
    cat "$OUT/report-sparsity.md"
}

case "${1:-}" in
    speed) speed ;;
    sparsity) sparsity ;;
    *) echo "usage: benches/distributed.sh speed|sparsity" >&2; exit 2 ;;
esac
