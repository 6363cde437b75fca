"""The notebook's figures, one function each, returning a matplotlib Figure.

Every title carries the SYNTHETIC note when the data is synthetic, so no picture of a
synthetic number can be mistaken for a BDD100K one. Boxes are xyxy pixels (BDD).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd

from bdd_engine import bdd, viz
from bdd_engine.train import filter_conf

GT_COLOR, PRED_COLOR = (40, 220, 60), (255, 50, 50)


def synthetic_note(synthetic: bool) -> str:
    return " — SYNTHETIC data" if synthetic else ""


def slice_figure(ranked: pd.DataFrame, title: str, worst: str | None, synthetic: bool) -> Any:
    """mAP@0.5 per ranked slice (``evaluate.ranked_slices`` rows), worst highlighted, with CIs."""
    t = ranked.sort_values("AP50", ascending=True, kind="stable")
    labels = [f"{s}  (n={n})" for s, n in zip(t["slice"], t["n_frames"])]
    hl = [lab for lab, s in zip(labels, t["slice"]) if s == worst]
    return viz.ci_bars(labels, t["AP50"], t["ci_lo"], t["ci_hi"], title + synthetic_note(synthetic),
                       "mAP@0.5 (bars) with bootstrap 95% CI (whiskers)", highlight=hl)


def failures_figure(in_slice: pd.DataFrame, worst: str, per_frame: pd.DataFrame, gt: list, preds: list,
                    vis_conf: float, synthetic: bool, n: int = 12) -> Any:
    """GT (green) vs predictions scoring >= ``vis_conf`` (red) on the worst slice's weakest
    ``n`` frames. ``in_slice``: the slice's eval frames (columns name, image_path)."""
    pf = per_frame.merge(in_slice, on="name").sort_values(["ap50", "recall50", "name"], na_position="last").head(n)
    gtb = bdd.boxes_table(gt)
    pdb = bdd.boxes_table(filter_conf(preds, float(vis_conf)))
    images, caps = [], []
    for r in pf.itertuples(index=False):
        g, p = gtb[gtb["name"] == r.name], pdb[pdb["name"] == r.name]
        boxes = pd.concat([g, p])[["x1", "y1", "x2", "y2"]].values
        colors = [GT_COLOR] * len(g) + [PRED_COLOR] * len(p)
        images.append(viz.draw_boxes(r.image_path, boxes, colors=colors))
        caps.append(f"{r.name[:17]}  AP50={r.ap50:.2f} R={r.recall50:.2f}")
    return viz.thumb_grid(images, caps, ncols=4, thumb_wh=(320, 180), fontsize=7, caption_lines=1,
                          title=f"Worst slice '{worst}': GT green, prediction red (score >= {vis_conf})"
                                f"{synthetic_note(synthetic)}")


def delta_figure(head: pd.DataFrame, synthetic: bool) -> Any:
    """Δ mAP@0.5 per reported slice (bars + paired-bootstrap CI), controls as markers."""
    labels = [f"{s}  (n={n})" for s, n in zip(head["slice"], head["n_eval"])]
    series = [(f"{arm} control", head[f"{arm}_delta"]) for arm in ("random", "oracle", "random_gt", "continue") if f"{arm}_delta" in head]
    return viz.ci_bars(labels, head["delta"], head["ci_lo"], head["ci_hi"],
                       "Δ mAP@0.5 iter1 − iter0 (bars, paired-bootstrap 95% CI) and controls (markers)"
                       + synthetic_note(synthetic), "Δ mAP@0.5", highlight=labels[:1], zero_line=True, series=series)


LEARNING_KEYS = ("turn", "worst_slice", "start_worst_AP50", "worst_AP50", "random_worst_AP50",
                 "start_overall_AP50", "overall_AP50", "random_overall_AP50")


