"""The accuracy frontier's two Python baselines (issue 38), run in the throwaway Ultralytics venv
(benches/ultralytics_venv.sh; needs ultralytics==8.3.253, torch-pruning==1.6.1, onnx, onnxruntime).
Each subcommand writes OUT/result.json.

  small: "what a user does instead of pruning" - Ultralytics' own YOLO11 (yolo11.yaml of the installed
         package, nc 10, n's depth 0.50) with its width multiple cut from n's 0.25, chosen by bisection
         so that get_flops(model, imgsz) is as close as possible to the target; trained from scratch by
         Ultralytics.
  tp:    Torch-Pruning 1.6.1 on the Ultralytics model, "the peer", after its YOLOv8 example
         (examples/yolov8/yolov8_pruning.py): C2f/C3k2's chunk(2) replaced by two convolutions,
         BNScalePruner (network slimming, global, BNScaleImportance) sparse training by Ultralytics'
         trainer from the dense checkpoint, one-shot pruning to the GFLOPs target (ratio bisected),
         fine-tuning by Ultralytics' trainer with full-precision checkpoints.

Usage:
  python benches/accuracy_baselines.py small --data datasets/benchset/detect.yaml --target-gflops 55% \
      --epochs 30 --seed 0 --out runs/bench/accuracy/small-55
  python benches/accuracy_baselines.py tp --data datasets/benchset/detect.yaml --dense dense.pt \
      --target-gflops 55% --sparse-epochs 10 --finetune-epochs 30 --seed 0 --out runs/bench/accuracy/tp-55
  python benches/accuracy_baselines.py tp ... --target-gflops 35% --sparse-from runs/bench/accuracy/tp-55 \
      --out runs/bench/accuracy/tp-35          # reuse tp-55's sparse stage (OUT/sparse/weights/last.pt)

--target-gflops takes GFLOPs at --imgsz or a percentage: of yolo11n (nc from the data) for `small`,
of the dense checkpoint for `tp`. GFLOPs are Ultralytics' own get_flops (thop: 2 x multiply-adds of
the convolutions counted per module, at a stride-sized input scaled to imgsz; attention's matmuls
are not counted). Development only: --fraction F trains on that share of the training set and
--val-images N validates on the first N validation images (both recorded in result.json).

The tp checkpoints (sparse, pruned.pt, best.pt) hold this file's C2fSplit class, pickled as
__main__.C2fSplit: to load them in another program, `import accuracy_baselines` first (benches/ on
PYTHONPATH), then YOLO(path).
"""

import argparse
import copy
import importlib.metadata
import io
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn as nn
import yaml as pyyaml

import ultralytics
import ultralytics.utils.torch_utils as ul_torch_utils
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.modules import C2f
from ultralytics.nn.modules.block import Attention
from ultralytics.nn.modules.head import Detect
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG_DICT, DEFAULT_CFG_KEYS
from ultralytics.utils.torch_utils import get_flops, unwrap_model


# --------------------------------------------------------------------------------------------
# common


def log(msg):
    print(f"[accuracy_baselines {datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def set_threads(n):
    torch.set_num_threads(n)
    # Ultralytics' select_device resets torch's threads to its NUM_THREADS (cores - 1) for CPU
    # training; make it keep ours.
    ul_torch_utils.NUM_THREADS = n


def versions():
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
        "torch-pruning": _dist_version("torch-pruning"),
        "onnx": _dist_version("onnx"),
        "onnxruntime": _dist_version("onnxruntime"),
    }


