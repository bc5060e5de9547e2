#!/usr/bin/env bash
# slimc against Ultralytics 8.3.253 on PyTorch (CPU), side by side in one run on this machine
# (not run by CI): yolo11n from scratch on the bundled trees dataset at imgsz 320, batch 8, for
# EPOCHS epochs (default 4; the first is discarded), then validation of each run's best model.
# Figures, each as slimc / Ultralytics speed ratio:
#   - seconds per epoch, validation included;
#   - training-loop images/s (data loading, augmentation, forward, backward, optimizer, EMA);
#   - val images/s on the val split (slimc: the whole `slimc val` process; Ultralytics: model.val()).
# Ultralytics and PyTorch go into a throwaway venv ($VENV, default /tmp/slimc-vs-ultralytics-venv).
# Usage: bash benches/vs_ultralytics.sh [EPOCHS]    (results in runs/bench/vs-ultralytics/)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
EPOCHS=${1:-4}
IMGSZ=320
BATCH=8
OUT=$ROOT/runs/bench/vs-ultralytics
. benches/ultralytics_venv.sh
DATA=$ROOT/datasets/trees/trees.yaml
. scripts/setup.sh
cargo build --release --quiet
ultralytics_venv
rm -rf "$OUT"
mkdir -p "$OUT"
threads=$(nproc)
echo "machine: $threads cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

echo "slimc: training $EPOCHS epochs ..."
# Plots off on both sides (Ultralytics runs with plots=False).
target/release/slimc train yolo11n.yaml --data "$DATA" --epochs "$EPOCHS" --imgsz $IMGSZ --batch $BATCH --no-plots \
    --device cpu --project "$OUT" --name slimc 2> "$OUT/slimc-train.log"
t0=$(date +%s.%N)
target/release/slimc val "$OUT/slimc/weights/best.slim" --data "$DATA" --imgsz $IMGSZ --batch 16 --device cpu --no-plots \
    --json > "$OUT/slimc-val.json" 2> "$OUT/slimc-val.log"
t1=$(date +%s.%N)
echo "$t0 $t1" > "$OUT/slimc-val.time"

echo "Ultralytics: training $EPOCHS epochs ..."
# Ultralytics resolves the YAML's relative `path` against the working directory: give it the
# dataset's absolute folder.
sed "s|^path: .*|path: $ROOT/datasets/trees|" "$DATA" > "$OUT/trees.yaml"
(cd "$OUT" && OMP_NUM_THREADS=$threads "$VENV/bin/python" "$ROOT/benches/vs_ultralytics.py" "$OUT/trees.yaml" "$EPOCHS" $IMGSZ $BATCH \
    "$OUT" "$OUT/ultralytics.json" > "$OUT/ultralytics.log" 2>&1)

python3 - "$OUT" "$ROOT/datasets/trees/images/val" <<'PY'
import csv, json, os, re, sys
out, val_dir = sys.argv[1], sys.argv[2]
u = json.load(open(f"{out}/ultralytics.json"))
rows = list(csv.DictReader(open(f"{out}/slimc/results.csv")))
t = [float(r["time"]) for r in rows]
s_epoch = [b - a for a, b in zip(t[:-1], t[1:])]
s_rate = [float(m) for m in re.findall(r"\| ([0-9.]+) img/s", open(f"{out}/slimc-train.log").read())][1:]
u_epoch = u["epoch_s"]
u_rate = [u["train_images"] / s for s in u["loop_s"][1:]]
t0, t1 = map(float, open(f"{out}/slimc-val.time").read().split())
s_val_s = t1 - t0
n_val = len(os.listdir(val_dir))
mean = lambda v: sum(v) / len(v)
fig = {
    "seconds per epoch (val included)": (mean(s_epoch), mean(u_epoch), mean(u_epoch) / mean(s_epoch)),
    "training loop images/s": (mean(s_rate), mean(u_rate), mean(s_rate) / mean(u_rate)),
    "val images/s": (n_val / s_val_s, n_val / u["val_s"], u["val_s"] / s_val_s),
}
lines = ["| figure | slimc | Ultralytics | slimc speed / Ultralytics' |", "|---|---:|---:|---:|"]
lines += [f"| {k} | {a:.2f} | {b:.2f} | {r:.2f}x |" for k, (a, b, r) in fig.items()]
print("\n".join(lines))
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
json.dump({k: {"slimc": a, "ultralytics": b, "ratio": r} for k, (a, b, r) in fig.items()},
          open(f"{out}/summary.json", "w"), indent=1)
PY
