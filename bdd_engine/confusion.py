"""Per-class detection confusion matrix at the operating threshold, background included.

mAP says how well a detector ranks; the confusion matrix says *what* it gets wrong: which
class it takes for which (a rider called pedestrian), what it misses (true class ->
``background``: a false negative) and what it invents (``background`` -> predicted class: a
false positive). Rows are the true class, columns the predicted class, in the official class
order (:data:`bdd.CLASSES`) plus :data:`BACKGROUND`.

Matching, per frame (decided here, pinned by tests/test_confusion.py):

* only predictions scoring >= ``conf`` count (the operating threshold, not mAP's 0.001);
* class-agnostic and greedy by score (stable order): each prediction takes the free
  (not ignored, not crowd) GT box of *any* class with the highest IoU >= ``iou`` — the cell
  (its class, the prediction's class); on the diagonal that is a true positive;
* a prediction with no free GT box at IoU >= ``iou`` that overlaps an ignore region or a
  crowd box at IoU >= ``iou`` is neither right nor wrong (BDD's ignore rule) and is left out;
  any other is a false positive (row ``background``), duplicates of a matched box included;
* every real GT box left unmatched is a false negative (column ``background``).

IoU is the evaluation's own (:func:`geometry.box_iou` with :data:`evaluate.PIXEL_SHIFT`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from bdd_engine.bdd import CLASSES, boxes_table
from bdd_engine.evaluate import PIXEL_SHIFT
from bdd_engine.geometry import box_iou

BACKGROUND = "background"
XYXY = ["x1", "y1", "x2", "y2"]


def _frame_cells(g: pd.DataFrame, p: pd.DataFrame, iou_thr: float) -> list[tuple[str, str]]:
    """(true, predicted) of every counted box of one frame; ``p`` sorted by score, descending."""
    iou = box_iou(g[XYXY].to_numpy(float), p[XYXY].to_numpy(float), pixel_shift=PIXEL_SHIFT)
    real = ~(g["ignore"].to_numpy(bool) | g["crowd"].to_numpy(bool))
    free = real.copy()
    gcat, pcat = g["category"].to_numpy(), p["category"].to_numpy()
    cells = []
    for j in range(len(p)):
        cand = np.where(free & (iou[:, j] >= iou_thr))[0]
        if len(cand):
            i = cand[np.argmax(iou[cand, j])]
            free[i] = False
            cells.append((gcat[i], pcat[j]))
        elif not (~real & (iou[:, j] >= iou_thr)).any():
            cells.append((BACKGROUND, pcat[j]))
    cells += [(c, BACKGROUND) for c in gcat[free]]
    return cells


def confusion_matrix(gt_frames: Sequence[Mapping[str, Any]], pred_frames: Sequence[Mapping[str, Any]], conf: float,
                     iou: float = 0.5, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Counts, rows = true class + ``background``, columns = predicted class + ``background``
    (the ``background``/``background`` cell is always 0). ``gt_frames`` / ``pred_frames``: BDD
    frames (predictions carry ``score``); ``names``: score only these frames (default: every
    GT frame); predictions of frames without GT are ignored."""
    keep = {f["name"] for f in gt_frames} if names is None else set(names)
    g_all = boxes_table([f for f in gt_frames if f["name"] in keep])
    p_all = boxes_table([f for f in pred_frames if f["name"] in keep])
    p_all = p_all[p_all["score"] >= conf]
    gb = dict(tuple(g_all.groupby("name", sort=False))) if len(g_all) else {}
    pb = dict(tuple(p_all.groupby("name", sort=False))) if len(p_all) else {}
    labels = [*CLASSES, BACKGROUND]
    out = pd.DataFrame(0, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))
    for name in sorted(set(gb) | set(pb)):
        p = pb.get(name, p_all.iloc[:0]).sort_values("score", ascending=False, kind="mergesort")
        for t, q in _frame_cells(gb.get(name, g_all.iloc[:0]), p, iou):
            out.loc[t, q] += 1
    return out


def to_long(matrices: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """{panel name: matrix} as one table: panel, true, predicted, count (non-zero cells only)."""
    rows = [{"panel": k, "true": t, "predicted": q, "count": int(m.loc[t, q])}
            for k, m in matrices.items() for t in m.index for q in m.columns if m.loc[t, q]]
    return pd.DataFrame(rows, columns=["panel", "true", "predicted", "count"])


def summary(m: pd.DataFrame) -> pd.DataFrame:
    """Per true/predicted class: tp (diagonal), fn (-> background), fp (background ->),
    confused_as (GT of the class taken for another class) and the top confusion."""
    cls = [c for c in m.index if c != BACKGROUND]
    rows = []
    for c in cls:
        other = m.loc[c, [q for q in cls if q != c]]
        rows.append({"class": c, "tp": int(m.loc[c, c]), "fn": int(m.loc[c, BACKGROUND]),
                     "fp": int(m.loc[BACKGROUND, c]), "confused_as": int(other.sum()),
                     "top_confusion": f"{other.idxmax()} ({int(other.max())})" if other.max() > 0 else ""})
    return pd.DataFrame(rows)
