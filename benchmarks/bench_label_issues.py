"""Finding label mistakes, measured on planted errors: this project's stage vs cleanlab vs
FiftyOne Brain vs a naive baseline, side by side on the same predictions.

World: a SYNTHETIC world (demo size 640x360, BDD's condition marginals, seed 29: not the demo
world's 42 nor the teacher's 11) generated at each ``--noise`` level. The noise is drawn after
every image is rendered, so all levels share the same images and one prediction pass serves
them all; ``<world>/planted_errors.json`` is the answer key (dropped, shifted, swapped,
spurious). Predictions: the demo teacher ``bdd_engine/models/synthteacher-w025.pt``, trained
only on the seed-11 teacher world (the benchmark checks that no drive group is shared), so they
are out-of-sample. Threshold 0.01 (cleanlab wants low scores; FiftyOne gets those >= 0.25,
Ultralytics' own default, because its class-agnostic matching lets any junk box match a label).

Methods, each giving a suspicion score per label box and per prediction (a missed object):
  ours           bdd_engine.labelissues.score_labels (kind scores)
  cleanlab_box   cleanlab.object_detection.rank.compute_{swap,badloc,overlooked}_box_scores
                 (1 - score; spurious: 1 - min(swap, badloc)); flags from filter.find_label_issues
  cleanlab_image rank.get_label_quality_scores: every box gets 1 - its image's score
  fiftyone       fiftyone.brain.compute_mistakenness: mistakenness (class), mistakenness_loc,
                 possible_spurious, possible_missing (x confidence)
  naive          1 - IoU with the best prediction (score >= 0.25); missed: confidence of a
                 prediction with IoU < 0.5 to every label
Per kind: precision@k (k = planted errors of that kind, ranked by the method's score for that
kind), recall (share of planted errors the method flags by its own rule), AUROC (planted of that
kind vs clean boxes; for dropped: predictions on a dropped object vs all other predictions).

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_label_issues.py`` (~4 min on 2 busy cores;
worlds and predictions cached under ``--work``). Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bdd_engine.env import setup_env  # noqa: E402

setup_env()
from bdd_engine import bdd, labelissues, synth, train  # noqa: E402
from bdd_engine.config import load_config  # noqa: E402
from bdd_engine.geometry import PIXEL_SHIFT, box_iou  # noqa: E402

TEACHER = ROOT / "bdd_engine" / "models" / "synthteacher-w025.pt"
KINDS = ("swapped", "shifted", "spurious", "dropped")
STAGE_KIND = {"swapped": "wrong_class", "shifted": "badly_placed", "spurious": "spurious_box"}
FO_CONF = 0.25
SEED = 29


def world_cfg(noise: float, n: int):
    return load_config("demo", {"seed": SEED, "synth_n_train": n, "synth_n_val": 0, "synth_share_10k": 0.0,
                                "synth_label_noise": noise}, env=False)


def check_disjoint(cfg) -> int:
    """Drive groups shared with the teacher's training world (must be 0)."""
    teacher = {bdd.group_of(bdd.video_of(s.name)) for s in synth.plan_world(load_config("teacher", env=False))}
    return len(teacher & {bdd.group_of(bdd.video_of(s.name)) for s in synth.plan_world(cfg)})


def load_world(work: Path, noise: float, n: int) -> tuple[Path, list, list]:
    cfg = world_cfg(noise, n)
    root = synth.generate(cfg, work / f"world_n{n}_{int(round(noise * 100)):02d}")
    frames = bdd.load_frames(root / "labels" / "det_20" / "det_train.json")
    planted = json.loads((root / synth.PLANTED_FILE).read_text())["errors"]
    return root, frames, planted


def predictions(work: Path, root: Path, n: int) -> list:
    path = work / f"predictions_n{n}.json"
    if not path.exists():
        imgs = sorted((root / "images" / "100k" / "train").glob("*.jpg"))
        train.save_predictions(train.predict(TEACHER, imgs, conf=0.01, device="cpu", progress=False), path)
    return bdd.load_frames(path)