def _dist_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def prepare_data(data, out, val_images=0):
    """A copy of the set's YAML with its path made absolute (Ultralytics resolves a relative path
    against its own datasets dir), optionally with a short validation list (development only)."""
    src = Path(data).resolve()
    d = pyyaml.safe_load(src.read_text())
    root = (src.parent / d.get("path", ".")).resolve()
    d["path"] = str(root)
    if val_images:
        imgs = sorted(p for p in (root / d["val"]).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        lst = out / "val_subset.txt"
        lst.write_text("".join(f"{p}\n" for p in imgs[:val_images]))
        d["val"] = str(lst)
    dst = out / "data.yaml"
    dst.write_text(pyyaml.safe_dump(d, sort_keys=False))
    return dst, len(d["names"])


def parse_target(s, reference):
    s = str(s).strip()
    if s.endswith("%"):
        return float(s[:-1]) / 100 * reference
    return float(s)


def gflops(model, imgsz):
    return float(get_flops(model, imgsz))


def gflops_fused(model, imgsz):
    """The same count with BN folded into the convolutions (as in the ONNX export): ~2-3 % lower."""
    return gflops(copy.deepcopy(model).fuse(verbose=False), imgsz)


def n_params(model):
    return int(sum(p.numel() for p in model.parameters()))


def train_kwargs(args, data_yaml, out, name, epochs):
    """Ultralytics' training settings, as benches/train_parity.sh calls it."""
    return dict(data=str(data_yaml), epochs=epochs, imgsz=args.imgsz, batch=args.batch, device="cpu", workers=0,
                project=str(out), name=name, exist_ok=True, amp=False, plots=False, seed=args.seed,
                deterministic=True, optimizer="auto", fraction=args.fraction, verbose=False)


def validate(weights, args, data_yaml, out, name):
    """Ultralytics' model.val() with its defaults (batch 16, conf 0.001, iou 0.7)."""
    t = time.time()
    m = YOLO(str(weights))
    r = m.val(data=str(data_yaml), imgsz=args.imgsz, batch=16, conf=0.001, iou=0.7, device="cpu", workers=0,
              plots=False, project=str(out), name=name, exist_ok=True, verbose=False)
    return {"mAP50": float(r.box.map50), "mAP50-95": float(r.box.map), "precision": float(r.box.mp),
            "recall": float(r.box.mr), "wall_s": round(time.time() - t, 1)}


def export_onnx(weights, args):
    """ONNX of best.pt at imgsz, opset 17, batch 1 static, not simplified; then loaded and run once
    by onnxruntime."""
    t = time.time()
    path = YOLO(str(weights)).export(format="onnx", imgsz=args.imgsz, opset=17, simplify=False, dynamic=False)
    res = {"onnx": str(Path(path).resolve()), "export_s": round(time.time() - t, 1)}
    try:
        import numpy as np
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        y = sess.run(None, {inp.name: np.zeros(inp.shape, dtype=np.float32)})
        res["onnxruntime"] = {"loaded": True, "input": [inp.name, inp.shape],
                              "outputs": [list(o.shape) for o in y]}
    except Exception as e:  # recorded, not fatal: slimc verify can check it instead
        res["onnxruntime"] = {"loaded": False, "error": repr(e)}
    return res


def epoch_times(run_dir):
    """Seconds per epoch from results.csv's cumulative `time` column (training + validation)."""
    f = Path(run_dir) / "results.csv"
    if not f.exists():
        return []
    rows = [l.split(",") for l in f.read_text().strip().splitlines()]
    head = [h.strip() for h in rows[0]]
    if "time" not in head:
        return []
    i = head.index("time")
    cum = [float(r[i]) for r in rows[1:]]
    return [round(b - a, 1) for a, b in zip([0.0] + cum[:-1], cum)]


def write_result(out, result):
    (out / "result.json").write_text(json.dumps(result, indent=2))
    log(f"wrote {out / 'result.json'}")


def common_settings(args):
    s = {k: v for k, v in vars(args).items() if k != "func"}
    s["versions"] = versions()
    s["dev_subset"] = bool(args.fraction < 1.0 or args.val_images)
    return s


# --------------------------------------------------------------------------------------------
# small: Ultralytics' YOLO11 with a cut width


def yolo11_yaml(nc, width, depth=0.50, max_channels=1024):
    src = Path(ultralytics.__file__).parent / "cfg/models/11/yolo11.yaml"
    d = pyyaml.safe_load(src.read_text())
    d["nc"] = nc
    # One scale, keyed `n` so that parse_model treats it as n (C3k2's c3k stays off in the P3-P4
    # blocks, as for n/s); the file name below (yolo11n-...) makes Ultralytics pick this key.
    d["scales"] = {"n": [depth, width, max_channels]}
    return d


def small_model(nc, width):
    return DetectionModel(cfg=yolo11_yaml(nc, width), nc=nc, verbose=False)


def small_flops(nc, width, imgsz, cache):
    key = round(width, 10)
    if key not in cache:
        try:
            m = small_model(nc, width)
            cache[key] = (gflops(m, imgsz), n_params(m))
        except ZeroDivisionError:  # C2PSA's head count c//64 reaches 0 below width ~0.12
            cache[key] = (None, None)
    return cache[key]


def choose_width(nc, target, imgsz, lo=0.05, hi=0.25, tol=1e-5):
    """Bisect the width multiple (in (lo, hi]) for the GFLOPs closest to target. GFLOPs are a
    non-decreasing step function of the width (channels rounded up to multiples of 8)."""
    cache, trace = {}, []

    def f(w):
        g, p = small_flops(nc, w, imgsz, cache)
        trace.append({"width": round(w, 6), "gflops": g})
        return g

    # Lowest width that builds at all.
    if f(lo) is None:
        a, b = lo, hi
        while b - a > tol:
            mid = (a + b) / 2
            a, b = (mid, b) if f(mid) is None else (a, mid)
        lo = b
    if f(hi) <= target:
        a = b = hi
    elif f(lo) > target:
        a = b = lo
    else:
        a, b = lo, hi  # f(a) <= target < f(b)
        while b - a > tol:
            mid = (a + b) / 2
            a, b = (mid, b) if f(mid) <= target else (a, mid)
    cands = [(w, f(w)) for w in {a, b}]
    w, g = min(cands, key=lambda c: (abs(c[1] - target), c[0]))
    # The shortest decimal width that builds the same architecture (the same GFLOPs), to report.
    for digits in range(2, 8):
        r = round(w, digits)
        if f(r) == g:
            w = r
            break
    return w, g, cands, trace


def cmd_small(args):
    t0 = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_yaml, nc = prepare_data(args.data, out, args.val_images)
    ref = small_model(nc, 0.25)
    ref_g = gflops(ref, args.imgsz)
    target = parse_target(args.target_gflops, ref_g)
    width, g, cands, trace = choose_width(nc, target, args.imgsz)
    log(f"yolo11n (nc {nc}) {ref_g:.4f} GFLOPs at {args.imgsz}; target {target:.4f}: width {width} -> {g:.4f} GFLOPs")
    cfg = out / f"yolo11n-w{width}.yaml"
    cfg.write_text(pyyaml.safe_dump(yolo11_yaml(nc, width), sort_keys=False))
    if args.dry_run:
        write_result(out, {"method": "small", "yaml": str(cfg), "width_multiple": width, "gflops": g,
                           "target_gflops": target, "yolo11n_gflops": ref_g, "candidates": cands,
                           "bisection": trace, "settings": common_settings(args)})
        return
    model = YOLO(str(cfg))
    g_built = gflops(model.model, args.imgsz)
    assert abs(g_built - g) < 1e-9, (g_built, g)
    t1 = time.time()
    kw = train_kwargs(args, data_yaml, out, "train", args.epochs)
    model.train(**kw)
    train_s = time.time() - t1
    run = out / "train"
    best = run / "weights" / "best.pt"
    ck = torch.load(best, map_location="cpu", weights_only=False)
    val = validate(best, args, data_yaml, out, "val")
    onnx = export_onnx(best, args)
    m = YOLO(str(best)).model
    write_result(out, {
        "method": "small",
        "params": n_params(m), "gflops": gflops(m, args.imgsz), "gflops_fused": gflops_fused(m, args.imgsz),
        "imgsz": args.imgsz, "width_multiple": width, "depth_multiple": 0.50, "max_channels": 1024,
        "target_gflops": target, "yolo11n_gflops": ref_g, "yolo11n_params": n_params(ref),
        "width_candidates": cands, "bisection_evals": len(trace),
        "yaml": str(cfg), "best_pt": str(best),
        "mAP50": val["mAP50"], "mAP50-95": val["mAP50-95"], "val": val,
        "trainer_best_epoch_metrics": ck.get("train_metrics"),
        **onnx,
        "epochs": args.epochs, "epoch_s": epoch_times(run), "train_s": round(train_s, 1),
        "wall_s": round(time.time() - t0, 1),
        "train_kwargs": kw, "settings": common_settings(args),
    })


# --------------------------------------------------------------------------------------------
# tp: Torch-Pruning 1.6.1, after its YOLOv8 example


class C2fSplit(nn.Module):
    """C2f (and its subclass C3k2) with cv1's output chunk(2) computed by two convolutions: cv0
    carries the first half of cv1's filters and BN, cv1 the second (the example's C2f_v2 idea), so
    that Torch-Pruning can prune the halves independently. m and cv2 are the original modules."""

    def __init__(self, c2f):
        super().__init__()
        half = c2f.cv1.conv.out_channels // 2
        self.cv0 = _conv_rows(c2f.cv1, 0, half)
        self.cv1 = _conv_rows(c2f.cv1, half, 2 * half)
        self.m = c2f.m
        self.cv2 = c2f.cv2
        self.c = half
        # Ultralytics' bookkeeping that DetectionModel's forward and its tools read.
        for k in ("f", "i", "type", "np"):
            if hasattr(c2f, k):
                setattr(self, k, getattr(c2f, k))
        self.type = f"C2fSplit({type(c2f).__name__})"

    def forward(self, x):
        y = [self.cv0(x), self.cv1(x)]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


# Pickled as __main__.C2fSplit, as the example's C2f_v2 is. (Not as accuracy_baselines.C2fSplit: where a
# checkpoint names a module that is not importable, Ultralytics' loader pip-installs a package of that
# name; a class missing from __main__ just fails.) Imported, this file puts the class into __main__ so
# that the importing program can load the checkpoints.
C2fSplit.__module__ = "__main__"
if __name__ != "__main__":
    setattr(sys.modules["__main__"], "C2fSplit", C2fSplit)


def _conv_rows(conv, a, b):
    """A copy of an Ultralytics Conv (conv + BN + act) keeping output channels a:b."""
    new = copy.deepcopy(conv)
    c, bn = new.conv, new.bn
    c.weight = nn.Parameter(conv.conv.weight.data[a:b].clone())
    if c.bias is not None:
        c.bias = nn.Parameter(conv.conv.bias.data[a:b].clone())
    c.out_channels = b - a
    bn.weight = nn.Parameter(conv.bn.weight.data[a:b].clone())
    bn.bias = nn.Parameter(conv.bn.bias.data[a:b].clone())
    bn.running_mean = conv.bn.running_mean[a:b].clone()
    bn.running_var = conv.bn.running_var[a:b].clone()
    bn.num_features = b - a
    return new


def replace_c2f(module):
    n = 0
    for name, child in module.named_children():
        if isinstance(child, C2f):
            setattr(module, name, C2fSplit(child))
            n += 1
        else:
            n += replace_c2f(child)
    return n


def _flat(o):
    if isinstance(o, torch.Tensor):
        return [o]
    if isinstance(o, (list, tuple)):
        return [t for x in o for t in _flat(x)]
    if isinstance(o, dict):
        return [t for x in o.values() for t in _flat(x)]
    return []


def output_diff(a, b, imgsz, seed=0):
    """Largest absolute difference of every output tensor (eval mode: decoded boxes and class
    scores, and the raw per-level maps) of two models on one random input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, imgsz, imgsz, generator=g)
    a.eval(), b.eval()
    with torch.no_grad():
        ya, yb = _flat(a(x)), _flat(b(x))
    assert len(ya) == len(yb) and all(p.shape == q.shape for p, q in zip(ya, yb))
    raw = max(float((p - q).abs().max()) for p, q in zip(ya[1:], yb[1:]))
    dec = float((ya[0] - yb[0]).abs().max())
    rel = float(((ya[0] - yb[0]).abs() / ya[0].abs().clamp_min(1.0)).max())
    return {"raw_maps_max_abs": raw, "decoded_max_abs": dec, "decoded_max_rel": rel,
            "decoded_max_value": float(ya[0].abs().max())}


def ignored_layers(model, ignore_detect="outputs"):
    """What Torch-Pruning must leave alone: the Detect head's last convolutions (box distribution
    cv2[i][2], class logits cv3[i][2]) and its DFL, whose channels are the model's outputs; and
    C2PSA's Attention modules (qkv, proj, pe), whose channels are reshaped into heads. With
    ignore_detect="all" the whole Detect head is ignored, as the YOLOv8 example does."""
    det = model.model[-1]
    assert isinstance(det, Detect)
    if ignore_detect == "all":
        ign = [det]
    else:
        ign = [det.dfl] + [s[-1] for s in det.cv2] + [s[-1] for s in det.cv3]
    ign += [m for m in model.modules() if isinstance(m, Attention)]
    return ign


def make_pruner(model, imgsz, ratio, reg, ignore_detect, round_to=None):
    import torch_pruning as tp

    # Traced in training mode as the example does (Detect returns its raw maps); BN running
    # statistics are restored afterwards, since the tracing forward updates them.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    pruner = tp.pruner.BNScalePruner(
        model,
        torch.zeros(1, 3, imgsz, imgsz),
        importance=tp.importance.BNScaleImportance(),
        reg=reg,
        global_pruning=True,
        pruning_ratio=ratio,
        iterative_steps=1,
        round_to=round_to,
        ignored_layers=ignored_layers(model, ignore_detect),
    )
    model.load_state_dict(state)
    return pruner


def bn_stats(model, pruner=None, thresh=1e-2):
    ign = set(id(m) for m in pruner.ignored_layers) if pruner is not None else set()
    allg, regg = [], []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            g = m.weight.detach().abs().flatten()
            allg.append(g)
            if id(m) not in ign:
                regg.append(g)
    allg, regg = torch.cat(allg), torch.cat(regg)
    return {"gamma_lt_1e-2_all": float((allg < thresh).float().mean()),
            "gamma_lt_1e-2_regularized": float((regg < thresh).float().mean()),
            "gamma_count_all": int(allg.numel()), "gamma_count_regularized": int(regg.numel()),
            "gamma_lt_1e-1_regularized": float((regg < 0.1).float().mean()),
            "gamma_p10_regularized": float(regg.quantile(0.1)),
            "gamma_median_regularized": float(regg.median())}


def strip_fp32(f):
    """Ultralytics' strip_optimizer without its cast to FP16: the EMA becomes the model."""
    x = torch.load(f, map_location="cpu", weights_only=False)
    if x.get("ema") is not None:
        x["model"] = x["ema"]
    m = x["model"]
    if hasattr(m, "args"):
        m.args = dict(m.args)
    if hasattr(m, "criterion"):
        m.criterion = None
    for p in m.parameters():
        p.requires_grad = False
    args = {**DEFAULT_CFG_DICT, **x.get("train_args", {})}
    for k in ("optimizer", "best_fitness", "ema", "updates", "scaler"):
        x[k] = None
    x["epoch"] = -1
    x["train_args"] = {k: v for k, v in args.items() if k in DEFAULT_CFG_KEYS}
    torch.save(x, f)


