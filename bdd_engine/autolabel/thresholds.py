"""The threshold that feeds training: one ``label_accept`` for every class, or per-class
thresholds chosen on the EVAL POOL (never on the confirmation set, never on the frames the
labels are for) by F-beta, and the labels' precision/recall measured at that threshold.

A threshold is a score in [0, 1]; ``accept`` is either one float or a ``{class: float}``
mapping that covers every class it is asked about (:func:`accept_of`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bdd_engine.bdd import CLASSES
from bdd_engine.evaluate import build_cache

Accept = float | Mapping[str, float]


def accept_of(accept: Accept, category: str) -> float:
    """The accept threshold of ``category``: the float itself, or the mapping's entry (KeyError names the class)."""
    if isinstance(accept, Mapping):
        if category not in accept:
            raise KeyError(f"per-class accept thresholds have no entry for {category!r}")
        return float(accept[category])
    return float(accept)


def threshold_grid(low: float, step: float = 0.05, high: float = 0.95) -> list[float]:
    """Candidate thresholds ``low, low + step, ... <= high`` (rounded to 4 decimals)."""
    n = int(np.floor((high - low) / step + 1e-9)) + 1
    return [round(low + i * step, 4) for i in range(max(n, 1))]


def fbeta_thresholds(pred_frames: Sequence[Mapping[str, Any]], gt_frames: Sequence[Mapping[str, Any]], *,
                     default: float, grid: Sequence[float], beta: float = 1.0,
                     min_gt: int = 20) -> tuple[dict[str, float], pd.DataFrame]:
    """Per class, the threshold of ``grid`` with the highest F-beta of the labels ``pred_frames``
    against ``gt_frames`` (IoU 0.5, the official matcher; ties -> the higher threshold).

    Raising a threshold only drops a class's lowest-scored labels, and the greedy matcher
    decides each label's TP status in score order, so one matching serves every threshold.
    A class with fewer than ``min_gt`` GT boxes keeps ``default`` (too few to choose on).
    ``beta`` > 1 weighs recall, < 1 precision. Returns ({class: threshold} over every BDD
    class, a table with class, n_gt, threshold, precision, recall, f_beta, chosen_from).
    """
    if beta <= 0:
        raise ValueError(f"F-beta needs beta > 0, got {beta}")
    gt_has = [fr for fr in gt_frames if any(lb.get("box2d") for lb in fr.get("labels") or [])]
    names = {fr["name"] for fr in gt_has}
    cache = build_cache(gt_has, [fr for fr in pred_frames if fr["name"] in names])
    tp_all, counted = cache.det_tp[:, 0, 0], ~cache.det_ig[:, 0, 0]
    b2 = float(beta) ** 2
    chosen, rows = {}, []
    for k, cls in enumerate(CLASSES):
        n_gt = int(cache.npig[:, k, 0].sum())
        mine = (cache.det_k == k) & counted
        best = (float(default), np.nan, np.nan, np.nan)
        if n_gt >= min_gt:
            best = None
            for t in sorted(grid):
                keep = mine & (cache.det_score >= t)
                tp = int((tp_all & keep).sum())
                p = tp / int(keep.sum()) if keep.any() else 0.0
                r = tp / n_gt
                f = (1 + b2) * p * r / (b2 * p + r) if p + r > 0 else 0.0
                if best is None or f >= best[3]:
                    best = (float(t), p, r, f)
        chosen[cls] = best[0]
        rows.append({"class": cls, "n_gt": n_gt, "threshold": best[0], "precision": best[1], "recall": best[2],
                     "f_beta": best[3], "chosen_from": "eval pool F-beta" if n_gt >= min_gt else f"default (< {min_gt} GT)"})
    return chosen, pd.DataFrame(rows)


def eval_pool_frames(pools: pd.DataFrame, gt_by_name: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ground-truth frames of the EVAL POOL only (``pools.pool == "eval"``), in pools order:
    the one place per-class thresholds may be chosen on. Frames of any other pool in
    ``gt_by_name`` (mining pool, train, confirmation) are never returned."""
    names = pools.loc[pools["pool"] == "eval", "name"]
    return [gt_by_name[n] for n in names if n in gt_by_name]


def choose_on_eval_pool(labeler: Any, pools: pd.DataFrame, gt_by_name: Mapping[str, Mapping[str, Any]],
                        paths: Mapping[str, str], *, default: float, grid: Sequence[float], beta: float = 1.0,
                        min_gt: int = 20) -> tuple[dict[str, float], pd.DataFrame, float]:
    """Label the eval pool's frames with ``labeler`` and choose per-class thresholds on them
    (:func:`fbeta_thresholds`). Returns (thresholds, table, labelling seconds)."""
    frames = eval_pool_frames(pools, gt_by_name)
    run = labeler.label(frames, [paths[f["name"]] for f in frames], progress=False)
    chosen, table = fbeta_thresholds(run.ok_frames(), frames, default=default, grid=grid, beta=beta, min_gt=min_gt)
    return chosen, table, float(run.seconds)
