"""BDD100K detection format (Scalabel det_20 and the 2018 label files).

Everything that knows BDD's conventions lives here: the 10 classes in official order,
the official eval config's name and ignore mappings, null-safe loading, the image
index, validation, and writing predictions back in the same schema.

Box convention: ``box2d`` is ``{x1, y1, x2, y2}`` in **pixels** of the 1280x720 frame
(synthetic frames: their own size). Tables expose it as float columns ``x1..y2``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from bdd_engine.checkpoint import atomic_write_json

# Official order, category_id 1..10 (bdd100k configs/det.toml). Two contain a space.
CLASSES: tuple[str, ...] = (
    "pedestrian", "rider", "car", "truck", "bus",
    "train", "motorcycle", "bicycle", "traffic light", "traffic sign",
)
CLASS_ID: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}
# Vulnerable road users: the action plan's recall target and the promotion gates watch these.
SAFETY_CLASSES: tuple[str, ...] = ("pedestrian", "rider", "bicycle", "motorcycle")
# Official eval config: these names *are* the mapped class.
NAME_MAPPING: dict[str, str] = {
    "bike": "bicycle", "caravan": "car", "motor": "motorcycle", "person": "pedestrian", "van": "car",
}
# Official eval config: boxes of these categories are ignore regions of the mapped class
# (a detection matched to one is neither TP nor FP), never ground truth.
IGNORE_MAPPING: dict[str, str] = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}
# 2018 label files mix in segmentation-style entries without box2d; they are not boxes.
NON_BOX_CATEGORIES = frozenset({"drivable area", "lane", "area/drivable", "area/alternative", "lane/single white"})

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "weather": ("clear", "overcast", "rainy", "snowy", "foggy", "partly cloudy", "undefined"),
    "timeofday": ("daytime", "night", "dawn/dusk", "undefined"),
    "scene": ("city street", "highway", "residential", "parking lot", "gas stations", "tunnel", "undefined"),
}
SLICE_ATTRS: tuple[str, ...] = ("weather", "timeofday", "scene")
SLICE_SEP = " | "  # not "/": "dawn/dusk" contains a slash

DOWNLOAD_HINT = (
    "BDD100K needs a free account: download '100K Images' (and/or '10K Images') and "
    "'Detection 2020 Labels' from the BDD100K site and unpack them as data/bdd100k/"
    "{images/100k/...,labels/det_20/...} — see README.md, section 'Real BDD100K'."
)

_TRACK_SUFFIX = re.compile(r"-\d{7}$")


# ----------------------------------------------------------------------------- loading
def load_frames(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Load a det_20 / 2018 / prediction JSON (a list of frames), null-safe.

    ``labels`` null or missing → ``[]``; ``attributes`` null or missing → ``{}``;
    a label's ``attributes`` null → ``{}``. Nothing else is changed (validation is
    :func:`validate`'s job, so it can report what it saw).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label file not found: {path}\n{DOWNLOAD_HINT}")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download or re-generate it") from None
    if isinstance(data, dict) and "frames" in data:  # Scalabel "dataset" wrapper
        data = data["frames"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of frames (det_20 / Scalabel), got {type(data).__name__}")
    frames = []
    for fr in data:
        if not isinstance(fr, dict):
            continue  # validate() counts these via the raw file; loaders never crash on them
        fr = dict(fr)
        fr["labels"] = [dict(lb, attributes=lb.get("attributes") or {}) for lb in (fr.get("labels") or []) if isinstance(lb, dict)]
        fr["attributes"] = fr.get("attributes") or {}
        frames.append(fr)
    return frames


def write_bdd_json(frames: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write frames (GT, predictions with ``score``, or auto-labels) as det_20 JSON, atomically."""
    return atomic_write_json(path, list(frames), indent=None)


def map_category(category: str) -> tuple[str | None, bool]:
    """Raw BDD category → (evaluated class or None, is_ignore_region)."""
    if category in CLASS_ID:
        return category, False
    if category in NAME_MAPPING:
        return NAME_MAPPING[category], False
    if category in IGNORE_MAPPING:
        return IGNORE_MAPPING[category], True
    return None, False


def video_of(name: str, frame: Mapping[str, Any] | None = None) -> str:
    """Video id: ``videoName`` if given, else the file stem without a tracking ``-0000001`` suffix."""
    if frame and frame.get("videoName"):
        return str(frame["videoName"])
    stem = name.rsplit(".", 1)[0]
    return _TRACK_SUFFIX.sub("", stem)


