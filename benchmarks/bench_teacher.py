"""The teacher's operating curve on the mined frames: precision / recall at IoU 0.5 against
ground truth, per score threshold and inference size, from a finished run.

Reads a run's outputs (default ``outputs/``): iter0's weights (§4), the mined frames (§6) and
their ground truth (§3 ``gt_pool.json``, which §7's quality tables also use). Predicts once per
inference size at a low threshold, then filters by each threshold and scores with
``autolabel.label_quality`` (the same matcher §7 reports). Answers: what recall does the teacher
reach at precision >= 0.8, and how many classes does it label at all? Last line:
``RESULT {json}``. Run: ``.venv/bin/python benchmarks/bench_teacher.py [--out outputs]`` (~1 min).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bdd_engine import artifacts, train  # noqa: E402
from bdd_engine.autolabel import label_quality  # noqa: E402

CONFS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs")
    ap.add_argument("--imgsz", type=int, nargs="*", default=[320, 480, 640])
    ap.add_argument("--min-precision", type=float, default=0.8)
    ap.add_argument("--weights", type=Path, default=None,
                    help="the teacher's .pt (default: the run's iter0; e.g. bdd_engine/models/synthteacher-w025.pt)")
    args = ap.parse_args(argv)
    pools = artifacts.read_df(args.out, 3, "pools.csv")
    paths = dict(zip(pools["name"], pools["image_path"]))
    mined = artifacts.read_df(args.out, 6, "mined.csv")["name"].tolist()
    gt_pool = {f["name"]: f for f in artifacts.load_gt(args.out, 3, "pool")}
    gt = [gt_pool[n] for n in mined]
    curve = []
    for imgsz in args.imgsz:
        weights = args.weights or artifacts.iter0_weights(args.out)
        preds = train.predict(weights, [paths[n] for n in mined], conf=min(CONFS) / 2,
                              device="cpu", imgsz=imgsz, progress=False)
        for c in CONFS:
            kept = [{**f, "labels": [lb for lb in f["labels"] if lb["score"] >= c]} for f in preds]
            q = label_quality(kept, gt, spot_check=0, seed=42).all_frames.set_index("class")
            o, per = q.loc["overall"], q.drop("overall")
            curve.append({"imgsz": imgsz, "conf": c, "precision": round(float(o["precision"]), 3),
                          "recall": round(float(o["recall"]), 3), "classes_labelled": int((per["tp"] > 0).sum())})
            print(curve[-1], flush=True)
    ok = [p for p in curve if p["precision"] >= args.min_precision]
    best = max(ok, key=lambda p: p["recall"]) if ok else None
    print("RESULT " + json.dumps({"mined_frames": len(mined), "curve": curve, "min_precision": args.min_precision,
                                  "best_recall_at_min_precision": best, "synthetic": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
