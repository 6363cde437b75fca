"""The ``gsam2`` labeler: Grounding DINO boxes from a text prompt, SAM 2.1 masks, boxes tightened to the masks.

transformers' own classes (``GroundingDinoForObjectDetection``, ``Sam2Model``); weights
only from local ``save_pretrained`` folders under ``weights/`` (``./setup.sh --weights``
fills them), never downloaded at run time. Boxes are ``xyxy`` pixels of the original
image; scores are Grounding DINO phrase scores in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bdd_engine import weights
from bdd_engine.autolabel.base import Labeler, WeightsMissingError, project_path
from bdd_engine.autolabel.prompts import (DEFAULT_PROMPT, assign_phrases, build_phrase_map, phrase_spans,
                                          prompt_groups, prompt_text)
from bdd_engine.geometry import clip_xyxy
from bdd_engine.train import torch_device

SETUP_HINT = "./setup.sh --weights"
# Local HF `save_pretrained` folders from bdd_engine.weights' registry (setup.sh fills them
# when online): weights/grounding-dino-tiny (IDEA-Research/grounding-dino-tiny) and
# weights/sam2.1-hiera-tiny (facebook/sam2.1-hiera-tiny; a `sam2_video` checkpoint whose
# image-path weights Sam2Model loads, with a Sam2VideoProcessor — both handled below).
GDINO_DIR = weights.path("grounding-dino")
SAM2_DIR = weights.path("sam2")
RIDEABLE = ("bicycle", "motorcycle")
# Boxes per SAM 2.1 decoder call. The decoder's memory grows with the boxes of one call: 100 boxes
# (max_dets) on a 1280x720 frame in one call held 6-9 GB resident on CPU (issue 14's smoke-full run).
SAM_BOX_CHUNK = 16


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

    Options (the profile's ``label_gsam2_*`` keys; :func:`make_labeler` documents each):

    * ``gdino_dir`` / ``sam_dir``: HF ``save_pretrained`` folders, loaded with
      ``local_files_only`` (None = ``weights/grounding-dino-tiny`` / ``weights/sam2.1-hiera-tiny``;
      a relative path is relative to the project root).
    * ``prompt`` (``"a . b ."`` phrases), ``class_prompts`` ({BDD class: [phrases]}),
      ``negative_prompts`` (phrases whose boxes are dropped; None = none), ``phrase_map``
      (extra {phrase: BDD class}), ``prompt_mode`` (``joint`` | ``per_class``).
    * ``box_threshold`` on the phrase score and ``text_threshold`` on the mean phrase-token
      probability, both in [0, 1] (see :func:`~bdd_engine.autolabel.prompts.assign_phrases`).
    * ``nms_iou``: class-agnostic NMS IoU in [0, 1] (torchvision, continuous coordinates);
      ``max_dets``: boxes kept per image; ``rider_overlap``: :func:`apply_rider_rule`'s
      share of the pedestrian box; ``refine``: tighten boxes to SAM 2.1 masks;
      ``min_mask_pixels``: fewer mask pixels inside a box keep the box as it is.
    * ``batch_size``: images per Grounding DINO forward; ``device``: ``auto`` | ``cpu`` | ``0``...

    Label score = Grounding DINO phrase score.
    """

    name = "gsam2"

    def __init__(self, gdino_dir: str | os.PathLike | None = None, sam_dir: str | os.PathLike | None = None, *,
                 prompt: str = DEFAULT_PROMPT, class_prompts: Mapping[str, Sequence[str]] | None = None,
                 negative_prompts: Sequence[str] | None = None, phrase_map: Mapping[str, str] | None = None,
                 prompt_mode: str = "joint", box_threshold: float = 0.35, text_threshold: float = 0.25,
                 nms_iou: float = 0.7, max_dets: int = 100, rider_overlap: float = 0.3, refine: bool = True,
                 min_mask_pixels: int = 4, batch_size: int = 4, device: str = "auto"):
        # heavy optional dependency (transformers + torch, only this labeler needs them): imported on use
        from transformers import AutoProcessor, GroundingDinoForObjectDetection, Sam2Model

        self.gdino_dir = project_path(gdino_dir or GDINO_DIR)
        self.sam_dir = project_path(sam_dir or SAM2_DIR)
        check_weights(self.gdino_dir, *( [self.sam_dir] if refine else []))
        self.phrase_map = build_phrase_map(prompt, class_prompts, negative_prompts or (), phrase_map)
        self.groups = prompt_groups(self.phrase_map, prompt_mode)
        self.box_threshold, self.text_threshold = float(box_threshold), float(text_threshold)
        self.nms_iou, self.max_dets = float(nms_iou), int(max_dets)
        self.rider_overlap, self.refine, self.min_mask_pixels = float(rider_overlap), bool(refine), int(min_mask_pixels)
        self.batch_size = int(batch_size)
        self.device = torch_device(device)
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
        import torch  # heavy optional dependencies (gsam2 only): imported on use
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
                px = clip_xyxy((boxes[b, keep] * torch.tensor([w, h, w, h], dtype=torch.float32)).numpy(), w, h)
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
        import torch  # heavy optional dependency (gsam2 only): imported on use

        todo = [i for i, b in enumerate(boxes) if len(b)]
        out: list[np.ndarray | None] = [None] * len(images)
        if not todo:
            return out
        enc = self.sam_proc(images=[images[i] for i in todo], return_tensors="pt")
        with torch.no_grad():
            emb = self.sam_model.get_image_embeddings(enc["pixel_values"].to(self.device))
        for k, i in enumerate(todo):
            size = [[images[i].height, images[i].width]]
            parts = []
            for c in range(0, len(boxes[i]), SAM_BOX_CHUNK):  # each box is decoded on its own: chunks change no mask
                prompt = self.sam_proc(input_boxes=[boxes[i][c:c + SAM_BOX_CHUNK].tolist()], original_sizes=size,
                                       return_tensors="pt")
                with torch.no_grad():
                    res = self.sam_model(image_embeddings=[e[k:k + 1] for e in emb],
                                         input_boxes=prompt["input_boxes"].to(self.device), multimask_output=False)
                m = self.sam_proc.post_process_masks(res.pred_masks.cpu(), size)[0]  # (n, 1, H, W) bool
                parts.append(m[:, 0].numpy())
            out[i] = np.concatenate(parts)
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
