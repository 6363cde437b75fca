"""Find label mistakes: score every box of a label set against out-of-sample predictions.

A label set (BDD frames: ground truth, auto-labels or reviewed labels) is compared with the
predictions of a model that never trained on those frames. Four kinds of mistake, each a
score in [0, 1] (higher = more likely wrong), all boxes ``xyxy`` pixels:

* ``wrong class`` — a confident prediction of another class sits on the box (IoU >= 0.5) and
  none of the labelled class does: ``s_other × (1 − s_same)``; the other class is suggested.
* ``badly placed`` — the best same-class prediction (score ``s``) overlaps the box less than
  predictions overlap this label set's boxes of the same size band: ``z`` = (band median IoU −
  IoU) / band MAD (robust z, >= 0), score ``s × z / (z + 3)`` (so 3 MADs at score 1 gives 0.5).
  Small boxes are matched loosely by any model; the band statistics keep them from crowding the
  top (self-calibrated like the spurious score; bands with < 5 confident matches use all boxes).
* ``spurious box`` — no prediction of any class supports the box (support = the best score
  among predictions with IoU >= 0.1): ``(1 − support) × detectability``, where detectability
  is the share of this label set's boxes of the same size band that ARE supported (so a tiny
  box the model cannot see anyway is not called spurious; self-calibrated, no constant).
* ``missed object`` — a prediction (score >= ``conf``) that no label matches (IoU < 0.5 with
  every box) and that lies in no crowd/ignore region (IoU < 0.3); one row per such object after
  class-agnostic NMS, scored by its confidence.

Each row's ``score`` is the largest of its kind scores and ``reason`` names that kind (with
the suggested class or the IoU). :func:`write_issues` writes ``labels.issues.csv`` atomically.
Why our own scores and not cleanlab's or FiftyOne Brain's: benchmarks/bench_label_issues.py
measures all of them on planted errors; docs/label_issues.md has the table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bdd_engine import bdd
from bdd_engine.checkpoint import atomic_path
from bdd_engine.geometry import PIXEL_SHIFT, box_iou, iou_xywh, xyxy_to_xywh

KINDS = ("wrong class", "badly placed", "spurious box", "missed object")
MATCH_IOU = 0.5      # a prediction "sits on" a label (the evaluation's match IoU)
SUPPORT_IOU = 0.3    # a same-class prediction overlapping a label this much is its placement candidate
SPURIOUS_IOU = 0.1   # any prediction overlapping a label this much supports it (0.1 beat 0.3/0.5 on the benchmark)
SIZE_BANDS = (0, 16, 32, 64, 128, np.inf)  # sqrt(area) px bands for detectability (COCO's small/medium split at 32)
COLUMNS = ["name", "label_id", "row", "category", "x1", "y1", "x2", "y2", "score", "reason", "flagged",
           "wrong_class", "badly_placed", "spurious_box", "missed_object", "suggested_category", "pred_score", "iou"]


def _boxes(frame: Mapping[str, Any]) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """(scored labels [{id, category}], their xyxy (L, 4), xyxy of crowd/ignore regions (R, 4)) of a frame."""
    rows, xy, regions = [], [], []
    for i, lb in enumerate(frame.get("labels") or []):
        cat = lb.get("category")
        cls, ignore = bdd.map_category(cat) if isinstance(cat, str) else (None, False)
        if cls is None or bdd.box_issue(lb.get("box2d")) is not None:
            continue
        b = lb["box2d"]
        box = [float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"])]
        if ignore or (lb.get("attributes") or {}).get("crowd"):
            regions.append(box)
            continue
        rows.append({"label_id": str(lb.get("id", i)), "category": cls, "score": lb.get("score")})
        xy.append(box)
    return rows, np.array(xy, float).reshape(-1, 4), np.array(regions, float).reshape(-1, 4)


def _preds(frame: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyxy (P, 4), scores (P,), class names (P,)) of a prediction frame (None = no prediction)."""
    labels = [lb for lb in (frame or {}).get("labels") or [] if bdd.box_issue(lb.get("box2d")) is None]
    xy = np.array([[lb["box2d"][k] for k in ("x1", "y1", "x2", "y2")] for lb in labels], float).reshape(-1, 4)
    return xy, np.array([float(lb.get("score", 1.0)) for lb in labels]), np.array([lb["category"] for lb in labels])


