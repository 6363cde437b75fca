"""BDD boxes → FiftyOne labels.

BDD stores **xyxy pixels** (``bdd.boxes_table``: columns x1, y1, x2, y2); FiftyOne
stores **relative [x, y, w, h] in [0, 1], top-left origin**. Widths use the same pixel
convention as :mod:`bdd_engine.evaluate` (``w = x2 - x1 + PIXEL_SHIFT``) so that
FiftyOne's COCO evaluation and ours see identical IoUs.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from bdd_engine.bdd import boxes_table
from bdd_engine.evaluate import PIXEL_SHIFT

log = logging.getLogger(__name__)


def rel_boxes(xyxy: np.ndarray, width: float, height: float, shift: float | None = None) -> np.ndarray:
    """Pixel xyxy (N, 4) → FiftyOne relative [x, y, w, h] (N, 4), w = (x2-x1+shift)/W.

    ``width``/``height``: the image size in pixels; ``shift`` defaults to
    ``evaluate.PIXEL_SHIFT`` (BDD's +1 pixel width rule).
    """
    shift = PIXEL_SHIFT if shift is None else shift
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    out = np.empty_like(xyxy)
    out[:, 0] = xyxy[:, 0] / width
    out[:, 1] = xyxy[:, 1] / height
    out[:, 2] = (xyxy[:, 2] - xyxy[:, 0] + shift) / width
    out[:, 3] = (xyxy[:, 3] - xyxy[:, 1] + shift) / height
    return out


def detections(boxes: pd.DataFrame | None, width: int, height: int, with_score: bool,
               extra: Callable[[Any], dict] | None = None):
    """Box-table rows of one frame → ``fo.Detections`` (label = official category).

    Args:
        boxes: rows of ``bdd.boxes_table`` (xyxy pixels, crowd, ignore[, score]); None or
            empty → no detections.
        width, height: the frame's image size in pixels (for the relative [x, y, w, h]).
        with_score: copy ``score`` into ``confidence`` (predictions, auto-labels).
        extra: row → extra label attributes (e.g. the router bucket).
    """
    import fiftyone as fo  # heavy optional dependency (~3 s): imported on use

    if boxes is None or len(boxes) == 0:
        return fo.Detections(detections=[])
    rel = rel_boxes(boxes[["x1", "y1", "x2", "y2"]].to_numpy(), width, height)
    dets = []
    for row, bb in zip(boxes.itertuples(index=False), rel):
        crowd, ignore = bool(getattr(row, "crowd", False)), bool(getattr(row, "ignore", False))
        kw: dict[str, Any] = dict(label=str(row.category), bounding_box=[float(v) for v in bb],
                                  crowd=crowd, ignore=ignore,
                                  # BDD: crowd boxes and ignore-mapped boxes are both
                                  # COCO "iscrowd" regions (a match is neither TP nor FP)
                                  iscrowd=crowd or ignore)
        if with_score:
            kw["confidence"] = float(row.score)
        if extra is not None:
            kw.update(extra(row))
        dets.append(fo.Detection(**kw))
    return fo.Detections(detections=dets)


def valid_boxes(frames: Sequence[Mapping[str, Any]]) -> tuple[pd.DataFrame, int]:
    """``bdd.boxes_table`` of ``frames`` (xyxy pixels) and how many boxes it left out for their
    coordinates (``bdd.box_issue``: missing, null, NaN, inverted or zero-size; FiftyOne's spatial
    index rejects inverted ones); callers record the count."""
    counts: Counter = Counter()
    table = boxes_table(list(frames), counts)
    return table, int(counts["degenerate box"] + counts["missing box2d"])


def group_by_name(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Box-table rows per frame name."""
    return {str(k): g for k, g in table.groupby("name", sort=False)} if len(table) else {}


def boxes_by_name(frames: Sequence[Mapping[str, Any]]) -> tuple[dict[str, pd.DataFrame], int]:
    """``bdd.boxes_table`` (xyxy pixels) per frame name, plus the number of degenerate boxes dropped."""
    table, dropped = valid_boxes(frames)
    if dropped:
        log.warning("explorer: dropped %d box(es) with missing, non-finite or inverted coordinates", dropped)
    return group_by_name(table), dropped