def group_of(video: str) -> str:
    """Drive group = first hex block of the video name (same-drive near-duplicates share it)."""
    return video.split("-", 1)[0]


def slice_key(values: Mapping[str, Any], attrs: Iterable[str] = SLICE_ATTRS) -> str | None:
    """``"rainy | night | city street"``; None when any attribute is missing (e.g. tracking frames)."""
    parts = []
    for a in attrs:
        v = values.get(a)
        if v is None or (isinstance(v, float) and np.isnan(v)) or v == "":
            return None
        parts.append(str(v))
    return SLICE_SEP.join(parts)


# ----------------------------------------------------------------------------- images
def index_images(data_root: str | os.PathLike, image_sets: Iterable[str] = ("images/100k", "images/10k")) -> dict[str, Path]:
    """Map image file name → path, scanning ``<set>/{train,val,test}`` for each set in order.

    The first set that has a name wins (the 10K bundle is not a strict subset of 100K).
    Raises FileNotFoundError with download steps when no image folder exists at all.
    """
    root = Path(data_root)
    index: dict[str, Path] = {}
    found_any = False
    for s in image_sets:
        base = root / s
        if not base.is_dir():
            continue
        found_any = True
        for split in ("train", "val", "test"):
            d = base / split
            if not d.is_dir():
                continue
            with os.scandir(d) as it:
                for e in it:
                    if e.name.lower().endswith((".jpg", ".jpeg", ".png")) and e.name not in index:
                        index[e.name] = Path(e.path)
    if not found_any:
        raise FileNotFoundError(
            f"no image folder under {root} (looked for {', '.join(str(root / s) for s in image_sets)}).\n{DOWNLOAD_HINT}"
        )
    return index


# ----------------------------------------------------------------------------- tables
def frames_table(frames: list[Mapping[str, Any]], image_index: Mapping[str, Path] | None = None,
                 split: str | None = None) -> pd.DataFrame:
    """One row per frame: name, split, weather, timeofday, scene, slice, video, group, image_path, n_boxes.

    Attribute values are kept verbatim; a missing attribute is NaN and the frame's
    ``slice`` is NaN (it counts in overall numbers, in no slice).
    """
    rows = []
    for fr in frames:
        name = fr["name"]
        attrs = fr.get("attributes") or {}
        video = video_of(name, fr)
        n_boxes = sum(1 for lb in fr.get("labels") or [] if lb.get("box2d") and box_issue(lb["box2d"]) is None)
        row = {
            "name": name,
            "split": split or fr.get("split") or "",
            **{a: attrs.get(a) for a in SLICE_ATTRS},
            "slice": slice_key(attrs),
            "video": video,
            "group": group_of(video),
            "image_path": str(image_index[name]) if image_index is not None and name in image_index else "",
            "n_boxes": n_boxes,
        }
        rows.append(row)
    cols = ["name", "split", *SLICE_ATTRS, "slice", "video", "group", "image_path", "n_boxes"]
    return pd.DataFrame(rows, columns=cols)


BOX_COLUMNS = ["name", "category", "class_id", "x1", "y1", "x2", "y2", "crowd", "ignore", "score"]


def boxes_table(frames: Iterable[Mapping[str, Any]], counts: Counter | None = None) -> pd.DataFrame:
    """One row per evaluable box, after the official name/ignore mapping.

    Columns: :data:`BOX_COLUMNS` — xyxy **pixels**, ``crowd``/``ignore`` flags,
    ``score`` (NaN for ground truth, or a score that is missing or not a number). Labels that
    cannot be boxes of the 10 classes are dropped and counted in ``counts`` (keys ``unknown
    category``, ``non-box label``, ``missing box2d``, ``degenerate box``: the kinds
    :func:`validate` reports, by the same rule :func:`box_issue`) so callers can report them.
    """
    counts = counts if counts is not None else Counter()
    cols: dict[str, list] = {c: [] for c in BOX_COLUMNS}
    for fr in frames:
        name = fr["name"]
        for lb in fr.get("labels") or []:
            cat = lb.get("category")
            cls, ignore = map_category(cat) if isinstance(cat, str) else (None, False)
            box = lb.get("box2d")
            if cls is None:
                counts["non-box label" if cat in NON_BOX_CATEGORIES or (box is None and lb.get("poly2d")) else "unknown category"] += 1
                continue
            issue = box_issue(box)
            if issue is not None:  # NaN / null / text / inverted: counted, never a row (all columns stay aligned)
                counts[issue[0]] += 1
                continue
            attrs = lb.get("attributes") or {}
            cols["name"].append(name)
            cols["category"].append(cls)
            cols["class_id"].append(CLASS_ID[cls])
            for k in ("x1", "y1", "x2", "y2"):
                cols[k].append(float(box[k]))
            cols["crowd"].append(bool(attrs.get("crowd", False)))
            cols["ignore"].append(ignore)
            cols["score"].append(_number(lb.get("score")))
    df = pd.DataFrame(cols)
    return df.astype({"class_id": "int64", "crowd": bool, "ignore": bool, "x1": float, "y1": float, "x2": float, "y2": float, "score": float})


