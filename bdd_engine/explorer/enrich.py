"""What later sections add to an existing dataset: embeddings and the 2-D map,
predictions with an evaluation run, mined tags, auto-labels with router buckets, and
the saved views a user opens in the App.

Every function replaces what it set before (re-running one is idempotent). Boxes come
in as BDD frames (box2d in xyxy pixels) and are stored as relative [x, y, w, h].
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from bdd_engine.evaluate import MAX_DETS
from bdd_engine.explorer.boxes import boxes_by_name, detections, group_by_name, valid_boxes
from bdd_engine.explorer.dataset import GT_FIELD, aligned_view, ids_by_name

log = logging.getLogger(__name__)

SAVED_VIEWS = ("worst_slice", "worst_slice_failures", "fixed_by_iter1", "broken_by_iter1", "mined", "autolabel_review",
               "golden_qa", "label_issues")
ISSUES_FIELD = "label_issues"  # flagged rows of labelissues.score_labels tables (issue 29)


# ---------------------------------------------------------------- embeddings
def add_embeddings(
    ds,
    names: Sequence[str],
    emb: np.ndarray,
    brain_key: str = "img_sim",
    viz_key: str = "img_viz",
    uniqueness_field: str = "uniqueness",
    viz_method: str | None = None,
    seed: int = 42,
):
    """Brain runs from precomputed embeddings (never a model download).

    Args:
        names: frame names, row-aligned with ``emb``.
        emb: (N, D) float embeddings (any scale; cosine similarity is used).
        viz_method: "umap" | "pca" | "tsne"; default umap when umap-learn is installed.
    Returns the similarity index. Adds the ``uniqueness`` field and a 2-D visualization.
    """
    import fiftyone.brain as fob  # heavy optional dependency: imported on use

    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise ValueError(f"emb must be (len(names), D); got {emb.shape} for {len(names)} names")
    view = aligned_view(ds, list(names))
    for key in (brain_key, viz_key):
        if key in ds.list_brain_runs():
            ds.delete_brain_run(key)
    index = fob.compute_similarity(view, embeddings=emb, brain_key=brain_key, backend="sklearn",
                                   metric="cosine", progress=False)
    fob.compute_uniqueness(view, uniqueness_field=uniqueness_field, embeddings=emb, progress=False)
    if viz_method is None:
        viz_method = _default_viz_method()
    kw = {"seed": seed} if viz_method in ("umap", "tsne") else {}
    fob.compute_visualization(view, embeddings=emb, brain_key=viz_key, method=viz_method,
                              num_dims=2, progress=False, **kw)
    return index


def _default_viz_method() -> str:
    """umap when umap-learn is installed, else pca."""
    try:
        import umap  # noqa: F401  optional dependency: only probed

        return "umap"
    except ImportError:
        return "pca"


def sort_by_similarity(view, query: Any, k: int, brain_key: str = "img_sim"):
    """``view.sort_by_similarity`` that is right after an earlier query on another view.

    FiftyOne caches the loaded similarity index per dataset, and the cached index keeps
    the view of its previous query: a vector query on ``ds.match_tags("pool")`` after a
    query on the whole dataset returned frames of the pool ranked among the *dataset's*
    top-k (measured on the demo: 1 of 4 top frames right). Clearing the dataset's cache
    first makes each query load the index for its own view.
    """
    view._dataset.clear_cache()
    return view.sort_by_similarity(query, k=k, brain_key=brain_key)


# ---------------------------------------------------------------- predictions + evaluation
def _cap_per_class(b: pd.DataFrame | None, max_dets: int) -> pd.DataFrame | None:
    """Top ``max_dets`` scores per class of one frame's boxes (COCOeval: stable score sort)."""
    if b is None or len(b) <= max_dets:
        return b
    return b.sort_values("score", ascending=False, kind="mergesort").groupby("category", sort=False).head(max_dets)


