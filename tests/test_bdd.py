"""BDD format layer: null-safety, mappings, spaces in class names, validation of every bad-input kind."""

import json

import numpy as np
import pytest

from bdd_engine import bdd


def frame(name, labels, attrs=None):
    return {"name": name, "attributes": attrs if attrs is not None else
            {"weather": "clear", "timeofday": "daytime", "scene": "city street"}, "labels": labels}


def box(cat, x1=10, y1=10, x2=50, y2=60, **attrs):
    return {"id": "1", "category": cat, "attributes": attrs, "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}


def test_classes_official_order_with_spaces():
    assert bdd.CLASSES[0] == "pedestrian" and bdd.CLASSES[2] == "car"
    assert bdd.CLASSES[8:] == ("traffic light", "traffic sign")
    assert len(bdd.CLASSES) == 10


def test_load_null_labels_and_attributes(tmp_path):
    p = tmp_path / "det.json"
    p.write_text(json.dumps([
        {"name": "a.jpg", "attributes": None, "labels": None},
        {"name": "b.jpg"},
        {"name": "c.jpg", "attributes": {"weather": "rainy"}, "labels": [{"id": "1", "category": "car", "attributes": None,
                                                                         "box2d": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}}]},
    ]))
    frames = bdd.load_frames(p)
    assert [f["labels"] for f in frames[:2]] == [[], []]
    assert frames[0]["attributes"] == {} and frames[2]["labels"][0]["attributes"] == {}
    table = bdd.frames_table(frames)
    assert table["slice"].isna().all()  # incomplete attributes → in no slice
    assert list(table["n_boxes"]) == [0, 0, 1]


def test_missing_label_file_points_to_readme(tmp_path):
    with pytest.raises(FileNotFoundError, match="README"):
        bdd.load_frames(tmp_path / "nope.json")


def test_not_a_list_is_clear_error(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="list of frames"):
        bdd.load_frames(p)


def test_name_and_ignore_mapping():
    frames = [frame("a.jpg", [box("person"), box("bike"), box("motor"), box("van"), box("caravan"),
                              box("other person"), box("other vehicle"), box("trailer"), box("traffic sign", crowd=True),
                              {"id": "9", "category": "drivable area", "poly2d": [[0, 0]]}, box("unicorn")])]
    from collections import Counter
    counts = Counter()
    t = bdd.boxes_table(frames, counts)
    assert list(t["category"]) == ["pedestrian", "bicycle", "motorcycle", "car", "car",
                                   "pedestrian", "car", "truck", "traffic sign"]
    assert list(t["ignore"]) == [False] * 5 + [True] * 3 + [False]
    assert t["crowd"].tolist()[-1] is True or t["crowd"].tolist()[-1] == True  # noqa: E712
    assert t["score"].isna().all()
    assert counts == {"non-box label": 1, "unknown category": 1}
    assert t.loc[t["category"] == "traffic sign", "class_id"].item() == 9


def test_video_and_group_parsing():
    assert bdd.video_of("0000f77c-6257be58.jpg") == "0000f77c-6257be58"
    assert bdd.video_of("0000f77c-6257be58-0000001.jpg") == "0000f77c-6257be58"
    assert bdd.video_of("x.jpg", {"videoName": "abc-def"}) == "abc-def"
    assert bdd.group_of("0000f77c-6257be58") == "0000f77c"


def test_slice_key_verbatim_with_slash():
    assert bdd.slice_key({"weather": "partly cloudy", "timeofday": "dawn/dusk", "scene": "gas stations"}) == \
        "partly cloudy | dawn/dusk | gas stations"


@pytest.mark.parametrize("kind,frames", [
    ("duplicate name", [frame("a.jpg", []), frame("a.jpg", [])]),
    ("unknown category", [frame("a.jpg", [box("unicorn")])]),
    ("missing box2d", [frame("a.jpg", [{"id": "1", "category": "car", "attributes": {}}])]),
    ("degenerate box", [frame("a.jpg", [box("car", x1=50, x2=50)])]),
    ("out-of-image box", [frame("a.jpg", [box("car", x2=1500)])]),
    ("unknown attribute value", [frame("a.jpg", [], {"weather": "sunny", "timeofday": "daytime", "scene": "highway"})]),
    ("missing image file", [frame("zzz.jpg", [])]),
])
def test_validation_reports_each_kind(kind, frames, tmp_path):
    index = {"a.jpg": tmp_path / "a.jpg"}
    rep = bdd.validate(frames, index, image_wh=(1280, 720))
    assert rep.counts == {kind: 1}, rep.counts
    assert not rep.ok and kind in rep.summary()


def test_validation_clean_and_2018_poly_entries_are_fine(tmp_path):
    frames = [frame("a.jpg", [box("car"), {"id": "2", "category": "lane", "poly2d": [[0, 0]]}])]
    rep = bdd.validate(frames, {"a.jpg": tmp_path}, image_wh=(1280, 720))
    assert rep.ok and rep.n_labels == 2


def test_image_index_and_zero_coverage(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image folder"):
        bdd.index_images(tmp_path)
    (tmp_path / "images/10k/train").mkdir(parents=True)
    (tmp_path / "images/10k/train/b.jpg").write_bytes(b"x")
    idx = bdd.index_images(tmp_path)
    assert list(idx) == ["b.jpg"]
    with pytest.raises(FileNotFoundError, match="0 of 1 labelled frames"):
        bdd.image_coverage([frame("a.jpg", [])], idx)
    assert bdd.image_coverage([frame("b.jpg", []), frame("a.jpg", [])], idx) == (1, 2)


def test_write_predictions_roundtrip(tmp_path):
    import pandas as pd
    boxes = pd.DataFrame({"name": ["a.jpg"], "category": ["traffic light"], "class_id": [8], "x1": [1.0], "y1": [2.0],
                          "x2": [3.0], "y2": [4.0], "crowd": [False], "ignore": [False], "score": [0.5]})
    frames = bdd.frames_from_boxes(["a.jpg", "b.jpg"], boxes)
    p = bdd.write_bdd_json(frames, tmp_path / "pred.json")
    back = bdd.boxes_table(bdd.load_frames(p))
    assert back["score"].tolist() == [0.5] and back["category"].tolist() == ["traffic light"]
    assert np.allclose(back[["x1", "y1", "x2", "y2"]].values, [[1, 2, 3, 4]])
    assert [f["labels"] for f in bdd.load_frames(p)][1] == []
