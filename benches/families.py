"""Ultralytics 8.3.253's numbers for the YOLOv8, YOLOv5u and YOLO12 families (run by
benches/families.sh in a throwaway venv; never by CI).

  families.py counts          parameters and GFLOPs at 640 of every scale (nc 80 and nc 1), the
                              table tests/model_info.rs holds
  families.py pt DIR          each DIR/<name>.pt slimc wrote, loaded by YOLO(): its parameter count
                              and its eval output on DIR/<name>.input.npy against slimc's
                              (DIR/<name>.slimc.npy)
  families.py fixtures DIR    the tiny per-family fixtures the repository's tests read
                              (tests/fixtures/{yolov8p-nc2,yolov8p-nc2-step,yolo12p-nc1,
                              yolo12p-nc1-step,yolov5p-nc1}), made the way the shared fixtures are
                              described in their README: a seeded init, every BatchNorm given
                              non-trivial state, Ultralytics' eval output, and one training step
                              through v8DetectionLoss (loss items, gradients, BN statistics);
                              and, under checkpoints/, release-style .pt files of yolov5p and
                              yolo12p (strip_optimizer) with the output Ultralytics computes
                              from them
"""

import contextlib
import io
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import ultralytics
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops

FAMILIES = ["yolov8{}.yaml", "yolov8{}-p2.yaml", "yolov8{}-p6.yaml", "yolov5{}u.yaml", "yolo12{}.yaml"]


def counts():
    out = {}
    for fam in FAMILIES:
        for s in "nslmx":
            for nc in (80, 1):
                name = fam.format(s)
                with contextlib.redirect_stdout(io.StringIO()):
                    m = DetectionModel(name, nc=nc, verbose=False)
                p = sum(x.numel() for x in m.parameters())
                out[f"{name}:{nc}"] = [p, round(get_flops(m, 640), 4)]
                print(f'        ("{name}", {nc}, {p:_}, {out[f"{name}:{nc}"][1]}),', flush=True)


# The tiny scales: the family's layout with one extra-small scale `p` (YOLO12's A2C2f needs
# hidden widths that are multiples of 32, so its `p` caps the channels instead).
TINY = {
    "yolov8p": ("yolov8.yaml", "[0.33, 0.125, 1024]"),
    "yolov5p": ("yolov5.yaml", "[0.33, 0.125, 1024]"),
    "yolo12p": ("yolo12.yaml", "[0.50, 0.25, 256]"),
}


def tiny_yaml(name, nc, out_dir):
    src, scale = TINY[name]
    root = os.path.join(os.path.dirname(ultralytics.__file__), "cfg", "models")
    sub = {"yolov8.yaml": "v8", "yolov5.yaml": "v5", "yolo12.yaml": "12"}[src]
    lines = open(os.path.join(root, sub, src)).read().splitlines()
    body, skip = [], False
    for line in lines:
        if line.startswith("scales:"):
            body += ["scales:", f"  p: {scale}"]
            skip = True
            continue
        if skip and line.startswith("  "):
            continue
        skip = False
        if line.startswith("nc:"):
            line = f"nc: {nc} # number of classes"
        if not line.startswith("#"):
            body.append(line)
    text = (
        f"# A tiny {src[:-5]} for self-contained tests: Ultralytics 8.3.253's {src} layout with one\n"
        f"# extra-small scale p {scale} (benches/families.py).\n" + "\n".join(body) + "\n"
    )
    path = os.path.join(out_dir, f"{name}.yaml")
    open(path, "w").write(text)
    return path


def randomize_bn(model, seed):
    """Every BN: gamma U[0.5, 1.5), beta U[-0.2, 0.2), mean N(0, 0.1^2), var U[0.5, 2)."""
    g = torch.Generator().manual_seed(seed + 1000)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)


def state(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if "num_batches_tracked" not in k}


def build(yaml, nc, seed):
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        m = DetectionModel(yaml, nc=nc, verbose=False)
    randomize_bn(m, seed)
    m.args = get_cfg()
    return m