def add_predictions(
    ds,
    pred_frames: Sequence[Mapping[str, Any]],
    field: str = "predictions_iter0",
    eval_key: str | None = "eval_iter0",
    eval_on: str | Iterable[str] | None = "eval",
    max_dets: int = MAX_DETS,
):
    """Store predictions and register a COCO-style evaluation run.

    Args:
        pred_frames: BDD frames (box2d in xyxy pixels) whose labels carry ``score``;
            frames of the dataset absent here get empty predictions; unknown names are
            counted and skipped. Stored as relative [x, y, w, h] with ``confidence``.
        eval_on: sample tag (e.g. "eval") or frame names to evaluate on; None = the
            frames present in ``pred_frames``.
        max_dets: keep the top-N scores per frame and class (COCO/BDD maxDets=100;
            FiftyOne has no such cap, so without it mAP would differ from the official one).
    Returns the DetectionResults (``.mAP()`` is AP@[.5:.95]); per-sample
    ``<eval_key>_tp/_fp/_fn`` fields. None when ``eval_key`` is None.
    """
    ids = ids_by_name(ds)
    pf = [f for f in pred_frames if str(f["name"]) in ids]
    unknown = len(pred_frames) - len(pf)
    if unknown:
        log.warning("explorer: %d prediction frame(s) not in dataset %s skipped", unknown, ds.name)
    boxes, bad_boxes = boxes_by_name(pf)
    names, widths, heights = ds.values(["name", "metadata.width", "metadata.height"])
    ds.set_values(field, [detections(_cap_per_class(boxes.get(n), max_dets), w, h, with_score=True)
                          for n, w, h in zip(names, widths, heights)])
    predicted = {str(f["name"]) for f in pf}
    ds.info.setdefault("predictions", {})[field] = {"frames": len(predicted), "unknown_skipped": unknown, "degenerate_dropped": bad_boxes}
    ds.save()
    if eval_key is None:
        return None
    if isinstance(eval_on, str):
        view = ds.match_tags(eval_on)
    else:
        sel = predicted if eval_on is None else {str(n) for n in eval_on}
        view = ds.select([ids[n] for n in sel if n in ids])
    if len(view) == 0:
        raise ValueError(f"nothing to evaluate: eval_on={eval_on!r} selects no sample")
    if eval_key in ds.list_evaluations():
        ds.delete_evaluation(eval_key)
    return view.evaluate_detections(field, gt_field=GT_FIELD, eval_key=eval_key, method="coco",
                                    compute_mAP=True, iscrowd="iscrowd", progress=False)


# ---------------------------------------------------------------- tags: mined, pools
def tag_mined(ds, mined_df: pd.DataFrame, tag: str = "mined") -> int:
    """Tag mined frames; store ``mined_rank`` (1 = best), ``mined_score`` and ``mined_source``.

    ``mined_df``: ``mine.MineResult.mined`` — name, rank[, score (cosine similarity to
    the prototype for the prototype strategy; see MineResult), source]; a ``similarity``
    column is accepted for ``score``. Re-tagging replaces the previous mined set.
    Returns the number tagged (ValueError for names not in the dataset).
    """
    names_in = [str(n) for n in mined_df["name"]]
    ids = ids_by_name(ds)
    missing = [n for n in names_in if n not in ids]
    if missing:
        raise ValueError(f"{len(missing)} mined name(s) not in dataset, e.g. {missing[:3]}")
    ds.untag_samples(tag)
    view = aligned_view(ds, names_in)
    view.tag_samples(tag)
    score_col = "score" if "score" in mined_df else ("similarity" if "similarity" in mined_df else None)
    cols = {"mined_rank": ("rank", int), "mined_score": (score_col, float), "mined_source": ("source", str)}
    names = ds.values("name")
    for fld, (col, typ) in cols.items():
        if col is None or col not in mined_df:
            continue
        m = {n: typ(v) for n, v in zip(names_in, mined_df[col])}
        ds.set_values(fld, [m.get(n) for n in names])
    return len(view)


