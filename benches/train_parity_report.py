"""The report of benches/train_parity.sh: each run's best epoch (by fitness, as best.pt and
best.slim are chosen) from results.csv, slimc's against the range of Ultralytics' seeds.
Usage: train_parity_report.py OUT MODEL EPOCHS SEED..."""
import csv, sys
out, model, epochs, seeds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def best(path):
    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(open(path))]
    # Both trainers keep the epoch of best fitness (0.1 mAP50 + 0.9 mAP50-95) as best.*
    fit = lambda r: 0.1 * float(r["metrics/mAP50(B)"]) + 0.9 * float(r["metrics/mAP50-95(B)"])
    b = max(rows, key=fit)
    return float(b["metrics/mAP50(B)"]), float(b["metrics/mAP50-95(B)"]), max(float(r["metrics/mAP50(B)"]) for r in rows)
s = {x: best(f"{out}/slimc-seed{x}/results.csv") for x in seeds}
u = {x: best(f"{out}/ultralytics-seed{x}/results.csv") for x in seeds}
print(f"# {model}: {epochs} epochs on trees, imgsz 320, batch 8\n")
print("| seed | slimc best mAP50 | slimc mAP50-95 | Ultralytics best mAP50 | Ultralytics mAP50-95 |")
print("|---:|---:|---:|---:|---:|")
for x in seeds:
    print(f"| {x} | {s[x][0]:.4f} | {s[x][1]:.4f} | {u[x][0]:.4f} | {u[x][1]:.4f} |")
lo, hi = min(v[0] for v in u.values()), max(v[0] for v in u.values())
inside = [lo <= v[0] <= hi for v in s.values()]
print(f"\n(best = the epoch of best fitness, 0.1·mAP50 + 0.9·mAP50-95, as best.pt/best.slim.) Ultralytics' range of best mAP50: "
      f"{lo:.4f} to {hi:.4f}; slimc's seeds inside it: {sum(inside)} of {len(inside)}; slimc mean "
      f"{sum(v[0] for v in s.values())/len(s):.4f}, Ultralytics mean {sum(v[0] for v in u.values())/len(u):.4f}")