def versions():
    return {"ultralytics": ultralytics.__version__, "torch": torch.__version__}


def forward_case(name, nc, seed, size, out_root, onnx=False):
    d = os.path.join(out_root, f"{name}-nc{nc}")
    os.makedirs(d, exist_ok=True)
    yaml = tiny_yaml(name, nc, d)
    m = build(yaml, nc, seed).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size, size, generator=g)
    with torch.no_grad():
        y = m(x)[0]
    np.save(os.path.join(d, "input.npy"), x.numpy())
    np.save(os.path.join(d, "output-eval.npy"), y.numpy())
    save_file(state(m), os.path.join(d, "model.safetensors"))
    report = {**versions(), "cfg": os.path.basename(yaml), "nc": nc, "seed": seed, "imgsz": size,
              "output_shape": list(y.shape), "parameters": sum(p.numel() for p in m.parameters()),
              "max_abs_output": float(y.abs().max())}
    if onnx:
        import onnxruntime as ort

        m.model[-1].export = True
        f = os.path.join(d, "model-bn.onnx")
        torch.onnx.export(m, x, f, opset_version=17, do_constant_folding=False, input_names=["images"],
                          output_names=["output0"], dynamo=False)
        m.model[-1].export = False
        got = ort.InferenceSession(f).run(None, {"images": x.numpy()})[0]
        report["ort_max_abs_diff[model-bn.onnx]"] = float(np.abs(got - y.numpy()).max())
    json.dump(report, open(os.path.join(d, "report.json"), "w"), indent=1)
    print(name, report)
    return m


def step_run(m, imgs, batch, dtype):
    """One train-mode forward, v8DetectionLoss and backward of `m` in `dtype`."""
    m = m.to(dtype).train()
    batch = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in batch.items()}
    feats = m(imgs.to(dtype))
    loss, items = m.loss(batch, feats)
    total = loss.sum()
    total.backward()
    grads = {k: p.grad.detach().float().clone() for k, p in m.named_parameters() if p.grad is not None}
    bn = {k: v.float() for k, v in state(m).items() if k.endswith("running_mean") or k.endswith("running_var")}
    return feats, float(total), [float(v) for v in items], grads, bn


def grad_error(got, want):
    """The fixtures README's per-tensor metric, worst tensor: (error, name)."""
    big = sum(float((v.double() ** 2).sum()) for v in want.values()) ** 0.5
    return max((float((got[k].double() - w.double()).norm() / (w.double().norm() + 1e-6 * big)), k) for k, w in want.items())


def step_case(name, nc, seed, out_root):
    """One training step. The stored gradients, BN statistics and loss come from the same step
    run in float64 (stored as float32), so the fixture carries no float32 rounding of its own;
    report.json gives how far Ultralytics' float32 run is from it by the same metric."""
    d = os.path.join(out_root, f"{name}-nc{nc}-step")
    os.makedirs(d, exist_ok=True)
    yaml = os.path.join(out_root, f"{name}-nc{nc}", f"{name}.yaml")
    g = torch.Generator().manual_seed(seed + 1)
    imgs = torch.rand(2, 3, 96, 128, generator=g)
    boxes = [[0.5, 0.55, 0.4, 0.6], [0.15, 0.7, 0.12, 0.3], [0.45, 0.5, 0.5, 0.8], [0.9, 0.9, 0.1, 0.12]]
    batch_idx = [0.0, 0.0, 1.0, 1.0]
    cls = [float(i % nc) for i in (1, 0, 1, 0)]
    batch = {"img": imgs, "batch_idx": torch.tensor(batch_idx), "cls": torch.tensor(cls).view(-1, 1),
             "bboxes": torch.tensor(boxes)}
    _, total32, items32, grads32, bn32 = step_run(build(yaml, nc, seed), imgs, batch, torch.float32)
    feats, total, items, grads, bn = step_run(build(yaml, nc, seed), imgs, batch, torch.float64)
    np.save(os.path.join(d, "images.npy"), imgs.numpy())
    for i, f in enumerate(feats):
        np.save(os.path.join(d, f"feats_{i}.npy"), f.detach().float().numpy())
    save_file(grads, os.path.join(d, "grads.safetensors"))
    save_file(bn, os.path.join(d, "bn_after.safetensors"))
    err, worst = grad_error(grads32, grads)
    report = {**versions(), "cfg": os.path.basename(yaml), "nc": nc, "seed": seed, "images_shape": list(imgs.shape),
              "targets": {"batch_idx": batch_idx, "cls": cls, "bboxes_xywhn": boxes},
              "precision": "float64 (stored as float32)", "loss_total": total, "loss_items_box_cls_dfl": items,
              "float32_run": {"loss_total": total32, "loss_items_box_cls_dfl": items32,
                              "worst_gradient_error_vs_float64": [err, worst]},
              "bn_momentum": 0.03, "bn_eps": 0.001, "weights": f"{name}-nc{nc}/model.safetensors"}
    json.dump(report, open(os.path.join(d, "report.json"), "w"), indent=1)
    print(name, "step", items, "float32 run's worst gradient error", err, worst)


