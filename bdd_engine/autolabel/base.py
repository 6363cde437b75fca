"""The labeler interface: :class:`Labeler` (frames + image paths in) and :class:`LabelRun` (what comes out).

Failure accounting: a frame the labeler cannot read or process keeps its place in
``LabelRun.frames`` (with ``labels: []``) and its reason in ``LabelRun.failures``, so
failures never leave the quality denominators. Boxes are ``xyxy`` pixels of the
original image (BDD ``box2d``); every label of a run carries a ``score`` in [0, 1].
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from bdd_engine import executor as executors
from bdd_engine import weights
from bdd_engine.env import PROJECT_ROOT

WeightsMissingError = weights.MissingWeightsError  # one error type for every absent model


# ----------------------------------------------------------------------------- run record
@dataclass
class LabelRun:
    """What a labeler produced for a list of frames.

    ``frames``: one BDD frame per input frame, input order; labels carry ``score``.
    A failed frame is present with ``labels: []`` and listed in ``failures`` (name ->
    reason). ``seconds`` is wall-clock for the whole call. ``stats`` counts per-stage
    events (negative-prompt boxes dropped, rider relabels, empty masks, empty frames...).
    """

    labeler: str
    frames: list[dict[str, Any]]
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    is_oracle: bool = False
    stats: Counter = field(default_factory=Counter)
    model_info: dict[str, str] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def n_labels(self) -> int:
        return sum(len(fr["labels"]) for fr in self.frames)

    @property
    def n_empty(self) -> int:
        """Frames processed without failure that got no label at all."""
        return sum(1 for fr in self.frames if not fr["labels"] and fr["name"] not in self.failures)

    def ok_frames(self) -> list[dict[str, Any]]:
        """Frames that were labelled (failed ones excluded — e.g. for a training export)."""
        return [fr for fr in self.frames if fr["name"] not in self.failures]

    def summary(self) -> str:
        kind = "ORACLE (held-back GT)" if self.is_oracle else "auto-labels"
        fails = ", ".join(f"{n}: {r}" for n, r in list(self.failures.items())[:3])
        extra = f" [{fails}{' ...' if self.n_failed > 3 else ''}]" if self.failures else ""
        return (f"{self.labeler} ({kind}): {self.n_frames} frames, {self.n_labels} labels, "
                f"{self.n_failed} failed{extra}, {self.n_empty} empty, {self.seconds:.1f} s")


def blank_frame(frame: Mapping[str, Any]) -> dict[str, Any]:
    """A frame's identity without its labels (auto-labelers must never see GT)."""
    out = {"name": frame["name"], "attributes": dict(frame.get("attributes") or {})}
    if "timestamp" in frame:
        out["timestamp"] = frame["timestamp"]
    out["labels"] = []
    return out