class KeepTrainer(DetectionTrainer):
    """Ultralytics' detection trainer training the model it is given (not one rebuilt from its
    YAML), saving full-precision checkpoints, optionally calling a function right before every
    optimizer step (Torch-Pruning's regularize), and optionally skipping the final validation of
    best.pt (this script validates it itself)."""

    keep_model = None
    before_step = None
    final_val = True
    steps = 0

    def get_model(self, cfg=None, weights=None, verbose=True):
        return self.keep_model

    def save_model(self):
        # As Ultralytics 8.3.253 saves, without the .half() of the EMA (and of the optimizer state).
        buf = io.BytesIO()
        torch.save({
            "epoch": self.epoch,
            "best_fitness": self.best_fitness,
            "model": None,
            "ema": copy.deepcopy(unwrap_model(self.ema.ema)),
            "updates": self.ema.updates,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scaler": self.scaler.state_dict(),
            "train_args": vars(self.args),
            "train_metrics": {**self.metrics, **{"fitness": self.fitness}},
            "train_results": self.read_results_csv(),
            "date": datetime.now().isoformat(),
            "version": ultralytics.__version__,
        }, buf)
        data = buf.getvalue()
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.last.write_bytes(data)
        if self.best_fitness == self.fitness:
            self.best.write_bytes(data)

    def final_eval(self):
        for f in (self.last, self.best):
            if f.exists():
                strip_fp32(f)
        if self.final_val and self.best.exists():
            self.validator.args.plots = self.args.plots
            self.metrics = self.validator(model=self.best)
            self.metrics.pop("fitness", None)
            self.run_callbacks("on_fit_epoch_end")


