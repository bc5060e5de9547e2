"""Ultralytics' side of benches/vs_ultralytics.sh: trains yolo11n from scratch on the trees
dataset and validates the result, timing what slimc's own figures time.

Per epoch it records the training loop's seconds (data loading, augmentation, forward, backward,
optimizer, EMA: from on_train_epoch_start to on_train_epoch_end) and the whole epoch's seconds
(validation and checkpointing included: between consecutive on_fit_epoch_end calls). Then it times one `model.val()` on
the val split. Writes JSON to the path given as the last argument.
"""

import json
import sys
import time

from ultralytics import YOLO


def main(data, epochs, imgsz, batch, project, out):
    marks = {"start": [], "train_end": [], "fit_end": []}
    model = YOLO("yolo11n.yaml")
    model.add_callback("on_train_epoch_start", lambda t: marks["start"].append(time.perf_counter()))
    model.add_callback("on_train_epoch_end", lambda t: marks["train_end"].append(time.perf_counter()))
    model.add_callback("on_fit_epoch_end", lambda t: marks["fit_end"].append(time.perf_counter()))
    model.train(data=data, epochs=epochs, imgsz=imgsz, batch=batch, device="cpu", workers=2,
                project=project, name="ultralytics", exist_ok=True, amp=False, plots=False, seed=0,
                deterministic=False, verbose=False)
    trainer = model.trainer
    images = len(trainer.train_loader.dataset)
    loop = [e - s for s, e in zip(marks["start"], marks["train_end"])]
    # on_fit_epoch_end also fires for the final validation after the last epoch: keep one mark
    # per epoch.
    ends = marks["fit_end"][:epochs]
    epoch = [b - a for a, b in zip(ends[:-1], ends[1:])]
    best = YOLO(str(trainer.best))
    t0 = time.perf_counter()
    metrics = best.val(data=data, imgsz=imgsz, batch=16, device="cpu", workers=2, plots=False,
                       project=project, name="ultralytics-val", exist_ok=True, verbose=False)
    val_s = time.perf_counter() - t0
    json.dump({"train_images": images, "loop_s": loop, "epoch_s": epoch, "val_s": val_s,
               "best_map50": float(metrics.box.map50)}, open(out, "w"), indent=1)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), int(a[2]), int(a[3]), a[4], a[5])
