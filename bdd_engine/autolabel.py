"""Auto-label mined frames: one :class:`Labeler` interface, three labelers, honest quality.

Labelers (``get_labeler(cfg, name)``), all ``label(frames, image_paths) -> LabelRun``:

* ``gsam2``   — Grounding DINO proposes boxes from a text prompt, SAM 2.1 turns each box
  into a mask and the box is tightened to the mask (transformers' own classes; weights
  only from local folders under ``weights/``, filled by ``./setup.sh --weights``).
* ``teacher`` — any Ultralytics weights (default: the iter0 model) through
  :func:`bdd_engine.train.predict`, with a stricter confidence and optional TTA.
* ``oracle``  — the held-back ground truth of the given frames ("send to human
  labelling"); its runs carry ``is_oracle=True`` and every export/quality table names it.

Then: :func:`label_quality` (P/R at IoU 0.5 per class, all frames + seeded spot check,
classes most often missed, confusions; matching is ``evaluate.build_cache``'s),
:func:`route` / :func:`router_table` (accept / review / discard by score, precision per
bucket), exports (YOLO via ``bdd_engine.yolo``, COCO JSON, Label Studio import with
pre-annotations), :func:`cost_table`, and :func:`write_outputs`, which writes all of it
for one run (what §7 calls).

Failure accounting: a frame the labeler cannot read or process keeps its place in
``LabelRun.frames`` (with ``labels: []``) and its reason in ``LabelRun.failures``; quality
tables count its ground truth as missed, so failures never leave the denominators.

Boxes are xyxy pixels of the original image everywhere (BDD ``box2d``).
"""

from __future__ import annotations

import inspect
import os
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from bdd_engine.bdd import CLASS_ID, CLASSES, boxes_table
from bdd_engine.checkpoint import atomic_write_json, atomic_write_text
from bdd_engine import weights
from bdd_engine.env import PROJECT_ROOT
from bdd_engine.images import image_size

# ----------------------------------------------------------------------------- constants
SETUP_HINT = "./setup.sh --weights"
# Local HF `save_pretrained` folders from bdd_engine.weights' registry (setup.sh fills them
# when online): weights/grounding-dino-tiny (IDEA-Research/grounding-dino-tiny) and
# weights/sam2.1-hiera-tiny (facebook/sam2.1-hiera-tiny; a `sam2_video` checkpoint whose
# image-path weights Sam2Model loads, with a Sam2VideoProcessor — both handled below).
GDINO_DIR = weights.path("grounding-dino")
SAM2_DIR = weights.path("sam2")

DEFAULT_PROMPT = (
    "car . truck . bus . pedestrian . bicycle . motorcycle . traffic light . traffic sign . train . rider"
)
# Explicit phrase -> BDD class. Grounding DINO answers in the prompt's words, so every
# prompt phrase must resolve here (or via class_prompts / negative_prompts), never by guess.
PHRASE_TO_CLASS: dict[str, str] = {
    "pedestrian": "pedestrian", "person": "pedestrian", "people": "pedestrian", "man": "pedestrian",
    "woman": "pedestrian", "child": "pedestrian",
    "rider": "rider", "cyclist": "rider", "motorcyclist": "rider",
    "car": "car", "van": "car", "suv": "car", "taxi": "car",
    "truck": "truck", "pickup truck": "truck", "lorry": "truck",
    "bus": "bus",
    "train": "train", "tram": "train", "streetcar": "train",
    "motorcycle": "motorcycle", "motorbike": "motorcycle", "scooter": "motorcycle",
    "bicycle": "bicycle", "bike": "bicycle",
    "traffic light": "traffic light", "traffic signal": "traffic light",
    "traffic sign": "traffic sign", "road sign": "traffic sign", "stop sign": "traffic sign",
}
RIDEABLE = ("bicycle", "motorcycle")
# Grounding DINO's phrase delimiter in BERT's vocabulary ("."), see facts.md.
_DOT_ID = 1012

LABEL_STUDIO_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <RectangleLabels name="label" toName="image">
{labels}
  </RectangleLabels>
</View>
"""


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


def _blank(frame: Mapping[str, Any]) -> dict[str, Any]:
    """A frame's identity without its labels (auto-labelers must never see GT)."""
    out = {"name": frame["name"], "attributes": dict(frame.get("attributes") or {})}
    if "timestamp" in frame:
        out["timestamp"] = frame["timestamp"]
    out["labels"] = []
    return out


def _make_label(i: int, category: str, box: Sequence[float], score: float) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"id": str(i), "category": category,
            "attributes": {"occluded": False, "truncated": False, "crowd": False},
            "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "score": float(score)}