# ----------------------------------------------------------------------------- the units scored
def label_units(frames: list, planted: list) -> pd.DataFrame:
    """Every scored label box (name, label_id, xyxy, category) with its planted kind ('' = clean)."""
    kind = {(e["name"], e["label_id"]): e["kind"] for e in planted if e["label_id"] is not None}
    rows = []
    for fr in frames:
        for r, xy in zip(*labelissues._boxes(fr)[:2]):
            rows.append({"name": fr["name"], "label_id": r["label_id"], "category": r["category"],
                         "x1": xy[0], "y1": xy[1], "x2": xy[2], "y2": xy[3], "kind": kind.get((fr["name"], r["label_id"]), "")})
    return pd.DataFrame(rows)


def pred_units(preds: list, planted: list) -> pd.DataFrame:
    """Every prediction (name, index, xyxy, score, category) and the dropped box it lands on (-1: none)."""
    dropped: dict[str, list] = {}
    for i, e in enumerate(planted):
        if e["kind"] == "dropped":
            dropped.setdefault(e["name"], []).append((i, e["true_box"]))
    rows = []
    for fr in preds:
        xy, s, c = labelissues._preds(fr)
        d = dropped.get(fr["name"], [])
        iou = box_iou(xy, np.array([b for _, b in d]).reshape(-1, 4), pixel_shift=PIXEL_SHIFT)
        for j in range(len(xy)):
            hit = int(d[int(iou[j].argmax())][0]) if len(d) and iou[j].max() >= 0.5 else -1
            rows.append({"name": fr["name"], "pi": j, "x1": xy[j, 0], "y1": xy[j, 1], "x2": xy[j, 2], "y2": xy[j, 3],
                         "score": s[j], "category": c[j], "dropped": hit})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- metrics
