"""Box geometry: IoU, box-format conversions, clipping, image size. Imports nothing from bdd_engine.

The bottom floor of the package (like segment-anything's ``utils/amg.py``): every
module that needs an IoU or a box conversion calls this one, so there is one rounding
order and one pixel convention.

Box formats (names say which; arrays are float64 unless stated):

* ``xyxy`` — pixels of the original image, ``(x1, y1, x2, y2)``, BDD ``box2d``'s format.
* ``xywh`` — COCO: top-left corner, width, height, pixels.
* ``cxcywh_norm`` — YOLO txt: centre, width, height, each divided by the image
  width/height (so in [0, 1] for a box inside the image).
* ``xywh_pct`` — Label Studio ``rectanglelabels``: top-left x, y, width, height, each in
  **percent** of the image width/height (so in [0, 100]); continuous, w = x2 - x1.

**Pixel convention.** BDD/Scalabel's COCO conversion (and the Pascal VOC tradition)
treats ``x2`` as the last pixel *inside* the box, so width = ``x2 - x1 + 1``. IoU takes
this as an explicit ``pixel_shift`` (1.0 for the BDD convention, 0.0 for continuous
coordinates as in torchvision's ``box_iou``/NMS); there is no default, every caller says
which one it means.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# BDD/Scalabel convention: a box from x1 to x2 covers x2 - x1 + PIXEL_SHIFT pixels.
PIXEL_SHIFT = 1.0


# ----------------------------------------------------------------------------- IoU
def iou_xywh(d: tuple[np.ndarray, ...], g: tuple[np.ndarray, ...], crowd: np.ndarray | bool = False) -> np.ndarray:
    """IoU of COCO ``xywh`` boxes, elementwise with numpy broadcasting.

    ``d`` = (x, y, w, h) of the detections and ``g`` = (x, y, w, h) of the ground truth,
    each a tuple of four arrays that broadcast together (pairs: all shape (P,); a matrix:
    ``d`` parts (N, 1) and ``g`` parts (1, M)). Widths/heights already include any pixel
    shift. ``crowd`` (broadcastable bool, per GT) selects pycocotools' crowd IoU:
    intersection / detection area. Non-overlapping boxes give 0.0.

    Exactly pycocotools ``maskApi.c`` ``bbIou`` (same float operations in the same order,
    so ties and thresholds behave as in the official evaluation). Returns float64, the
    broadcast shape.
    """
    dx, dy, dw, dh = d
    gx, gy, gw, gh = g
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    ok = (w > 0) & (h > 0)
    inter = w * h
    da = dw * dh
    u = np.where(crowd, da, (da + gw * gh) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, inter / u, 0.0)


def box_iou(a: np.ndarray, b: np.ndarray, *, pixel_shift: float) -> np.ndarray:
    """IoU matrix of ``xyxy`` pixel boxes: ``a`` (N, 4) x ``b`` (M, 4) -> (N, M) float64.

    ``pixel_shift``: added to every width and height (:data:`PIXEL_SHIFT` = 1.0 for BDD's
    pixel-inclusive boxes, as the evaluation matches them; 0.0 for continuous coordinates).
    Computed by :func:`iou_xywh` after :func:`xyxy_to_xywh`, so an IoU of 0.5 here is the
    same 0.5 at which the evaluation matches. Empty inputs give an empty (N, M) matrix.
    """
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    ax, ay, aw, ah = xyxy_to_xywh(a, pixel_shift=pixel_shift).T
    bx, by, bw, bh = xyxy_to_xywh(b, pixel_shift=pixel_shift).T
    return iou_xywh((ax[:, None], ay[:, None], aw[:, None], ah[:, None]),
                    (bx[None, :], by[None, :], bw[None, :], bh[None, :]))


# ----------------------------------------------------------------------------- conversions
def xyxy_to_xywh(boxes: np.ndarray, *, pixel_shift: float) -> np.ndarray:
    """``xyxy`` pixels (N, 4) -> COCO ``xywh`` pixels (N, 4): w = x2 - x1 + ``pixel_shift``."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    x, y = b[:, 0], b[:, 1]
    return np.stack([x, y, b[:, 2] - x + pixel_shift, b[:, 3] - y + pixel_shift], axis=1)


def clip_xyxy(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """``xyxy`` pixel boxes (N, 4) clipped to the image [0, width] x [0, height] (a new array,
    same dtype). Clipping is exact: no coordinate inside the image changes by a bit."""
    b = np.array(boxes, copy=True).reshape(-1, 4)
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def xyxy_to_cxcywh_norm(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """``xyxy`` pixels (N, 4) -> ``cxcywh_norm`` (N, 4): YOLO's centre/size divided by the
    image ``width``/``height`` in pixels. No clipping (see :func:`clip_xyxy`).

    Float operations as ``yolo.yolo_lines``: cx = (x1 + x2) / 2 / width, w = (x2 - x1) / width."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    x1, y1, x2, y2 = b.T
    return np.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height], axis=1)


def cxcywh_norm_to_xyxy(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """``cxcywh_norm`` (N, 4) -> ``xyxy`` pixels (N, 4) of an image ``width`` x ``height`` px."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    cx, cy, w, h = b.T
    return np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], axis=1)


def xyxy_to_xywh_pct(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """``xyxy`` pixels (N, 4) -> ``xywh_pct`` (N, 4): Label Studio's top-left x, y, width,
    height in percent of the image ``width``/``height`` (pixels). w = x2 - x1: Label Studio's
    coordinates are continuous, so no pixel shift (the inverse is exact up to float rounding)."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    x1, y1, x2, y2 = b.T
    return np.stack([100 * x1 / width, 100 * y1 / height, 100 * (x2 - x1) / width, 100 * (y2 - y1) / height], axis=1)


def xywh_pct_to_xyxy(boxes: np.ndarray, width: float, height: float, rotation: np.ndarray | float = 0.0) -> np.ndarray:
    """``xywh_pct`` (N, 4) of an image ``width`` x ``height`` px -> ``xyxy`` pixels (N, 4).

    ``rotation``: Label Studio's box rotation in degrees, clockwise about the box's top-left
    corner (scalar or (N,)). A rotated box becomes its axis-aligned enclosing box (BDD boxes
    cannot rotate); rotation 0 gives x1 = x * width / 100, x2 = x1 + w * width / 100 exactly.
    """
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    x1, y1 = b[:, 0] * width / 100, b[:, 1] * height / 100
    w, h = b[:, 2] * width / 100, b[:, 3] * height / 100
    theta = np.deg2rad(np.broadcast_to(np.asarray(rotation, dtype=float), x1.shape))
    c, s = np.cos(theta), np.sin(theta)
    # corners (0,0), (w,0), (w,h), (0,h) rotated about (x1, y1); y points down, so clockwise on screen
    dx = np.stack([np.zeros_like(w), w * c, w * c - h * s, -h * s], axis=1)
    dy = np.stack([np.zeros_like(w), w * s, w * s + h * c, h * c], axis=1)
    rot = theta != 0
    out = np.stack([x1, y1, x1 + w, y1 + h], axis=1)
    out[rot] = np.stack([x1 + dx.min(1), y1 + dy.min(1), x1 + dx.max(1), y1 + dy.max(1)], axis=1)[rot]
    return out


# ----------------------------------------------------------------------------- images
def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) in pixels, reading only the image header (no decode)."""
    with Image.open(path) as im:
        return im.size
