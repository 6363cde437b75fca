"""The ``teacher`` labeler: model-assisted labelling with any Ultralytics weights (default: the iter0 model).

Predictions come from :func:`bdd_engine.train.predict` (the same one-pass prediction
§5 evaluates), kept above a stricter confidence than evaluation's. Boxes are ``xyxy``
pixels; scores are the detector's confidences in [0, 1].
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bdd_engine import train
from bdd_engine.autolabel.base import Labeler, LabelRun, load_rgb, project_path
from bdd_engine.bdd import CLASS_ID


class TeacherLabeler(Labeler):
    """Model-assisted labelling with any Ultralytics weights via :func:`bdd_engine.train.predict`.

    ``weights``: a ``.pt`` (relative = to the project root). ``conf``: minimum detector
    confidence in [0, 1], stricter than evaluation's (labels, not a PR curve). ``tta``
    passes ``augment=True`` (flip + scales) when ``train.predict`` supports it. ``imgsz``:
    inference size in px (letterboxed long side); ``batch_size``: images per forward;
    ``device``: ``auto`` | ``cpu`` | ``0``... (Ultralytics' spelling); ``backend`` / ``precision``:
    :func:`bdd_engine.backends.load_detector` (``torch`` | ``onnx`` | ``openvino`` | ``auto``; ``fp32`` | ``bf16``).
    """

    name = "teacher"

    def __init__(self, weights: str | os.PathLike, conf: float = 0.35, tta: bool = False, imgsz: int = 480,
                 batch_size: int = 16, device: str = "auto", backend: str = "torch", precision: str = "fp32"):
        self.weights = project_path(weights)
        if not self.weights.exists():
            raise FileNotFoundError(
                f"teacher weights not found: {self.weights} (default: the iter0 model from §4 — run it first, "
                "or pass any Ultralytics .pt)")
        self.conf, self.tta, self.imgsz, self.batch_size = float(conf), bool(tta), int(imgsz), int(batch_size)
        self.device, self.backend, self.precision = device, str(backend), str(precision)
        self._predict_fn = train.predict  # looked up now, so a test can swap train.predict
        if self.tta and "augment" not in inspect.signature(train.predict).parameters:
            raise ValueError("label_teacher_tta needs bdd_engine.train.predict(..., augment=...) — not available")

    def model_info(self) -> dict[str, str]:
        info = {"weights": str(self.weights), "conf": str(self.conf), "tta": str(self.tta)}
        if (self.backend, self.precision) != ("torch", "fp32"):  # torch/fp32 runs keep the info (LABEL.json) they had
            info.update(backend=self.backend, precision=self.precision)
        return info

    def _run(self, run: LabelRun, paths: list[Path], progress: bool) -> None:
        """Check every image decodes (a corrupt file is a counted failure, not a crash inside
        Ultralytics), then one ``train.predict`` call over the rest: the model loads once."""
        ok = []
        for i, p in enumerate(tqdm(paths, desc="label[teacher] check images", disable=not progress, unit="img")):
            try:
                load_rgb(p)
                ok.append(i)
            except Exception as e:  # noqa: BLE001
                run.failures[run.frames[i]["name"]] = f"unreadable image: {type(e).__name__}: {e}"
        if ok:
            self._progress = progress
            self._predict_into(run, ok, None, paths)

    def _predict(self, images, paths, stats):
        kw = {"augment": True} if self.tta else {}
        if (self.backend, self.precision) != ("torch", "fp32"):  # a swapped-in train.predict need not know them
            kw.update(backend=self.backend, precision=self.precision)
        frames = self._predict_fn(self.weights, [str(p) for p in paths], conf=self.conf, imgsz=self.imgsz,
                                  batch=self.batch_size, device=self.device,
                                  progress=getattr(self, "_progress", False) and len(paths) > 1, **kw)
        if [fr["name"] for fr in frames] != [Path(p).name for p in paths]:
            raise RuntimeError(f"train.predict returned {len(frames)} frames that do not match the {len(paths)} images")
        out = []
        for fr in frames:
            labs = []
            for lb in fr.get("labels") or []:
                if lb.get("score", 1.0) < self.conf or lb.get("category") not in CLASS_ID:
                    stats["teacher labels below conf / not a class"] += 1
                    continue
                b = lb["box2d"]
                labs.append((lb["category"], np.array([b["x1"], b["y1"], b["x2"], b["y2"]], float), float(lb["score"])))
            out.append(labs)
        return out