def confirm_figure(confirm: Mapping[str, Any], synthetic: bool) -> Any:
    """The headline on the confirmation set: each arm's Δ vs iter0 and the contrasts, with
    their hierarchical-bootstrap 95% CIs; the shaded band is ± the design's MDE (a contrast
    inside it is one this design cannot tell from 0 with 80% power). ``confirm``: §8's confirm.json."""
    rows = [(f"Δ {a} (vs iter0)", v["delta"], v["ci"]) for a, v in confirm["arms"].items()]
    rows += [(k.replace("-", " − "), v["delta"], v["ci"]) for k, v in confirm["contrasts"].items()]
    nan = float("nan")
    fig = viz.ci_bars([r[0] for r in rows], [r[1] for r in rows], [nan if r[2][0] is None else r[2][0] for r in rows],
                      [nan if r[2][1] is None else r[2][1] for r in rows],
                      f"Confirmation set: {confirm['n_frames']} held-out frames of {confirm['slice']}"
                      + synthetic_note(synthetic), "Δ mAP@0.5 (bars) with hierarchical-bootstrap 95% CI (whiskers)",
                      highlight=["iter1 − random"], zero_line=True)
    if confirm.get("mde"):
        fig.axes[0].axvspan(-confirm["mde"], confirm["mde"], color="grey", alpha=0.15, label="± MDE (80% power)")
        fig.axes[0].legend(loc="lower right", fontsize=8)
    return fig


def learning_curve(turns: Sequence[Mapping[str, Any]], synthetic: bool) -> Any:
    """mAP@0.5 per flywheel turn on the turn's worst slice (left) and all eval frames (right):
    iter1 (solid) beside the random control (dashed, as many random frames, same labeler).

    ``turns``: one dict per turn (1, 2, ...) with :data:`LEARNING_KEYS`, mAP@0.5 fractions:
    ``start_*`` = the model the turn starts from (its iter0, the previous promotion) measured
    on this turn's ``worst_slice`` / all frames, ``*_AP50`` = iter1, ``random_*`` = the random
    control (None: not run, not drawn). Turn k is drawn from x = k-1 (start) to x = k, so a
    turn whose worst slice differs from the last one's starts at its own level (a visible
    step, not a fake continuation); each segment is labelled with its slice.
    """
    missing = sorted({k for t in turns for k in LEARNING_KEYS if k not in t})
    if not turns or missing:
        raise ValueError(f"learning_curve: need >= 1 turn with keys {LEARNING_KEYS}; missing {missing}")
    t = sorted(turns, key=lambda d: d["turn"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in ((axes[0], "worst", "worst slice of each turn"), (axes[1], "overall", "all eval frames")):
        for i, d in enumerate(t):
            k, start = int(d["turn"]), d[f"start_{key}_AP50"]
            ax.plot([k - 1, k], [start, d[f"{key}_AP50"]], "o-", color="tab:blue", zorder=3,
                    label="iter1" if i == 0 else None)
            r = d[f"random_{key}_AP50"]
            if r is not None and r == r:  # None / NaN: no control that turn
                ax.plot([k - 1, k], [start, r], "s--", color="tab:orange", markevery=[1],  # the start is iter1's point
                        label="random control" if i == 0 else None)
            if key == "worst":
                ax.annotate(str(d["worst_slice"]), (k - 0.5, (start + d["worst_AP50"]) / 2), textcoords="offset points",
                            xytext=(0, 8), ha="center", fontsize=7)
        ax.set(title=title, xlabel="flywheel turn (0 = starting model)", xticks=range(0, int(t[-1]["turn"]) + 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mAP@0.5")
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle("Learning curve: mAP@0.5 per turn, iter1 vs random control" + synthetic_note(synthetic))
    fig.tight_layout()
    return fig


def close_all() -> None:
    """Free every open figure (a long notebook otherwise keeps them all in memory)."""
    plt.close("all")


def confusion_figure(panels: Mapping[str, pd.DataFrame], conf: float, synthetic: bool, ncols: int = 2) -> Any:
    """Per-class confusion matrices (``confusion.confusion_matrix``: true class rows, predicted
    class columns, ``background`` = missed / invented boxes), one panel per {title: matrix}."""
    return viz.heatmaps(list(panels.items()), "predicted class", "true class",
                        f"Detections at score >= {conf:g}, IoU >= 0.5: colour = share of the true class's boxes; "
                        f"background row = false positives, column = misses{synthetic_note(synthetic)}",
                        ncols=min(ncols, len(panels)), panel_size=(6.6, 6.0))
