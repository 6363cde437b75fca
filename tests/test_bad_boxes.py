"""A box whose coordinates are missing, null, NaN, text or inverted (issue 23, item 1): counted and
left out everywhere boxes are read (bdd.boxes_table, §1's GT, evaluate's GT and predictions), with
every other number unchanged."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from bdd_engine import bdd
from bdd_engine import flywheel as fw
from bdd_engine.evaluate import evaluate
from tests.conftest import make_cfg

NAN = float("nan")
BAD = [  # (box2d, the kind validate() and boxes_table() both give it)
    ({"x1": NAN, "y1": 1, "x2": 50, "y2": 60}, "degenerate box"),
    ({"x1": 1, "y1": 1, "x2": 50, "y2": None}, "degenerate box"),
    ({"x1": 1, "y1": 1, "x2": "wide", "y2": 60}, "degenerate box"),
    ({"x1": 1, "y1": 1, "x2": float("inf"), "y2": 60}, "degenerate box"),
    ({"x1": 50, "y1": 1, "x2": 10, "y2": 60}, "degenerate box"),          # x2 < x1
    ({"x1": 1, "y1": 60, "x2": 50, "y2": 60}, "degenerate box"),          # zero height
    ({"x1": 1, "y1": 1, "x2": 50}, "missing box2d"),                      # y2 missing
]


def car(box, lid="1", **kw):
    return {"id": lid, "category": "car", "attributes": {}, "box2d": box, **kw}


GOOD = {"x1": 10.0, "y1": 20.0, "x2": 30.0, "y2": 40.0}


@pytest.mark.parametrize("box,kind", BAD)
def test_boxes_table_leaves_a_bad_box_out_counted_as_validate_names_it(box, kind):
    # the bad label comes FIRST: its name/category must not be appended before it is skipped
    frames = [{"name": "a.jpg", "labels": [car(box, "bad"), car(GOOD, "ok"),
                                           {"id": "p", "category": "person", "box2d": dict(GOOD, x1=11.0)}]}]
    counts: Counter = Counter()
    t = bdd.boxes_table(frames, counts)
    assert counts == Counter({kind: 1})
    assert t["name"].tolist() == ["a.jpg", "a.jpg"] and t["category"].tolist() == ["car", "pedestrian"]
    assert t["x1"].tolist() == [10.0, 11.0] and t["class_id"].tolist() == [2, 0]
    assert bdd.validate(frames, None, image_wh=None).counts == {kind: 1}  # one rule, one kind
    kept, n = bdd.drop_bad_boxes(frames)
    assert n == 1 and [lb["id"] for lb in kept[0]["labels"]] == ["ok", "p"]
    assert [lb["id"] for lb in frames[0]["labels"]] == ["bad", "ok", "p"]  # input untouched
    assert bdd.frames_table(frames)["n_boxes"].tolist() == [2]


def test_drop_bad_boxes_keeps_labels_it_does_not_own():
    frames = [{"name": "a.jpg", "labels": [{"id": "u", "category": "dog", "box2d": {"x1": NAN}},
                                           {"id": "d", "category": "drivable area", "poly2d": []}]}]
    kept, n = bdd.drop_bad_boxes(frames)
    assert n == 0 and kept == frames  # boxes_table counts these as unknown / non-box wherever boxes are read


def _preds(gt):
    """Detections near every good GT box (deterministic), scored by position."""
    out = []
    for f in gt:
        lbs = []
        for i, lb in enumerate(f["labels"]):
            if bdd.box_issue(lb.get("box2d")) is None and lb.get("category") in bdd.CLASS_ID:
                b = {k: float(v) + (1.5 if i % 2 else -0.5) for k, v in lb["box2d"].items()}
                lbs.append({"id": str(i), "category": lb["category"], "box2d": b, "score": 0.3 + 0.05 * (i % 10)})
        out.append({"name": f["name"], "labels": lbs})
    return out


def _plant(frames, n=2):
    """A NaN x1 and (n = 2) a null y2 in the first box of the first n boxed frames: returns their names."""
    boxed = [f for f in frames if f["labels"]]
    boxed[0]["labels"][0]["box2d"]["x1"] = NAN
    if n == 2:
        boxed[1]["labels"][0]["box2d"]["y2"] = None
    return [f["name"] for f in boxed[:n]]


def test_evaluate_with_a_nan_and_a_null_box_equals_evaluate_without_them(tiny_world):
    gt = bdd.load_frames(tiny_world / "labels/det_20/det_val.json")
    clean = json.loads(json.dumps(gt))
    preds = _preds(gt)
    bad_gt = json.loads(json.dumps(gt))
    names = _plant(bad_gt)
    for f in clean:  # the same two labels removed
        if f["name"] in names:
            f["labels"] = f["labels"][1:]
    bad_pred = json.loads(json.dumps(preds))
    bad_pred[0]["labels"].insert(0, {"id": "x", "category": "car", "score": 0.9,
                                     "box2d": {"x1": 1, "y1": None, "x2": 5, "y2": 9}})
    bad_pred[1]["labels"].append({"id": "y", "category": "bus", "score": 0.8,
                                  "box2d": {"x1": NAN, "y1": 1, "x2": 5, "y2": 9}})
    a, b = evaluate(bad_gt, bad_pred, n_boot=50), evaluate(clean, preds, n_boot=50)
    assert a.report["gt_dropped_degenerate_box"] == 2 and a.report["pred_dropped_degenerate_box"] == 2
    assert "gt_dropped_degenerate_box" not in b.report
    assert 0 < b.AP50 < 1
    assert (a.AP50, a.AP, a.AP75) == (b.AP50, b.AP, b.AP75)
    pd.testing.assert_frame_equal(a.per_class, b.per_class)
    pd.testing.assert_frame_equal(a.per_frame, b.per_frame)
    pd.testing.assert_frame_equal(a.slices, b.slices)


def test_s1_leaves_bad_boxes_out_of_the_gt_and_says_so_everything_else_identical(tiny_world, tmp_path):
    bad_w, clean_w = tmp_path / "bad", tmp_path / "clean"
    for w in (bad_w, clean_w):
        shutil.copytree(tiny_world, w)
    names = []
    for split, n in (("train", 2), ("val", 1)):  # val: the confirmation GT
        lab = f"labels/det_20/det_{split}.json"
        frames = json.loads((bad_w / lab).read_text())
        planted = _plant(frames, n)
        names += planted
        (bad_w / lab).write_text(json.dumps(frames))  # NaN is what Python writes; null stays null
        clean = json.loads((clean_w / lab).read_text())
        for f in clean:
            if f["name"] in planted:
                f["labels"] = f["labels"][1:]
        (clean_w / lab).write_text(json.dumps(clean))
    ra = fw.s1_collect(make_cfg(bad_w, tmp_path / "oa", collect_total=10_000))
    rb = fw.s1_collect(make_cfg(clean_w, tmp_path / "ob", collect_total=10_000))  # used to die here, every rerun
    assert ra.info["boxes_left_out"] == 3 and rb.info["boxes_left_out"] == 0
    assert ra.info["counts"]["degenerate box"] == 3 and "degenerate box" not in rb.info["counts"]
    assert "3 box(es) with missing or bad coordinates left out" in ra.info["summary"]
    listed = ra["validation_issues"].query("kind == 'degenerate box'")["name"].tolist()
    assert sorted(listed) == sorted(names)
    for f in ("gt_collected.json", "gt_confirm.json", "strata.csv", "slice_index.csv"):
        assert (ra.dir / f).read_bytes() == (rb.dir / f).read_bytes(), f
    for f in ("frames.csv", "confirm_frames.csv"):  # identical but for the world folder in image_path
        assert (ra.dir / f).read_text().replace(str(bad_w), "W") == (rb.dir / f).read_text().replace(str(clean_w), "W")
    written = {f["name"] for g in ("collected", "confirm") for f in bdd.load_frames(ra.dir / f"gt_{g}.json")}
    assert set(names) <= written  # the planted frames are in the GT §1 writes, minus their bad box
    gt = bdd.load_frames(ra.dir / "gt_collected.json")
    assert all(bdd.box_issue(lb.get("box2d")) is None for f in gt for lb in f["labels"])
    assert np.isfinite(bdd.boxes_table(gt)[["x1", "y1", "x2", "y2"]].to_numpy()).all()