def set_predicted_attributes(ds, table: pd.DataFrame, attrs: Sequence[str]) -> int:
    """§6's pool attributes: ``attr_source`` (labels | predicted) on the table's frames, and on
    the predicted ones the attribute fields, ``slice`` and ``<attr>_conf`` (0..1). ``table``:
    pool_attributes.csv (name, attrs, slice, <attr>_conf, attr_source). Returns how many
    frames carry predicted attributes; frames not in the dataset are ignored."""
    t = table.set_index(table["name"].astype(str))
    names = ds.values("name")
    src = {n: str(v) for n, v in t["attr_source"].items()}
    ds.set_values("attr_source", [src.get(n) for n in names])
    pred = t[t["attr_source"] == "predicted"]
    cur = {f: ds.values(f) for f in (*attrs, "slice")}
    for f in (*attrs, "slice"):
        ds.set_values(f, [pred.at[n, f] if n in pred.index else v for n, v in zip(names, cur[f])])
    import fiftyone as fo  # heavy optional dependency (~3 s): imported on use

    for a in attrs:
        if not ds.has_sample_field(f"{a}_conf"):  # declared: with nothing predicted, FiftyOne can't infer a type from Nones
            ds.add_sample_field(f"{a}_conf", fo.FloatField)
        ds.set_values(f"{a}_conf", [float(pred.at[n, f"{a}_conf"]) if n in pred.index else None for n in names])
    return int(sum(n in pred.index for n in names))


def tag_pools(ds, tags: Mapping[str, list[str]], all_tags: Iterable[str]) -> None:
    """Replace the pool tags: untag every tag of ``all_tags``, then tag each frame with its
    ``tags[name]``; the ``pool`` field becomes the comma-joined tags (None without any)."""
    for t in all_tags:
        ds.untag_samples(t)
    by_tag: dict[str, list[str]] = {}
    for n, ts in tags.items():
        for t in ts:
            by_tag.setdefault(t, []).append(n)
    ids = ids_by_name(ds)
    for t, names in by_tag.items():
        ds.select([ids[n] for n in names if n in ids]).tag_samples(t)
    names = ds.values("name")
    ds.set_values("pool", [",".join(tags.get(n, [])) or None for n in names])


# ---------------------------------------------------------------- auto-labels
def _bucket(label: Mapping[str, Any], route: Callable[[float], str] | None) -> str | None:
    """A label's router bucket: its own ``bucket`` (top level or attribute), else ``route(score)``."""
    b = label.get("bucket", (label.get("attributes") or {}).get("bucket"))
    if b is None and route is not None and label.get("score") is not None:
        b = route(float(label["score"]))
    return str(b) if b is not None else None


def _autolabel_boxes(frames: Sequence[Mapping[str, Any]],
                     route: Callable[[float], str] | None) -> tuple[pd.DataFrame, int]:
    """Box table (xyxy pixels) of the frames' labels with a ``bucket`` column, and the
    number of degenerate boxes dropped. ValueError for a label without a bucket."""
    # One single-label pseudo-frame per label keeps the bucket attached through
    # bdd.boxes_table's category mapping (which drops labels that are not boxes).
    flat, buckets = [], []
    for f in frames:
        for lb in f.get("labels") or []:
            b = _bucket(lb, route)
            if b is None:
                raise ValueError(f"auto-label {lb.get('id')!r} of {f['name']} has no router bucket")
            flat.append({"name": (str(f["name"]), len(buckets)), "labels": [lb]})
            buckets.append(b)
    table, bad_boxes = valid_boxes(flat)
    table = table.copy()
    table["bucket"] = [buckets[k[1]] for k in table["name"]]
    table["name"] = [k[0] for k in table["name"]]
    return table, bad_boxes


def add_autolabels(
    ds,
    frames: Sequence[Mapping[str, Any]],
    field: str = "autolabels",
    route: Callable[[float], str] | None = None,
) -> dict[str, int]:
    """Auto-labels → Detections (relative [x, y, w, h], ``confidence``) with the router
    bucket (accept / review / discard) as the label attribute ``bucket``.

    Args:
        frames: BDD frames (box2d in xyxy pixels) whose labels carry ``score`` and a
            ``bucket`` (top level or in ``attributes``); or give ``route`` (score →
            bucket) to compute it.
    Returns per-bucket label counts. A label with no bucket raises ValueError; frames
    not in the dataset are skipped and counted in ``ds.info["autolabels_skipped"]``.
    """
    ids = ids_by_name(ds)
    known = [f for f in frames if str(f["name"]) in ids]
    table, bad_boxes = _autolabel_boxes(known, route)
    by_name = group_by_name(table)
    names, widths, heights = ds.values(["name", "metadata.width", "metadata.height"])
    have = {str(f["name"]) for f in known}
    values = [detections(by_name.get(n), w, h, with_score=True, extra=lambda r: {"bucket": r.bucket})
              if n in have else None for n, w, h in zip(names, widths, heights)]
    ds.set_values(field, values)
    ds.info["autolabels_skipped"] = {"unknown_frames": len(frames) - len(known), "degenerate_boxes": bad_boxes}
    ds.save()
    return {str(k): int(v) for k, v in table["bucket"].value_counts().sort_index().items()}