def _number(v: Any) -> float:
    """A finite float, or NaN for anything else (null, text, NaN, inf): callers decide what that means."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return np.nan
    return f if np.isfinite(f) else np.nan


def box_issue(box: Any) -> tuple[str, str] | None:
    """(kind, detail) when ``box2d`` cannot be a box, else None: ``missing box2d`` (absent, or
    lacking a coordinate), ``degenerate box`` (a coordinate null, not a number or not finite, or
    x2 <= x1 or y2 <= y1). The one rule behind :func:`validate`, :func:`boxes_table` and
    :func:`drop_bad_boxes`."""
    if not box:
        return "missing box2d", "without box2d"
    if not isinstance(box, Mapping) or any(k not in box for k in ("x1", "y1", "x2", "y2")):
        return "missing box2d", f"box2d lacks x1/y1/x2/y2: {box!r}"
    try:
        x1, y1, x2, y2 = (float(box[k]) for k in ("x1", "y1", "x2", "y2"))
    except (TypeError, ValueError):
        return "degenerate box", f"non-numeric coordinate: {box!r}"
    if not (np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1):
        return "degenerate box", f"({x1:.1f},{y1:.1f},{x2:.1f},{y2:.1f})"
    return None


def drop_bad_boxes(frames: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """(frames without the labels of the 10 classes whose box :func:`box_issue` refuses, how many
    were left out). Other labels (unknown categories, 2018 non-box entries) are kept as they are:
    :func:`boxes_table` counts those wherever boxes are read."""
    out, n = [], 0
    for fr in frames:
        keep = [lb for lb in fr.get("labels") or []
                if not (isinstance(lb.get("category"), str) and map_category(lb["category"])[0] is not None
                        and box_issue(lb.get("box2d")) is not None)]
        n += len(fr.get("labels") or []) - len(keep)
        out.append({**fr, "labels": keep})
    return out, n


# ----------------------------------------------------------------------------- validation
@dataclass
class ValidationReport:
    """Every bad record found, one row each, plus per-kind counts.

    ``issues`` columns: name, label_id, kind, detail. Kinds: duplicate name,
    unknown category, missing box2d, degenerate box, out-of-image box, unknown
    attribute value, missing image file, malformed frame, unreadable image, image size.
    """

    n_frames: int = 0
    n_labels: int = 0
    issues: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["name", "label_id", "kind", "detail"]))

    @property
    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.issues["kind"].value_counts().sort_index().items()}

    @property
    def ok(self) -> bool:
        return len(self.issues) == 0

    def add(self, rows: list[tuple[str, str, str, str]]) -> None:
        """Append issues found outside :func:`validate` (e.g. §1's image check)."""
        if rows:
            extra = pd.DataFrame(rows, columns=self.issues.columns)
            self.issues = pd.concat([self.issues, extra], ignore_index=True) if len(self.issues) else extra

    def summary(self) -> str:
        if self.ok:
            return f"{self.n_frames} frames, {self.n_labels} labels: no validation issues"
        parts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        return f"{self.n_frames} frames, {self.n_labels} labels: {len(self.issues)} issues ({parts})"


def validate(frames: list[Mapping[str, Any]], image_index: Mapping[str, Path] | None = None,
             image_wh: tuple[int, int] | Mapping[str, tuple[int, int]] | None = (1280, 720),
             tol: float = 1.0) -> ValidationReport:
    """Check every frame and label; never raises for bad records, reports them all.

    ``image_wh`` is the frame size in pixels (BDD: 1280x720), or a mapping frame name →
    (width, height) measured per image (frames absent from it skip the bounds check), or
    None to skip it. A box is out-of-image when it extends more than ``tol`` px past the
    frame. A coordinate that is missing is a ``missing box2d``; one that is null, not a
    number or not finite is a ``degenerate box``. Non-box 2018 entries (drivable area,
    lane) are not issues.
    """
    issues: list[tuple[str, str, str, str]] = []
    seen: set[str] = set()
    n_labels = 0
    for fr in frames:
        name = fr.get("name") if isinstance(fr, Mapping) else None
        if not isinstance(name, str) or not name:
            issues.append(("", "", "malformed frame", "frame without a name"))
            continue
        if name in seen:
            issues.append((name, "", "duplicate name", "frame name appears more than once"))
        seen.add(name)
        if image_index is not None and name not in image_index:
            issues.append((name, "", "missing image file", "no image with this name under the image sets"))
        W, H = (image_wh if isinstance(image_wh, tuple) else (image_wh or {}).get(name)) or (None, None)
        attrs = fr.get("attributes") or {}
        for a, allowed in ATTRIBUTE_VALUES.items():
            v = attrs.get(a)
            if v is not None and v not in allowed:
                issues.append((name, "", "unknown attribute value", f"{a}={v!r}"))
        for lb in fr.get("labels") or []:
            n_labels += 1
            issue = _label_issue(lb, W, H, tol)
            if issue is not None:
                issues.append((name, str(lb.get("id", "")), *issue))
    df = pd.DataFrame(issues, columns=["name", "label_id", "kind", "detail"])
    return ValidationReport(n_frames=len(frames), n_labels=n_labels, issues=df)


def _label_issue(lb: Mapping[str, Any], W: float | None, H: float | None, tol: float) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with one label, or None. Non-box 2018 entries are fine."""
    cat = lb.get("category")
    cls, _ = map_category(cat) if isinstance(cat, str) else (None, False)
    if cls is None:
        if cat in NON_BOX_CATEGORIES or (not lb.get("box2d") and lb.get("poly2d")):
            return None
        return "unknown category", repr(cat)
    box = lb.get("box2d")
    issue = box_issue(box)
    if issue is not None:
        return issue[0], (f"category {cat!r} without box2d" if issue[1] == "without box2d" else issue[1])
    x1, y1, x2, y2 = (float(box[k]) for k in ("x1", "y1", "x2", "y2"))
    if W is not None and (x1 < -tol or y1 < -tol or x2 > W + tol or y2 > H + tol):
        return "out-of-image box", f"({x1:.1f},{y1:.1f},{x2:.1f},{y2:.1f}) in {W}x{H}"
    return None


def image_coverage(frames: list[Mapping[str, Any]], image_index: Mapping[str, Path]) -> tuple[int, int]:
    """(frames with an image on disk, labelled frames). Raises when the overlap is zero."""
    have = sum(1 for fr in frames if fr["name"] in image_index)
    if frames and have == 0:
        raise FileNotFoundError(
            f"0 of {len(frames)} labelled frames have an image on disk ({len(image_index)} images indexed). "
            "The 10K image bundle and the det_20 labels overlap only partly: det_20 labels the 100K "
            f"images, so download '100K Images'.\n{DOWNLOAD_HINT}"
        )
    return have, len(frames)


def frames_from_boxes(names: Iterable[str], boxes: pd.DataFrame,
                      attributes: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Inverse of :func:`boxes_table` for writing: one BDD frame per name (empty labels allowed)."""
    by_name: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i, r in enumerate(boxes.itertuples(index=False)):
        if r.name not in by_name:
            continue
        lb: dict[str, Any] = {
            "id": str(i), "category": r.category,
            "attributes": {"crowd": bool(getattr(r, "crowd", False))},
            "box2d": {"x1": float(r.x1), "y1": float(r.y1), "x2": float(r.x2), "y2": float(r.y2)},
        }
        score = getattr(r, "score", np.nan)
        if score == score:  # not NaN
            lb["score"] = float(score)
        by_name[r.name].append(lb)
    attributes = attributes or {}
    return [{"name": n, "attributes": dict(attributes.get(n, {})), "labels": lbs} for n, lbs in by_name.items()]
