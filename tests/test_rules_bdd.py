"""bdd.py's input rules at their edges: box validation on both axes and at the image-edge
tolerance, degenerate boxes, Scalabel's ``{"frames": [...]}`` wrapper, invalid JSON,
malformed frames and labels, duplicate names."""

from __future__ import annotations

import json

import pytest

from bdd_engine import bdd

W, H = 1280, 720


def frame(name, labels, attrs=None):
    return {"name": name, "attributes": attrs if attrs is not None else {}, "labels": labels}


def car(x1, y1, x2, y2, lid="1"):
    return {"id": lid, "category": "car", "attributes": {}, "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}


def kinds(frames, **kw):
    return bdd.validate(frames, None, **kw).counts


# ----------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("box,ok", [
    ((0, 0, W, H), True),                       # the full frame
    ((-1, -1, W + 1, H + 1), True),             # exactly at the 1 px tolerance on every edge
    ((-1.01, 10, 50, 60), False),               # x1 past the tolerance
    ((10, -1.01, 50, 60), False),               # y1 past it
    ((10, 10, W + 1.01, 60), False),            # x2 past it
    ((10, 10, 50, H + 1.01), False),            # y2 past it
    ((10, 10, 50, H + 0.99), True),
    ((10, 10, 50, W), False),                   # y2 checked against the height, not the width
    ((10, 10, H + 50, 60), True),               # x2 beyond the height is fine: x is checked against W
])
def test_out_of_image_on_both_axes_at_the_tolerance(box, ok):
    got = kinds([frame("a.jpg", [car(*box)])], image_wh=(W, H))
    assert got == ({} if ok else {"out-of-image box": 1}), got


def test_tolerance_and_size_are_parameters():
    f = [frame("a.jpg", [car(-3, 0, 100, 100)])]
    assert kinds(f, image_wh=(W, H), tol=3.0) == {}
    assert kinds(f, image_wh=(W, H), tol=2.9) == {"out-of-image box": 1}
    assert kinds([frame("a.jpg", [car(0, 0, 330, 100)])], image_wh=(320, 180)) == {"out-of-image box": 1}
    assert kinds([frame("a.jpg", [car(0, 0, 3000, 3000)])], image_wh=None) == {}     # bounds check off
    rep = bdd.validate([frame("a.jpg", [car(0, 0, 50, 800, lid="7")])], None, image_wh=(W, H))
    assert rep.issues.iloc[0][["name", "label_id", "kind"]].tolist() == ["a.jpg", "7", "out-of-image box"]
    assert "1280x720" in rep.issues.iloc[0]["detail"]


@pytest.mark.parametrize("box,ok", [
    ((10, 10, 10, 60), False),                  # zero width
    ((10, 10, 50, 10), False),                  # zero height (the y axis)
    ((50, 10, 10, 60), False),                  # x2 < x1
    ((10, 60, 50, 10), False),                  # y2 < y1
    ((10, 10, 10.001, 10.001), True),           # tiny but positive
])
def test_degenerate_boxes_on_both_axes(box, ok):
    got = kinds([frame("a.jpg", [car(*box)])], image_wh=(W, H))
    assert got == ({} if ok else {"degenerate box": 1}), got


def test_degenerate_is_reported_instead_of_out_of_image():
    assert kinds([frame("a.jpg", [car(2000, 10, 1990, 60)])], image_wh=(W, H)) == {"degenerate box": 1}


# ----------------------------------------------------------------------------- loading
def test_scalabel_frames_wrapper(tmp_path):
    frames = [frame("a.jpg", [car(1, 2, 3, 4)]), frame("b.jpg", [])]
    p = tmp_path / "wrapped.json"
    p.write_text(json.dumps({"config": {"imageSize": {"width": W, "height": H}}, "frames": frames}))
    q = tmp_path / "plain.json"
    q.write_text(json.dumps(frames))
    assert bdd.load_frames(p) == bdd.load_frames(q)
    assert [f["name"] for f in bdd.load_frames(p)] == ["a.jpg", "b.jpg"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"frames": {"a.jpg": {}}}))
    with pytest.raises(ValueError, match="expected a list of frames"):
        bdd.load_frames(bad)


