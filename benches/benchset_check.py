"""The benchmark set in Ultralytics 8.3.253 (run by benches/benchset_check.sh in a throwaway venv):
for each task (detect, segment, obb, pose), Ultralytics' own dataset check and label scan over
both splits (counting what it rejects or warns about), then one epoch of the task's YOLO11n on it.

Usage: python benchset_check.py SET_DIR OUT_DIR [EPOCHS]
"""

import json
import sys
from pathlib import Path

from ultralytics import YOLO
from ultralytics.data.build import build_yolo_dataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.utils import IterableSimpleNamespace
from ultralytics.cfg import get_cfg

root, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 1
out.mkdir(parents=True, exist_ok=True)
models = {"detect": "yolo11n.yaml", "segment": "yolo11n-seg.yaml", "obb": "yolo11n-obb.yaml", "pose": "yolo11n-pose.yaml"}
report = {}
for task, model in models.items():
    # The set's YAMLs use paths relative to their folder; Ultralytics resolves relative paths
    # against its datasets dir, so hand it a copy with the absolute path.
    text = (root / f"{task}.yaml").read_text()
    rel = next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("path:"))
    yaml = out / f"{task}.yaml"
    yaml.write_text(text.replace(f"path: {rel}", f"path: {(root / rel).resolve()}"))
    data = check_det_dataset(str(yaml))
    cfg = get_cfg(overrides={"task": task, "imgsz": 160, "data": str(yaml)})
    counts = {}
    for split in ("train", "val"):
        ds = build_yolo_dataset(cfg, data[split], 16, data, mode="val", stride=32)
        labels = ds.labels
        counts[split] = {
            "images": len(ds.im_files),
            "instances": int(sum(len(l["cls"]) for l in labels)),
            "segments": int(sum(len(l["segments"]) for l in labels)),
            "keypoints": int(sum(0 if l.get("keypoints") is None else len(l["keypoints"]) for l in labels)),
        }
    m = YOLO(model)
    r = m.train(data=str(yaml), epochs=epochs, imgsz=160, batch=16, device="cpu", workers=0, project=str(out),
                name=task, exist_ok=True, amp=False, plots=False, seed=0, verbose=False)
    metrics = {k: float(v) for k, v in r.results_dict.items()} if r is not None else {}
    report[task] = {"dataset": counts, "nc": len(data["names"]), "kpt_shape": data.get("kpt_shape"), "metrics": metrics}
    print(task, json.dumps(report[task]), flush=True)
(out / "report.json").write_text(json.dumps(report, indent=2))