# ---------------------------------------------------------------- label issues
def add_label_issues(ds, table: pd.DataFrame, field: str = ISSUES_FIELD) -> int:
    """Flagged rows of ``labelissues.score_labels`` tables (xyxy px; a ``set`` column names the label
    set, e.g. autolabels / gt / reviewed) → Detections with ``confidence`` = the issue score and the
    attributes ``reason`` and ``label_set``; the sample field ``label_issue_score`` is the frame's
    highest score (None without a flagged row). Replaces what it set before; returns the rows added."""
    flagged = table[table["flagged"].astype(bool)] if len(table) else table
    by_name = group_by_name(flagged.assign(crowd=False, ignore=False)) if len(flagged) else {}
    names, widths, heights = ds.values(["name", "metadata.width", "metadata.height"])
    extra = lambda r: {"reason": str(r.reason), "label_set": str(getattr(r, "set", ""))}  # noqa: E731
    if not set(names) & set(by_name):  # nothing flagged here: FiftyOne cannot type a new all-None field
        for f in (field, "label_issue_score"):
            if ds.has_sample_field(f):
                ds.delete_sample_field(f)
        ds.save()
        return 0
    ds.set_values(field, [detections(by_name.get(n), w, h, with_score=True, extra=extra) if n in by_name else None
                          for n, w, h in zip(names, widths, heights)])
    ds.set_values("label_issue_score", [float(by_name[n]["score"].max()) if n in by_name else None for n in names])
    ds.save()
    return int(sum(len(by_name[n]) for n in names if n in by_name))


# ---------------------------------------------------------------- saved views
def save_views(
    ds,
    worst_slice: str | None = None,
    eval_key: str | None = None,
    autolabel_field: str = "autolabels",
    golden_tag: str = "golden",
    compare_key: str | None = None,
) -> list[str]:
    """(Re)create the saved views whose inputs exist; returns their names.

    worst_slice: eval frames of the worst slice; worst_slice_failures: those with a
    false negative or false positive under ``eval_key``; fixed_by_iter1 / broken_by_iter1:
    worst-slice frames with fewer / more errors (FN + FP at the operating threshold) under
    ``compare_key`` (the retrained model's eval run) than under ``eval_key``, most changed
    first; mined: tag ``mined`` by rank;
    autolabel_review: auto-labels routed to human review; golden_qa: tag ``golden``;
    label_issues: frames with a flagged label issue (:func:`add_label_issues`), highest score first.
    """
    from fiftyone import ViewField as F  # heavy optional dependency: imported on use

    views = {}
    if worst_slice is not None:
        ws = ds.match(F("slice") == worst_slice).match_tags("eval")
        views["worst_slice"] = ws
        if eval_key is not None:
            views["worst_slice_failures"] = ws.match((F(f"{eval_key}_fn") > 0) | (F(f"{eval_key}_fp") > 0))
        if eval_key is not None and compare_key is not None:
            gain = (F(f"{eval_key}_fn") + F(f"{eval_key}_fp")) - (F(f"{compare_key}_fn") + F(f"{compare_key}_fp"))
            views["fixed_by_iter1"] = ws.match(gain > 0).sort_by(gain, reverse=True)
            views["broken_by_iter1"] = ws.match(gain < 0).sort_by(gain)
    if ds.count_sample_tags().get("mined"):
        views["mined"] = ds.match_tags("mined").sort_by("mined_rank")
    if ds.has_sample_field(autolabel_field):
        views["autolabel_review"] = ds.filter_labels(autolabel_field, F("bucket") == "review")
    if ds.count_sample_tags().get(golden_tag):
        views["golden_qa"] = ds.match_tags(golden_tag)
    if ds.has_sample_field("label_issue_score"):
        views["label_issues"] = ds.match(F("label_issue_score") != None).sort_by("label_issue_score", reverse=True)  # noqa: E711
    for name, view in views.items():
        if ds.has_saved_view(name):
            ds.delete_saved_view(name)
        ds.save_view(name, view)
    return list(views)
