"""The confidence router: each auto-label goes to ``accept`` (training), ``review`` (a human
looks) or ``discard`` by its score; which frames need a human; the training set; the cost.

Thresholds are scores in [0, 1] with ``review <= accept``: ``score >= accept`` accepts,
``review <= score < accept`` reviews, below ``review`` discards. A label without a
``score`` (human/oracle) counts as 1.0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bdd_engine.autolabel.base import LabelRun
from bdd_engine.autolabel.quality import QualityReport, label_quality
from bdd_engine.autolabel.thresholds import Accept, accept_of


BUCKETS = ("accept", "review", "discard")


def bucket_of(score: float, accept: float, review: float) -> str:
    """``accept`` if score >= accept, ``review`` if review <= score < accept, else ``discard``."""
    if not review <= accept:
        raise ValueError(f"router thresholds need review <= accept, got review={review}, accept={accept}")
    return "accept" if score >= accept else "review" if score >= review else "discard"


def route(frames: Sequence[Mapping[str, Any]], accept: float, review: float) -> dict[str, list[dict[str, Any]]]:
    """Split labels by confidence: {bucket: frames holding only that bucket's labels}.

    Every bucket lists every frame (possibly with no labels), so per-frame counts stay
    aligned; frames without any label need a human too and are reported by
    :func:`frames_for_humans`.
    """
    out: dict[str, list[dict[str, Any]]] = {b: [] for b in BUCKETS}
    for fr in frames:
        parts: dict[str, list] = {b: [] for b in BUCKETS}
        for lb in fr.get("labels") or []:
            parts[bucket_of(float(lb.get("score", 1.0)), accept, review)].append(lb)
        for b in BUCKETS:
            out[b].append({**{k: v for k, v in fr.items() if k != "labels"}, "labels": parts[b]})
    return out


def router_table(report: QualityReport | None, run: LabelRun, accept: float, review: float) -> pd.DataFrame:
    """Per bucket: score range, labels, frames touched, and precision vs GT.

    Precision reuses the single matching behind ``report`` (each label's TP status is
    decided once over all labels, then grouped by bucket), so buckets never compete for
    the same GT box. Labels on frames without GT, beyond 100 per frame and class, or
    matched to crowd/ignore regions are not in tp/fp. ``report=None`` -> precision NaN.
    """
    ranges = {"accept": f">= {accept:g}", "review": f"[{review:g}, {accept:g})", "discard": f"< {review:g}"}
    buckets = route(run.frames, accept, review)
    if report is not None:
        c = report.cache
        counted = ~c.det_ig[:, 0, 0]
        det_bucket = np.array([bucket_of(s, accept, review) for s in c.det_score], dtype=object)
    rows = []
    for b in BUCKETS:
        row = {"bucket": b, "score": ranges[b], "n_labels": sum(len(fr["labels"]) for fr in buckets[b]),
               "n_frames": sum(1 for fr in buckets[b] if fr["labels"]), "tp": np.nan, "fp": np.nan,
               "precision": np.nan}
        if report is not None:
            m = counted & (det_bucket == b)
            tp = int((c.det_tp[:, 0, 0] & m).sum())
            row.update(tp=tp, fp=int(m.sum()) - tp, precision=tp / int(m.sum()) if m.any() else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def frames_for_humans(run: LabelRun, accept: float, review: float) -> list[str]:
    """Frames a human must touch, in run order: the labeler failed on it, or it has a label in
    the review bucket, or it has no label >= ``review`` at all (empty output: the labeler
    offered nothing to accept, and an empty driving frame is rare enough to need a look)."""
    need = []
    for fr in run.frames:
        scores = [float(lb.get("score", 1.0)) for lb in fr["labels"]]
        if (fr["name"] in run.failures or any(review <= s < accept for s in scores)
                or not any(s >= review for s in scores)):
            need.append(fr["name"])
    return need


def accepted_frames(run: LabelRun, accept: Accept, keep_empty: bool = False) -> list[dict[str, Any]]:
    """The auto-labelled training set: labels with score >= ``accept`` on frames that did not fail
    (``accept``: one threshold, or ``{class: threshold}``, :func:`thresholds.accept_of`).

    Frames left with no accepted label are dropped unless ``keep_empty``: as YOLO
    background images they would teach the detector that a street full of objects the
    labeler missed is empty. (Low-score objects on kept frames are still missing: the
    known cost of pseudo-labels, measured by the recall in :func:`label_quality`.)
    """
    if run.is_oracle:
        raise ValueError("an oracle run is ground truth, not auto-labels; export it as the oracle control")
    out = [{**fr, "labels": [lb for lb in fr["labels"] if float(lb.get("score", 1.0)) >= accept_of(accept, lb["category"])]}
           for fr in run.ok_frames()]
    return out if keep_empty else [fr for fr in out if fr["labels"]]


def quality_at_accept(run: LabelRun, gt_frames: Sequence[Mapping[str, Any]], accept: Accept) -> pd.DataFrame:
    """Precision/recall per class (+ overall) of the labels that FEED TRAINING (score >= ``accept``)
    against ``gt_frames``: :func:`quality.pr_table` columns. Every GT frame counts, also those
    left with no accepted label or failed (their GT boxes are misses), so recall is the share
    of real objects the training set holds as boxes; the rest become background."""
    return label_quality(accepted_frames(run, accept, keep_empty=True), gt_frames, spot_check=0).all_frames


def cost_table(run: LabelRun, accept: float, review: float, usd_per_frame: tuple[float, float] = (0.5, 10.0),
               compute_usd_per_hour: float | None = None) -> pd.DataFrame:
    """Human labelling vs the auto-labeler for the frames of ``run`` (all numbers from the run).

    Assumption (stated in the table): a human label of one frame costs
    ``usd_per_frame`` (low, high) — a quoted market range, not a measured price — and
    reviewing a frame is priced like labelling it (conservative). Compute is measured
    wall-clock; it is priced only if ``compute_usd_per_hour`` is given.
    """
    lo, hi = usd_per_frame
    n = run.n_frames
    humans = len(frames_for_humans(run, accept, review))
    comp = run.seconds / 3600 * compute_usd_per_hour if compute_usd_per_hour is not None else np.nan
    price = f"${lo:.2f}-${hi:.2f} per human-labelled frame (assumed range, not a quote)"
    rows = [
        {"option": "human labelling, every frame", "frames": n, "human_frames": n, "wall_clock_s": np.nan,
         "usd_low": n * lo, "usd_high": n * hi, "assumption": price + "; wall-clock = vendor turnaround, not measured"},
        {"option": f"auto-label only ({run.labeler})", "frames": n, "human_frames": 0, "wall_clock_s": run.seconds,
         "usd_low": comp, "usd_high": comp,
         "assumption": "measured compute wall-clock" + ("" if compute_usd_per_hour is not None else "; compute not priced")},
        {"option": f"auto-label ({run.labeler}) + human review queue", "frames": n, "human_frames": humans,
         "wall_clock_s": run.seconds, "usd_low": humans * lo + (0 if np.isnan(comp) else comp),
         "usd_high": humans * hi + (0 if np.isnan(comp) else comp),
         "assumption": f"humans get frames with a label in [{review:g}, {accept:g}), no label >= {review:g}, "
                       "or a labeler failure; "
                       "assumed: reviewing a frame costs as much as labelling it"},
    ]
    df = pd.DataFrame(rows)
    df["share_human_skipped"] = 1 - df["human_frames"] / max(n, 1)
    return df