def _label_rows(name: str, rows: list[dict[str, Any]], lxy: np.ndarray, pxy: np.ndarray, ps: np.ndarray,
                pc: np.ndarray) -> list[dict[str, Any]]:
    """Kind scores of each label box of one frame (spurious before calibration)."""
    iou = box_iou(lxy, pxy, pixel_shift=PIXEL_SHIFT)
    out = []
    for i, r in enumerate(rows):
        on = iou[i] >= MATCH_IOU
        same, other = on & (pc == r["category"]), on & (pc != r["category"])
        s_same = float(ps[same].max(initial=0.0))
        s_other = float(ps[other].max(initial=0.0))
        suggest = str(pc[other][ps[other].argmax()]) if other.any() else ""
        cand = (pc == r["category"]) & (iou[i] >= SUPPORT_IOU)
        j = int(np.argmax(np.where(cand, ps * iou[i], -1.0))) if cand.any() else -1
        support = float(ps[iou[i] >= SPURIOUS_IOU].max(initial=0.0))
        out.append({"name": name, "label_id": r["label_id"], "row": "label", "category": r["category"],
                    **dict(zip(("x1", "y1", "x2", "y2"), lxy[i].tolist())),
                    "wrong_class": s_other * (1.0 - s_same), "suggested_category": suggest,
                    "badly_placed": 0.0, "loc_score": float(ps[j]) if j >= 0 else 0.0,
                    "spurious_box": 1.0 - support, "missed_object": 0.0,
                    "pred_score": support, "iou": float(iou[i, j]) if j >= 0 else 0.0})
    return out


def _missed_rows(name: str, lxy: np.ndarray, regions: np.ndarray, pxy: np.ndarray, ps: np.ndarray, pc: np.ndarray,
                 conf: float) -> list[dict[str, Any]]:
    """Confident predictions that overlap no label and no crowd/ignore region, after class-agnostic NMS."""
    keep = ps >= conf
    if len(lxy):
        keep &= box_iou(pxy, lxy, pixel_shift=PIXEL_SHIFT).max(axis=1, initial=0.0) < MATCH_IOU
    if len(regions):  # a prediction mostly inside a crowd/ignore region is not a missed object
        keep &= _inside(pxy, regions).max(axis=1, initial=0.0) < MATCH_IOU
    idx = [int(i) for i in np.argsort(-ps) if keep[i]]
    chosen: list[int] = []
    for i in idx:
        if not chosen or box_iou(pxy[[i]], pxy[chosen], pixel_shift=PIXEL_SHIFT).max() < MATCH_IOU:
            chosen.append(i)
    return [{"name": name, "label_id": "", "row": "missed", "category": str(pc[i]),
             **dict(zip(("x1", "y1", "x2", "y2"), pxy[i].tolist())), "wrong_class": 0.0, "badly_placed": 0.0,
             "spurious_box": 0.0, "missed_object": float(ps[i]), "loc_score": 0.0, "suggested_category": str(pc[i]),
             "pred_score": float(ps[i]), "iou": 0.0} for i in chosen]


