"""BDD100K's official detection metric, per class / slice / frame, with bootstrap CIs.

The official numbers come from ``python -m bdd100k.eval.run -t det`` which calls
Scalabel's ``evaluate_det`` → pycocotools' ``COCOeval``. This module reproduces those
numbers exactly (tests compare against pycocotools to 1e-4, in practice ~1e-15), but
matches detections to ground truth **once** per (frame, class) for all 10 IoU
thresholds and 4 area ranges, caches the per-detection outcome, and then computes AP
for any subset of frames (a slice, a bootstrap resample, one frame) with a sort-free
pass of segmented cumulative sums. COCO matching is per image, so AP of a subset
computed from the cached matches equals re-running COCOeval on that subset.

Conventions mirrored from scalabel
----------------------------------
Read from ``bdd100k/eval/run.py`` (det task), ``bdd100k/label/to_scalabel.py``,
``bdd100k/configs/det.toml``, ``scalabel/eval/detect.py`` (``evaluate_det``,
``COCOevalV2``), ``scalabel/label/to_coco.py`` (``scalabel2coco_detection``),
``scalabel/label/transforms.py`` (``box2d_to_bbox``), ``scalabel/label/utils.py``
(``check_crowd``, ``check_ignored``) and pycocotools ``cocoeval.py`` / ``maskApi.c``:

* Categories: the name mapping (bike→bicycle, caravan→car, motor→motorcycle,
  person→pedestrian, van→car) then the ignore mapping (other person→pedestrian,
  other vehicle→car, trailer→truck, flagged ``ignored``) are applied to ground truth
  **and** predictions (``bdd100k_to_scalabel`` runs on both). Via ``bdd.boxes_table``.
* box2d → COCO bbox ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]`` (the +1 pixel-inclusive
  width); ``area = w * h`` of that bbox, for GT (``set_box_object_geometry``) and for
  detections (``COCO.loadRes``). Area ranges use this area.
* ``iscrowd = crowd or ignored``: ``crowd: true`` boxes and ignore-mapped boxes are
  COCO crowd regions: never counted as GT, may absorb any number of detections
  (a matched detection is neither TP nor FP), and IoU against them is
  ``intersection / detection area``. Detections are never crowd (``loadRes`` sets
  ``iscrowd = 0``), so an ignore-mapped *prediction* is an ordinary detection.
* IoU exactly as ``bbIou`` in maskApi.c (same float operations, so ties and
  thresholds behave identically); a detection matches at threshold t when IoU >= t.
* Greedy matching per image and class (``evaluateImg``): detections by descending
  score (stable), at most ``maxDets = 100`` per image **per class**; each goes to the
  best still-free non-ignored GT, else to the best ignored/crowd GT; equal IoU → the
  later GT in label order wins (the ``>=`` update in the loop). Unmatched detections
  outside the area range are ignored for that range.
* IoU thresholds ``linspace(.5, .95, 10)``, recall thresholds ``linspace(0, 1, 101)``
  (101-point interpolation of the monotone precision envelope, ``searchsorted`` left),
  area ranges all [0, 1e10], small [0, 32²], medium [32², 96²], large [96², 1e10],
  bounds inclusive.
* Detections of all images are merged by descending score with a stable sort
  (ties: image order by name, then within-image order).
* Per-class AP is -1 in COCOeval when the class has no non-ignored GT in the
  evaluated images/range; the overall number is the mean over the remaining entries
  (``COCOevalV2.get_score``: ``mean(s[s > -1])``), i.e. the mean over classes *with
  GT*. We report such classes as NaN/null.
* Deliberate difference: Scalabel numbers GT and prediction images independently
  (both sorted by name), so the official tool silently misaligns when the prediction
  file lacks a frame. We match predictions to GT frames **by name**; prediction frames
  not in the GT are counted and reported, GT frames without predictions have none.
* Deliberate difference: a box whose coordinates are missing, null, not numbers, not
  finite or inverted/zero-size (``bdd.box_issue``, the rule ``bdd.validate`` reports) is left
  out of GT and predictions and counted (``gt_dropped_*`` / ``pred_dropped_*``); the official
  tool would crash on it or score a box nobody drew. A predicted box without a finite score
  raises :class:`EvalInputError` naming the first one.

Slices, frames, bootstrap
-------------------------
Slice name for the full key: ``"weather | timeofday | scene"`` (verbatim values, the
``slice`` column of ``bdd.frames_table``); for one attribute alone: the same layout
with ``*`` for the others, e.g. ``"foggy | * | *"``. A frame missing an attribute is
in no slice that needs it (it still counts overall). Bootstrap CIs resample the
slice's frames with replacement (multinomial frame weights, seed derived from
``seed`` and the slice name, so a slice's resamples never depend on which other
slices were evaluated); each resample's mAP@0.5 is computed from cached matches with
weighted cumulative sums; the CI is the 2.5/97.5 percentile.

Boxes are xyxy pixels everywhere; AP values are fractions in [0, 1].
"""

from __future__ import annotations

import argparse
import math
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from bdd_engine import bdd
from bdd_engine.checkpoint import atomic_write_json
from bdd_engine.geometry import iou_xywh

# COCOeval Params.setDetParams, verbatim (same floats).
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNGS = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=float)
AREA_NAMES = ("all", "small", "medium", "large")
MAX_DETS = 100        # per image *and class* (evaluateImg truncates each (image, category) list)
PIXEL_SHIFT = 1.0     # Scalabel box2d_to_bbox: w = x2 - x1 + 1 (explorer.rel_boxes reads this)
CLASSES = bdd.CLASSES
DEFAULT_BY = ("weather", "timeofday", "scene")
WILDCARD = "*"
_EPS = np.spacing(1)  # pycocotools: pr = tp / (fp + tp + np.spacing(1))


# ============================================================================ matching
@dataclass
class MatchCache:
    """Per-detection match outcomes for one (GT, prediction) pair; the basis of every AP.

    Frames are the GT frames sorted by name (index ``f``). Detections are the kept
    ones (top ``MAX_DETS`` per frame and class), stored sorted by (class, official
    global rank) so any subset keeps the order COCOeval would use.

    Shapes: D detections, F frames, K=10 classes, T=10 IoU thresholds, A=4 area ranges.
    """

    names: np.ndarray          # (F,) str, sorted
    attrs: pd.DataFrame        # (F, len(by)) attribute values (None when missing)
    det_f: np.ndarray          # (D,) int frame index
    det_k: np.ndarray          # (D,) int class id
    det_score: np.ndarray      # (D,) float
    det_tp: np.ndarray         # (D, T, A) bool: matched to non-ignored GT
    det_ig: np.ndarray         # (D, T, A) bool: matched to ignored/crowd GT, or out of area range
    npig: np.ndarray           # (F, K, A) int: non-ignored GT per frame/class/range
    n_pred: np.ndarray         # (F,) int: predicted boxes of evaluated classes (before top-100)
    class_start: np.ndarray    # (K+1,) det index where each class starts
    report: dict[str, int] = field(default_factory=dict)

    @property
    def det_fp(self) -> np.ndarray:
        """(D, T, A) bool: counted false positive."""
        return ~self.det_tp & ~self.det_ig


