"""Issue 24 items 6-7: the demo teacher's labels measured where they are used. SYNTHETIC numbers.

Needs §1-§6 of a demo run in ``--out`` (``python -m bdd_engine run --profile demo`` or the
section runners). For each teacher (the turn's start model iter0 = label_teacher_weights
null, and the shipped teacher), labels the mined frames, the random control's frames and
every mining-pool frame with GT, and reports precision/recall per class of the labels that
FEED TRAINING (score >= label_accept; and per-class F-beta thresholds chosen on the EVAL
POOL), plus the labeller's wall time per frame on this machine.

    .venv/bin/python benchmarks/bench_label_accept.py --out outputs/demo [--teacher PATH] [--json F]

(benchmarks/bench_teacher.py draws one teacher's precision/recall curve over score thresholds.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdd_engine import artifacts, autolabel, experiment, flywheel  # noqa: E402
from bdd_engine.config import load_config  # noqa: E402


def _per_class(df):
    return {r["class"]: {"n_gt": int(r["n_gt"]), "tp": int(r["tp"]), "fp": int(r["fp"]),
                         "precision": None if r["precision"] != r["precision"] else round(float(r["precision"]), 3),
                         "recall": None if r["recall"] != r["recall"] else round(float(r["recall"]), 3)}
            for _, r in df.iterrows() if r["n_gt"] > 0 or r["class"] == "overall"}


def measure(cfg, weights, sets, gt_pool, paths, pools, accept):
    lab = autolabel.get_labeler(cfg, "teacher", teacher_weights=weights)
    gt_eval = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "eval")}
    chosen, table, eval_s = autolabel.choose_on_eval_pool(
        lab, pools, gt_eval, paths, default=accept, grid=autolabel.threshold_grid(float(cfg.label_review)),
        beta=float(cfg.label_accept_beta), min_gt=int(cfg.label_accept_min_gt))
    out = {"weights": str(weights), "fbeta_thresholds": chosen, "eval_pool_label_s": round(eval_s, 1),
           "eval_pool_frames": int((pools["pool"] == "eval").sum())}
    for which, names in {**sets, "eval": [f["name"] for f in autolabel.eval_pool_frames(pools, gt_eval)]}.items():
        gt = [gt_pool.get(n) or gt_eval[n] for n in names if n in gt_pool or n in gt_eval]
        t0 = time.time()
        run = lab.label(gt, [paths[f["name"]] for f in gt], progress=False)
        secs = time.time() - t0
        at = autolabel.quality_at_accept(run, gt, accept)
        at_conf = autolabel.quality_at_accept(run, gt, float(cfg.label_teacher_conf))
        at_fb = autolabel.quality_at_accept(run, gt, chosen)
        per = at[(at["class"] != "overall") & (at["n_gt"] > 0)]
        out[which] = {"frames": len(gt), "seconds": round(secs, 1), "s_per_frame": round(secs / max(len(gt), 1), 4),
                      "at_accept": _per_class(at), "at_conf": _per_class(at_conf), "at_fbeta": _per_class(at_fb),
                      "classes_recall_ge_0.5_precision_ge_0.8":
                          int(((per["recall"] >= 0.5) & (per["precision"] >= 0.8)).sum())}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True, help="outputs folder holding §1-§6 of a demo run")
    ap.add_argument("--teacher", default=None, help="the shipped teacher (default: the demo's label_teacher_weights)")
    ap.add_argument("--skip-iter0", action="store_true")
    ap.add_argument("--iter0-only", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    cfg = load_config("demo", {"outputs_dir": str(a.out)})
    pools = artifacts.read_df(cfg.out, 3, "pools.csv")
    paths = dict(zip(pools["name"], pools["image_path"]))
    gt_pool = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "pool")}
    mined = artifacts.read_df(cfg.out, 6, "mined.csv")["name"].tolist()
    rnd = experiment.random_pool_names(flywheel._unused_pool(cfg, pools, 1), len(mined), int(cfg.seed))
    sets = {"mined": mined, "random": rnd, "pool": sorted(gt_pool)}
    accept = float(cfg.label_accept)
    res = {"SYNTHETIC": True, "accept": accept, "conf": float(cfg.label_teacher_conf), "load1": os.getloadavg()[0],
           "sets": {k: len(v) for k, v in sets.items()}}
    teachers = {} if a.skip_iter0 else {"iter0": artifacts.start_weights(cfg.out, 1)}
    if not a.iter0_only:
        teachers["shipped"] = a.teacher or cfg.label_teacher_weights
    for tag, w in teachers.items():
        res[tag] = measure(cfg, w, sets, gt_pool, paths, pools, accept)
        print(tag, json.dumps({k: {"overall": v["at_accept"]["overall"], "classes_ok": v["classes_recall_ge_0.5_precision_ge_0.8"],
                                   "s_per_frame": v["s_per_frame"]} for k, v in res[tag].items() if k in sets or k == "eval"}), flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
