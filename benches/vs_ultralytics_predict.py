"""Ultralytics' side of benches/vs_ultralytics_predict.sh: runs Ultralytics 8.3.253 on the same
checkpoint and images as slimc and compares, printing a Markdown report.

  python vs_ultralytics_predict.py train DATA IMGSZ EPOCHS OUT   trains yolo11n (seed 0) -> OUT/train/weights/best.pt
  python vs_ultralytics_predict.py compare MODEL DATA IMGSZ SLIMC_DIR REPORT

compare checks, against slimc's files in SLIMC_DIR (predict*/predictions.json, val/*.csv,
val.json):
  1. predict: every box of YOLO(MODEL).predict (IoU 0.7; conf 0.25, and 0.01 for many more boxes)
     matched to slimc's box of the same class at IoU >= 0.99 with |conf difference| <= 1e-3, and
     no box left over on either side;
  2. val, the same predictions: slimc's own detections (val.json's input_bbox, as validation
     matched them) through Ultralytics' ConfusionMatrix.process_batch, match_predictions and
     ap_per_class, against slimc's confusion_matrix.csv and BoxPR_curve.csv (px, py within 1e-6);
and reports
  3. val, each tool on its own run: ConfusionMatrix.matrix and metrics.box.px / prec_values
     against slimc's files.
"""

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch


def train(data, imgsz, epochs, out):
    from ultralytics import YOLO

    YOLO("yolo11n.yaml").train(data=data, epochs=epochs, imgsz=imgsz, batch=8, device="cpu", workers=2,
                               project=out, name="train", exist_ok=True, amp=False, plots=False, seed=0,
                               verbose=False)


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-12)


def compare_predict(model, source, imgsz, conf_thres, slimc_json, lines):
    from ultralytics import YOLO

    res = YOLO(model).predict(source=source, imgsz=imgsz, conf=conf_thres, iou=0.7, device="cpu", verbose=False)
    mine = {}
    for d in json.load(open(slimc_json)):
        mine.setdefault(os.path.basename(d["image"]), []).append(d)
    matched = total_u = total_s = 0
    worst_iou, worst_conf, unmatched = 1.0, 0.0, []
    for r in res:
        name = os.path.basename(r.path)
        theirs = [(b.tolist(), float(c), int(k)) for b, c, k in zip(r.boxes.xyxy, r.boxes.conf, r.boxes.cls)]
        ours = [(d["bbox"], d["score"], d["class"]) for d in mine.get(name, [])]
        total_u += len(theirs)
        total_s += len(ours)
        free = list(range(len(ours)))
        for box, conf, cls in theirs:
            cands = [(iou(box, ours[j][0]), j) for j in free if ours[j][2] == cls]
            best = max(cands, default=(0.0, None))
            if best[1] is None or best[0] < 0.99 or abs(ours[best[1]][1] - conf) > 1e-3:
                unmatched.append((name, box, conf, best[0], None if best[1] is None else ours[best[1]][1]))
                continue
            free.remove(best[1])
            matched += 1
            worst_iou = min(worst_iou, best[0])
            worst_conf = max(worst_conf, abs(ours[best[1]][1] - conf))
        unmatched += [(name, ours[j][0], None, None, ours[j][1]) for j in free]
    lines += [
        f"## 1. predict at conf {conf_thres}",
        f"{len(res)} images; Ultralytics {total_u} boxes, slimc {total_s}; matched (IoU >= 0.99, |dconf| <= 1e-3): "
        f"{matched}; lowest IoU of a match {worst_iou:.6f}, largest |dconf| {worst_conf:.2e}; unmatched: {len(unmatched)}",
    ]
    lines += [f"- unmatched {u}" for u in unmatched[:20]]
    return not unmatched and total_u == total_s


def slimc_matrix(path):
    rows = list(csv.reader(open(path)))
    return np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def slimc_pr(path):
    rows = list(csv.reader(open(path)))
    data = np.array([[float(v) for v in r] for r in rows[1:]])
    return data[:, 0], data[:, 1:-1].T  # px, py per class (the last column is the mean)


def compare_val_runs(model, data, imgsz, slimc_dir, lines):
    from ultralytics import YOLO

    m = YOLO(model).val(data=data, imgsz=imgsz, batch=16, device="cpu", plots=True, workers=0, verbose=False,
                        project=str(Path(slimc_dir).parent), name="ultralytics-val", exist_ok=True)
    cm = m.confusion_matrix.matrix
    title = "## 3. val, each tool on its own run (reported, not a check)"
    return against_slimc(title, cm, m.box.px, m.box.prec_values, m.box.map50, slimc_dir, lines)