@pytest.mark.parametrize("text", ['[{"name": "a.jpg",', "", "NaN-garbage", '[{"name": "a.jpg"}] trailing'])
def test_invalid_json_is_a_clear_value_error(tmp_path, text):
    p = tmp_path / "broken.json"
    p.write_text(text)
    with pytest.raises(ValueError, match="is not valid JSON.*re-download or re-generate"):
        bdd.load_frames(p)


def test_malformed_frames_and_labels_are_skipped_by_the_loader(tmp_path):
    p = tmp_path / "mixed.json"
    p.write_text(json.dumps([
        frame("a.jpg", [car(1, 2, 3, 4), "not-a-label", None, 7]),
        "a string", 42, None, [1, 2],
        {"name": "b.jpg", "labels": None, "attributes": None},
    ]))
    got = bdd.load_frames(p)
    assert [f["name"] for f in got] == ["a.jpg", "b.jpg"]
    assert len(got[0]["labels"]) == 1 and got[0]["labels"][0]["box2d"]["x2"] == 3
    assert got[1]["labels"] == [] and got[1]["attributes"] == {}


def test_validate_reports_malformed_frames():
    frames = [frame("a.jpg", []), {"labels": []}, {"name": "", "labels": []}, {"name": 5}, "junk",
              frame("b.jpg", [car(0, 0, 10, 10)])]
    rep = bdd.validate(frames, None, image_wh=(W, H))
    assert rep.counts == {"malformed frame": 4} and rep.n_frames == 6 and rep.n_labels == 1
    box = {"id": "9", "category": "car", "box2d": {"x1": 0, "y1": "top", "x2": 5, "y2": 5}}
    half = {"id": "8", "category": "car", "box2d": {"x1": 0, "y1": 0, "x2": 5}}
    rep = bdd.validate([frame("c.jpg", [box, half])], None, image_wh=(W, H))
    assert list(rep.issues["label_id"]) == ["9", "8"]                # both reported, none crashes
    assert rep.issues.iloc[1]["kind"] == "missing box2d"              # a coordinate is absent
    assert rep.issues.iloc[0]["kind"] in ("missing box2d", "degenerate box") and "'top'" in rep.issues.iloc[0]["detail"]


def test_loader_keeps_duplicates_for_validate_to_report(tmp_path):
    p = tmp_path / "dup.json"
    p.write_text(json.dumps([frame("a.jpg", [car(1, 1, 5, 5)]), frame("a.jpg", [])]))
    got = bdd.load_frames(p)
    assert [f["name"] for f in got] == ["a.jpg", "a.jpg"] and len(got[0]["labels"]) == 1
    assert bdd.validate(got, None).counts == {"duplicate name": 1}


def test_duplicate_names_each_repeat_reported_once():
    frames = [frame("a.jpg", []), frame("b.jpg", []), frame("a.jpg", []), frame("a.jpg", []), frame("c.jpg", [])]
    rep = bdd.validate(frames, None, image_wh=(W, H))
    assert rep.counts == {"duplicate name": 2}
    assert list(rep.issues["name"]) == ["a.jpg", "a.jpg"] and not rep.ok
    assert "2 issues (2 duplicate name)" in rep.summary()
    assert bdd.validate([frame("a.jpg", []), frame("A.jpg", [])], None).ok     # names are case-sensitive


def test_unknown_attribute_values_each_attribute():
    f = frame("a.jpg", [], {"weather": "clear", "timeofday": "noon", "scene": "moon"})
    rep = bdd.validate([f], None)
    assert rep.counts == {"unknown attribute value": 2}
    assert sorted(rep.issues["detail"]) == ["scene='moon'", "timeofday='noon'"]
    assert bdd.validate([frame("a.jpg", [], {"weather": "undefined", "timeofday": "dawn/dusk",
                                             "scene": "gas stations"})], None).ok
