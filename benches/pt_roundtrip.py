"""Checks slimc's .pt files in Ultralytics (see pt_roundtrip.sh). Prints a markdown report."""
import copy
import json
import sys

import numpy as np
import onnxruntime as ort
import torch
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer

x = torch.from_numpy(np.load(sys.argv[1]))
data = sys.argv[2]


def widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


class KeepModelTrainer(DetectionTrainer):
    """A trainer that fine-tunes the model it was given instead of rebuilding it from its YAML."""

    def get_model(self, cfg=None, weights=None, verbose=True):
        return self.keep


def finetune(path):
    model = YOLO(path).model
    before = widths(model)
    KeepModelTrainer.keep = model
    t = KeepModelTrainer(overrides=dict(model=path, data=data, epochs=1, imgsz=160, batch=8, workers=0,
                                        device="cpu", plots=False, val=False, exist_ok=True, name="ft",
                                        project="finetune", verbose=False, amp=False))
    t.train()
    after = widths(YOLO("finetune/ft/weights/last.pt").model)
    return before == after, sum(before)


if len(sys.argv) > 3 and sys.argv[3] == "fixture":
    import shutil
    folder = sys.argv[4]
    model = YOLO(f"{folder}/pruned-even.pt").model
    KeepModelTrainer.keep = model
    t = KeepModelTrainer(overrides=dict(model=f"{folder}/pruned-even.pt", data=data, epochs=1, imgsz=64, batch=8,
                                        workers=0, device="cpu", plots=False, val=False, exist_ok=True, name="fx",
                                        project="finetune", verbose=False, amp=False, seed=0, deterministic=True))
    t.train()
    shutil.copy("finetune/fx/weights/last.pt", f"{folder}/pruned-even-finetuned.pt")
    tuned = YOLO(f"{folder}/pruned-even-finetuned.pt").model.float().eval()
    assert widths(tuned) == widths(YOLO(f"{folder}/pruned-even.pt").model), "fine-tuning changed the widths"
    with torch.no_grad():
        np.save(f"{folder}/pruned-even-finetuned-output-eval.npy", tuned(x)[0].numpy())
    sys.exit(0)

print("| file | params (Ultralytics / slimc) | eval output vs slimc (max rel) | ONNX export in onnxruntime vs slimc | one epoch keeps widths |")
print("| --- | --- | --- | --- | --- |")
for f in ["yaml32", "release32", "release16", "pruned-seed", "pruned-seed32", "pruned-groups", "pruned-groups32"]:
    want = np.load(f"{f}.slimc.npy")
    info = json.load(open(f"{f}.info.json"))
    y = YOLO(f"{f}.pt")
    n = sum(p.numel() for p in y.model.parameters())
    m = copy.deepcopy(y.model).float().eval()
    with torch.no_grad():
        got = m(x)[0].numpy()
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    onnx_path = YOLO(f"{f}.pt").export(format="onnx", imgsz=list(x.shape[2:]), simplify=False, verbose=False)
    s = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    o = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    orel = float(np.abs(o - want).max() / np.abs(want).max())
    kept = ""
    if f.startswith("pruned") and not f.endswith("32"):
        ok, total = finetune(f"{f}.pt")
        kept = f"{'yes' if ok else 'NO'} ({total} conv outputs)"
        stock = YOLO(f"{f}.pt")
        stock_trainer = DetectionTrainer(overrides=dict(model=f"{f}.pt", data=data, epochs=1, imgsz=160))
        rebuilt = stock_trainer.get_model(cfg=stock.model.yaml, weights=stock.model, verbose=False)
        kept += f"; stock get_model: {'keeps' if widths(rebuilt) == widths(stock.model) else 'loses'} the widths"
    print(f"| {f}.pt | {n:,} / {info['parameters']:,} | {rel:.2e} | {orel:.2e} | {kept} |")