def against_slimc(title, matrix, px, py, map50, slimc_dir, lines):
    """Compares Ultralytics' confusion matrix and PR curve (px, prec_values) with slimc's
    confusion_matrix.csv and BoxPR_curve.csv; true when the matrices are equal and the curves
    agree within 1e-6."""
    mine = slimc_matrix(f"{slimc_dir}/val/confusion_matrix.csv")
    spx, spy = slimc_pr(f"{slimc_dir}/val/BoxPR_curve.csv")
    px, py = np.asarray(px), np.asarray(py)
    dpx = float(np.abs(spx - px).max())
    dpy = float(np.abs(spy - py).max()) if spy.shape == py.shape else float("nan")
    same = np.array_equal(matrix, mine)
    lines += [
        title,
        f"Ultralytics' mAP50 {map50:.6f}; confusion matrix Ultralytics {matrix.tolist()} vs slimc {mine.tolist()}: "
        f"{'equal' if same else 'DIFFERENT'}",
        f"PR curve: max |px difference| {dpx:.2e}, max |py difference| {dpy:.2e} over {py.size} points",
    ]
    return same and dpx <= 1e-6 and dpy <= 1e-6


def labels_of(image, shape):
    lab = Path(str(image).replace(f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}")).with_suffix(".txt")
    h, w = shape
    rows = [list(map(float, l.split())) for l in open(lab).read().splitlines() if l.strip()] if lab.exists() else []
    cls = torch.tensor([r[0] for r in rows])
    xyxy = torch.tensor([[(r[1] - r[3] / 2) * w, (r[2] - r[4] / 2) * h, (r[1] + r[3] / 2) * w, (r[2] + r[4] / 2) * h]
                         for r in rows]).reshape(-1, 4)
    return cls, xyxy


def compare_same_predictions(source, imgsz, slimc_dir, names, lines):
    """slimc's detections as validation matched them (input_bbox: the network input's pixels,
    unclipped) through Ultralytics' matcher, ConfusionMatrix and ap_per_class, the labels moved
    into the same pixels as Ultralytics' val loader puts them for square images: the long side
    loaded at IMGSZ, then letterboxed without upscaling into the rect batch's
    ceil(IMGSZ/32 + 0.5)*32 square."""
    import cv2
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import ConfusionMatrix, ap_per_class, box_iou

    dets = {}
    for d in json.load(open(f"{slimc_dir}/val.json")):
        dets.setdefault(d["image"], []).append(d)
    cm = ConfusionMatrix(names={i: n for i, n in enumerate(names)})
    v = DetectionValidator()
    v.iouv = torch.linspace(0.5, 0.95, 10)
    tps, confs, pcls, tcls = [], [], [], []
    for img in sorted(str(p) for p in Path(source).iterdir()):
        h, w = cv2.imread(img).shape[:2]
        if h != w:
            lines += ["## 2. skipped: this check places labels for square images only"]
            return False
        side = int(np.ceil(imgsz / 32 + 0.5)) * 32
        pad = round((side - imgsz) / 2 - 0.1)
        cls, boxes = labels_of(img, (imgsz, imgsz))
        boxes = boxes + pad
        mine = dets.get(img, [])
        pb = torch.tensor([d["input_bbox"] for d in mine]).reshape(-1, 4)
        pc = torch.tensor([float(d["class"]) for d in mine])
        pf = torch.tensor([d["score"] for d in mine])
        cm.process_batch({"bboxes": pb, "cls": pc, "conf": pf}, {"bboxes": boxes, "cls": cls}, conf=0.001)
        if len(cls) and len(mine):
            tps.append(v.match_predictions(pc, cls, box_iou(boxes, pb)).cpu().numpy())
        else:
            tps.append(np.zeros((len(mine), 10), dtype=bool))
        confs.append(pf.numpy())
        pcls.append(pc.numpy())
        tcls.append(cls.numpy())
    r = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), np.concatenate(tcls))
    title = "## 2. val, slimc's own detections through Ultralytics' matcher, ConfusionMatrix and ap_per_class"
    return against_slimc(title, cm.matrix, r[10], r[11], r[5][:, 0].mean(), slimc_dir, lines)


def main():
    a = sys.argv[1:]
    if a[0] == "train":
        return train(a[1], int(a[2]), int(a[3]), a[4])
    model, data, imgsz, slimc_dir, report = a[1], a[2], int(a[3]), a[4], a[5]
    import yaml

    spec = yaml.safe_load(open(data))
    source = str(Path(spec["path"]) / spec["val"])
    names = [spec["names"][k] for k in sorted(spec["names"])]
    lines = [f"# slimc vs Ultralytics 8.3.253: predict and val of {model} at {imgsz}", ""]
    ok = [
        compare_predict(model, source, imgsz, 0.25, f"{slimc_dir}/predict/predictions.json", lines),
        compare_predict(model, source, imgsz, 0.01, f"{slimc_dir}/predict-conf0.01/predictions.json", lines),
        compare_same_predictions(source, imgsz, slimc_dir, names, lines),
    ]
    # Each tool's own val run: its figures differ from check 3 only through the networks'
    # numerics (confidences ~1e-7 apart can swap two detections' order), so it is reported,
    # not counted.
    compare_val_runs(model, data, imgsz, slimc_dir, lines)
    lines.append("")
    lines.append(f"checks passed: {sum(ok)} of {len(ok)} (predict at 0.25, predict at 0.01, val on the same detections)")
    text = "\n".join(lines) + "\n"
    open(report, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