def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count half)."""
    if not len(pos) or not len(neg):
        return float("nan")
    allv = np.concatenate([pos, neg])
    ranks = pd.Series(allv).rank().to_numpy()[:len(pos)]
    return float((ranks.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def tie_order(score: np.ndarray, seed: int = 42) -> np.ndarray:
    """Indices by score, highest first; ties in a seeded random order (binary scores stay fair)."""
    r = np.random.default_rng(seed).random(len(score))
    return np.lexsort((r, -np.asarray(score, float)))


def label_metrics(units: pd.DataFrame, kind: str, score: np.ndarray, flagged: np.ndarray) -> dict:
    pos = (units["kind"] == kind).to_numpy()
    clean = (units["kind"] == "").to_numpy()
    k = int(pos.sum())
    top = tie_order(score)[:k]
    return {"k": k, "p_at_k": round(float(pos[top].mean()), 3) if k else None,
            "recall": round(float(flagged[pos].mean()), 3) if k else None,
            "auroc": round(auroc(score[pos], score[clean]), 3)}


def dropped_metrics(pu: pd.DataFrame, n_dropped: int, score: np.ndarray, flagged: np.ndarray) -> dict:
    """precision@k over predictions ranked by their missed-object score: a hit is a prediction on a
    dropped box not hit before (duplicates count as misses); recall: dropped boxes under a flagged one."""
    hit = pu["dropped"].to_numpy()
    seen: set = set()
    hits = 0
    for i in tie_order(score)[:n_dropped]:
        if hit[i] >= 0 and hit[i] not in seen:
            seen.add(hit[i])
            hits += 1
    rec = len({h for h, f in zip(hit, flagged) if f and h >= 0})
    return {"k": n_dropped, "p_at_k": round(hits / n_dropped, 3) if n_dropped else None,
            "recall": round(rec / n_dropped, 3) if n_dropped else None,
            "auroc": round(auroc(score[hit >= 0], score[hit < 0]), 3)}


# ----------------------------------------------------------------------------- the methods
def run_ours(frames, preds, lu, pu) -> dict:
    t = labelissues.score_labels(frames, preds)
    lab = lu.merge(t[t["row"] == "label"], on=["name", "label_id"], how="left", suffixes=("", "_s"))
    miss = t[t["row"] == "missed"]
    key = {(r.name, round(r.x1, 3), round(r.y1, 3), round(r.x2, 3), round(r.y2, 3)): (r.missed_object, r.flagged)
           for r in miss.itertuples()}
    m = [key.get((r.name, round(r.x1, 3), round(r.y1, 3), round(r.x2, 3), round(r.y2, 3)), (0.0, False))
         for r in pu.itertuples()]
    out = {k: label_metrics(lu, k, lab[STAGE_KIND[k]].to_numpy(float), lab["flagged"].to_numpy(bool))
           for k in STAGE_KIND}
    out["dropped"] = (np.array([a for a, _ in m]), np.array([b for _, b in m]))
    return out


def _cl_inputs(frames, preds):
    idx = {c: i for i, c in enumerate(bdd.CLASSES)}
    by = {p["name"]: p for p in preds}
    labels, predictions, order = [], [], []
    for fr in frames:
        rows, xy, _ = labelissues._boxes(fr)
        labels.append({"bboxes": xy, "labels": np.array([idx[r["category"]] for r in rows], int)})
        pxy, ps, pc = labelissues._preds(by.get(fr["name"]))
        cls = np.array([idx[c] for c in pc], int)
        predictions.append([np.c_[pxy[cls == k], ps[cls == k]].reshape(-1, 5) for k in range(len(bdd.CLASSES))])
        order.append(np.concatenate([np.flatnonzero(cls == k) for k in range(len(bdd.CLASSES))]).astype(int))
    return labels, predictions, order


def run_cleanlab(frames, preds, lu, pu) -> tuple[dict, dict]:
    from cleanlab.object_detection import filter as clf, rank

    labels, predictions, order = _cl_inputs(frames, preds)
    img_q = rank.get_label_quality_scores(labels, predictions, verbose=False)
    img_flag = clf.find_label_issues(labels, predictions)
    swap = np.concatenate(rank.compute_swap_box_scores(labels=labels, predictions=predictions))
    bad = np.concatenate(rank.compute_badloc_box_scores(labels=labels, predictions=predictions))
    over = rank.compute_overlooked_box_scores(labels=labels, predictions=predictions)
    n_lab = [len(lb["labels"]) for lb in labels]
    box_img = np.repeat(np.arange(len(labels)), n_lab)
    flag_box = img_flag[box_img]
    score_box = {"swapped": 1 - np.nan_to_num(swap, nan=1.0), "shifted": 1 - np.nan_to_num(bad, nan=1.0),
                 "spurious": 1 - np.nan_to_num(np.minimum(swap, bad), nan=1.0)}
    by_box = {k: label_metrics(lu, k, v, flag_box) for k, v in score_box.items()}
    by_img = {k: label_metrics(lu, k, 1 - img_q[box_img], flag_box) for k in score_box}
    # overlooked scores are per prediction, in cleanlab's class-major order: map back to our order
    miss = np.zeros(len(pu))
    start = 0
    pred_img = {fr["name"]: i for i, fr in enumerate(frames)}
    offsets = {}
    for fr in preds:
        offsets[fr["name"]] = start
        start += len(labelissues._preds(fr)[0])
    for name, i in pred_img.items():
        if name not in offsets or not len(order[i]):
            continue
        miss[offsets[name] + order[i]] = 1 - np.nan_to_num(over[i], nan=1.0)
    mflag = pd.Series(pu["name"].map({fr["name"]: bool(img_flag[i]) for i, fr in enumerate(frames)})).fillna(False)
    by_box["dropped"] = (miss, mflag.to_numpy(bool) & (miss > 0.5))
    by_img["dropped"] = (1 - img_q[pu["name"].map(pred_img).to_numpy(int)], mflag.to_numpy(bool))
    return by_box, by_img


def run_fiftyone(frames, preds, lu, pu, root: Path, work: Path) -> dict:
    import fiftyone as fo
    import fiftyone.brain as fob

    from bdd_engine.explorer import db

    db.connect(work / "fodb")
    W, H = 640, 360
    ds = fo.Dataset()
    by = {p["name"]: p for p in preds}
    samples = []
    for fr in frames:
        rows, xy, _ = labelissues._boxes(fr)
        pxy, ps, pc = labelissues._preds(by.get(fr["name"]))
        gt = [fo.Detection(label=r["category"], bounding_box=_rel(b, W, H), label_id=r["label_id"]) for r, b in zip(rows, xy)]
        pr = [fo.Detection(label=str(c), bounding_box=_rel(b, W, H), confidence=float(s), pi=int(j))
              for j, (b, s, c) in enumerate(zip(pxy, ps, pc)) if s >= FO_CONF]
        samples.append(fo.Sample(filepath=str(root / "images" / "100k" / "train" / fr["name"]), name=fr["name"],
                                 ground_truth=fo.Detections(detections=gt), predictions=fo.Detections(detections=pr)))
    ds.add_samples(samples, progress=False)
    fob.compute_mistakenness(ds, "predictions", label_field="ground_truth", progress=False)
    gt_rows, pr_rows = {}, {}
    for s in ds.iter_samples():
        for d in s.ground_truth.detections:
            gt_rows[(s["name"], d["label_id"])] = (d.get_field("mistakenness") if d.has_field("mistakenness") else None,
                                                   d.get_field("mistakenness_loc") if d.has_field("mistakenness_loc") else None,
                                                   bool(d.has_field("possible_spurious") and d["possible_spurious"]))
        for d in s.predictions.detections:
            pr_rows[(s["name"], d["pi"])] = bool(d.has_field("possible_missing") and d["possible_missing"]) * d.confidence
    ds.delete()
    g = [gt_rows.get((r.name, r.label_id), (None, None, False)) for r in lu.itertuples()]
    cls = np.array([np.nan if a is None else a for a, _, _ in g], float)
    loc = np.array([np.nan if b is None else b for _, b, _ in g], float)
    spur = np.array([c for _, _, c in g], float)
    # a spurious-flagged box has no mistakenness: rank it on top of the class/loc lists too? No: FO's own fields only.
    out = {"swapped": label_metrics(lu, "swapped", np.nan_to_num(cls, nan=0.0), np.nan_to_num(cls) > 0.5),
           "shifted": label_metrics(lu, "shifted", np.nan_to_num(loc, nan=0.0), np.nan_to_num(loc) > 0.5),
           "spurious": label_metrics(lu, "spurious", spur, spur > 0)}
    m = np.array([pr_rows.get((r.name, r.pi), 0.0) for r in pu.itertuples()], float)
    out["dropped"] = (m, m > 0)
    return out


def _rel(b, W, H):
    return [b[0] / W, b[1] / H, (b[2] - b[0] + PIXEL_SHIFT) / W, (b[3] - b[1] + PIXEL_SHIFT) / H]


def run_naive(frames, preds, lu, pu) -> dict:
    by = {p["name"]: p for p in preds}
    best, miss = [], np.zeros(len(pu))
    for fr in frames:
        rows, xy, _ = labelissues._boxes(fr)
        pxy, ps, _ = labelissues._preds(by.get(fr["name"]))
        keep = ps >= FO_CONF
        iou = box_iou(xy, pxy[keep], pixel_shift=PIXEL_SHIFT)
        best += list(iou.max(axis=1, initial=0.0))
    score = 1 - np.array(best)
    out = {k: label_metrics(lu, k, score, score >= 0.5) for k in STAGE_KIND}
    off = 0
    for fr in preds:
        pxy, ps, _ = labelissues._preds(fr)
        lab = next((f for f in frames if f["name"] == fr["name"]), None)
        lxy = labelissues._boxes(lab)[1] if lab else np.zeros((0, 4))
        iou = box_iou(pxy, lxy, pixel_shift=PIXEL_SHIFT).max(axis=1, initial=0.0)
        miss[off:off + len(pxy)] = np.where((iou < 0.5) & (ps >= FO_CONF), ps, 0.0)
        off += len(pxy)
    out["dropped"] = (miss, miss >= 0.5)
    return out


def seen_by_model(preds: list, planted: list) -> dict:
    """Share of each kind's planted errors whose true object has a prediction (score >= 0.25, any class,
    IoU >= 0.5): no ranking of these predictions can find the others, so precision@k is capped by it."""
    by = {p["name"]: labelissues._preds(p) for p in preds}
    out = {}
    for k in ("swapped", "shifted", "dropped"):
        es = [e for e in planted if e["kind"] == k]
        seen = 0
        for e in es:
            xy, s, _ = by.get(e["name"], (np.zeros((0, 4)), np.zeros(0), np.zeros(0)))
            seen += bool((box_iou(np.array([e["true_box"]]), xy[s >= FO_CONF], pixel_shift=PIXEL_SHIFT) >= 0.5).any())
        out[k] = round(seen / len(es), 3) if es else None
    return out


# ----------------------------------------------------------------------------- the run
def one_level(work: Path, noise: float, n: int, with_fo: bool) -> dict:
    root, frames, planted = load_world(work, noise, n)
    preds = predictions(work, root, n)
    lu, pu = label_units(frames, planted), pred_units(preds, planted)
    n_dropped = sum(e["kind"] == "dropped" for e in planted)
    methods: dict[str, dict] = {}
    t0 = time.time()
    methods["ours"] = run_ours(frames, preds, lu, pu)
    times = {"ours": time.time() - t0}
    t0 = time.time()
    methods["cleanlab_box"], methods["cleanlab_image"] = run_cleanlab(frames, preds, lu, pu)
    times["cleanlab"] = time.time() - t0
    if with_fo:
        t0 = time.time()
        methods["fiftyone"] = run_fiftyone(frames, preds, lu, pu, root, work)
        times["fiftyone"] = time.time() - t0
    methods["naive"] = run_naive(frames, preds, lu, pu)
    for m in methods.values():
        m["dropped"] = dropped_metrics(pu, n_dropped, *m["dropped"])
    return {"noise": noise, "frames": len(frames), "label_boxes": len(lu), "predictions": len(pu),
            "planted": {k: sum(e["kind"] == k for e in planted) for k in KINDS},
            "seen_by_model": seen_by_model(preds, planted), "methods": methods,
            "seconds": {k: round(v, 1) for k, v in times.items()}}


def table(levels: list[dict]) -> str:
    lines = ["| noise | kind | k | seen by model | " + " | ".join(levels[0]["methods"]) + " |",
             "|---|---|---|---|" + "---|" * len(levels[0]["methods"])]
    for lv in levels:
        for k in KINDS:
            cells = [f"{m[k]['p_at_k']} / {m[k]['recall']} / {m[k]['auroc']}" for m in lv["methods"].values()]
            lines.append(f"| {lv['noise']:.0%} | {k} | {lv['planted'][k]} | {lv['seen_by_model'].get(k, '')} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench_label_issues")
    ap.add_argument("--noise", type=float, nargs="*", default=[0.05, 0.15])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--no-fiftyone", action="store_true", help="skip FiftyOne Brain (needs its MongoDB)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    shared = check_disjoint(world_cfg(args.noise[0], args.frames))
    assert shared == 0, f"{shared} drive groups shared with the teacher's training world"
    levels = [one_level(args.work, nz, args.frames, not args.no_fiftyone) for nz in args.noise]
    print(table(levels))
    print("cells: precision@k / recall / AUROC")
    print("RESULT " + json.dumps({"synthetic": True, "teacher": TEACHER.name, "teacher_shared_drive_groups": shared,
                                  "seed": SEED, "levels": levels}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
