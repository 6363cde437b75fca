"""Issue 24 item 6: does greying out the boxes the teacher was unsure of help? SYNTHETIC numbers.

Rule fixed before measuring: the iter1 arm (train + the mined frames' accepted teacher labels)
is trained twice per seed from iter0 with the profile's retrain recipe, once on the original
frames ("plain") and once with every box the teacher scored in [label_review, label_accept)
filled grey outside accepted boxes (``autolabel.grey_uncertain``, "grey"). Both are scored on
the EVAL POOL (never the confirmation set). Grey is kept only if its mean overall eval-pool
mAP@0.5 over the seeds is higher than plain's AND its mean AP@0.5 on §5's worst slice is not lower.

Needs §1-§6 of a demo run in ``--out``. Writes ``--json`` and prints one line per run.

    .venv/bin/python benchmarks/bench_grey_uncertain.py --out outputs/demo [--seeds 42 43 44] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdd_engine import artifacts, autolabel, evaluate, flywheel, train  # noqa: E402
from bdd_engine.config import load_config  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[42, 43, 44])
    ap.add_argument("--teacher", default=None, help="default: the demo's label_teacher_weights")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    cfg = load_config("demo", {"outputs_dir": str(a.out)})
    pools = artifacts.read_df(cfg.out, 3, "pools.csv")
    paths = dict(zip(pools["name"], pools["image_path"]))
    sizes = artifacts.image_sizes(artifacts.read_df(cfg.out, 1, "frames.csv"))
    gt_pool = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "pool")}
    gt_train = artifacts.load_gt(cfg.out, 3, "train")
    mined = artifacts.read_df(cfg.out, 6, "mined.csv")["name"].tolist()
    worst = artifacts.load_json(cfg.out, 5, "worst_slice.json")["worst_slice"]
    w0 = artifacts.start_weights(cfg.out, 1)
    accept, review = float(cfg.label_accept), float(cfg.label_review)
    lab = autolabel.get_labeler(cfg, "teacher", teacher_weights=a.teacher or cfg.label_teacher_weights)
    frames = [gt_pool[n] for n in mined]
    run = lab.label(frames, [paths[n] for n in mined], progress=False)
    added = autolabel.accepted_frames(run, accept)
    work = cfg.out / "bench_grey"
    greyed = autolabel.grey_uncertain(run.ok_frames(), paths, work / "images", accept=accept, review=review)
    ev = flywheel._eval_pool(cfg)
    gt_eval = artifacts.load_gt(cfg.out, 3, "eval")
    res = {"SYNTHETIC": True, "mined": len(mined), "added_frames": len(added), "greyed_frames": len(greyed),
           "greyed_boxes": sum(1 for f in run.ok_frames() for lb in f["labels"] if review <= lb["score"] < accept),
           "worst_slice": worst, "runs": []}
    for seed in a.seeds:
        for arm, p in (("plain", paths), ("grey", {**paths, **greyed})):
            t0 = time.time()
            weights, _, _, _ = flywheel._train_arm(cfg, work / "runs", f"{arm}_s{seed}", seed, gt_train + added,
                                                   gt_train[:32], p, sizes, w0)
            r = evaluate.evaluate(gt_eval, flywheel._predict(cfg, weights, ev), by=cfg.eval_by, n_boot=0)
            sl = r.slices.set_index("slice")
            row = {"arm": arm, "seed": seed, "AP50": round(float(r.AP50), 4),
                   "worst_AP50": round(float(sl.loc[worst, "AP50"]), 4) if worst in sl.index else None,
                   "seconds": round(time.time() - t0, 1)}
            res["runs"].append(row)
            print(json.dumps(row), flush=True)
            train.free_memory()
    mean = lambda arm, k: sum(r[k] for r in res["runs"] if r["arm"] == arm) / len(a.seeds)  # noqa: E731
    res["mean"] = {arm: {"AP50": round(mean(arm, "AP50"), 4), "worst_AP50": round(mean(arm, "worst_AP50"), 4)}
                   for arm in ("plain", "grey")}
    res["keep_grey"] = bool(res["mean"]["grey"]["AP50"] > res["mean"]["plain"]["AP50"]
                            and res["mean"]["grey"]["worst_AP50"] >= res["mean"]["plain"]["worst_AP50"])
    print("RESULT " + json.dumps(res), flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