def _inside(pxy: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Share of each prediction's area inside each region (P, R): COCO's crowd IoU, intersection / prediction area."""
    d, g = xyxy_to_xywh(pxy, pixel_shift=PIXEL_SHIFT).T, xyxy_to_xywh(regions, pixel_shift=PIXEL_SHIFT).T
    return iou_xywh(tuple(v[:, None] for v in d), tuple(v[None, :] for v in g), crowd=True)


def _size_band(table: pd.DataFrame) -> pd.Series:
    side = np.sqrt((table["x2"] - table["x1"]).clip(lower=0) * (table["y2"] - table["y1"]).clip(lower=0))
    return pd.Series(pd.cut(side, SIZE_BANDS, right=False, labels=False), index=table.index)


def _calibrate_badloc(table: pd.DataFrame) -> pd.Series:
    """``loc_score × z / (z + 3)``, z = robust z of the box's IoU below its size band's confident matches."""
    band = _size_band(table)
    good = (table["row"] == "label") & (table["loc_score"] >= 0.5)
    iou = table["iou"]
    med_all = float(iou[good].median()) if good.any() else 1.0
    mad_all = float((iou[good] - med_all).abs().median()) if good.any() else 0.0
    med, mad = med_all + 0 * iou, mad_all + 0 * iou
    for b, idx in iou[good].groupby(band[good]).groups.items():
        if len(idx) >= 5:
            m = float(iou[idx].median())
            med[band == b], mad[band == b] = m, float((iou[idx] - m).abs().median())
    z = ((med - iou) / mad.clip(lower=0.02)).clip(lower=0)
    return (table["loc_score"] * z / (z + 3)).where(table["loc_score"] > 0, 0.0)


def _calibrate_spurious(table: pd.DataFrame) -> pd.Series:
    """``spurious_box`` × the share of this label set's boxes of the same size band that a prediction supports."""
    lab = table["row"] == "label"
    band = _size_band(table)
    supported = (table["pred_score"] >= 0.5) & lab
    detect = supported.groupby(band).sum() / lab.groupby(band).sum().clip(lower=1)
    return (table["spurious_box"] * band.map(detect).fillna(0.0)).where(lab, 0.0)


def score_labels(labels: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]], *,
                 conf: float = 0.25, flag: float = 0.5) -> pd.DataFrame:
    """One row per scored label box (``row`` = ``label``) and per missed object (``row`` = ``missed``).

    ``labels``: BDD frames (boxes xyxy px; crowd boxes and the ignore categories are regions,
    not scored); ``predictions``: BDD frames with ``score`` per label, from a model that never
    trained on these frames, at a low threshold (e.g. 0.01: low scores still support a box).
    ``conf``: a prediction needs this score to count as a missed object; ``flag``: rows whose
    ``score`` reaches it are ``flagged``. Columns :data:`COLUMNS`, sorted by ``score``
    (highest first; ties by name and label id, so the order is deterministic).
    """
    by_name = {p["name"]: p for p in predictions}
    out: list[dict[str, Any]] = []
    for fr in labels:
        rows, lxy, regions = _boxes(fr)
        pxy, ps, pc = _preds(by_name.get(fr["name"]))
        out += _label_rows(fr["name"], rows, lxy, pxy, ps, pc)
        out += _missed_rows(fr["name"], lxy, regions, pxy, ps, pc, conf)
    t = pd.DataFrame(out, columns=[c for c in COLUMNS if c not in ("score", "reason", "flagged")] + ["loc_score"])
    if not len(t):
        return pd.DataFrame(columns=COLUMNS)
    t["spurious_box"] = _calibrate_spurious(t)
    t["badly_placed"] = _calibrate_badloc(t)
    kinds = t[["wrong_class", "badly_placed", "spurious_box", "missed_object"]].to_numpy(float)
    t["score"] = kinds.max(axis=1).round(4)
    t["flagged"] = t["score"] >= flag
    t["reason"] = [_reason(KINDS[k], r) if r.flagged else f"no issue (highest: {KINDS[k]} {r.score:.2f})"
                   for k, r in zip(kinds.argmax(axis=1), t.itertuples(index=False))]
    t = t.sort_values(["score", "name", "label_id"], ascending=[False, True, True], kind="mergesort")
    return t[COLUMNS].reset_index(drop=True)


def summary(table: pd.DataFrame) -> dict[str, Any]:
    """A label set's estimated error rate: the share of its boxes flagged (by reason) and the missed
    objects per 100 boxes. An estimate: the stage's precision on planted errors is in docs/label_issues.md."""
    lab = table[table["row"] == "label"]
    flagged = table[table["flagged"]]
    n = len(lab)
    return {"boxes": n, "flagged_boxes": int(lab["flagged"].sum()),
            "flagged_share": round(float(lab["flagged"].mean()), 4) if n else None,
            "missed_objects": int((flagged["row"] == "missed").sum()),
            "missed_per_100_boxes": round(100 * float((flagged["row"] == "missed").sum()) / n, 2) if n else None,
            "by_reason": {k: int(v) for k, v in flagged["reason"].str.split(":").str[0].value_counts().sort_index().items()}}


