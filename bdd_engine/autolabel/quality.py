"""Auto-label quality against ground truth: precision/recall at IoU 0.5 per class, a seeded
spot check, the classes most often missed, and class confusions.

Matching is ``evaluate.build_cache``'s (the official COCO-style greedy matcher), so a
label's TP status here is the one the evaluation would give it. Boxes are ``xyxy``
pixels with BDD's +1 pixel convention (``geometry.PIXEL_SHIFT``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bdd_engine.autolabel.base import LabelRun
from bdd_engine.bdd import CLASSES, boxes_table
from bdd_engine.evaluate import MatchCache, build_cache
from bdd_engine.geometry import PIXEL_SHIFT, box_iou


def confusions(pred_frames: Sequence[Mapping[str, Any]], gt_frames: Sequence[Mapping[str, Any]],
               iou: float = 0.5) -> pd.DataFrame:
    """Labels with no GT of their own class at IoU >= ``iou`` but one of **another** class:
    counts per (labelled_as, gt_class), most common first. GT crowd/ignore boxes excluded.
    IoU: :func:`bdd_engine.geometry.box_iou` on ``xyxy`` pixels with BDD's +1 pixel shift,
    so a confusion at 0.5 is the same 0.5 as an evaluation match."""
    names = {fr["name"] for fr in gt_frames}
    preds = boxes_table([fr for fr in pred_frames if fr["name"] in names])
    gts = boxes_table(gt_frames)
    gts = gts[~(gts["crowd"] | gts["ignore"])]
    cols = ["x1", "y1", "x2", "y2"]
    pairs: Counter = Counter()
    g_by = {n: g for n, g in gts.groupby("name")}
    for name, P in preds.groupby("name"):
        G = g_by.get(name)
        if G is None:
            continue
        ious = box_iou(P[cols].to_numpy(), G[cols].to_numpy(), pixel_shift=PIXEL_SHIFT)
        g_cls = G["category"].to_numpy()
        for k, cls in enumerate(P["category"].to_numpy()):
            hit = ious[k] >= iou
            if hit.any() and not (hit & (g_cls == cls)).any():
                pairs[(cls, g_cls[int(np.argmax(np.where(g_cls != cls, ious[k], -1)))])] += 1
    df = pd.DataFrame([(a, b, n) for (a, b), n in pairs.items()], columns=["labelled_as", "gt_class", "n"])
    return df.sort_values(["n", "labelled_as", "gt_class"], ascending=[False, True, True]).reset_index(drop=True)


def pr_table(cache: MatchCache, frames: np.ndarray | None = None, t: int = 0) -> pd.DataFrame:
    """P/R per class + ``overall`` (micro) from an ``evaluate.MatchCache`` at IoU index ``t``
    (0 = IoU 0.5), area range "all", optionally on a subset of frame indices.

    Columns: class, n_gt, n_pred, tp, fp, fn, precision, recall. Detections matched to
    crowd/ignore regions are neither TP nor FP (official rule); NaN when undefined.
    """
    sel = np.ones(len(cache.det_f), bool) if frames is None else np.isin(cache.det_f, frames)
    fsel = np.arange(len(cache.names)) if frames is None else np.asarray(frames, dtype=int)
    tp_all, ig_all = cache.det_tp[:, t, 0], cache.det_ig[:, t, 0]
    rows = []
    for k, cls in enumerate([*CLASSES, "overall"]):
        m = sel if cls == "overall" else sel & (cache.det_k == k)
        n_gt = int(cache.npig[fsel, :, 0].sum() if cls == "overall" else cache.npig[fsel, k, 0].sum())
        tp = int((tp_all & m).sum())
        fp = int((~tp_all & ~ig_all & m).sum())
        rows.append({"class": cls, "n_gt": n_gt, "n_pred": tp + fp, "tp": tp, "fp": fp, "fn": n_gt - tp,
                     "precision": tp / (tp + fp) if tp + fp else np.nan, "recall": tp / n_gt if n_gt else np.nan})
    return pd.DataFrame(rows)


def pr_summary(pr: pd.DataFrame) -> dict[str, Any]:
    """A :func:`pr_table` as plain numbers for a JSON record: overall precision/recall, the
    classes found at least once (a TP), and {class: {n_gt, precision, recall}} for classes with GT."""
    o = pr.set_index("class").loc["overall"]
    per = pr[(pr["class"] != "overall") & (pr["n_gt"] > 0)]
    nan = lambda x: None if pd.isna(x) else round(float(x), 4)  # noqa: E731
    return {"precision": nan(o["precision"]), "recall": nan(o["recall"]),
            "classes_found": int((pr.loc[pr["class"] != "overall", "tp"] > 0).sum()),
            "per_class": {r["class"]: {"n_gt": int(r["n_gt"]), "precision": nan(r["precision"]), "recall": nan(r["recall"])}
                          for _, r in per.iterrows()}}


@dataclass
class QualityReport:
    """Auto-label quality vs GT (see :func:`label_quality`)."""

    labeler: str
    is_oracle: bool
    n_frames: int            # frames with GT that were evaluated (failed frames included)
    n_failed: int            # of those, frames the labeler failed on (their GT all counts as missed)
    all_frames: pd.DataFrame     # pr_table over every frame
    spot_check: pd.DataFrame     # pr_table over the seeded spot-check frames
    spot_names: list[str]
    missed: pd.DataFrame         # class, n_missed, share_missed — most missed first
    confusions: pd.DataFrame     # labelled_as, gt_class, n — most common first
    cache: MatchCache            # evaluate.MatchCache (per-label TP status, for the router)

    def summary(self) -> str:
        o = self.all_frames.set_index("class").loc["overall"]
        s = self.spot_check.set_index("class").loc["overall"]
        tag = " [ORACLE: held-back GT, not auto-labels]" if self.is_oracle else ""
        return (f"{self.labeler}{tag}: all {self.n_frames} frames P={o.precision:.3f} R={o.recall:.3f} "
                f"({self.n_failed} failed frames counted as misses); spot check {len(self.spot_names)} frames "
                f"P={s.precision:.3f} R={s.recall:.3f}")


def label_quality(run: LabelRun | Sequence[Mapping[str, Any]], gt_frames: Sequence[Mapping[str, Any]],
                  spot_check: int = 20, seed: int = 42) -> QualityReport:
    """Precision/recall at IoU 0.5 of labels vs GT on every frame of ``gt_frames`` with a GT box,
    plus the same on a seeded ``spot_check``-frame sample, the classes most often missed
    and the most common confusions.

    Matching is ``evaluate.build_cache`` (the official COCO-style greedy matcher, one
    match per GT, crowd/ignore regions absorb detections, top 100 per frame and class).
    Frames absent from the run, or failed in it, have no labels, so their GT boxes count
    as missed: failures never shrink the denominators.
    """
    frames = run.frames if isinstance(run, LabelRun) else list(run)
    failures = run.failures if isinstance(run, LabelRun) else {}
    gt_has = [fr for fr in gt_frames if any(lb.get("box2d") for lb in fr.get("labels") or [])]
    names = {fr["name"] for fr in gt_has}
    cache = build_cache(gt_has, [fr for fr in frames if fr["name"] in names])
    all_tab = pr_table(cache)
    rng = np.random.default_rng(seed)
    n = len(cache.names)
    spot_idx = np.sort(rng.choice(n, size=min(spot_check, n), replace=False)) if n else np.zeros(0, int)
    per = all_tab[all_tab["class"] != "overall"]
    missed = per[per["n_gt"] > 0][["class", "fn", "n_gt"]].rename(columns={"fn": "n_missed"})
    missed = missed.assign(share_missed=missed["n_missed"] / missed["n_gt"]).drop(columns="n_gt")
    missed = missed.sort_values(["n_missed", "class"], ascending=[False, True]).reset_index(drop=True)
    return QualityReport(
        labeler=run.labeler if isinstance(run, LabelRun) else "labels",
        is_oracle=bool(getattr(run, "is_oracle", False)),
        n_frames=n, n_failed=sum(1 for nm in cache.names if nm in failures),
        all_frames=all_tab, spot_check=pr_table(cache, spot_idx),
        spot_names=[str(x) for x in cache.names[spot_idx]], missed=missed,
        confusions=confusions(frames, gt_has), cache=cache)