def train_keep(model, kw, before_step=None, final_val=False):
    trainer = KeepTrainer(overrides=kw)
    trainer.keep_model = model
    trainer.final_val = final_val
    if before_step is not None:
        def hook(tr):
            # After Ultralytics' unscale and clip_grad_norm_(10), right before optimizer.step().
            def pre(opt, a, k):
                before_step(tr.model)
                tr.steps += 1
            tr.optimizer.register_step_pre_hook(pre)
        trainer.add_callback("on_pretrain_routine_end", hook)
    trainer.train()
    assert trainer.model is model or unwrap_model(trainer.model) is model, "the trainer replaced the model"
    return trainer


def save_model_pt(model, path, args):
    """A full-precision Ultralytics checkpoint of an in-memory model (YOLO(path) loads it)."""
    m = copy.deepcopy(model).float()
    m.criterion = None
    for p in m.parameters():
        p.requires_grad = False
    train_args = dict(getattr(m, "args", {}) or {})
    train_args.update(imgsz=args.imgsz, task="detect")
    torch.save({"model": m, "ema": None, "epoch": -1, "train_args": train_args,
                "date": datetime.now().isoformat(), "version": ultralytics.__version__}, path)


def load_model_pt(path):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    m = ck.get("ema") if ck.get("ema") is not None else ck["model"]
    return m.float(), ck


