"""The accuracy frontier (run by benches/accuracy.sh; not run by CI): slimc's slimming against what
users would do instead, at equal training budgets, on the benchmark set (scripts/benchset.sh).

Rows (TARGET is the share of the dense model's GFLOPs removed: 25, 45, 65):
  dense-sK           yolo11n from scratch, DENSE epochs, seeds 0, 1, 2 (the noise table)
  dense-more         dense-s0 trained SPARSE + FINETUNE more epochs (no pruning): the reference at
                     the pruned rows' budget
  sparse             dense-s0 sparse-trained SPARSE epochs (proximal L1, as ./run main), shared below
  groups-rT-sK       slimc's pipeline: sparse -> prune --policy groups to the target -> FINETUNE epochs
  seed-rT-s0         the same with --policy seed (the YOLOv11-Prune recipe's choice of channels)
  distill-rT-sK      groups, fine-tuned with distillation from dense-s0
  scratch-rT         groups' pruned architecture re-initialised, DENSE + SPARSE + FINETUNE epochs
  small-rT           Ultralytics' YOLO11 with its width cut to the target GFLOPs, trained by
                     Ultralytics for DENSE + SPARSE + FINETUNE epochs
  tp-rT              Torch-Pruning 1.6.1 on the Ultralytics model of dense-s0: BNScalePruner sparse
                     training SPARSE epochs (shared), pruned to the target, fine-tuned FINETUNE epochs
Seeds 1 and 2 of groups and distill at the two larger targets.

Every finished row leaves RESULTS/<row>.json (the commit, the CPU, wall time, parameters, GFLOPs,
mAP50, mAP50-95 of its final model); a row with a result is never run again, and a row's training
run interrupted midway resumes from its last.slim, so the bench continues across sessions. The
final models stay in WORK; their onnxruntime and slimc latencies (each timed in turns with the
dense reference's, `slimc latency`) are added to the results of the rows whose model is there and
that have none yet. The dense reference and the sparse model are kept as fp16 checkpoints in MODELS
(committed) so later rows start from the same weights. Two lanes run at once, one thread each:
slimc's rows and Ultralytics' rows. `--report` writes docs/benchmarks/accuracy.md and its figure
from the results.

Usage: python3 benches/accuracy.py [--rows NAME,...] [--lanes slimc,python] [--report]
(benches/accuracy.sh sets SLIMC and VENV and prepares what it needs.)
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks"
RESULTS = DOCS / "accuracy" / "results"
MODELS = DOCS / "accuracy" / "models"
WORK = ROOT / "runs" / "bench" / "accuracy"
SET = ROOT / "datasets" / "benchset"
DATA = SET / "detect.yaml"
SLIMC = Path(os.environ.get("SLIMC", ROOT / "target" / "release" / "slimc"))
VENV_PY = Path(os.environ.get("VENV", "/tmp/slimc-vs-ultralytics-venv")) / "bin" / "python"

IMGSZ, BATCH = 160, 16
DENSE, SPARSE, FINETUNE = 40, 5, 10
SR = ["--sr", "1e-2", "--sr-mode", "proximal", "--clip", "10"]
TARGETS = [25, 45, 65]
SEEDED_TARGETS = [45, 65]


def log(msg):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def run(cmd, logfile, threads=1, cwd=None):
    """Runs `cmd` (one thread) with its output into `logfile`; raises on failure."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as f:
        f.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        f.flush()
        r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {cmd[1]} failed ({r.returncode}); see {logfile}")


