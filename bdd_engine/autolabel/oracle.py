"""The ``oracle`` labeler: the held-back ground truth ("send to human labelling").

An upper-bound control, never an auto-label: its runs carry ``is_oracle=True`` and
every export/quality table names it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from bdd_engine.autolabel.base import Labeler, LabelRun, blank_frame


class OracleLabeler(Labeler):
    """The held-back ground truth ("send to human labelling"): upper-bound control, never an auto-label.

    Labels are copied verbatim (ignore categories and crowd flags included, as a human
    vendor would return them) with ``score`` 1.0; runs carry ``is_oracle=True``.
    """

    name = "oracle"
    is_oracle = True

    def __init__(self, gt_frames: Sequence[Mapping[str, Any]]):
        self.gt = {fr["name"]: fr for fr in gt_frames}

    def label(self, frames, image_paths=None, progress: bool = True) -> LabelRun:
        t0 = time.perf_counter()
        out, failures = [], {}
        for fr in frames:
            blank = blank_frame(fr)
            gt = self.gt.get(fr["name"])
            if gt is None:
                failures[fr["name"]] = "no held-back ground truth for this frame"
            else:
                blank["labels"] = [dict(lb, attributes=dict(lb.get("attributes") or {}), score=1.0)
                                   for lb in gt.get("labels") or [] if lb.get("box2d")]
            out.append(blank)
        return LabelRun(labeler=self.name, frames=out, failures=failures, seconds=time.perf_counter() - t0,
                        is_oracle=True, model_info={"source": "held-back ground truth"})

    def _predict(self, images, paths, stats):  # pragma: no cover - label() is overridden
        raise NotImplementedError