def checkpoint_case(name, nc, seed, out_root):
    """A checkpoint as Ultralytics releases one (`torch.save` of the trainer's dict, then
    `strip_optimizer`: fp16, no optimizer) of the forward fixture's model, and the output
    Ultralytics computes from the file it wrote."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import strip_optimizer

    d = os.path.join(out_root, "checkpoints", f"{name}-release")
    os.makedirs(d, exist_ok=True)
    yaml = os.path.join(out_root, f"{name}-nc{nc}", f"{name}.yaml")
    m = build(yaml, nc, seed)
    m.names = {i: f"class{i}" for i in range(nc)}
    f = os.path.join(d, f"{name}.pt")
    torch.save({"epoch": 0, "best_fitness": None, "model": m, "ema": None, "updates": 0, "optimizer": None,
                "train_args": {"model": os.path.basename(yaml), "imgsz": 160, "nc": nc}}, f)
    strip_optimizer(f)
    net = YOLO(f).model.float().eval()
    x = np.load(os.path.join(out_root, f"{name}-nc{nc}", "input.npy"))
    with torch.no_grad():
        y = net(torch.from_numpy(x))[0].numpy()
    np.save(os.path.join(d, "output-eval.npy"), y)
    print(name, "release checkpoint", os.path.getsize(f), "bytes")


def fixtures(out_root):
    torch.use_deterministic_algorithms(True)
    forward_case("yolov8p", 2, 3, 160, out_root)
    forward_case("yolo12p", 1, 4, 160, out_root, onnx=True)
    forward_case("yolov5p", 1, 5, 160, out_root)
    step_case("yolov8p", 2, 3, out_root)
    step_case("yolo12p", 1, 4, out_root)
    checkpoint_case("yolov5p", 1, 5, out_root)
    checkpoint_case("yolo12p", 1, 4, out_root)


def pt(d):
    from ultralytics import YOLO

    print("| checkpoint slimc wrote | parameters in Ultralytics | eval output vs slimc, max rel |")
    print("|---|---:|---:|")
    for f in sorted(x for x in os.listdir(d) if x.endswith(".pt")):
        name = f[:-3]
        net = YOLO(os.path.join(d, f)).model.float().eval()
        x = torch.from_numpy(np.load(os.path.join(d, f"{name}.input.npy")))
        with torch.no_grad():
            out = net(x)[0].numpy()
        mine = np.load(os.path.join(d, f"{name}.slimc.npy"))
        rel = float(np.abs(out - mine).max() / np.abs(out).max())
        print(f"| {name} | {sum(p.numel() for p in net.parameters()):,} | {rel:.1e} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "counts":
        counts()
    elif sys.argv[1] == "pt":
        pt(sys.argv[2])
    elif sys.argv[1] == "fixtures":
        fixtures(sys.argv[2])
    else:
        sys.exit(__doc__)