def load_rgb(path: str | os.PathLike):
    """Decode an image fully (PIL, RGB). Raises on a missing/corrupt/truncated file."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decode now: a truncated JPEG must fail here, not inside a model
        return im.convert("RGB")


# ----------------------------------------------------------------------------- interface
class Labeler(ABC):
    """Frames + image paths in -> :class:`LabelRun` out. Subclasses implement :meth:`_predict`."""

    name: str = "labeler"
    is_oracle: bool = False
    batch_size: int = 4

    def label(self, frames: Sequence[Mapping[str, Any]], image_paths: Sequence[str | os.PathLike],
              progress: bool = True) -> LabelRun:
        """Label ``frames`` (only ``name``/``attributes``/``timestamp`` are read) from ``image_paths`` (aligned).

        Unreadable images and frames whose prediction raises are counted as failures;
        a batch that raises is retried frame by frame so one bad frame fails alone.
        """
        if len(frames) != len(image_paths):
            raise ValueError(f"{len(frames)} frames but {len(image_paths)} image paths")
        names = [fr["name"] for fr in frames]
        if len(set(names)) != len(names):
            raise ValueError("duplicate frame names in the input; a label run is keyed by name")
        run = LabelRun(labeler=self.name, frames=[_blank(fr) for fr in frames], is_oracle=self.is_oracle,
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
            run.frames[i]["labels"] = [_make_label(k, c, b, s) for k, (c, b, s) in enumerate(labels)]
            if not labels:
                run.stats["empty frames"] += 1

    def model_info(self) -> dict[str, str]:
        return {}

    @abstractmethod
    def _predict(self, images: list, paths: list[Path], stats: Counter) -> list[list[tuple[str, np.ndarray, float]]]:
        """One list of (category, xyxy pixel box, score) per image."""


# ----------------------------------------------------------------------------- gsam2 pieces
def parse_prompt(prompt: str) -> list[str]:
    """``"car . traffic light ."`` -> ``["car", "traffic light"]`` (lower-case, stripped, no empties)."""
    return [p.strip().lower() for p in prompt.split(".") if p.strip()]


def build_phrase_map(prompt: str, class_prompts: Mapping[str, Sequence[str]] | None = None,
                     negative_prompts: Sequence[str] = (),
                     phrase_map: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Every phrase the model will see -> BDD class (None = negative phrase, dropped).

    Phrases come from ``prompt`` plus ``class_prompts`` ({class: [phrases]}, which also
    define their mapping) plus ``negative_prompts`` (phrases that compete for boxes so
    e.g. a billboard is not called a traffic sign, then get dropped). A phrase without an
    explicit class raises instead of being guessed.
    """
    mapping = dict(PHRASE_TO_CLASS)
    mapping.update({k.lower(): v for k, v in (phrase_map or {}).items()})
    out: dict[str, str | None] = {}
    for cls, phrases in (class_prompts or {}).items():
        if cls not in CLASS_ID:
            raise ValueError(f"class_prompts key {cls!r} is not a BDD class {CLASSES}")
        for p in phrases:
            out[p.strip().lower()] = cls
    for p in parse_prompt(prompt):
        if p in out:
            continue
        if p not in mapping:
            raise ValueError(
                f"prompt phrase {p!r} has no BDD class: add it to label_gsam2_class_prompts "
                f"({{class: [phrases]}}) or label_gsam2_negative_prompts")
        if mapping[p] not in CLASS_ID:
            raise ValueError(f"phrase {p!r} maps to {mapping[p]!r}, not a BDD class")
        out[p] = mapping[p]
    for p in negative_prompts:
        p = p.strip().lower()
        if out.get(p):
            raise ValueError(f"phrase {p!r} is both a class prompt ({out[p]}) and a negative prompt")
        out[p] = None
    return out


def prompt_groups(phrase_map: Mapping[str, str | None], mode: str = "joint") -> list[list[str]]:
    """Phrase lists, one per model forward.

    ``joint``: everything in one prompt (fast). ``per_class``: one prompt per class
    (+ all negatives), because long multi-class prompts lose objects that single-class
    prompts find (facts.md) — at K times the cost.
    """
    negatives = [p for p, c in phrase_map.items() if c is None]
    if mode == "joint":
        return [list(phrase_map)]
    if mode != "per_class":
        raise ValueError(f"label_gsam2_prompt_mode must be 'joint' or 'per_class', got {mode!r}")
    by_cls: dict[str, list[str]] = {}
    for p, c in phrase_map.items():
        if c is not None:
            by_cls.setdefault(c, []).append(p)
    return [phrases + negatives for phrases in by_cls.values()]


def prompt_text(phrases: Sequence[str]) -> str:
    """Grounding DINO's expected format: lower-case phrases separated and ended by ' .'."""
    return " . ".join(phrases) + " ."


def phrase_spans(input_ids: Sequence[int], n_phrases: int) -> list[list[int]]:
    """Token positions of each phrase in ``[CLS] p1 . p2 . ... [SEP]`` (dot id 1012).

    Raises if the tokenizer split the prompt into a different number of phrases (e.g. a
    phrase that itself contains a '.' or tokenises to nothing).
    """
    spans: list[list[int]] = []
    cur: list[int] = []
    for pos, tok in enumerate(list(input_ids)[1:], start=1):
        if tok == 102:  # [SEP]
            break
        if tok == _DOT_ID:
            if cur:
                spans.append(cur)
            cur = []
        else:
            cur.append(pos)
    if cur:
        spans.append(cur)
    if len(spans) != n_phrases:
        raise ValueError(f"prompt tokenised into {len(spans)} phrases, expected {n_phrases}: ids {list(input_ids)}")
    return spans