def _reason(kind: str, r: Any) -> str:
    if kind == "wrong class":
        return f"wrong class: looks like {r.suggested_category}"
    if kind == "badly placed":
        return f"badly placed: best {r.category} prediction IoU {r.iou:.2f}"
    if kind == "spurious box":
        return f"spurious box: no prediction supports it (best score {r.pred_score:.2f})"
    return f"missed object: unlabelled {r.category} (score {r.pred_score:.2f})"


def write_issues(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``table`` (:func:`score_labels`) as CSV atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return path


# ----------------------------------------------------------------------------- the command
ISSUES_FILE = "labels.issues.csv"
ISSUES_MARKER = "LABEL_ISSUES.json"
QUEUE_FILE = "label_studio_suspects.json"


def suspect_frames(table: pd.DataFrame, n: int) -> list[str]:
    """The ``n`` frames with the most suspicious flagged row, most suspicious first (the review queue's order)."""
    flagged = table[table["flagged"]]
    return flagged.groupby("name", sort=False)["score"].max().sort_values(ascending=False, kind="mergesort").index[:n].tolist()


def label_issues_folder(labels: str | os.PathLike, images: str | os.PathLike, weights: str | os.PathLike,
                        out: str | os.PathLike, *, conf: float = 0.25, flag: float = 0.5, device: str = "auto",
                        imgsz: int | None = None, queue: int = 50, progress: bool = True) -> tuple[Path, pd.DataFrame]:
    """The ``label-issues`` command: read ``labels`` (BDD JSON, COCO or YOLO, as ``train`` reads
    them, images under ``images``), predict every frame with ``weights`` (an Ultralytics .pt that
    never trained on these frames) at score >= 0.01, score the labels (:func:`score_labels` with
    ``conf``/``flag``) and write ``out/labels.issues.csv`` + ``out/predictions.json`` + a Label
    Studio review queue of the ``queue`` most suspicious frames with their current labels
    (``label_studio_suspects.json`` by ``autolabel.export_label_studio``, the §7 queue's writer;
    ``import-labels`` reads its export back).

    ``out`` is a folder this command creates and marks (``LABEL_ISSUES.json``); one inside
    ``images`` is refused (:class:`checkpoint.FolderRefused`). Bad input raises
    :class:`trainfolder.TrainDataError` (labels without images, unknown classes, no box) or
    FileNotFoundError (no weights), each one line naming the file and the fix, before anything
    is written. Returns (the CSV's path, the table)."""
    from bdd_engine import train, trainfolder  # the detector stack, only for the command
    from bdd_engine.autolabel import export_label_studio
    from bdd_engine.anyfolder import refuse_inside
    from bdd_engine.checkpoint import claim_folder

    refuse_inside(images, out, "label-issues", "_issues", "--images")
    if not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights} does not exist; pass an Ultralytics .pt that never trained on "
                                f"these frames (e.g. bdd_engine/models/synthteacher-w025.pt)")
    frames, paths, fmt = trainfolder.read_labels(labels, images)
    trainfolder.check_labels(frames, paths, Path(labels))
    out = claim_folder(out, ISSUES_MARKER, "bdd_engine.label-issues",
                       {"labels": str(Path(labels).resolve()), "images": str(Path(images).resolve()),
                        "weights": str(Path(weights).resolve()), "conf": conf, "flag": flag})
    preds = train.predict(Path(weights).resolve(), [paths[f["name"]] for f in frames], conf=0.01, device=device,
                          imgsz=imgsz, progress=progress)
    train.save_predictions(preds, out / "predictions.json")
    table = score_labels(frames, preds, conf=conf, flag=flag)
    path = write_issues(table, out / ISSUES_FILE)
    by_name = {f["name"]: f for f in frames}
    names = suspect_frames(table, queue)
    if names:
        export_label_studio([by_name[n] for n in names], {n: paths[n] for n in names}, out / QUEUE_FILE,
                            model_version="current labels (label-issues suspects)")
    return path, table
