"""geometry.py: the one IoU (bit-for-bit pycocotools), the pixel-shift convention, box
conversions (bit-for-bit yolo.py's), clipping, image size; and that it imports nothing
from the package."""

from __future__ import annotations

import ast
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from bdd_engine import geometry as geo
from bdd_engine.yolo import yolo_lines


def _boxes(rng, n, scale=1280.0):
    """Random xyxy pixel boxes with 3-decimal coordinates (like BDD labels) and float32 ones (like models)."""
    xy = np.round(rng.uniform(0, scale, (n, 2)), 3)
    wh = np.round(rng.uniform(0.5, 300, (n, 2)), 3)
    b = np.concatenate([xy, xy + wh], axis=1)
    b[n // 2:] = b[n // 2:].astype(np.float32).astype(float)
    return b


def test_iou_xywh_is_pycocotools_bit_for_bit():
    rng = np.random.default_rng(0)
    d = geo.xyxy_to_xywh(_boxes(rng, 60), pixel_shift=0.0)
    g = geo.xyxy_to_xywh(_boxes(rng, 40, scale=400.0), pixel_shift=0.0)
    g[::7] = d[:6]  # some exact duplicates
    crowd = rng.random(len(g)) < 0.3
    want = mask_utils.iou(d.tolist(), g.tolist(), crowd.astype(np.uint8).tolist())
    got = geo.iou_xywh(tuple(d.T[:, :, None]), tuple(g.T[:, None, :]), crowd[None, :])
    assert got.shape == (60, 40) and np.array_equal(got, want)
    # elementwise over pairs (evaluate.build_cache's use) gives the same numbers as the matrix
    i, j = np.nonzero(np.ones((60, 40), bool))
    pairs = geo.iou_xywh(tuple(d[i].T), tuple(g[j].T), crowd[j])
    assert np.array_equal(pairs, got.ravel())


def test_box_iou_pixel_shift_convention():
    a = np.array([[0.0, 0.0, 9.0, 9.0]])
    b = np.array([[5.0, 0.0, 14.0, 9.0], [0.0, 0.0, 9.0, 9.0], [10.0, 0.0, 19.0, 9.0], [9.0, 9.0, 20.0, 20.0]])
    bdd = geo.box_iou(a, b, pixel_shift=geo.PIXEL_SHIFT)  # 10x10 px boxes overlapping 5x10 px
    assert bdd[0, :3].tolist() == [50 / 150, 1.0, 0.0]
    assert bdd[0, 3] == 1 / (100 + 144 - 1)  # corner pixel (9, 9) is shared: BDD boxes include x2, y2
    cont = geo.box_iou(a, b, pixel_shift=0.0)  # 9x9 boxes overlapping 4x9; touching corners share nothing
    assert cont[0].tolist() == [36 / 126, 1.0, 0.0, 0.0]
    with pytest.raises(TypeError):
        geo.box_iou(a, b)  # the convention is never implicit


def test_box_iou_shapes_and_degenerate_boxes():
    rng = np.random.default_rng(1)
    a, b = _boxes(rng, 5), _boxes(rng, 3)
    assert geo.box_iou(a, b, pixel_shift=1.0).shape == (5, 3)
    assert geo.box_iou(np.zeros((0, 4)), b, pixel_shift=1.0).shape == (0, 3)
    assert geo.box_iou(a, np.zeros((0, 4)), pixel_shift=1.0).shape == (5, 0)
    m = geo.box_iou(a, a, pixel_shift=1.0)
    assert np.allclose(np.diag(m), 1.0) and np.allclose(m, m.T) and ((m >= 0) & (m <= 1)).all()
    # a zero-area box (continuous convention) overlaps nothing, without a warning or a NaN
    with np.errstate(all="raise"):
        z = geo.box_iou([[3.0, 3.0, 3.0, 3.0]], [[3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 9.0, 9.0]], pixel_shift=0.0)
    assert z.tolist() == [[0.0, 0.0]]


def test_cxcywh_conversions_match_yolo_lines_and_round_trip():
    rng = np.random.default_rng(2)
    W, H = 1280, 720
    b = geo.clip_xyxy(_boxes(rng, 50), W, H)
    b = b[(b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)]
    df = pd.DataFrame(b, columns=["x1", "y1", "x2", "y2"]).assign(class_id=2, ignore=False, crowd=False)
    lines = yolo_lines(df, W, H, Counter())
    norm = geo.xyxy_to_cxcywh_norm(b, W, H)
    assert lines == [f"2 {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" for cx, cy, w, h in norm]
    assert np.allclose(geo.cxcywh_norm_to_xyxy(norm, W, H), b, atol=1e-9)
    assert geo.cxcywh_norm_to_xyxy([[0.5, 0.5, 1.0, 1.0]], W, H).tolist() == [[0.0, 0.0, W, H]]


def test_clip_xyxy_is_exact_and_keeps_dtype():
    b = np.array([[-5.5, 10.25, 1300.0, 700.125], [1.0, -1.0, 2.0, 800.0]], np.float32)
    c = geo.clip_xyxy(b, 1280, 720)
    assert c.dtype == np.float32 and c.tolist() == [[0.0, 10.25, 1280.0, 700.125], [1.0, 0.0, 2.0, 720.0]]
    assert b[0, 0] == np.float32(-5.5)  # input untouched
    assert geo.xyxy_to_xywh([[1.0, 2.0, 11.0, 22.0]], pixel_shift=1.0).tolist() == [[1.0, 2.0, 11.0, 21.0]]


def test_image_size_reads_the_header(tmp_path):
    p = tmp_path / "f.jpg"
    Image.new("RGB", (321, 123)).save(p)
    assert geo.image_size(p) == (321, 123)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # truncated pixels, intact header: size still known
    assert geo.image_size(p) == (321, 123)


def test_geometry_imports_nothing_from_the_package():
    tree = ast.parse(open(geo.__file__).read())
    mods = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    mods += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert mods and not [m for m in mods if m.split(".")[0] == "bdd_engine"]
    assert math.isclose(geo.PIXEL_SHIFT, 1.0)
