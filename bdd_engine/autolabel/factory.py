"""Build a labeler by name from explicit options (:func:`make_labeler`), and the small adapter
from a profile's ``label_*`` keys to those options (:func:`get_labeler`).

:func:`make_labeler` reads no config, like segment-anything's
``SamAutomaticMaskGenerator(model, points_per_side=32, ...)``: every option is a keyword
with its unit. Its defaults are the values ``profiles/default.yaml`` declares (a test
pins that they agree).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bdd_engine.autolabel.base import Labeler, project_path
from bdd_engine.autolabel.gsam2 import GroundedSam2Labeler
from bdd_engine.autolabel.oracle import OracleLabeler
from bdd_engine.autolabel.prompts import DEFAULT_PROMPT
from bdd_engine.autolabel.teacher import TeacherLabeler
from bdd_engine.env import setup_env

LABELERS = ("gsam2", "teacher", "oracle")

# make_labeler keyword -> profile key (profiles/default.yaml declares each key once, with its type).
PROFILE_KEYS: dict[str, str] = {
    "device": "device",
    "backend": "infer_backend",
    "precision": "infer_precision",
    "teacher_conf": "label_teacher_conf",
    "teacher_tta": "label_teacher_tta",
    "teacher_batch_size": "train_batch",
    "gdino_dir": "label_gsam2_gdino_dir",
    "sam_dir": "label_gsam2_sam_dir",
    "prompt": "label_gsam2_prompt",
    "class_prompts": "label_gsam2_class_prompts",
    "negative_prompts": "label_gsam2_negative_prompts",
    "prompt_mode": "label_gsam2_prompt_mode",
    "box_threshold": "label_gsam2_box_threshold",
    "text_threshold": "label_gsam2_text_threshold",
    "nms_iou": "label_gsam2_nms_iou",
    "max_dets": "label_gsam2_max_dets",
    "rider_overlap": "label_gsam2_rider_overlap",
    "refine": "label_gsam2_refine",
    "gsam2_batch_size": "label_gsam2_batch",
}


# ~90 lines only through its signature and docstring: one documented keyword per option, a 15-line body.
def make_labeler(
    name: str, *,
    device: str = "auto",
    backend: str = "torch",
    precision: str = "fp32",
    # -- teacher
    teacher_weights: str | os.PathLike | None = None,
    teacher_conf: float = 0.35,
    teacher_tta: bool = False,
    teacher_imgsz: int = 480,
    teacher_batch_size: int = 16,
    # -- oracle
    gt_frames: Sequence[Mapping[str, Any]] | None = None,
    # -- gsam2
    gdino_dir: str | os.PathLike | None = None,
    sam_dir: str | os.PathLike | None = None,
    prompt: str = DEFAULT_PROMPT,
    class_prompts: Mapping[str, Sequence[str]] | None = None,
    negative_prompts: Sequence[str] | None = None,
    phrase_map: Mapping[str, str] | None = None,
    prompt_mode: str = "joint",
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    nms_iou: float = 0.7,
    max_dets: int = 100,
    rider_overlap: float = 0.3,
    refine: bool = True,
    min_mask_pixels: int = 4,
    gsam2_batch_size: int = 4,
) -> Labeler:
    """The labeler ``name`` (``gsam2`` | ``teacher`` | ``oracle``); options of the other labelers are ignored.

    Every labeler returns labels as BDD ``box2d`` = ``xyxy`` pixels of the original image
    and a ``score`` in [0, 1].

    * ``device``: ``auto`` (first CUDA GPU, else CPU) | ``cpu`` | ``0``, ``1``... (Ultralytics' spelling).
    * ``backend`` / ``precision``: the teacher's inference runtime, ``torch`` | ``onnx`` | ``openvino`` |
      ``auto`` and ``fp32`` | ``bf16`` (:func:`bdd_engine.backends.load_detector`).

    teacher (any Ultralytics detector through ``train.predict``):

    * ``teacher_weights``: the ``.pt`` (required; relative = to the project root).
    * ``teacher_conf``: keep boxes with confidence >= this, in [0, 1].
    * ``teacher_tta``: test-time augmentation (flips + scales).
    * ``teacher_imgsz``: inference size in px (letterboxed long side).
    * ``teacher_batch_size``: images per forward.

    oracle (the held-back ground truth, ``is_oracle=True``):

    * ``gt_frames``: BDD frames holding the ground truth (required).

    gsam2 (Grounding DINO boxes, SAM 2.1 masks; local weights only):

    * ``gdino_dir`` / ``sam_dir``: ``save_pretrained`` folders (None = ``weights/grounding-dino-tiny``
      / ``weights/sam2.1-hiera-tiny``; relative = to the project root).
    * ``prompt``: phrases separated by ``" . "``; each must map to a BDD class.
    * ``class_prompts``: extra ``{BDD class: [phrases]}``; ``phrase_map``: extra ``{phrase: class}``.
    * ``negative_prompts``: phrases whose boxes compete, then are dropped (None = none).
    * ``prompt_mode``: ``joint`` (one forward) | ``per_class`` (one forward per class).
    * ``box_threshold``: phrase score >= this, in [0, 1]; ``text_threshold``: mean
      phrase-token probability >= this, in [0, 1].
    * ``nms_iou``: class-agnostic NMS IoU in [0, 1] (continuous coordinates, no +1).
    * ``max_dets``: boxes kept per image, best first.
    * ``rider_overlap``: a pedestrian box whose area lies >= this share (intersection /
      pedestrian area, [0, 1]) inside a bicycle/motorcycle box becomes ``rider``.
    * ``refine``: tighten each box to its SAM 2.1 mask; ``min_mask_pixels``: a mask with fewer
      pixels inside the box keeps the box as it is.
    * ``gsam2_batch_size``: images per Grounding DINO forward.
    """
    make_args = {k: v for k, v in locals().items() if k != "gt_frames"}  # rebuilds it in a Ray actor
    setup_env()  # offline-safe hub/Ultralytics settings before transformers or ultralytics load
    if name == "gsam2":
        labeler: Labeler = GroundedSam2Labeler(
            gdino_dir, sam_dir, prompt=prompt, class_prompts=class_prompts, negative_prompts=negative_prompts,
            phrase_map=phrase_map, prompt_mode=prompt_mode, box_threshold=box_threshold,
            text_threshold=text_threshold, nms_iou=nms_iou, max_dets=max_dets, rider_overlap=rider_overlap,
            refine=refine, min_mask_pixels=min_mask_pixels, batch_size=gsam2_batch_size, device=device)
    elif name == "teacher":
        if teacher_weights is None:
            raise ValueError("teacher labeler needs teacher_weights= (the iter0 best.pt from §4)")
        labeler = TeacherLabeler(teacher_weights, conf=teacher_conf, tta=teacher_tta, imgsz=teacher_imgsz,
                                 batch_size=teacher_batch_size, device=device, backend=backend, precision=precision)
    elif name == "oracle":
        if gt_frames is None:
            raise ValueError("oracle labeler needs gt_frames= (the mining pool's held-back labels)")
        return OracleLabeler(gt_frames)  # held-back labels, no model: never shipped to Ray
    else:
        raise ValueError(f"unknown labeler {name!r}; choose gsam2 | teacher | oracle")
    labeler.make_args = make_args
    return labeler


def labeler_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A profile's keys as :func:`make_labeler` keywords. No defaults here: every key must be in
    ``cfg`` (``profiles/default.yaml`` declares each); a missing one raises KeyError naming it."""
    options = {kw: cfg[key] for kw, key in PROFILE_KEYS.items()}
    options["teacher_imgsz"] = cfg["label_teacher_imgsz"] or cfg["train_imgsz"]  # the profile's null = train_imgsz
    return options


def teacher_weights(cfg: Mapping[str, Any], start_weights: str | os.PathLike | None) -> str | os.PathLike | None:
    """The ``teacher`` labeler's weights: the profile's ``label_teacher_weights`` (demo: the shipped
    SYNTHETIC teacher, a stand-in for a foundation model) or, when that is null, ``start_weights``
    (the turn's start model: the teacher then misses what the student misses)."""
    return cfg["label_teacher_weights"] or start_weights


def labeler_input_files(cfg: Mapping[str, Any]) -> list[Path]:
    """Files outside outputs/ the profile's labeler reads (a section records their hashes):
    the ``label_teacher_weights`` .pt when the labeler is ``teacher`` and that key is set."""
    if cfg["label_labeler"] == "teacher" and cfg["label_teacher_weights"]:
        return [project_path(cfg["label_teacher_weights"])]
    return []


def get_labeler(cfg: Mapping[str, Any], name: str | None = None, start_weights: str | os.PathLike | None = None,
                **extra: Any) -> Labeler:
    """Adapter for the section runner: ``make_labeler(name or cfg["label_labeler"], **labeler_options(cfg), **extra)``.

    ``start_weights``: the turn's start model, the teacher's weights when ``label_teacher_weights``
    is null (:func:`teacher_weights`). ``extra``: :func:`make_labeler` keywords that do not come
    from the profile (``gt_frames=``) or that override it (an explicit ``teacher_weights=`` wins)."""
    options = labeler_options(cfg)
    weights = teacher_weights(cfg, start_weights)
    if weights is not None:
        options["teacher_weights"] = weights
    return make_labeler(name or cfg["label_labeler"], **{**options, **extra})