def assign_phrases(probs, spans: Sequence[Sequence[int]], box_threshold: float, text_threshold: float):
    """Per query: the best phrase, its score, and whether it passes both thresholds.

    ``probs``: (Q, T) sigmoid token probabilities of one image. Phrase score = max token
    probability inside the phrase's span (Grounding DINO's box score restricted to one
    phrase); the winning phrase must also have a **mean** span probability >=
    ``text_threshold``, so "light" alone firing on a street lamp does not become
    "traffic light". Assigning by span instead of decoding the thresholded tokens
    (``post_process_grounded_object_detection``'s ``text_labels``) avoids merged or partial
    phrases such as "car truck" or "traffic".

    Returns (keep_idx (K,), phrase_idx (K,), scores (K,)) as torch tensors.
    """
    import torch

    mx = torch.stack([probs[:, list(s)].max(dim=1).values for s in spans], dim=1)    # (Q, P)
    mean = torch.stack([probs[:, list(s)].mean(dim=1) for s in spans], dim=1)        # (Q, P)
    score, best = mx.max(dim=1)
    ok = (score >= box_threshold) & (mean.gather(1, best[:, None])[:, 0] >= text_threshold)
    keep = ok.nonzero(as_tuple=True)[0]
    return keep, best[keep], score[keep]


def tighten_to_mask(box: Sequence[float], mask: np.ndarray, min_pixels: int = 4) -> tuple[np.ndarray, bool]:
    """Shrink an xyxy pixel box to the extent of the mask pixels inside it.

    ``mask``: (H, W) bool at image resolution; pixel (r, c) covers [c, c+1) x [r, r+1).
    Only pixels inside the box count and the result never grows past the box: SAM masks
    that leak onto road or sky must not inflate a label. Fewer than ``min_pixels`` mask
    pixels -> the box is returned unchanged with ``False`` (counted as "empty mask").
    """
    h, w = mask.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    c0, r0 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
    c1, r1 = min(int(np.ceil(x2)), w), min(int(np.ceil(y2)), h)
    sub = mask[r0:r1, c0:c1]
    if sub.sum() < min_pixels:
        return np.array([x1, y1, x2, y2], dtype=float), False
    rows = np.flatnonzero(sub.any(axis=1))
    cols = np.flatnonzero(sub.any(axis=0))
    tight = np.array([c0 + cols[0], r0 + rows[0], c0 + cols[-1] + 1, r0 + rows[-1] + 1], dtype=float)
    tight = np.array([max(tight[0], x1), max(tight[1], y1), min(tight[2], x2), min(tight[3], y2)])
    return tight, True


def apply_rider_rule(categories: list[str], boxes: np.ndarray, overlap: float) -> tuple[list[str], int]:
    """A pedestrian box whose area lies >= ``overlap`` inside a bicycle/motorcycle box becomes ``rider``.

    BDD's rider is a person on a bike/motorcycle, while a grounding model calls them
    "person". Overlap is intersection / pedestrian-box area. Returns (categories, n changed).
    """
    cats = list(categories)
    bikes = [j for j, c in enumerate(cats) if c in RIDEABLE]
    n = 0
    for i, c in enumerate(categories):
        if c != "pedestrian" or not bikes:
            continue
        b = boxes[i]
        area = max((b[2] - b[0]) * (b[3] - b[1]), 1e-9)
        inter = [max(0.0, min(b[2], boxes[j][2]) - max(b[0], boxes[j][0])) *
                 max(0.0, min(b[3], boxes[j][3]) - max(b[1], boxes[j][1])) for j in bikes]
        if max(inter) / area >= overlap:
            cats[i] = "rider"
            n += 1
    return cats, n


def _torch_device(device: str | None = "auto") -> str:
    """Ultralytics-style device (``train.resolve_device``: "0" = first GPU) -> a torch device string."""
    from bdd_engine.train import resolve_device

    d = resolve_device(device)
    return f"cuda:{d}" if d.isdigit() else d


def check_weights(*dirs: Path) -> None:
    """Raise one ``MissingWeightsError`` naming every missing/incomplete folder and the fix."""
    missing = []
    for d in dirs:
        d = Path(d)
        has_weights = d.is_dir() and (any(d.glob("*.safetensors")) or any(d.glob("*.bin")))
        if not (has_weights and (d / "config.json").exists()):
            missing.append(str(d))
    if missing:
        raise WeightsMissingError(
            "Grounded-SAM-2 needs local weights and never downloads at run time; missing or incomplete "
            f"(need config.json + *.safetensors): {', '.join(missing)}. Run `{SETUP_HINT}` on a machine with "
            f"internet access ({weights.REGISTRY['grounding-dino'][1]} -> {GDINO_DIR}, "
            f"{weights.REGISTRY['sam2'][1]} -> {SAM2_DIR}), or use label_labeler: teacher (what `make demo` does).")