def _frame_index(frames: Sequence[Mapping[str, Any]], what: str) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    dup = 0
    for fr in frames:
        if fr["name"] in out:
            dup += 1
        out[fr["name"]] = fr
    if dup:
        raise ValueError(f"{what}: {dup} duplicate frame names; each frame must appear once")
    return out


def _coco_xywh(df: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """xyxy pixels → COCO (x, y, w, h, area) with Scalabel's +1 width/height."""
    x = df["x1"].to_numpy(float)
    y = df["y1"].to_numpy(float)
    w = df["x2"].to_numpy(float) - x + PIXEL_SHIFT
    h = df["y2"].to_numpy(float) - y + PIXEL_SHIFT
    return x, y, w, h, w * h


def _pair_ranges(det_key: np.ndarray, gt_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (det, gt) index pairs with equal key. ``gt_key`` must be sorted."""
    lo = np.searchsorted(gt_key, det_key, "left")
    hi = np.searchsorted(gt_key, det_key, "right")
    cnt = hi - lo
    pd_ = np.repeat(np.arange(len(det_key)), cnt)
    start = np.repeat(lo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt)
    pg = start + np.arange(cnt.sum())
    return pd_, pg


class _GT(NamedTuple):
    """Ground-truth boxes sorted by (frame, class, label order), in COCO xywh with the +1."""

    f: np.ndarray        # (G,) frame index
    key: np.ndarray      # (G,) frame * K + class, sorted
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    h: np.ndarray
    crowd: np.ndarray    # (G,) bool: crowd or ignore-mapped
    ig: np.ndarray       # (G, A) bool: crowd/ignored or area outside the range
    npig: np.ndarray     # (F, K, A) int: non-ignored GT per frame/class/range


class _Dets(NamedTuple):
    """Kept detections (top MAX_DETS per frame and class) sorted by (frame, class, -score)."""

    f: np.ndarray        # (D,) frame index
    k: np.ndarray        # (D,) class id
    score: np.ndarray    # (D,)
    key: np.ndarray      # (D,) frame * K + class
    rank: np.ndarray     # (D,) rank within its (frame, class)
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    h: np.ndarray
    area: np.ndarray     # (D,) COCO area (with the +1)
    n_pred: np.ndarray   # (F,) predicted boxes per frame before the top-MAX_DETS cut


def build_cache(gt_frames: Sequence[Mapping[str, Any]], pred_frames: Sequence[Mapping[str, Any]] | pd.DataFrame,
                by: Sequence[str] = DEFAULT_BY) -> MatchCache:
    """Map categories, convert boxes, match once for all thresholds and area ranges.

    ``pred_frames``: BDD frames with ``score`` per label, or a box table with
    ``bdd.BOX_COLUMNS`` (rows of a frame in label order). ``by``: the frame attributes
    kept for slicing.
    """
    gt_idx = _frame_index(gt_frames, "ground truth")
    names = np.array(sorted(gt_idx), dtype=object)
    fpos = {n: i for i, n in enumerate(names)}
    gt, pr, report = _box_tables(gt_idx, names, fpos, pred_frames)
    attrs = pd.DataFrame({a: [(gt_idx[n].get("attributes") or {}).get(a) for n in names] for a in by})
    g = _ground_truth(gt, fpos, len(names))
    d = _detections(pr, fpos, len(names), report)
    det_tp, det_ig = _match(g, d)
    # ---- store by (class, COCOeval's accumulate order: -score, image, within-image rank)
    gorder = np.lexsort((d.rank, d.f, -d.score, d.k))
    class_start = np.searchsorted(d.k[gorder], np.arange(len(CLASSES) + 1), "left")
    return MatchCache(names=names, attrs=attrs, det_f=d.f[gorder], det_k=d.k[gorder],
                      det_score=d.score[gorder], det_tp=det_tp[gorder], det_ig=det_ig[gorder],
                      npig=g.npig, n_pred=d.n_pred, class_start=class_start, report=report)


def _box_tables(gt_idx: Mapping[str, Mapping[str, Any]], names: np.ndarray, fpos: Mapping[str, int],
                pred_frames: Sequence[Mapping[str, Any]] | pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """(GT box table, prediction box table of the GT frames, report counts); frames in
    name order = COCO image id order in Scalabel's conversion."""
    gcount: Counter = Counter()
    pcount: Counter = Counter()
    gt = bdd.boxes_table([gt_idx[n] for n in names], gcount)
    if isinstance(pred_frames, pd.DataFrame):  # a box table (e.g. predict()'s parquet)
        missing = set(bdd.BOX_COLUMNS) - set(pred_frames.columns)
        if missing:
            raise ValueError(f"prediction table lacks columns {sorted(missing)} (need bdd.BOX_COLUMNS)")
        pred_names = set(pred_frames["name"].unique())
        pr = pred_frames[pred_frames["name"].isin(fpos)].reset_index(drop=True)
    else:
        pr_idx = _frame_index(pred_frames, "predictions")
        pred_names = set(pr_idx)
        pr = bdd.boxes_table([pr_idx[n] for n in names if n in pr_idx], pcount)
    report: dict[str, int] = {"gt_frames": len(names),
                              "pred_frames_not_in_gt": sum(1 for n in pred_names if n not in fpos)}
    report.update({f"gt_dropped_{k.replace(' ', '_')}": int(v) for k, v in gcount.items()})
    report.update({f"pred_dropped_{k.replace(' ', '_')}": int(v) for k, v in pcount.items()})
    if pr["score"].isna().any():
        first = pr[pr["score"].isna()].iloc[0] if isinstance(pred_frames, pd.DataFrame) else _first_bad_score(pr_idx, fpos)
        raise EvalInputError(f"predictions: {int(pr['score'].isna().sum())} box(es) without 'score' (missing, null, "
                             f"not a number or not finite), the first in frame {first['name']!r}: {_box_text(first)}; "
                             "every predicted box needs a score for AP")
    return gt, pr, report


class EvalInputError(ValueError):
    """Ground truth or predictions that cannot be evaluated; the message names the first bad record."""


def _first_bad_score(pr_idx: Mapping[str, Mapping[str, Any]], fpos: Mapping[str, int]) -> dict[str, Any]:
    """The first evaluated prediction (file order) whose ``score`` is missing, null, text, NaN or inf."""
    for n, fr in pr_idx.items():
        if n not in fpos:
            continue
        for lb in fr.get("labels") or []:
            row = bdd.boxes_table([{"name": n, "labels": [lb]}])  # the same mapping and checks as the table
            if len(row) and np.isnan(row["score"].iloc[0]):
                return {"name": n, "id": lb.get("id"), "category": lb.get("category"), "box2d": lb.get("box2d"),
                        "score": lb.get("score", "missing")}
    raise AssertionError("a NaN score row has no source label")  # pragma: no cover


def _box_text(r: Mapping[str, Any]) -> str:
    """One box for a message: id, category, coordinates, score as given."""
    box = r.get("box2d") or {k: r.get(k) for k in ("x1", "y1", "x2", "y2")}
    ident = f"id {r['id']!r} " if r.get("id") is not None else ""
    return f"{ident}{r.get('category')!r} box2d {dict(box)} score {r.get('score', 'missing')!r}"


def name_mismatch(gt_frames: Sequence[Mapping[str, Any]], pred_frames: Sequence[Mapping[str, Any]],
                  n_examples: int = 3) -> dict[str, Any]:
    """How the frame names of GT and predictions differ: counts and the first few names (file
    order) of GT frames without a prediction frame and of prediction frames not in the GT, and
    how many names match."""
    g = [f["name"] for f in gt_frames]
    p = [f["name"] for f in pred_frames]
    gs, ps = set(g), set(p)
    gt_only = [n for n in dict.fromkeys(g) if n not in ps]
    pred_only = [n for n in dict.fromkeys(p) if n not in gs]
    return {"matched": len(gs & ps), "gt_not_in_pred": len(gt_only), "pred_not_in_gt": len(pred_only),
            "gt_examples": gt_only[:n_examples], "pred_examples": pred_only[:n_examples]}


def mismatch_text(m: Mapping[str, Any]) -> str:
    """The summary line of :func:`name_mismatch` ('' when every name matches)."""
    parts = []
    if m["gt_not_in_pred"]:
        parts.append(f"{m['gt_not_in_pred']} GT frame(s) have no prediction frame (e.g. "
                     f"{', '.join(map(repr, m['gt_examples']))}: scored as frames with no detections)")
    if m["pred_not_in_gt"]:
        parts.append(f"{m['pred_not_in_gt']} prediction frame(s) are not in the GT (e.g. "
                     f"{', '.join(map(repr, m['pred_examples']))}: not scored)")
    return "names: " + "; ".join(parts) if parts else ""


def _ground_truth(gt: pd.DataFrame, fpos: Mapping[str, int], F: int) -> _GT:
    """GT grouped by (frame, class) in label order; ignore flags and non-ignored counts per range."""
    K, A = len(CLASSES), len(AREA_RNGS)
    g_f = gt["name"].map(fpos).to_numpy(np.int64)
    g_k = gt["class_id"].to_numpy(np.int64)
    g_order = np.lexsort((np.arange(len(gt)), g_k, g_f))
    gt = gt.iloc[g_order].reset_index(drop=True)
    g_f, g_k = g_f[g_order], g_k[g_order]
    gx, gy, gw, gh, g_area = _coco_xywh(gt)
    g_crowd = (gt["crowd"].to_numpy(bool) | gt["ignore"].to_numpy(bool))
    # gtIg per area range: crowd/ignored or area outside [lo, hi]
    g_ig = g_crowd[:, None] | (g_area[:, None] < AREA_RNGS[None, :, 0]) | (g_area[:, None] > AREA_RNGS[None, :, 1])
    npig = np.zeros((F, K, A), np.int64)
    for a in range(A):
        keep = ~g_ig[:, a]
        np.add.at(npig[:, :, a], (g_f[keep], g_k[keep]), 1)
    return _GT(g_f, g_f * K + g_k, gx, gy, gw, gh, g_crowd, g_ig, npig)


def _detections(pr: pd.DataFrame, fpos: Mapping[str, int], F: int, report: dict[str, int]) -> _Dets:
    """Detections per (frame, class), stable by -score, top MAX_DETS kept (counts into ``report``)."""
    K = len(CLASSES)
    d_f = pr["name"].map(fpos).to_numpy(np.int64)
    d_k = pr["class_id"].to_numpy(np.int64)
    n_pred = np.bincount(d_f, minlength=F)
    report["gt_frames_without_pred_boxes"] = int((n_pred == 0).sum())
    d_score = pr["score"].to_numpy(float)
    order = np.lexsort((np.arange(len(pr)), -d_score, d_k, d_f))
    pr = pr.iloc[order].reset_index(drop=True)
    d_f, d_k, d_score = d_f[order], d_k[order], d_score[order]
    d_key = d_f * K + d_k
    grp_start = np.searchsorted(d_key, d_key, "left")
    d_rank = np.arange(len(pr)) - grp_start
    keep = d_rank < MAX_DETS
    report["pred_beyond_maxdets"] = int((~keep).sum())
    pr = pr[keep].reset_index(drop=True)
    d_f, d_k, d_score, d_key, d_rank = d_f[keep], d_k[keep], d_score[keep], d_key[keep], d_rank[keep]
    dx, dy, dw, dh, d_area = _coco_xywh(pr)
    return _Dets(d_f, d_k, d_score, d_key, d_rank, dx, dy, dw, dh, d_area, n_pred)


def _match(g: _GT, d: _Dets) -> tuple[np.ndarray, np.ndarray]:
    """(det_tp, det_ig), each (D, T, A) bool: candidate pairs (IoU >= 0.5, the lowest
    threshold, can ever match), COCOeval's greedy matching, then unmatched detections
    outside an area range are ignored for it."""
    pd_, pg = _pair_ranges(d.key, g.key)
    iou = iou_xywh((d.x[pd_], d.y[pd_], d.w[pd_], d.h[pd_]), (g.x[pg], g.y[pg], g.w[pg], g.h[pg]), g.crowd[pg])
    cand = iou >= IOU_THRS[0]
    pd_, pg, iou = pd_[cand], pg[cand], iou[cand]
    det_tp, det_mig = _greedy_match(pd_, pg, iou, d.rank, g.ig, g.crowd, len(d.f), len(g.f))
    matched = det_tp | det_mig
    d_out = (d.area[:, None] < AREA_RNGS[None, :, 0]) | (d.area[:, None] > AREA_RNGS[None, :, 1])  # (D, A)
    det_ig = det_mig | (~matched & d_out[:, None, :])
    return det_tp, det_ig


def _greedy_match(pd_: np.ndarray, pg: np.ndarray, iou: np.ndarray, d_rank: np.ndarray,
                  g_ig: np.ndarray, g_crowd: np.ndarray, D: int, G: int) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.evaluateImg's greedy loop, vectorised over all (frame, class) groups,
    thresholds and area ranges at once; sequential only over a detection's rank within
    its group (<= 100 steps). Candidate pairs have IoU >= 0.5; ``pg`` increases with label
    order inside a group, so "later GT wins ties" = max ``pg``.

    Returns (tp, matched_ignored), each (D, T, A) bool.
    """
    T, A = len(IOU_THRS), g_ig.shape[1]
    thr = np.minimum(IOU_THRS, 1 - 1e-10)
    tp = np.zeros((D, T, A), bool)
    mig = np.zeros((D, T, A), bool)
    if len(pd_) == 0:
        return tp, mig
    taken = np.zeros((G, T, A), bool)
    o = np.lexsort((pg, pd_, d_rank[pd_]))
    pd_, pg, iou = pd_[o], pg[o], iou[o]
    ranks = d_rank[pd_]
    bounds = np.searchsorted(ranks, np.arange(MAX_DETS + 1), "left")
    t_ax = np.arange(T)[None, :, None]
    a_ax = np.arange(A)[None, None, :]
    for j in range(MAX_DETS):
        s, e = bounds[j], bounds[j + 1]
        if s == e:
            continue
        jd, jg, ji = pd_[s:e], pg[s:e], iou[s:e]
        starts = np.flatnonzero(np.r_[True, jd[1:] != jd[:-1]])
        inv = np.cumsum(np.r_[False, jd[1:] != jd[:-1]])
        avail = (ji[:, None, None] >= thr[None, :, None]) & (~taken[jg] | g_crowd[jg][:, None, None])
        nonign = ~g_ig[jg][:, None, :]                                   # (P, 1, A)
        has_non = np.logical_or.reduceat(avail & nonign, starts, axis=0)  # (n, T, A)
        elig = avail & (nonign == has_non[inv])
        best = np.maximum.reduceat(np.where(elig, ji[:, None, None], -1.0), starts, axis=0)
        elig &= ji[:, None, None] == best[inv]
        bg = np.maximum.reduceat(np.where(elig, jg[:, None, None], -1), starts, axis=0)  # (n, T, A)
        m = bg >= 0
        dets = jd[starts]
        ign = np.zeros_like(m)
        ign[m] = g_ig[bg[m], np.broadcast_to(a_ax, m.shape)[m]]
        tp[dets] = m & ~ign
        mig[dets] = m & ign
        mi = np.nonzero(m)
        taken[bg[mi], mi[1], mi[2]] = True
    return tp, mig


# ============================================================================ AP from cache
def _distinct_counts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For GT counts ``n`` (L,): the distinct k_r = smallest integer k with float(k)/n >= recThr_r
    (COCO's ``rc >= recThr`` test, exact) and how many of the 101 r share each.

    Returns (row, k, mult) flattened row-major; each row's k increasing. Computed once
    per distinct n (counts repeat a lot) and gathered.
    """
    un, inv = np.unique(np.asarray(n, float), return_inverse=True)
    inv = inv.ravel()
    u = un[:, None]
    thr = REC_THRS[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.ceil(thr * u)
        for _ in range(2):  # float rounding of thr*n can be off by one either way
            k = np.where((k > 0) & ((k - 1) / u >= thr), k - 1, k)
            k = np.where(k / u < thr, k + 1, k)
    k = np.nan_to_num(k, nan=0.0).astype(np.int64)                    # (Un, R)
    Un, R = k.shape
    new = np.ones((Un, R), bool)
    new[:, 1:] = k[:, 1:] != k[:, :-1]
    urs, ucs = np.nonzero(new)
    tab_k = k[urs, ucs]
    tab_m = np.diff(np.append(urs * R + ucs, Un * R))                  # each row starts with new=True
    cnt = np.bincount(urs, minlength=Un)
    off = np.cumsum(cnt) - cnt
    take = _expand(off[inv], cnt[inv])
    return np.repeat(np.arange(len(inv)), cnt[inv]), tab_k[take], tab_m[take]


# Long on purpose: one vectorised transcription of COCOeval.accumulate (precision envelope, 101-point recall sampling), kept whole to compare line by line.
def _segmented_ap(seg: np.ndarray, tp: np.ndarray, fp: np.ndarray, npig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """101-point COCO AP and final recall for many detection lists at once.

    ``seg`` (N,) int non-decreasing: list id of each detection, detections of a list in
    COCO order; ``tp``/``fp`` (N,) non-negative integer weights (frame multiplicity; 0/0
    for ignored detections); ``npig`` (S,) weighted non-ignored GT count per list.
    Returns ap (S,), recall (S,); NaN where npig == 0 (COCO's -1).

    COCOeval: rc = ctp/npig, pr = ctp/(ctp+cfp+eps), q_r = max(pr[i:]) at the first i
    with rc >= recThr_r (0 if none), AP = mean_r q_r. Here rc >= recThr_r is the exact
    integer test ctp >= k_r, and only the distinct k_r of a list are evaluated (weighted
    by how many r share them), so a list costs O(min(npig, 101)) besides its length.
    """
    S = len(npig)
    N = len(seg)
    ap = np.where(npig > 0, 0.0, np.nan)
    rec = ap.copy()
    lists = np.flatnonzero(npig > 0)
    if N == 0 or len(lists) == 0:
        return ap, rec
    seg_len = np.bincount(seg, minlength=S)
    seg_start = np.concatenate([[0], np.cumsum(seg_len)[:-1]])
    seg_end = seg_start + seg_len
    # cumulative sums restarted at each list (integer-valued floats: exact)
    ctp = np.concatenate([[0.0], np.cumsum(tp, dtype=float)])
    cfp = np.concatenate([[0.0], np.cumsum(fp, dtype=float)])
    ctp = ctp[1:] - np.repeat(ctp[seg_start], seg_len)
    cfp = cfp[1:] - np.repeat(cfp[seg_start], seg_len)
    pr = ctp / (cfp + ctp + _EPS)
    # distinct k_r per list (row-major), with multiplicity
    rs, kv, mult = _distinct_counts(npig[lists])
    L, R = len(lists), len(REC_THRS)
    sid = lists[rs]
    # first index with ctp >= k: one global searchsorted on exact integer keys list*big + ctp
    big = int(max(ctp.max(initial=0), npig.max(initial=0))) + 2
    key = seg.astype(np.int64) * big + ctp.astype(np.int64)
    pos = np.minimum(np.searchsorted(key, sid * big + kv, "left"), seg_end[sid])
    valid = pos < seg_end[sid]
    # envelope max(pr[pos_u:end]): blocks [pos_u, pos_u+1) ... [pos_last, end) tile it, so
    # block maxima (one reduceat, list ends inserted as extra boundaries) + a suffix max
    U = len(rs)
    n_per = np.bincount(rs, minlength=L)
    end_slot = np.cumsum(n_per) + np.arange(L)                          # slot after each row's blocks
    idx = np.empty(U + L, np.int64)
    slot = np.arange(U) + rs
    idx[slot] = pos
    idx[end_slot] = seg_end[lists]
    pr_ext = np.append(pr, -np.inf)
    red = np.maximum.reduceat(pr_ext, np.minimum(idx, N))
    nxt = np.append(idx[1:], N)
    bmax = np.where(nxt[slot] > idx[slot], red[slot], -np.inf)          # empty block → -inf
    # suffix max within each row on a padded rectangle (exact; rows have <= R blocks)
    col = np.arange(U) - np.repeat(np.cumsum(n_per) - n_per, n_per)
    rect = np.full((L, int(n_per.max())), -np.inf)
    rect[rs, col] = bmax
    env = np.maximum.accumulate(rect[:, ::-1], axis=1)[:, ::-1][rs, col]
    q = np.where(valid, env, 0.0)
    ap[lists] = np.bincount(rs, weights=q * mult, minlength=L) / R
    last = np.where(seg_len > 0, ctp[np.maximum(seg_end - 1, 0)], 0.0)
    rec[lists] = last[lists] / npig[lists]
    return ap, rec


def _expand(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenate ranges [starts[i], starts[i]+lens[i])."""
    tot = lens.sum()
    off = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return off + np.arange(tot)


def group_ap(cache: MatchCache, mem_f: np.ndarray, mem_g: np.ndarray, n_groups: int,
             t_idx: Sequence[int] = tuple(range(len(IOU_THRS))), a: int = 0) -> dict[str, np.ndarray]:
    """AP per (group, class, threshold) for arbitrary frame groups, from the cache.

    Membership pairs ``(mem_f[i], mem_g[i])`` put frame ``mem_f[i]`` into group
    ``mem_g[i]`` (a frame may be in many groups). Returns ``ap`` and ``recall`` (G, K, len(t_idx))
    with NaN for classes without non-ignored GT in the group, and ``npig`` (G, K).
    """
    K = len(CLASSES)
    mem_f = np.asarray(mem_f, np.int64)
    mem_g = np.asarray(mem_g, np.int64)
    npig = np.zeros((n_groups, K), np.int64)
    np.add.at(npig, mem_g, cache.npig[mem_f, :, a])
    # replicate each detection once per group of its frame, keeping cache order
    # (class, global rank) inside a group: rows in cache order + a stable sort by group
    F = len(cache.names)
    o = np.argsort(mem_f, kind="stable")
    mf, mg = mem_f[o], mem_g[o]
    cnt = np.bincount(mf, minlength=F)
    start = np.cumsum(cnt) - cnt
    rows = np.repeat(np.arange(len(cache.det_f)), cnt[cache.det_f])
    grp = mg[_expand(start[cache.det_f], cnt[cache.det_f])]
    o = np.argsort(grp, kind="stable")
    rows = rows[o]
    seg = grp[o] * K + cache.det_k[rows]
    ap = np.full((n_groups, K, len(t_idx)), np.nan)
    rec = ap.copy()
    for i, t in enumerate(t_idx):
        tp = cache.det_tp[rows, t, a].astype(float)
        fp = (~cache.det_tp[rows, t, a] & ~cache.det_ig[rows, t, a]).astype(float)
        ap_s, rec_s = _segmented_ap(seg, tp, fp, npig.ravel())
        ap[:, :, i] = ap_s.reshape(n_groups, K)
        rec[:, :, i] = rec_s.reshape(n_groups, K)
    return {"ap": ap, "recall": rec, "npig": npig}


def _nanmean(x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """Mean over non-NaN entries; NaN (no warning) when all are NaN (COCO's -1 → -1)."""
    ok = ~np.isnan(x)
    cnt = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.where(ok, x, 0.0).sum(axis=axis) / np.maximum(cnt, 1), np.nan)


# ============================================================================ bootstrap
def slice_seed(seed: int, slice_name: str) -> np.random.Generator:
    """Per-slice generator: the same slice gets the same resamples in every call."""
    return np.random.default_rng([int(seed), zlib.crc32(slice_name.encode("utf-8"))])


def resample_weights(n_frames: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_frames) int multiplicities of frames drawn with replacement."""
    if n_frames == 0:
        return np.zeros((n_boot, 0), np.int64)
    return rng.multinomial(n_frames, np.full(n_frames, 1.0 / n_frames), size=n_boot)


def boot_map50(cache: MatchCache, frames: np.ndarray, weights: np.ndarray, chunk_elems: int = 3_000_000) -> np.ndarray:
    """mAP@0.5 (area all) of each weighted resample of ``frames``: (B,) with NaN when a
    resample has no GT of any class.

    Only true positives are kept as rows; the false positives ranked between two TPs
    are summed into the next TP's row (their weights via a sparse frame×run matrix).
    Exact: the interpolated AP only reads precision at TP points.
    """
    K = len(CLASSES)
    frames = np.asarray(frames, np.int64)
    loc = np.full(len(cache.names), -1, np.int64)
    loc[frames] = np.arange(len(frames))
    tp_frame, tp_class, fp_mats = [], [], []
    n_tp = 0
    for k in range(K):
        s, e = cache.class_start[k], cache.class_start[k + 1]
        lf = loc[cache.det_f[s:e]]
        sel = lf >= 0
        lf = lf[sel]
        tpk = cache.det_tp[s:e, 0, 0][sel]
        fpk = ~tpk & ~cache.det_ig[s:e, 0, 0][sel]
        run = np.cumsum(tpk)[fpk]                        # TPs ranked before each FP
        fpf = lf[fpk]
        ntk = int(tpk.sum())
        keep = run < ntk                                 # FPs after the last TP never matter
        fp_mats.append((fpf[keep], n_tp + run[keep]))   # (frame, TP column) of each FP
        tp_frame.append(lf[tpk])
        tp_class.append(np.full(ntk, k))
        n_tp += ntk
    tp_frame_a = np.concatenate(tp_frame)
    tp_class_a = np.concatenate(tp_class)
    fr_r = np.concatenate([m[0] for m in fp_mats])
    fr_c = np.concatenate([m[1] for m in fp_mats])
    C = sparse.csr_matrix((np.ones(len(fr_r)), (fr_r, fr_c)), shape=(len(frames), n_tp))
    npig_loc = cache.npig[frames, :, 0].astype(float)    # (n, K)
    B = weights.shape[0]
    out = np.full(B, np.nan)
    step = max(1, chunk_elems // max(n_tp, 1))
    for b0 in range(0, B, step):
        W = weights[b0:b0 + step].astype(float)          # (b, n)
        b = W.shape[0]
        tpw = W[:, tp_frame_a]                           # (b, n_tp)
        fpw = np.asarray((C.T @ W.T).T) if n_tp else np.zeros((b, 0))
        seg = (np.arange(b)[:, None] * K + tp_class_a[None, :]).ravel()
        npig = (W @ npig_loc).ravel()                    # (b*K,)
        ap, _ = _segmented_ap(seg, tpw.ravel(), fpw.ravel(), npig)
        out[b0:b0 + b] = _nanmean(ap.reshape(b, K), axis=1)
    return out


def percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of bootstrap samples, NaNs dropped; (NaN, NaN) when none."""
    ok = samples[~np.isnan(samples)]
    if len(ok) == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return float(lo), float(hi)


# ============================================================================ result
@dataclass
class EvalResult:
    """Everything one evaluation produces. AP values are fractions in [0, 1].

    ``per_class``: index class; AP50, AP, AP75, AP_small, AP_medium, AP_large, recall50,
    n_gt, n_pred (NaN AP = class without non-ignored GT, excluded from the means).
    ``slices``: slice, level, <by...>, n_frames, n_gt, AP50, AP, ci_lo, ci_hi.
    ``per_frame``: name, ap50, recall50, n_gt, n_pred (see :func:`evaluate`).
    """

    AP50: float
    AP: float
    AP75: float
    APs: float
    APm: float
    APl: float
    per_class: pd.DataFrame
    slices: pd.DataFrame
    per_frame: pd.DataFrame
    by: tuple[str, ...]
    n_boot: int
    seed: int
    report: dict[str, int]
    members: dict[str, np.ndarray] = field(repr=False)   # slice → frame indices into cache.names
    cache: MatchCache = field(repr=False)

    def frames_in(self, slice_name: str) -> list[str]:
        """Frame names of a slice (as in ``slices.slice``)."""
        if slice_name not in self.members:
            raise KeyError(f"unknown slice {slice_name!r}; known: {len(self.members)} slices, e.g. {list(self.members)[:3]}")
        return [str(n) for n in self.cache.names[self.members[slice_name]]]

    def to_json(self) -> dict[str, Any]:
        """Issue 3's schema (+ a few extra keys); NaN → null."""
        def num(v: Any) -> Any:
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

        per_class = {}
        for cls, r in self.per_class.iterrows():
            per_class[str(cls)] = {"AP50": num(r.AP50), "AP": num(r.AP), "n_gt": int(r.n_gt),
                                   "recall50": num(r.recall50), "AP_small": num(r.AP_small),
                                   "AP_medium": num(r.AP_medium), "AP_large": num(r.AP_large),
                                   "n_pred": int(r.n_pred)}
        slices = [{"slice": r.slice, "level": r.level, "n_frames": int(r.n_frames), "n_gt": int(r.n_gt),
                   "AP50": num(r.AP50), "AP": num(r.AP), "ci": [num(r.ci_lo), num(r.ci_hi)]}
                  for r in self.slices.itertuples(index=False)]
        return {"AP50": num(self.AP50), "AP": num(self.AP), "AP75": num(self.AP75),
                "APs": num(self.APs), "APm": num(self.APm), "APl": num(self.APl),
                "n_frames": len(self.cache.names), "by": list(self.by), "n_boot": self.n_boot,
                "seed": self.seed, "report": dict(self.report),
                "per_class": per_class, "slices": slices}

    def write_json(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())


# ============================================================================ slices
def slice_memberships(attrs: pd.DataFrame, by: Sequence[str]) -> tuple[list[tuple[str, str, tuple]], np.ndarray, np.ndarray]:
    """Slices of each attribute alone and of the full key.

    Returns (slices, mem_f, mem_g): slices[i] = (name, level, values) with ``"*"`` for
    attributes not in the level; frame ``mem_f[j]`` belongs to slice ``mem_g[j]``.
    """
    by = tuple(by)
    levels: list[tuple[str, tuple[str, ...]]] = [(a, (a,)) for a in by]
    if len(by) > 1:
        levels.append(("full", by))
    slices: list[tuple[str, str, tuple]] = []
    mem_f: list[np.ndarray] = []
    mem_g: list[np.ndarray] = []
    vals = {a: attrs[a].to_numpy(object) for a in by}
    for level, cols in levels:
        ok = np.ones(len(attrs), bool)
        for a in cols:
            ok &= np.array([v is not None and v == v and v != "" for v in vals[a]], bool)
        keys = [tuple(str(vals[a][i]) if a in cols else WILDCARD for a in by) for i in range(len(attrs))]
        groups: dict[tuple, list[int]] = {}
        for i in np.flatnonzero(ok):
            groups.setdefault(keys[i], []).append(i)
        for key in sorted(groups):
            mem_f.append(np.array(groups[key], np.int64))
            mem_g.append(np.full(len(groups[key]), len(slices)))
            slices.append((bdd.SLICE_SEP.join(key), level, key))
    if not slices:
        return slices, np.zeros(0, np.int64), np.zeros(0, np.int64)
    return slices, np.concatenate(mem_f), np.concatenate(mem_g)


# ============================================================================ public API
# Long mostly by its docstring (the result's tables and their columns); the body is a sequence of named steps.
def evaluate(gt_frames: Sequence[Mapping[str, Any]], pred_frames: Sequence[Mapping[str, Any]] | pd.DataFrame,
             by: Sequence[str] = DEFAULT_BY, n_boot: int = 1000, seed: int = 42,
             progress: bool = False) -> EvalResult:
    """Official BDD detection metric overall, per class, per slice and per frame.

    ``gt_frames`` define the evaluated frames; ``pred_frames`` (BDD frames with ``score``
    per label, or a ``bdd.boxes_table``-style DataFrame) are matched by name. ``by``: slice attributes (each alone and combined).
    ``n_boot`` bootstrap resamples per slice (0 = no CIs).

    Per-frame table: ``ap50`` = COCO mAP@0.5 of that frame alone (mean over classes with
    GT in the frame; NaN without GT); ``recall50`` = matched / non-ignored GT boxes of
    all classes pooled at IoU 0.5 (NaN without GT); ``n_gt`` = non-ignored GT boxes;
    ``n_pred`` = predicted boxes of the evaluated classes (any score).
    """
    by = tuple(by)
    cache = build_cache(gt_frames, pred_frames, by)
    F, K = len(cache.names), len(CLASSES)
    allf = np.arange(F)
    zero = np.zeros(F, np.int64)
    # ---- overall + per class: all thresholds, all area ranges
    per_area = [group_ap(cache, allf, zero, 1, a=a) for a in range(len(AREA_RNGS))]
    ap_all = per_area[0]["ap"][0]                                       # (K, T)
    cls_ap = {name: _nanmean(r["ap"][0], axis=1) for name, r in zip(AREA_NAMES, per_area)}  # (K,)
    n_pred_k = np.bincount(cache.det_k, minlength=K)  # kept (top-100) detections
    per_class = pd.DataFrame({
        "AP50": ap_all[:, 0], "AP": cls_ap["all"], "AP75": ap_all[:, 5],
        "AP_small": cls_ap["small"], "AP_medium": cls_ap["medium"], "AP_large": cls_ap["large"],
        "recall50": per_area[0]["recall"][0][:, 0], "n_gt": per_area[0]["npig"][0], "n_pred": n_pred_k,
    }, index=pd.Index(CLASSES, name="class"))
    m = lambda x: float(_nanmean(np.asarray(x, float), axis=0))  # noqa: E731
    overall = dict(AP50=m(ap_all[:, 0]), AP=m(cls_ap["all"]), AP75=m(ap_all[:, 5]),
                   APs=m(cls_ap["small"]), APm=m(cls_ap["medium"]), APl=m(cls_ap["large"]))

    # ---- per frame (AP@0.5 only)
    fr = group_ap(cache, allf, allf, F, t_idx=(0,))
    n_gt_f = fr["npig"].sum(axis=1)
    tp50_f = np.bincount(cache.det_f, weights=cache.det_tp[:, 0, 0], minlength=F)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall_f = np.where(n_gt_f > 0, tp50_f / n_gt_f, np.nan)
    per_frame = pd.DataFrame({"name": cache.names.astype(str), "ap50": _nanmean(fr["ap"][:, :, 0], axis=1),
                              "recall50": recall_f, "n_gt": n_gt_f, "n_pred": cache.n_pred})

    # ---- slices
    slices, mem_f, mem_g = slice_memberships(cache.attrs, by)
    members = {s[0]: mem_f[mem_g == i] for i, s in enumerate(slices)}
    rows = []
    if slices:
        sl = group_ap(cache, mem_f, mem_g, len(slices))
        ap50_s = _nanmean(sl["ap"][:, :, 0], axis=1)
        ap_s = _nanmean(_nanmean(sl["ap"], axis=2), axis=1)
        it = enumerate(slices)
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(list(it), desc="bootstrap CIs", unit="slice")
        for i, (name, level, key) in it:
            lo = hi = math.nan
            if n_boot > 0:
                w = resample_weights(len(members[name]), n_boot, slice_seed(seed, name))
                lo, hi = percentile_ci(boot_map50(cache, members[name], w))
            rows.append({"slice": name, "level": level, **dict(zip(by, key)),
                         "n_frames": len(members[name]), "n_gt": int(sl["npig"][i].sum()),
                         "AP50": float(ap50_s[i]), "AP": float(ap_s[i]), "ci_lo": lo, "ci_hi": hi})
    cols = ["slice", "level", *by, "n_frames", "n_gt", "AP50", "AP", "ci_lo", "ci_hi"]
    slice_df = pd.DataFrame(rows, columns=cols)
    return EvalResult(**overall, per_class=per_class, slices=slice_df, per_frame=per_frame, by=by,
                      n_boot=int(n_boot), seed=int(seed), report=cache.report, members=members, cache=cache)


def ranked_slices(slice_table: pd.DataFrame, min_frames: int, level: str | None = "full") -> pd.DataFrame:
    """The slices that may be ranked: at ``level`` (None = every row), with >= ``min_frames``
    eval frames and a defined AP50 (a slice without GT has NaN AP and no rank)."""
    t = slice_table if level is None else slice_table[slice_table["level"] == level]
    return t[(t["n_frames"] >= min_frames) & t["AP50"].notna()]


def worst_slice(slice_table: pd.DataFrame, min_frames: int, level: str | None = "full") -> pd.Series:
    """Row of the slice with the lowest AP50 among slices with >= ``min_frames`` frames.

    ``level``: "full" (the weather × timeofday × scene key, default), one attribute name,
    or None for all rows. Ties (equal AP50) → the slice with more frames (more evidence),
    then the alphabetically first name. Slices without GT (AP50 NaN) never qualify.
    Raises ValueError naming the largest slice size when none qualifies.
    """
    t = slice_table if level is None else slice_table[slice_table["level"] == level]
    if len(t) == 0:
        raise ValueError(f"no slices at level {level!r} (levels present: {sorted(slice_table['level'].unique())})")
    ok = ranked_slices(t, min_frames, level=None)
    if len(ok) == 0:
        big = t.sort_values(["n_frames", "slice"], ascending=[False, True]).iloc[0]
        raise ValueError(f"no slice has >= {min_frames} frames with GT (largest: {big['slice']!r} with "
                         f"{int(big['n_frames'])} frames); lower eval_min_frames or enlarge the eval pool")
    ok = ok.assign(_neg=-ok["n_frames"]).sort_values(["AP50", "_neg", "slice"], kind="mergesort")
    return ok.drop(columns="_neg").iloc[0]


def frames_map50(cache: MatchCache, frames: np.ndarray) -> float:
    """mAP@0.5 (area all) of the frames ``frames`` (indices into ``cache.names``) taken as one group."""
    zero = np.zeros(len(frames), np.int64)
    return float(_nanmean(group_ap(cache, frames, zero, 1, t_idx=(0,))["ap"][0, :, 0], axis=0))


def paired_delta(res0: EvalResult, res1: EvalResult | Sequence[EvalResult], slice: str | None, n_boot: int = 1000,
                 seed: int = 42) -> dict[str, Any]:
    """mAP@0.5 change res1 − res0 on one slice (None = all frames) with a paired
    bootstrap 95% CI: both models are scored on the *same* resampled frames.

    ``res1`` may be several results (one arm's training seeds): then AP50_1 and delta are
    their means, and each resample's Δ is the seed mean on that resample, so the CI belongs
    to the mean it stands beside (frames resampled; the seeds are the ones trained).
    All results must cover the same GT frames. Returns slice, n_frames, AP50_0,
    AP50_1, delta, ci (list [lo, hi]), p_le0 (share of resamples with delta <= 0).
    """
    res1s = [res1] if isinstance(res1, EvalResult) else list(res1)
    for r in res1s:
        if list(res0.cache.names) != list(r.cache.names):
            raise ValueError("paired_delta needs both evaluations on the same GT frames "
                             f"({len(res0.cache.names)} vs {len(r.cache.names)} frames, or different names)")
    name = slice if slice is not None else "__all__"
    frames = np.arange(len(res0.cache.names)) if slice is None else res0.members.get(slice)
    if frames is None:
        raise KeyError(f"unknown slice {slice!r}")
    a0 = frames_map50(res0.cache, frames)
    a1 = float(np.mean([frames_map50(r.cache, frames) for r in res1s]))
    w = resample_weights(len(frames), n_boot, slice_seed(seed, name))
    d = np.mean([boot_map50(r.cache, frames, w) for r in res1s], axis=0) - boot_map50(res0.cache, frames, w)
    lo, hi = percentile_ci(d)
    ok = d[~np.isnan(d)]
    return {"slice": name, "n_frames": int(len(frames)), "AP50_0": a0, "AP50_1": a1, "delta": a1 - a0,
            "ci": [lo, hi], "p_le0": float((ok <= 0).mean()) if len(ok) else math.nan}


def delta_table(res0: EvalResult, res1: EvalResult, min_frames: int = 0, n_boot: int = 1000,
                seed: int = 42, level: str | None = None) -> pd.DataFrame:
    """:func:`paired_delta` for every slice (optionally one level, >= min_frames) plus all frames."""
    t = res0.slices if level is None else res0.slices[res0.slices["level"] == level]
    names = [None] + [s for s, n in zip(t["slice"], t["n_frames"]) if n >= min_frames]
    rows = [paired_delta(res0, res1, s, n_boot, seed) for s in names]
    df = pd.DataFrame(rows)
    df[["ci_lo", "ci_hi"]] = pd.DataFrame(df.pop("ci").tolist(), index=df.index)
    return df


# ============================================================================ reference
# Long on purpose: the independent reference (Scalabel -> COCO -> pycocotools) the tests and benchmark compare against; kept whole and plain.
def pycocotools_reference(gt_frames: Sequence[Mapping[str, Any]], pred_frames: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The official pipeline, slowly: Scalabel's conversion + pycocotools ``COCOeval``.

    For tests and benchmarks only. Conversion as ``scalabel2coco_detection`` (det.toml
    mappings via ``bdd.map_category``, ``box2d_to_bbox`` +1, ``iscrowd = crowd or
    ignored``), scores as ``COCOevalV2.get_score`` (``mean(s[s > -1])``), predictions
    matched to GT frames by name. Returns AP50, AP, APs, APm, APl and per-class arrays
    ``cls_AP50``, ``cls_AP`` (K,), NaN for classes without GT.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted(f["name"] for f in gt_frames)
    img_id = {n: i + 1 for i, n in enumerate(names)}
    gts = {f["name"]: f for f in gt_frames}

    def coco_box(b: Mapping[str, float]) -> tuple[list[float], float]:
        w, h = b["x2"] - b["x1"] + PIXEL_SHIFT, b["y2"] - b["y1"] + PIXEL_SHIFT
        return [b["x1"], b["y1"], w, h], float(w * h)

    anns, dts = [], []
    for n in names:
        for lb in gts[n].get("labels") or []:
            cls, ign = bdd.map_category(lb.get("category"))
            if cls is None or not lb.get("box2d"):
                continue
            bb, area = coco_box(lb["box2d"])
            crowd = bool((lb.get("attributes") or {}).get("crowd", False))
            anns.append(dict(id=len(anns) + 1, image_id=img_id[n], category_id=bdd.CLASS_ID[cls] + 1,
                             iscrowd=int(crowd or ign), ignore=0, bbox=bb, area=area))
    for f in sorted(pred_frames, key=lambda f: f["name"]):
        if f["name"] not in img_id:
            continue
        for lb in f.get("labels") or []:
            cls, _ = bdd.map_category(lb.get("category"))
            if cls is None or not lb.get("box2d"):
                continue
            bb, _ = coco_box(lb["box2d"])
            dts.append(dict(image_id=img_id[f["name"]], category_id=bdd.CLASS_ID[cls] + 1,
                            score=float(lb["score"]), bbox=bb))
    cats = [dict(id=i + 1, name=c) for i, c in enumerate(CLASSES)]
    images = [dict(id=i, file_name=n, height=720, width=1280) for n, i in img_id.items()]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dict(images=images, annotations=anns, categories=cats)
        gt.createIndex()
        if dts:
            dt = gt.loadRes(dts)
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = dict(images=images, annotations=[], categories=cats)
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(img_id.values())
        ev.evaluate()
        ev.accumulate()
    P = ev.eval["precision"]  # (T, R, K, A, M); M index 2 = maxDets 100

    def score(x: np.ndarray) -> float:
        x = x[x > -1]
        return float(np.mean(x)) if len(x) else math.nan

    return {"AP50": score(P[0, :, :, 0, 2]), "AP": score(P[:, :, :, 0, 2]),
            "APs": score(P[:, :, :, 1, 2]), "APm": score(P[:, :, :, 2, 2]), "APl": score(P[:, :, :, 3, 2]),
            "cls_AP50": np.array([score(P[0, :, k, 0, 2]) for k in range(len(CLASSES))]),
            "cls_AP": np.array([score(P[:, :, k, 0, 2]) for k in range(len(CLASSES))])}


# ============================================================================ CLI
def format_result(res: EvalResult, max_slices: int = 40) -> str:
    """Plain-text tables: overall, per class, slices sorted by AP50 (with CIs)."""
    lines = [f"frames {len(res.cache.names)}   AP50 {res.AP50:.4f}   AP {res.AP:.4f}   AP75 {res.AP75:.4f}   "
             f"APs {res.APs:.4f}   APm {res.APm:.4f}   APl {res.APl:.4f}", ""]
    pc = res.per_class[["AP50", "AP", "recall50", "n_gt", "n_pred"]]
    lines.append(pc.to_string(float_format=lambda v: f"{v:.4f}", na_rep="null"))
    if len(res.slices):
        s = res.slices.sort_values(["AP50", "slice"], na_position="last")
        s = s[["slice", "n_frames", "n_gt", "AP50", "ci_lo", "ci_hi"]].head(max_slices)
        lines += ["", f"slices (lowest AP50 first, {min(max_slices, len(res.slices))} of {len(res.slices)}):",
                  s.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")]
    skipped = {k: v for k, v in res.report.items() if k not in ("gt_frames",) and v}
    if skipped:
        lines += ["", "counted: " + ", ".join(f"{k}={v}" for k, v in skipped.items())]
    return "\n".join(lines)


def main_evaluate(argv: Sequence[str] | None = None) -> int:
    """``python -m bdd_engine evaluate --gt GT.json --pred PRED.json [--by a,b,c] [--json OUT]``."""
    p = argparse.ArgumentParser(prog="python -m bdd_engine evaluate",
                                description="BDD100K official detection AP (COCO-style) per class and per slice.")
    p.add_argument("--gt", required=True, help="ground-truth BDD/Scalabel JSON (list of frames)")
    p.add_argument("--pred", required=True, help="predictions in the same schema, with 'score' per label")
    p.add_argument("--by", default=",".join(DEFAULT_BY), help="comma-separated slice attributes ('' = no slices)")
    p.add_argument("--json", default=None, help="write the result JSON here")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per slice (0 = no CIs)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(list(argv) if argv is not None else None)
    by = tuple(a.strip() for a in args.by.split(",") if a.strip())
    unknown = [a for a in by if a not in bdd.SLICE_ATTRS]
    if unknown:
        p.error(f"--by: unknown attribute(s) {', '.join(unknown)}; slices are combinations of "
                f"{', '.join(bdd.SLICE_ATTRS)} (BDD's frame attributes)")
    try:
        gt, pred = bdd.load_frames(args.gt), bdd.load_frames(args.pred)  # ValueError: not JSON / not a frame list
        names = name_mismatch(gt, pred)
        if gt and not names["matched"]:
            raise EvalInputError(
                f"no prediction frame matches a GT frame by name: GT {args.gt} has e.g. {gt[0]['name']!r}, predictions "
                f"{args.pred} " + (f"have e.g. {pred[0]['name']!r}" if pred else "hold no frames")
                + "; frame names must be equal, extension included")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        res = evaluate(gt, pred, by=by, n_boot=args.n_boot, seed=args.seed)
    except EvalInputError as e:
        print(f"error: {args.pred}: {e}", file=sys.stderr)
        return 2
    print(format_result(res))
    if mismatch_text(names):
        print(mismatch_text(names))
    if args.json:
        print(f"\nwrote {res.write_json(args.json)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_evaluate())