def make_label(i: int, category: str, box: Sequence[float], score: float) -> dict[str, Any]:
    """One BDD label: ``box`` is ``xyxy`` pixels, ``score`` the labeler's confidence."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"id": str(i), "category": category,
            "attributes": {"occluded": False, "truncated": False, "crowd": False},
            "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "score": float(score)}


def load_rgb(path: str | os.PathLike):
    """Decode an image fully (PIL, RGB). Raises on a missing/corrupt/truncated file."""
    with Image.open(path) as im:
        im.load()  # decode now: a truncated JPEG must fail here, not inside a model
        return im.convert("RGB")


def project_path(p: str | os.PathLike) -> Path:
    """``~`` expanded; a relative path is relative to the project root (where the profiles' paths start)."""
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else PROJECT_ROOT / p


# ----------------------------------------------------------------------------- interface
class Labeler(ABC):
    """Frames + image paths in -> :class:`LabelRun` out. Subclasses implement :meth:`_predict`."""

    name: str = "labeler"
    is_oracle: bool = False
    batch_size: int = 4
    make_args: dict[str, Any] | None = None  # make_labeler's keywords that rebuild it (a Ray actor); None: local only
    CHUNK_BATCHES = 16  # a Ray task labels this many batches (a whole multiple: the same batch-mates as locally)

    def label(self, frames: Sequence[Mapping[str, Any]], image_paths: Sequence[str | os.PathLike],
              progress: bool = True, executor: executors.Executor = executors.LOCAL) -> LabelRun:
        """Label ``frames`` (only ``name``/``attributes``/``timestamp`` are read) from ``image_paths`` (aligned).

        Unreadable images and frames whose prediction raises are counted as failures;
        a batch that raises is retried frame by frame so one bad frame fails alone.
        ``executor``: ``ray`` labels chunks of ``CHUNK_BATCHES`` batches in actors that rebuild this
        labeler from ``make_args`` (:class:`LabelBatch`) and merges them in input order; a labeler
        without ``make_args`` (the oracle) always runs here.
        """
        if len(frames) != len(image_paths):
            raise ValueError(f"{len(frames)} frames but {len(image_paths)} image paths")
        names = [fr["name"] for fr in frames]
        if len(set(names)) != len(names):
            raise ValueError("duplicate frame names in the input; a label run is keyed by name")
        if executor.is_local or self.make_args is None:
            return self._label(frames, image_paths, progress)
        t0 = time.perf_counter()
        run = LabelRun(labeler=self.name, frames=[], is_oracle=self.is_oracle, model_info=self.model_info())
        spans = executors.chunks(len(frames), self.batch_size * self.CHUNK_BATCHES)
        outs = executors.run(LabelBatch, [executors.take({"frame": frames, "path": [str(p) for p in image_paths]}, r)
                                          for r in spans], executor=executor, stage_kwargs=self.make_args,
                             name=f"label-{self.name}")
        for out in tqdm(outs, total=len(spans), desc=f"label[{self.name}] on ray", disable=not progress, unit="chunk"):
            run.frames += list(out["frame"])
            run.failures.update({fr["name"]: e for fr, e in zip(out["frame"], out["error"]) if e})
            for st in out["stats"]:
                run.stats.update(st)
        run.seconds = time.perf_counter() - t0
        return run

    def _label(self, frames: Sequence[Mapping[str, Any]], image_paths: Sequence[str | os.PathLike],
               progress: bool) -> LabelRun:
        """:meth:`label` in this process."""
        run = LabelRun(labeler=self.name, frames=[blank_frame(fr) for fr in frames], is_oracle=self.is_oracle,
                       model_info=self.model_info())
        t0 = time.perf_counter()
        self._run(run, [Path(p) for p in image_paths], progress)
        run.seconds = time.perf_counter() - t0
        return run

    def _run(self, run: LabelRun, paths: list[Path], progress: bool) -> None:
        """Default driver: decode a batch of images, predict it, fill ``run`` in place."""
        idx = list(range(len(paths)))
        batches = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        for batch in tqdm(batches, desc=f"label[{self.name}]", disable=not progress, unit="batch"):
            ready = []
            for i in batch:
                try:
                    ready.append((i, load_rgb(paths[i])))
                except Exception as e:  # noqa: BLE001 - any decode error is a counted failure
                    run.failures[run.frames[i]["name"]] = f"unreadable image: {type(e).__name__}: {e}"
            if ready:
                self._predict_into(run, [i for i, _ in ready], [im for _, im in ready], paths)

    def _predict_into(self, run: LabelRun, idx: list[int], images: list | None, paths: list[Path]) -> None:
        """Predict frames ``idx`` together; if that raises, one by one, so a bad frame fails alone.
        Stats go to a scratch Counter per attempt so a failed batch is not counted twice."""
        ims = images if images is not None else [None] * len(idx)
        try:
            st: Counter = Counter()
            results = self._predict(ims, [paths[i] for i in idx], st)
            run.stats.update(st)
        except Exception:  # noqa: BLE001 - isolate the failing frame(s)
            results = []
            for i, im in zip(idx, ims):
                try:
                    st = Counter()
                    results.extend(self._predict([im], [paths[i]], st))
                    run.stats.update(st)
                except Exception as e:  # noqa: BLE001
                    run.failures[run.frames[i]["name"]] = f"labeler error: {type(e).__name__}: {e}"
                    results.append(None)
        for i, labels in zip(idx, results):
            if labels is None:
                continue
            run.frames[i]["labels"] = [make_label(k, c, b, s) for k, (c, b, s) in enumerate(labels)]
            if not labels:
                run.stats["empty frames"] += 1

    def model_info(self) -> dict[str, str]:
        return {}

    @abstractmethod
    def _predict(self, images: list, paths: list[Path], stats: Counter) -> list[list[tuple[str, np.ndarray, float]]]:
        """One list of (category, xyxy pixel box, score) per image."""


class LabelBatch:
    """The auto-label stage as a batch callable: the labeler is built once (``make_labeler``
    keywords), a batch ``{"frame": BDD frames, "path": image paths}`` in, ``{"frame": labelled
    frames, "error": failure reason or "", "stats": the batch's stage counts (first row)}`` out."""

    def __init__(self, **make_args: Any):
        from bdd_engine.autolabel.factory import make_labeler  # the factory imports this module

        self.labeler = make_labeler(**make_args)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = self.labeler._label(list(batch["frame"]), list(batch["path"]), progress=False)
        n = len(run.frames)
        frames, stats = np.empty(n, dtype=object), np.empty(n, dtype=object)
        frames[:] = run.frames
        stats[:] = [dict(run.stats)] + [{}] * (n - 1)
        errors = np.array([run.failures.get(fr["name"], "") for fr in run.frames], dtype=object)
        return {"frame": frames, "error": errors, "stats": stats}