class GroundedSam2Labeler(Labeler):
    """Grounding DINO boxes -> class-agnostic NMS -> SAM 2.1 masks -> tightened boxes -> rider rule.

    Weights: HF ``save_pretrained`` folders (``gdino_dir``, ``sam_dir``), loaded with
    ``local_files_only``. Thresholds: ``box_threshold`` on the phrase score,
    ``text_threshold`` on the mean phrase-token probability (see :func:`assign_phrases`).
    Label score = Grounding DINO phrase score.
    """

    name = "gsam2"

    def __init__(self, gdino_dir: str | os.PathLike = GDINO_DIR, sam_dir: str | os.PathLike = SAM2_DIR, *,
                 prompt: str = DEFAULT_PROMPT, class_prompts: Mapping[str, Sequence[str]] | None = None,
                 negative_prompts: Sequence[str] = (), phrase_map: Mapping[str, str] | None = None,
                 prompt_mode: str = "joint", box_threshold: float = 0.35, text_threshold: float = 0.25,
                 nms_iou: float = 0.7, max_dets: int = 100, rider_overlap: float = 0.3, refine: bool = True,
                 min_mask_pixels: int = 4, batch_size: int = 4, device: str = "auto"):
        from transformers import AutoProcessor, GroundingDinoForObjectDetection, Sam2Model

        self.gdino_dir = _abs(gdino_dir)
        self.sam_dir = _abs(sam_dir)
        check_weights(self.gdino_dir, *( [self.sam_dir] if refine else []))
        self.phrase_map = build_phrase_map(prompt, class_prompts, negative_prompts, phrase_map)
        self.groups = prompt_groups(self.phrase_map, prompt_mode)
        self.box_threshold, self.text_threshold = float(box_threshold), float(text_threshold)
        self.nms_iou, self.max_dets = float(nms_iou), int(max_dets)
        self.rider_overlap, self.refine, self.min_mask_pixels = float(rider_overlap), bool(refine), int(min_mask_pixels)
        self.batch_size = int(batch_size)
        self.device = _torch_device(device)
        self.gd_proc = AutoProcessor.from_pretrained(self.gdino_dir, local_files_only=True)
        self.gd_model = GroundingDinoForObjectDetection.from_pretrained(self.gdino_dir, local_files_only=True)
        self.gd_model.to(self.device).eval()
        if self.refine:
            self.sam_proc = AutoProcessor.from_pretrained(self.sam_dir, local_files_only=True)
            self.sam_model = Sam2Model.from_pretrained(self.sam_dir, local_files_only=True).to(self.device).eval()
        # Token spans per prompt group, checked once against the real tokenizer.
        self._spans = []
        for phrases in self.groups:
            ids = self.gd_proc.tokenizer(prompt_text(phrases))["input_ids"]
            self._spans.append(phrase_spans(ids, len(phrases)))

    def model_info(self) -> dict[str, str]:
        info = {"gdino": str(self.gdino_dir), "device": self.device, "prompts": " | ".join(prompt_text(g) for g in self.groups)}
        if self.refine:
            info["sam"] = str(self.sam_dir)
        return info

    # -- stages (separate so tests can observe each) --
    def detect(self, images: list) -> list[tuple[np.ndarray, list[str | None], np.ndarray]]:
        """Grounding DINO over all prompt groups + class-agnostic NMS (negatives included, so
        they can suppress). Per image: (boxes (N,4) xyxy px, classes (None = negative), scores (N,))."""
        import torch
        from torchvision.ops import nms
        from transformers.image_transforms import center_to_corners_format

        sizes = [(im.height, im.width) for im in images]
        per_img: list[list[tuple[np.ndarray, str | None, float]]] = [[] for _ in images]
        for phrases, spans in zip(self.groups, self._spans):
            inputs = self.gd_proc(images=images, text=[prompt_text(phrases)] * len(images), return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.no_grad():
                out = self.gd_model(**inputs)
            probs = out.logits.sigmoid().float().cpu()                    # (B, Q, max_text_len)
            boxes = center_to_corners_format(out.pred_boxes.float().cpu())  # (B, Q, 4) relative xyxy
            for b, (h, w) in enumerate(sizes):
                keep, pidx, score = assign_phrases(probs[b], spans, self.box_threshold, self.text_threshold)
                px = (boxes[b, keep] * torch.tensor([w, h, w, h], dtype=torch.float32)).numpy()
                px[:, [0, 2]] = px[:, [0, 2]].clip(0, w)
                px[:, [1, 3]] = px[:, [1, 3]].clip(0, h)
                for bx, p, s in zip(px, pidx.tolist(), score.tolist()):
                    per_img[b].append((bx, self.phrase_map[phrases[p]], s))
        results = []
        for dets in per_img:
            dets = [d for d in dets if d[0][2] > d[0][0] and d[0][3] > d[0][1]]
            if not dets:
                results.append((np.zeros((0, 4)), [], np.zeros(0)))
                continue
            bx = torch.tensor(np.stack([d[0] for d in dets]), dtype=torch.float32)
            sc = torch.tensor([d[2] for d in dets], dtype=torch.float32)
            keep = nms(bx, sc, self.nms_iou).tolist()                        # sorted by score desc
            results.append((bx[keep].numpy().astype(float), [dets[k][1] for k in keep], sc[keep].numpy().astype(float)))
        return results

    def masks(self, images: list, boxes: list[np.ndarray]) -> list[np.ndarray | None]:
        """SAM 2.1 box-prompted masks: per image (N, H, W) bool at image size (None if no boxes).

        Image embeddings are computed once per batch; boxes are decoded per image because
        SAM2 cannot pad a different number of boxes per image.
        """
        import torch

        todo = [i for i, b in enumerate(boxes) if len(b)]
        out: list[np.ndarray | None] = [None] * len(images)
        if not todo:
            return out
        enc = self.sam_proc(images=[images[i] for i in todo], return_tensors="pt")
        with torch.no_grad():
            emb = self.sam_model.get_image_embeddings(enc["pixel_values"].to(self.device))
        for k, i in enumerate(todo):
            size = [[images[i].height, images[i].width]]
            prompt = self.sam_proc(input_boxes=[boxes[i].tolist()], original_sizes=size, return_tensors="pt")
            with torch.no_grad():
                res = self.sam_model(image_embeddings=[e[k:k + 1] for e in emb],
                                     input_boxes=prompt["input_boxes"].to(self.device), multimask_output=False)
            m = self.sam_proc.post_process_masks(res.pred_masks.cpu(), size)[0]  # (N, 1, H, W) bool
            out[i] = m[:, 0].numpy()
        return out

    def _predict(self, images, paths, stats):
        dets = self.detect(images)
        results = []
        kept_boxes = []
        for bx, cls, sc in dets:
            neg = [c is None for c in cls]
            stats["negative-prompt boxes dropped"] += int(sum(neg))
            pos = [k for k, n in enumerate(neg) if not n][: self.max_dets]
            kept_boxes.append((bx[pos], [cls[k] for k in pos], sc[pos]))
        masks = self.masks(images, [b for b, _, _ in kept_boxes]) if self.refine else [None] * len(images)
        for (bx, cls, sc), m in zip(kept_boxes, masks):
            bx = bx.copy()
            if m is not None:
                for k in range(len(bx)):
                    bx[k], ok = tighten_to_mask(bx[k], m[k], self.min_mask_pixels)
                    stats["boxes tightened to mask" if ok else "empty masks (box kept)"] += 1
            cls, n_rider = apply_rider_rule(cls, bx, self.rider_overlap)
            stats["pedestrian -> rider"] += n_rider
            results.append([(c, b, s) for c, b, s in zip(cls, bx, sc)])
        return results


def _abs(p: str | os.PathLike) -> Path:
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else PROJECT_ROOT / p


# ----------------------------------------------------------------------------- teacher / oracle
class TeacherLabeler(Labeler):
    """Model-assisted labelling with any Ultralytics weights via :func:`bdd_engine.train.predict`.

    ``conf`` is stricter than evaluation's (labels, not a PR curve); ``tta`` passes
    ``augment=True`` (flip + scales) when ``train.predict`` supports it.
    """

    name = "teacher"

    def __init__(self, weights: str | os.PathLike, conf: float = 0.35, tta: bool = False, imgsz: int = 640,
                 batch_size: int = 16, device: str = "auto"):
        self.weights = _abs(weights)
        if not self.weights.exists():
            raise FileNotFoundError(
                f"teacher weights not found: {self.weights} (default: the iter0 model from §4 — run it first, "
                "or pass any Ultralytics .pt)")
        self.conf, self.tta, self.imgsz, self.batch_size = float(conf), bool(tta), int(imgsz), int(batch_size)
        self.device = device
        from bdd_engine import train

        self._predict_fn = train.predict
        if self.tta and "augment" not in inspect.signature(train.predict).parameters:
            raise ValueError("label_teacher_tta needs bdd_engine.train.predict(..., augment=...) — not available")

    def model_info(self) -> dict[str, str]:
        return {"weights": str(self.weights), "conf": str(self.conf), "tta": str(self.tta)}

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
            blank = _blank(fr)
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


def get_labeler(cfg: Mapping[str, Any], name: str | None = None, *, teacher_weights: str | os.PathLike | None = None,
                gt_frames: Sequence[Mapping[str, Any]] | None = None) -> Labeler:
    """Build the labeler named by ``name`` or ``cfg.label_labeler`` from config keys (see module doc)."""
    name = name or cfg.get("label_labeler", "teacher")
    g = cfg.get
    if name == "gsam2":
        return GroundedSam2Labeler(
            g("label_gsam2_gdino_dir") or GDINO_DIR, g("label_gsam2_sam_dir") or SAM2_DIR,
            prompt=g("label_gsam2_prompt", DEFAULT_PROMPT), class_prompts=g("label_gsam2_class_prompts", None),
            negative_prompts=g("label_gsam2_negative_prompts", None) or (),
            prompt_mode=g("label_gsam2_prompt_mode", "joint"),
            box_threshold=g("label_gsam2_box_threshold", 0.35), text_threshold=g("label_gsam2_text_threshold", 0.25),
            nms_iou=g("label_gsam2_nms_iou", 0.7), max_dets=g("label_gsam2_max_dets", 100),
            rider_overlap=g("label_gsam2_rider_overlap", 0.3), refine=g("label_gsam2_refine", True),
            batch_size=g("label_gsam2_batch", 4), device=g("device", "auto"))
    if name == "teacher":
        if teacher_weights is None:
            raise ValueError("teacher labeler needs teacher_weights= (the iter0 best.pt from §4)")
        return TeacherLabeler(teacher_weights, conf=g("label_teacher_conf", 0.35), tta=g("label_teacher_tta", False),
                              imgsz=g("label_teacher_imgsz") or g("train_imgsz", 640), batch_size=g("train_batch", 16),
                              device=g("device", "auto"))
    if name == "oracle":
        if gt_frames is None:
            raise ValueError("oracle labeler needs gt_frames= (the mining pool's held-back labels)")
        return OracleLabeler(gt_frames)
    raise ValueError(f"unknown labeler {name!r}; choose gsam2 | teacher | oracle")


# ----------------------------------------------------------------------------- quality
def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy pixel boxes a (N,4) x b (M,4) -> (N,M), with BDD's +1 pixel-inclusive
    width/height like ``evaluate`` (so a confusion at 0.5 is the same 0.5 as a match)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a = a + np.array([0, 0, 1, 1])
    b = b + np.array([0, 0, 1, 1])
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def confusions(pred_frames: Sequence[Mapping[str, Any]], gt_frames: Sequence[Mapping[str, Any]],
               iou: float = 0.5) -> pd.DataFrame:
    """Labels with no GT of their own class at IoU >= ``iou`` but one of **another** class:
    counts per (labelled_as, gt_class), most common first. GT crowd/ignore boxes excluded."""
    names = {fr["name"] for fr in gt_frames}
    preds = boxes_table([fr for fr in pred_frames if fr["name"] in names])
    gts = boxes_table(gt_frames)
    gts = gts[~(gts["crowd"] | gts["ignore"])]
    cols = ["x1", "y1", "x2", "y2"]
    pairs: Counter = Counter()
    g_by = {n: g for n, g in gts.groupby("name")}
    for name, P in preds.groupby("name"):
        G = g_by.get(name)
        if G is None:
            continue
        ious = _iou_matrix(P[cols].to_numpy(), G[cols].to_numpy())
        g_cls = G["category"].to_numpy()
        for k, cls in enumerate(P["category"].to_numpy()):
            hit = ious[k] >= iou
            if hit.any() and not (hit & (g_cls == cls)).any():
                pairs[(cls, g_cls[int(np.argmax(np.where(g_cls != cls, ious[k], -1)))])] += 1
    df = pd.DataFrame([(a, b, n) for (a, b), n in pairs.items()], columns=["labelled_as", "gt_class", "n"])
    return df.sort_values(["n", "labelled_as", "gt_class"], ascending=[False, True, True]).reset_index(drop=True)


def pr_table(cache: Any, frames: np.ndarray | None = None, t: int = 0) -> pd.DataFrame:
    """P/R per class + ``overall`` (micro) from an ``evaluate.MatchCache`` at IoU index ``t``
    (0 = IoU 0.5), area range "all", optionally on a subset of frame indices.

    Columns: class, n_gt, n_pred, tp, fp, fn, precision, recall. Detections matched to
    crowd/ignore regions are neither TP nor FP (official rule); NaN when undefined.
    """
    sel = np.ones(len(cache.det_f), bool) if frames is None else np.isin(cache.det_f, frames)
    fsel = np.arange(len(cache.names)) if frames is None else np.asarray(frames, dtype=int)
    tp_all, ig_all = cache.det_tp[:, t, 0], cache.det_ig[:, t, 0]
    rows = []
    for k, cls in enumerate([*CLASSES, "overall"]):
        m = sel if cls == "overall" else sel & (cache.det_k == k)
        n_gt = int(cache.npig[fsel, :, 0].sum() if cls == "overall" else cache.npig[fsel, k, 0].sum())
        tp = int((tp_all & m).sum())
        fp = int((~tp_all & ~ig_all & m).sum())
        rows.append({"class": cls, "n_gt": n_gt, "n_pred": tp + fp, "tp": tp, "fp": fp, "fn": n_gt - tp,
                     "precision": tp / (tp + fp) if tp + fp else np.nan, "recall": tp / n_gt if n_gt else np.nan})
    return pd.DataFrame(rows)


@dataclass
class QualityReport:
    """Auto-label quality vs GT (see :func:`label_quality`)."""

    labeler: str
    is_oracle: bool
    n_frames: int            # frames with GT that were evaluated (failed frames included)
    n_failed: int            # of those, frames the labeler failed on (their GT all counts as missed)
    all_frames: pd.DataFrame     # pr_table over every frame
    spot_check: pd.DataFrame     # pr_table over the seeded spot-check frames
    spot_names: list[str]
    missed: pd.DataFrame         # class, n_missed, share_missed — most missed first
    confusions: pd.DataFrame     # labelled_as, gt_class, n — most common first
    cache: Any                   # evaluate.MatchCache (per-label TP status, for the router)

    def summary(self) -> str:
        o = self.all_frames.set_index("class").loc["overall"]
        s = self.spot_check.set_index("class").loc["overall"]
        tag = " [ORACLE: held-back GT, not auto-labels]" if self.is_oracle else ""
        return (f"{self.labeler}{tag}: all {self.n_frames} frames P={o.precision:.3f} R={o.recall:.3f} "
                f"({self.n_failed} failed frames counted as misses); spot check {len(self.spot_names)} frames "
                f"P={s.precision:.3f} R={s.recall:.3f}")


def label_quality(run: LabelRun | Sequence[Mapping[str, Any]], gt_frames: Sequence[Mapping[str, Any]],
                  spot_check: int = 20, seed: int = 42) -> QualityReport:
    """Precision/recall at IoU 0.5 of labels vs GT on every frame of ``gt_frames`` with a GT box,
    plus the same on a seeded ``spot_check``-frame sample, the classes most often missed
    and the most common confusions.

    Matching is ``evaluate.build_cache`` (the official COCO-style greedy matcher, one
    match per GT, crowd/ignore regions absorb detections, top 100 per frame and class).
    Frames absent from the run, or failed in it, have no labels, so their GT boxes count
    as missed: failures never shrink the denominators.
    """
    from bdd_engine.evaluate import build_cache

    frames = run.frames if isinstance(run, LabelRun) else list(run)
    failures = run.failures if isinstance(run, LabelRun) else {}
    gt_has = [fr for fr in gt_frames if any(lb.get("box2d") for lb in fr.get("labels") or [])]
    names = {fr["name"] for fr in gt_has}
    cache = build_cache(gt_has, [fr for fr in frames if fr["name"] in names])
    all_tab = pr_table(cache)
    rng = np.random.default_rng(seed)
    n = len(cache.names)
    spot_idx = np.sort(rng.choice(n, size=min(spot_check, n), replace=False)) if n else np.zeros(0, int)
    per = all_tab[all_tab["class"] != "overall"]
    missed = per[per["n_gt"] > 0][["class", "fn", "n_gt"]].rename(columns={"fn": "n_missed"})
    missed = missed.assign(share_missed=missed["n_missed"] / missed["n_gt"]).drop(columns="n_gt")
    missed = missed.sort_values(["n_missed", "class"], ascending=[False, True]).reset_index(drop=True)
    return QualityReport(
        labeler=run.labeler if isinstance(run, LabelRun) else "labels",
        is_oracle=bool(getattr(run, "is_oracle", False)),
        n_frames=n, n_failed=sum(1 for nm in cache.names if nm in failures),
        all_frames=all_tab, spot_check=pr_table(cache, spot_idx),
        spot_names=[str(x) for x in cache.names[spot_idx]], missed=missed,
        confusions=confusions(frames, gt_has), cache=cache)


# ----------------------------------------------------------------------------- router
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


def accepted_frames(run: LabelRun, accept: float, keep_empty: bool = False) -> list[dict[str, Any]]:
    """The auto-labelled training set: labels with score >= ``accept`` on frames that did not fail.

    Frames left with no accepted label are dropped unless ``keep_empty``: as YOLO
    background images they would teach the detector that a street full of objects the
    labeler missed is empty. (Low-score objects on kept frames are still missing: the
    known cost of pseudo-labels, measured by the recall in :func:`label_quality`.)
    """
    if run.is_oracle:
        raise ValueError("an oracle run is ground truth, not auto-labels; export it as the oracle control")
    out = [{**fr, "labels": [lb for lb in fr["labels"] if float(lb.get("score", 1.0)) >= accept]}
           for fr in run.ok_frames()]
    return out if keep_empty else [fr for fr in out if fr["labels"]]


# ----------------------------------------------------------------------------- exports
def export_coco(frames: Sequence[Mapping[str, Any]], image_paths: Mapping[str, str | os.PathLike],
                path: str | os.PathLike, description: str = "auto-labels") -> Path:
    """COCO detection JSON (loads with pycocotools): bbox = [x, y, w, h] pixels,
    category_id 1..10 in BDD's official order, ``score`` kept, BDD ignore-mapped
    categories written with ``iscrowd=1`` (COCO's ignore semantics)."""
    from bdd_engine.bdd import map_category

    images, anns = [], []
    for img_id, fr in enumerate(frames, start=1):
        w, h = image_size(image_paths[fr["name"]])
        images.append({"id": img_id, "file_name": fr["name"], "width": int(w), "height": int(h)})
        for lb in fr.get("labels") or []:
            cls, ignore = map_category(lb.get("category", ""))
            b = lb.get("box2d")
            if cls is None or not b:
                continue
            bw, bh = float(b["x2"]) - float(b["x1"]), float(b["y2"]) - float(b["y1"])
            crowd = ignore or bool((lb.get("attributes") or {}).get("crowd", False))
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": CLASS_ID[cls] + 1,
                   "bbox": [float(b["x1"]), float(b["y1"]), bw, bh], "area": bw * bh, "iscrowd": int(crowd)}
            if "score" in lb:
                ann["score"] = float(lb["score"])
            anns.append(ann)
    coco = {"info": {"description": description}, "images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    return atomic_write_json(path, coco, indent=None)


def export_label_studio(frames: Sequence[Mapping[str, Any]], image_paths: Mapping[str, str | os.PathLike],
                        path: str | os.PathLike, model_version: str = "auto-labeler",
                        url_prefix: str = "/data/local-files/?d=", root: str | os.PathLike | None = None) -> Path:
    """Label Studio import JSON: one task per frame, labels as ``predictions`` (pre-annotations).

    Boxes become ``rectanglelabels`` in **percent** of the image (Label Studio's unit).
    Image URLs are ``url_prefix + path relative to root`` (local-files storage; set
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` to ``root``). Also writes the matching
    labelling config next to it (``<stem>.label_config.xml``).
    """
    root = Path(root) if root is not None else PROJECT_ROOT
    tasks = []
    for fr in frames:
        p = Path(image_paths[fr["name"]])
        w, h = image_size(p)
        try:
            rel = p.resolve().relative_to(root.resolve())
        except ValueError:
            rel = p.resolve()
        results, scores = [], []
        for k, lb in enumerate(fr.get("labels") or []):
            b = lb["box2d"]
            x1, y1, x2, y2 = (float(b[c]) for c in ("x1", "y1", "x2", "y2"))
            results.append({
                "id": f"{Path(fr['name']).stem}_{k}", "type": "rectanglelabels", "from_name": "label",
                "to_name": "image", "original_width": int(w), "original_height": int(h), "image_rotation": 0,
                "value": {"x": 100 * x1 / w, "y": 100 * y1 / h, "width": 100 * (x2 - x1) / w,
                          "height": 100 * (y2 - y1) / h, "rotation": 0, "rectanglelabels": [lb["category"]]},
                "score": float(lb.get("score", 1.0))})
            scores.append(float(lb.get("score", 1.0)))
        tasks.append({"data": {"image": f"{url_prefix}{rel.as_posix()}", "name": fr["name"]},
                      "predictions": [{"model_version": model_version,
                                       "score": float(np.mean(scores)) if scores else 0.0, "result": results}]})
    path = Path(path)
    labels = "\n".join(f'    <Label value="{c}"/>' for c in CLASSES)
    atomic_write_text(path.with_name(path.stem + ".label_config.xml"), LABEL_STUDIO_CONFIG.format(labels=labels))
    return atomic_write_json(path, tasks, indent=None)


def export_yolo_set(frames: Sequence[Mapping[str, Any]], image_paths: Mapping[str, str | os.PathLike],
                    out_dir: str | os.PathLike, val_frames: Sequence[Mapping[str, Any]] | None = None) -> tuple[Path, Counter]:
    """The auto-labelled set as a YOLO dataset through the one converter, ``bdd_engine.yolo.export_yolo``.

    ``frames`` become the ``train`` split; ``val_frames`` (optional) the ``val`` split,
    else data.yaml's val points at the train images so the folder is a complete,
    checkable dataset on its own (iter1's real evaluation is §5's, not Ultralytics' val).
    Each image is normalised by its own size (read from its header).
    Returns (data.yaml path, counts).
    """
    from bdd_engine.yolo import export_yolo

    if not any(fr["name"] in image_paths for fr in list(frames) + list(val_frames or [])):
        raise ValueError("export_yolo_set: none of the frames has an image path")
    splits = {"train": frames, **({"val": val_frames} if val_frames is not None else {})}
    return export_yolo(splits, image_paths, out_dir, image_wh=None,
                       val_split="val" if val_frames is not None else "train")


# ----------------------------------------------------------------------------- cost
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


# ----------------------------------------------------------------------------- one call for §7
def write_outputs(out_dir: str | os.PathLike, run: LabelRun, gt_frames: Sequence[Mapping[str, Any]] | None,
                  image_paths: Mapping[str, str | os.PathLike], *, accept: float, review: float,
                  spot_check: int = 20, seed: int = 42, usd_per_frame: tuple[float, float] = (0.5, 10.0),
                  yolo: bool = True) -> dict[str, Any]:
    """Write every labelling artefact of one run under ``out_dir`` (atomic writes) and return the tables.

    Files: ``labels.json`` (all labels, BDD + score), ``quality_all.csv``,
    ``quality_spot.csv``, ``missed.csv``, ``confusions.csv``, ``router.csv``,
    ``cost.csv``, ``coco.json`` (all labels), ``label_studio_review.json`` (+ its
    ``.label_config.xml``: review-queue frames with their labels >= ``review`` as
    pre-annotations), ``yolo/`` (accepted labels of non-failed frames, for iter1) and
    ``summary.md``. An oracle run gets its quality tables but no auto-label exports.
    """
    from bdd_engine.bdd import write_bdd_json
    from bdd_engine.checkpoint import atomic_write_df, df_to_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, Any] = {"run": run}
    write_bdd_json(run.frames, out / "labels.json")
    quality = label_quality(run, gt_frames, spot_check=spot_check, seed=seed) if gt_frames is not None else None
    tables["quality"] = quality
    if quality is not None:
        for key, df in (("quality_all", quality.all_frames), ("quality_spot", quality.spot_check),
                        ("missed", quality.missed), ("confusions", quality.confusions)):
            atomic_write_df(out / f"{key}.csv", df)
    tables["router"] = router_table(quality, run, accept, review)
    tables["cost"] = cost_table(run, accept, review, usd_per_frame)
    atomic_write_df(out / "router.csv", tables["router"])
    atomic_write_df(out / "cost.csv", tables["cost"])
    lines = [f"# Labelling: {run.summary()}", ""]
    if quality is not None:
        lines += [quality.summary(), "", "## Precision / recall at IoU 0.5, all frames", "",
                  df_to_markdown(quality.all_frames), "", f"## Spot check ({len(quality.spot_names)} frames, seed {seed})",
                  "", df_to_markdown(quality.spot_check), "", "## Most missed classes", "",
                  df_to_markdown(quality.missed), "", "## Most common confusions", "",
                  df_to_markdown(quality.confusions.head(10)), ""]
    lines += ["## Router", "", df_to_markdown(tables["router"]), "", "## Cost", "", df_to_markdown(tables["cost"]), ""]
    if not run.is_oracle:
        ok = run.ok_frames()
        export_coco(ok, image_paths, out / "coco.json", description=f"{run.labeler} auto-labels")
        need = set(frames_for_humans(run, accept, review))
        # review queue = every frame a human must touch that Label Studio can show (failed,
        # unreadable frames are listed in summary.md instead); empty-output frames are in it
        # with no pre-annotations, to be labelled from scratch
        queue = [{**fr, "labels": [lb for lb in fr["labels"] if float(lb.get("score", 1.0)) >= review]}
                 for fr in ok if fr["name"] in need]
        export_label_studio(queue, image_paths, out / "label_studio_review.json", model_version=run.labeler)
        tables["train_frames"] = accepted_frames(run, accept)
        tables["yolo"] = None
        if yolo and tables["train_frames"]:
            tables["yolo"] = export_yolo_set(tables["train_frames"], image_paths, out / "yolo")
        elif yolo:
            lines += ["**No frame has an accepted label: no YOLO set written** (lower label_accept or "
                      "check the labeler).", ""]
        n_empty = sum(1 for fr in queue if not fr["labels"])
        lines += [f"Review queue: {len(queue)} frames in label_studio_review.json ({n_empty} with no usable "
                  f"label, to label from scratch) + {len(need) - len(queue)} frames the labeler failed on "
                  f"({', '.join(sorted(run.failures)[:5])}{' ...' if run.n_failed > 5 else ''}); "
                  f"training set: {len(tables['train_frames'])} frames with >= 1 accepted label "
                  f"({len(ok) - len(tables['train_frames'])} labelled frames without one left out), "
                  f"{sum(len(f['labels']) for f in tables['train_frames'])} accepted labels.", ""]
    atomic_write_text(out / "summary.md", "\n".join(lines))
    return tables