def slimc_json(*args):
    out = subprocess.run([str(SLIMC), *map(str, args), "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def machine():
    model = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name")), "?")
    flags = open("/proc/cpuinfo").read()
    kind = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "baseline")
    return f"{model} ({kind}, {os.cpu_count()} CPUs)"


def commit():
    """The commit the slimc binary was built from (benches/accuracy.sh says), else the checkout's."""
    if "SLIMC_COMMIT" in os.environ:
        return os.environ["SLIMC_COMMIT"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def done(row):
    return (RESULTS / f"{row}.json").exists()


def write_result(row, result):
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f".{row}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.rename(RESULTS / f"{row}.json")


def finish(row, model, extra, metrics=None):
    """Records a finished row: its final model kept as WORK/row/final.*, its size and validation
    (slimc's, or the baseline's own `metrics`)."""
    final = WORK / row / f"final{Path(model).suffix}"
    if Path(model) != final:
        subprocess.run(["cp", str(model), str(final)], check=True)
    if metrics is None:
        v = slimc_json("val", final, "--data", DATA, "--imgsz", IMGSZ, "--no-plots")
        info = slimc_json("info", final, "--imgsz", IMGSZ)
        metrics = {"parameters": info["parameters"], "gflops": info["gflops"], "map50": v["map50"], "map50_95": v["map"]}
    result = {"row": row, **metrics, "commit": commit(), "cpu": machine(), "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}"}
    result.update(extra)
    write_result(row, result)
    log(f"{row}: mAP50-95 {result['map50_95']:.4f}, {result['gflops']:.3f} GFLOPs")


def latencies():
    """Adds onnxruntime and slimc latencies (each timed in turns with the dense reference's) to
    every result whose final model is in WORK and that has none."""
    for p in sorted(RESULTS.glob("*.json")):
        r = json.loads(p.read_text())
        finals = sorted((WORK / r["row"]).glob("final.*"))
        if "ort_ms" in r or not finals or not (MODELS / "dense-seed0.pt").exists():
            continue
        try:
            lat = slimc_json("latency", MODELS / "dense-seed0.pt", finals[0], "--imgsz", IMGSZ)
        except subprocess.CalledProcessError as e:
            log(f"{r['row']}: no latency ({e.stderr.strip()})")
            continue
        dense, model = lat["models"]
        r.update(ort_ms=model["ort_ms"], slimc_ms=model["slimc_ms"], dense_ort_ms=dense["ort_ms"],
                 dense_slimc_ms=dense["slimc_ms"], latency_cpu=machine())
        write_result(r["row"], r)
        log(f"{r['row']}: onnxruntime {model['ort_ms']:.2f} ms, slimc {model['slimc_ms']:.2f} ms")


def epochs_done(row):
    csv = WORK / row / "results.csv"
    return max(0, len(csv.read_text().splitlines()) - 1) if csv.exists() else 0


def train(row, model, epochs, seed, *extra):
    """`slimc train` into WORK/row, resuming an interrupted run there; returns its best.slim (its
    last.slim for sparse training)."""
    last = WORK / row / "weights" / "last.slim"
    if epochs_done(row) >= epochs and last.exists():
        pass
    elif last.exists():
        run([SLIMC, "train", last, "--resume", "--device", "cpu"], WORK / f"{row}.log")
    else:
        subprocess.run(["rm", "-rf", str(WORK / row)], check=True)
        run([SLIMC, "train", model, "--data", DATA, "--imgsz", IMGSZ, "--batch", BATCH, "--epochs", epochs,
             "--seed", seed, "--device", "cpu", "--no-plots", "--project", WORK, "--name", row, *extra],
            WORK / f"{row}.log")
    return last if "--sr" in extra else WORK / row / "weights" / "best.slim"


def dense(seed):
    row = f"dense-s{seed}"
    t0 = time.time()
    model = train(row, "yolo11n.yaml", DENSE, seed)
    if seed == 0:
        MODELS.mkdir(parents=True, exist_ok=True)
        run([SLIMC, "export", model, "-o", MODELS / "dense-seed0.pt"], WORK / f"{row}.log")
        model = MODELS / "dense-seed0.pt"
    finish(row, model, {"method": "dense yolo11n (reference)", "target": 0, "seed": seed, "epochs": DENSE,
                        "seconds": time.time() - t0})


def dense_more():
    t0 = time.time()
    best = train("dense-more", MODELS / "dense-seed0.pt", SPARSE + FINETUNE, 0)
    finish("dense-more", best, {"method": "dense yolo11n, trained as long as the pruned rows", "target": 0,
                                "seed": 0, "epochs": DENSE + SPARSE + FINETUNE, "seconds": time.time() - t0})


def sparse():
    t0 = time.time()
    last = train("sparse", MODELS / "dense-seed0.pt", SPARSE, 0, *SR, "--warmup-epochs", "0", "--nbs", BATCH)
    run([SLIMC, "export", last, "-o", MODELS / "sparse.pt"], WORK / "sparse.log")
    finish("sparse", MODELS / "sparse.pt", {"method": "sparse training (not pruned)", "target": 0, "seed": 0,
                                            "epochs": DENSE + SPARSE, "seconds": time.time() - t0})


def pruned(policy, target):
    """The sparse model pruned to `target` % fewer GFLOPs (deterministic: made again when missing)."""
    out = WORK / f"pruned-{policy}-r{target}.slim"
    if not out.exists():
        run([SLIMC, "prune", MODELS / "sparse.pt", "--target-gflops", f"{100 - target}%", "--policy", policy,
             "-o", out], WORK / f"pruned-{policy}-r{target}.log")
    return out


def finetune(kind, target, seed):
    row = f"{kind}-r{target}-s{seed}"
    t0 = time.time()
    policy = "seed" if kind == "seed" else "groups"
    extra = ["--distill", MODELS / "dense-seed0.pt"] if kind == "distill" else []
    best = train(row, pruned(policy, target), FINETUNE, seed, *extra)
    names = {"groups": "slimc pipeline (groups)", "seed": "slimc pipeline (seed policy)",
             "distill": "slimc pipeline (groups) + distillation"}
    finish(row, best, {"method": names[kind], "target": target, "seed": seed,
                       "epochs": DENSE + SPARSE + FINETUNE, "seconds": time.time() - t0})


def scratch(target):
    row = f"scratch-r{target}"
    t0 = time.time()
    best = train(row, pruned("groups", target), DENSE + SPARSE + FINETUNE, 0, "--reinit")
    finish(row, best, {"method": "pruned architecture from scratch (Liu et al.)", "target": target, "seed": 0,
                        "epochs": DENSE + SPARSE + FINETUNE, "seconds": time.time() - t0})


def baseline(row, kind, target, extra):
    """A Python baseline (benches/accuracy_baselines.py) into WORK/row: metrics as Ultralytics
    validates them, GFLOPs by its get_flops (the unfused model, as `slimc info` counts), latency of
    its ONNX export."""
    out = WORK / row
    subprocess.run(["rm", "-rf", str(out)], check=True)
    t0 = time.time()
    run([VENV_PY, ROOT / "benches" / "accuracy_baselines.py", kind, "--data", DATA, "--imgsz", IMGSZ, "--batch",
         BATCH, "--seed", 0, "--threads", 1, "--target-gflops", f"{100 - target}%", "--out", out, *extra],
        WORK / f"{row}.log")
    r = json.loads((out / "result.json").read_text())
    names = {"small": "Ultralytics' smaller YOLO11 (width cut)", "tp": "Torch-Pruning 1.6.1 (BNScalePruner)"}
    metrics = {"parameters": r["parameters"], "gflops": r["gflops"], "map50": r["map50"], "map50_95": r["map50_95"]}
    finish(row, r["onnx"], {"method": names[kind], "target": target, "seed": 0, "epochs": DENSE + SPARSE + FINETUNE,
                            "seconds": time.time() - t0, "ultralytics": r}, metrics)


def small(target):
    baseline(f"small-r{target}", "small", target, ["--epochs", DENSE + SPARSE + FINETUNE])


def tp(target):
    while not (MODELS / "dense-seed0.pt").exists():
        time.sleep(60)
    # Torch-Pruning's default reg (1e-5) and slimc's sr (1e-2) both leave the gammas dense in
    # this budget under Ultralytics' AdamW (benches/accuracy_baselines.py); slimc's strength is given.
    # The first target's run trains the sparse stage; the others reuse it.
    first = WORK / f"tp-r{TARGETS[0]}"
    reuse = ["--sparse-from", first] if target != TARGETS[0] and (first / "sparse").exists() else []
    baseline(f"tp-r{target}", "tp", target, ["--dense", MODELS / "dense-seed0.pt", "--sparse-epochs", SPARSE,
                                             "--finetune-epochs", FINETUNE, "--reg", "1e-2", *reuse])


def lanes():
    """The two lanes' rows in order: (name, function)."""
    s = [("dense-s0", lambda: dense(0)), ("sparse", sparse), ("dense-more", dense_more)]
    for t in TARGETS:
        s += [(f"groups-r{t}-s0", lambda t=t: finetune("groups", t, 0)),
              (f"distill-r{t}-s0", lambda t=t: finetune("distill", t, 0)),
              (f"seed-r{t}-s0", lambda t=t: finetune("seed", t, 0))]
    s += [(f"scratch-r{t}", lambda t=t: scratch(t)) for t in TARGETS]
    s += [("dense-s1", lambda: dense(1)), ("dense-s2", lambda: dense(2))]
    for t in SEEDED_TARGETS:
        for k in (1, 2):
            s += [(f"groups-r{t}-s{k}", lambda t=t, k=k: finetune("groups", t, k)),
                  (f"distill-r{t}-s{k}", lambda t=t, k=k: finetune("distill", t, k))]
    p = [(f"small-r{t}", lambda t=t: small(t)) for t in TARGETS]
    p += [(f"tp-r{t}", lambda t=t: tp(t)) for t in TARGETS]
    return {"slimc": s, "python": p}


def run_lane(name, rows, only, failures):
    for row, fn in rows:
        if done(row) or (only and row not in only):
            continue
        log(f"{name}: {row}")
        try:
            fn()
        except Exception as e:  # a failed row is reported; the lane goes on with the next
            failures.append(f"{row}: {e}")
            log(f"{name}: {row} FAILED: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", help="only these rows (comma-separated)")
    ap.add_argument("--lanes", default="slimc,python")
    ap.add_argument("--report", action="store_true", help="only write the report from the results")
    a = ap.parse_args()
    if not a.report:
        only = set(a.rows.split(",")) if a.rows else None
        failures = []
        threads = [threading.Thread(target=run_lane, args=(n, rows, only, failures))
                   for n, rows in lanes().items() if n in a.lanes.split(",")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for f in failures:
            log(f"FAILED {f}")
    latencies()
    run([VENV_PY, ROOT / "benches" / "accuracy_report.py", RESULTS, DOCS], WORK / "report.log")
    log(f"report: {DOCS / 'accuracy.md'}")


if __name__ == "__main__":
    sys.exit(main())