def cmd_tp(args):
    import torch_pruning as tp  # noqa: F401  (fails early if missing)

    t0 = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_yaml, nc = prepare_data(args.data, out, args.val_images)
    times = {}

    # 1. the sparse stage (or a previous run's)
    if args.sparse_from:
        src = Path(args.sparse_from).resolve()
        sparse_pt = src / "sparse" / "weights" / "last.pt"
        sparse_info = json.loads((src / "sparse.json").read_text())
        if sparse_info["sparse_epochs"] != args.sparse_epochs or sparse_info["reg"] != args.reg:
            log(f"WARNING: --sparse-from {src} was trained with sparse_epochs {sparse_info['sparse_epochs']} "
                f"reg {sparse_info['reg']}, not {args.sparse_epochs} / {args.reg}; using it as it is")
        sparse_info = {**sparse_info, "reused_from": str(src)}
        log(f"reusing the sparse stage of {src}")
    else:
        t = time.time()
        dense = YOLO(args.dense).model.float()
        dense_g, dense_p = gflops(dense, args.imgsz), n_params(dense)
        model = copy.deepcopy(dense)
        n_rep = replace_c2f(model)
        diff = output_diff(dense, model, args.imgsz)
        log(f"replaced {n_rep} C2f/C3k2 chunk(2)s by two convolutions; outputs differ by {diff}")
        assert diff["raw_maps_max_abs"] <= 1e-5 and diff["decoded_max_rel"] <= 1e-5, diff
        assert abs(gflops(model, args.imgsz) - dense_g) < 1e-9 and n_params(model) == dense_p
        del dense
        pruner = make_pruner(model, args.imgsz, 0.5, args.reg, args.ignore_detect)
        gamma_dense = bn_stats(model, pruner)
        sparse_info = {"dense": str(Path(args.dense).resolve()), "dense_gflops": dense_g, "dense_params": dense_p,
                       "c2f_replaced": n_rep, "replacement_output_diff": diff, "reg": args.reg,
                       "sparse_epochs": args.sparse_epochs, "ignore_detect": args.ignore_detect,
                       "ignored_layers": [n for n, m in model.named_modules() if m in pruner.ignored_layers
                                          and not any(True for _ in m.children())],
                       "gamma_dense": gamma_dense}
        sparse_pt = out / "sparse" / "weights" / "last.pt"
        if args.sparse_epochs > 0:
            kw = train_kwargs(args, data_yaml, out, "sparse", args.sparse_epochs)
            kw["model"] = str(Path(args.dense).resolve())
            grad_medians = []

            def before_step(m):
                # The loss gradient's size on the regularized gammas, to set reg against.
                g = torch.cat([b.weight.grad.detach().abs().flatten() for b in m.modules()
                               if isinstance(b, nn.BatchNorm2d) and b not in pruner.ignored_layers
                               and b.weight.grad is not None])
                grad_medians.append(float(g.median()))
                pruner.regularize(m)

            tr = train_keep(model, kw, before_step=before_step, final_val=False)
            gm = sorted(grad_medians)
            sparse_info.update(sparse_train_kwargs=kw, regularize_calls=tr.steps,
                               loss_grad_gamma_abs_median={"median_over_steps": gm[len(gm) // 2] if gm else None,
                                                           "min": gm[0] if gm else None, "max": gm[-1] if gm else None},
                               gamma_sparse_raw_model=bn_stats(model, pruner),
                               sparse_epoch_s=epoch_times(out / "sparse"),
                               sparse_last_epoch_metrics=torch.load(sparse_pt, map_location="cpu",
                                                                    weights_only=False).get("train_metrics"))
        else:  # no sparse training: prune the dense model's gammas as they are
            sparse_pt.parent.mkdir(parents=True, exist_ok=True)
            save_model_pt(model, sparse_pt, args)
        del pruner, model
        times["sparse_s"] = round(time.time() - t, 1)
        sparse_info["sparse_s"] = times["sparse_s"]
        (out / "sparse.json").write_text(json.dumps(sparse_info, indent=2))

    # 2. prune once to the target: bisect the ratio on deep copies
    t = time.time()
    model, _ = load_model_pt(sparse_pt)
    base_g, base_p = gflops(model, args.imgsz), n_params(model)
    target = parse_target(args.target_gflops, base_g)
    probe = make_pruner(model, args.imgsz, 0.5, args.reg, args.ignore_detect)
    gamma_sparse = bn_stats(model, probe)
    del probe
    trace = []

    def pruned_flops(r):
        m = copy.deepcopy(model)
        make_pruner(m, args.imgsz, r, args.reg, args.ignore_detect, args.round_to).step()
        g = gflops(m, args.imgsz)
        trace.append({"ratio": r, "gflops": g, "params": n_params(m)})
        log(f"  ratio {r:.5f}: {g:.5f} GFLOPs")
        return g

    if base_g <= target:
        log(f"WARNING: the unpruned model's {base_g:.4f} GFLOPs already meet the target {target:.4f}")
        best = (0.0, base_g)
    else:
        # GFLOPs fall with the ratio but not strictly monotonically: Torch-Pruning never empties a
        # layer, so a group whose channels all fall under the global threshold (or round to 0 under
        # round_to) is skipped whole, and at high ratios GFLOPs can rise again. Scan upwards in steps
        # of 0.05 to the first ratio that meets the target, bisect below it, and take the evaluated
        # ratio under the target with the most GFLOPs.
        lo, hi = 0.0, None
        for k in range(1, int(round(args.max_ratio / 0.05)) + 1):
            if pruned_flops(0.05 * k) <= target:
                hi = 0.05 * k
                break
            lo = 0.05 * k
        if hi is None:
            e = min(trace, key=lambda e: e["gflops"])
            log(f"WARNING: no ratio up to {args.max_ratio} meets {target:.4f} GFLOPs; taking ratio "
                f"{e['ratio']:.2f} ({e['gflops']:.4f})")
        else:
            for _ in range(args.bisect_steps):
                mid = (lo + hi) / 2
                if pruned_flops(mid) <= target:
                    hi = mid
                else:
                    lo = mid
            e = max((e for e in trace if e["gflops"] <= target), key=lambda e: (e["gflops"], -e["ratio"]))
        best = (e["ratio"], e["gflops"])
    ratio = best[0]
    if ratio > 0:
        make_pruner(model, args.imgsz, ratio, args.reg, args.ignore_detect, args.round_to).step()
    pruned_g, pruned_p = gflops(model, args.imgsz), n_params(model)
    assert abs(pruned_g - best[1]) < 1e-9, (pruned_g, best)
    times["prune_s"] = round(time.time() - t, 1)
    log(f"pruned at ratio {ratio:.5f}: {base_g:.4f} -> {pruned_g:.4f} GFLOPs (target {target:.4f}), "
        f"{base_p} -> {pruned_p} params")
    pruned_pt = out / "pruned.pt"
    save_model_pt(model, pruned_pt, args)
    pruned_val = validate(pruned_pt, args, data_yaml, out, "val_pruned") if not args.skip_pruned_val else None

    # 3. fine-tune, keeping the pruned model, full-precision checkpoints
    t = time.time()
    kw = train_kwargs(args, data_yaml, out, "finetune", args.finetune_epochs)
    kw["model"] = str(pruned_pt)
    train_keep(model, kw, final_val=False)
    times["finetune_s"] = round(time.time() - t, 1)
    run = out / "finetune"
    best_pt = run / "weights" / "best.pt"
    ck = torch.load(best_pt, map_location="cpu", weights_only=False)
    assert next(ck["model"].parameters()).dtype == torch.float32
    val = validate(best_pt, args, data_yaml, out, "val")
    tm = ck.get("train_metrics") or {}
    same = {"trainer_ema_mAP50": tm.get("metrics/mAP50(B)"), "trainer_ema_mAP50-95": tm.get("metrics/mAP50-95(B)"),
            "val_mAP50": val["mAP50"], "val_mAP50-95": val["mAP50-95"]}
    if tm:
        same["abs_diff_mAP50-95"] = abs(val["mAP50-95"] - tm["metrics/mAP50-95(B)"])
        same["abs_diff_mAP50"] = abs(val["mAP50"] - tm["metrics/mAP50(B)"])
    best_model = load_model_pt(best_pt)[0]
    assert gflops(best_model, args.imgsz) == pruned_g and n_params(best_model) == pruned_p
    onnx = export_onnx(best_pt, args)
    write_result(out, {
        "method": "tp",
        "params": pruned_p, "gflops": pruned_g, "gflops_fused": gflops_fused(best_model, args.imgsz),
        "imgsz": args.imgsz,
        "target_gflops": target, "dense_gflops": base_g, "dense_params": base_p,
        "pruning_ratio": ratio, "reg": args.reg,
        "gamma_sparse": gamma_sparse,
        "mAP50": val["mAP50"], "mAP50-95": val["mAP50-95"], "val": val,
        "pruned_val": pruned_val,
        "best_pt_vs_trainer_ema": same,
        "best_pt": str(best_pt), "pruned_pt": str(pruned_pt), "sparse_pt": str(sparse_pt),
        **onnx,
        "sparse": sparse_info,
        "bisection": trace,
        "finetune_epochs": args.finetune_epochs, "finetune_epoch_s": epoch_times(run),
        "times": times, "wall_s": round(time.time() - t0, 1),
        "finetune_kwargs": kw,
        "pruner": {"class": "torch_pruning.pruner.BNScalePruner", "importance": "BNScaleImportance()",
                   "global_pruning": True, "iterative_steps": 1, "round_to": args.round_to,
                   "ignore_detect": args.ignore_detect},
        "settings": common_settings(args),
    })


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--data", required=True, help="the set's detect.yaml")
        p.add_argument("--imgsz", type=int, default=160)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
        p.add_argument("--out", required=True)
        p.add_argument("--target-gflops", required=True, help="GFLOPs at --imgsz, or N%% of the reference")
        p.add_argument("--fraction", type=float, default=1.0, help="share of the training set (development)")
        p.add_argument("--val-images", type=int, default=0, help="validate on the first N images (development)")

    p = sub.add_parser("small", help="Ultralytics' YOLO11 with a width cut to the GFLOPs target")
    common(p)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--dry-run", action="store_true", help="choose the width and stop")
    p.set_defaults(func=cmd_small)

    p = sub.add_parser("tp", help="Torch-Pruning 1.6.1 BNScalePruner: sparse train, prune, fine-tune")
    common(p)
    p.add_argument("--dense", help="trained YOLO11n checkpoint (YOLO(path) loads it)")
    p.add_argument("--sparse-epochs", type=int, required=True)
    p.add_argument("--finetune-epochs", type=int, required=True)
    p.add_argument("--reg", type=float, default=1e-5, help="BNScalePruner's reg (its default 1e-5)")
    p.add_argument("--sparse-from", help="a previous tp OUT whose sparse stage to reuse")
    p.add_argument("--ignore-detect", choices=["outputs", "all"], default="outputs",
                   help="ignore the Detect head's output convs and DFL (default) or all of it (the example)")
    p.add_argument("--round-to", type=int, default=None, help="BNScalePruner's round_to (default None: any width)")
    p.add_argument("--max-ratio", type=float, default=0.95)
    p.add_argument("--bisect-steps", type=int, default=12, help="bisection steps after the 0.05 scan")
    p.add_argument("--skip-pruned-val", action="store_true")
    p.set_defaults(func=cmd_tp)

    args = ap.parse_args()
    if args.cmd == "tp" and not (args.dense or args.sparse_from):
        ap.error("tp needs --dense or --sparse-from")
    set_threads(args.threads)
    args.func(args)


if __name__ == "__main__":
    main()
