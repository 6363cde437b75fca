"""autolabel's routing rules (autolabel/router.py) pinned at their edges: accept / review / discard by score
(``>= accept`` accepts, ``review <= s < accept`` reviews), which frames go to humans,
which labels reach iter1's training set, and the rider rule's overlap threshold
(autolabel/gsam2.py: intersection / pedestrian-box area, ``>=``) on both axes."""

from __future__ import annotations

import numpy as np
import pytest

from bdd_engine import autolabel as al

ACC, REV = 0.6, 0.35


def lb(score, cat="car", box=(0, 0, 10, 10)):
    return {"id": "x", "category": cat, "attributes": {},
            "box2d": dict(zip(("x1", "y1", "x2", "y2"), map(float, box))), "score": score}


@pytest.mark.parametrize("score,bucket", [
    (0.6, "accept"), (0.6000001, "accept"), (1.0, "accept"),
    (0.5999999, "review"), (0.35, "review"),
    (0.3499999, "discard"), (0.0, "discard"),
])
def test_bucket_edges(score, bucket):
    assert al.bucket_of(score, ACC, REV) == bucket


def test_equal_thresholds_leave_no_review_bucket_and_reversed_ones_raise():
    assert al.bucket_of(0.5, 0.5, 0.5) == "accept" and al.bucket_of(0.4999, 0.5, 0.5) == "discard"
    with pytest.raises(ValueError, match="review <= accept"):
        al.bucket_of(0.5, accept=0.5, review=0.5000001)


def test_route_splits_every_frame_by_bucket_at_the_edges():
    frames = [{"name": "a.jpg", "attributes": {"weather": "rainy"}, "labels": [lb(0.6), lb(0.35), lb(0.3499), lb(0.9)]},
              {"name": "b.jpg", "labels": []},
              {"name": "c.jpg", "labels": [{"category": "car", "box2d": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}]}]
    r = al.route(frames, ACC, REV)
    assert [f["name"] for f in r["accept"]] == ["a.jpg", "b.jpg", "c.jpg"]      # every bucket lists every frame
    assert [x["score"] for x in r["accept"][0]["labels"]] == [0.6, 0.9]
    assert [x["score"] for x in r["review"][0]["labels"]] == [0.35]
    assert [x["score"] for x in r["discard"][0]["labels"]] == [0.3499]
    assert r["accept"][0]["attributes"] == {"weather": "rainy"}
    assert len(r["accept"][2]["labels"]) == 1                                    # no score = 1.0 = accepted


def test_frames_for_humans_at_the_edges():
    run = al.LabelRun("t", [
        {"name": "acc.jpg", "labels": [lb(0.6)]},                   # accepted only: no human
        {"name": "rev.jpg", "labels": [lb(0.6), lb(0.35)]},         # a label exactly at review: human
        {"name": "dis.jpg", "labels": [lb(0.3499)]},                # nothing >= review: human
        {"name": "almost.jpg", "labels": [lb(0.5999), lb(0.9)]},    # just below accept: review → human
        {"name": "empty.jpg", "labels": []},                        # labeler offered nothing: human
        {"name": "fail.jpg", "labels": [lb(0.99)]},                 # failed frame: human
    ], failures={"fail.jpg": "unreadable"})
    assert al.frames_for_humans(run, ACC, REV) == ["rev.jpg", "dis.jpg", "almost.jpg", "empty.jpg", "fail.jpg"]


def test_only_accepted_labels_of_ok_frames_reach_training():
    run = al.LabelRun("t", [
        {"name": "a.jpg", "labels": [lb(0.6), lb(0.5999), lb(0.35), lb(0.1)]},
        {"name": "b.jpg", "labels": [lb(0.5999)]},
        {"name": "c.jpg", "labels": [lb(0.95)]},
    ], failures={"c.jpg": "timeout"})
    acc = al.accepted_frames(run, ACC)
    assert [f["name"] for f in acc] == ["a.jpg"] and [x["score"] for x in acc[0]["labels"]] == [0.6]
    keep = al.accepted_frames(run, ACC, keep_empty=True)
    assert [f["name"] for f in keep] == ["a.jpg", "b.jpg"] and keep[1]["labels"] == []


def test_router_table_counts_at_the_edges():
    run = al.LabelRun("t", [{"name": "a.jpg", "labels": [lb(0.6), lb(0.35), lb(0.3499)]},
                            {"name": "b.jpg", "labels": [lb(0.5999)]}])
    t = al.router_table(None, run, ACC, REV).set_index("bucket")
    assert t["n_labels"].tolist() == [1, 2, 1] and t["n_frames"].tolist() == [1, 2, 1]
    assert t.loc["accept", "score"] == ">= 0.6" and t.loc["review", "score"] == "[0.35, 0.6)"
    assert t.loc["discard", "score"] == "< 0.35" and t["precision"].isna().all()


# ----------------------------------------------------------------------------- rider rule
def _rider(ped, bike, overlap=0.3, bike_cat="bicycle"):
    cats, n = al.apply_rider_rule(["pedestrian", bike_cat], np.array([ped, bike], float), overlap)
    return cats[0], n


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("inside,expect", [(3.0, "rider"), (2.9, "pedestrian"), (3.1, "rider")])
def test_rider_overlap_threshold_on_both_axes(axis, inside, expect):
    """Pedestrian 10x10 = 100 px²; the bike covers ``inside`` px of it along one axis
    → overlap inside*10/100; 0.3 exactly becomes a rider (>=)."""
    ped = [0.0, 0.0, 10.0, 10.0]
    bike = [10.0 - inside, -50.0, 100.0, 100.0] if axis == "x" else [-50.0, 10.0 - inside, 100.0, 100.0]
    assert _rider(ped, bike) == (expect, int(expect == "rider"))


def test_rider_overlap_is_relative_to_the_pedestrian_box_not_the_bike():
    # a small bike fully inside a big pedestrian box: 4% of the pedestrian → not a rider
    assert _rider([0, 0, 50, 50], [10, 10, 20, 20]) == ("pedestrian", 0)
    # a big bike containing the pedestrian: 100% → rider, although IoU is tiny
    assert _rider([10, 10, 20, 20], [0, 0, 100, 100]) == ("rider", 1)
    # the overlap parameter is used, not a constant
    assert _rider([0, 0, 10, 10], [5, -50, 100, 100], overlap=0.5)[0] == "rider"
    assert _rider([0, 0, 10, 10], [5.1, -50, 100, 100], overlap=0.5)[0] == "pedestrian"


def test_rider_rule_only_pedestrians_on_bicycles_or_motorcycles():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110]], float)
    cats, n = al.apply_rider_rule(["pedestrian", "car", "motorcycle", "pedestrian"], boxes, 0.3)
    assert cats == ["rider", "car", "motorcycle", "pedestrian"] and n == 1
    cats, n = al.apply_rider_rule(["pedestrian", "car", "truck"], boxes[:3], 0.3)
    assert cats == ["pedestrian", "car", "truck"] and n == 0
    # the best-overlapping bike decides (two bikes: one far, one covering)
    cats, n = al.apply_rider_rule(["bicycle", "pedestrian", "bicycle"],
                                  np.array([[500, 500, 600, 600], [0, 0, 10, 10], [0, 0, 10, 10]], float), 0.3)
    assert cats == ["bicycle", "rider", "bicycle"] and n == 1


# ----------------------------------------------------------------- issue 23, item 21: which arm gets what
def test_accepted_mined_labels_reach_iter1_only_and_nothing_else_does():
    """§7's arms (experiment.arm_additions over the router's accepted_frames): iter1 adds exactly the
    mined frames' labels with score >= label_accept; random its own frames' accepted labels; oracle
    the mined frames' GT; continue nothing. No review/discard label and no mined auto-label
    reaches any other arm (the fast twin of test_notebook's check on the YOLO sets on disk)."""
    from bdd_engine import experiment

    def labelled(prefix, scores_per_frame):
        return al.LabelRun("t", [{"name": f"{prefix}{i}.jpg", "attributes": {},
                                  "labels": [dict(lb(s), id=f"{prefix}{i}:{s}") for s in ss]}
                                 for i, ss in enumerate(scores_per_frame)])

    mined = labelled("m", [[0.9, ACC, 0.5], [0.3, REV], [0.99], [ACC - 1e-9]])
    random_ = labelled("r", [[0.7, 0.1], [0.2]])
    oracle = [{"name": "m0.jpg", "attributes": {}, "labels": [{"id": "gt", "category": "car", "box2d": lb(1)["box2d"]}]}]
    auto = {"mined": al.accepted_frames(mined, ACC), "random": al.accepted_frames(random_, ACC)}
    adds = {arm: experiment.arm_additions(arm, auto, oracle, ["r0.jpg", "r1.jpg"], {})
            for arm in ("iter1", "random", "oracle", "continue")}
    ids = {arm: [x["id"] for f in frames for x in f["labels"]] for arm, frames in adds.items()}
    assert ids["iter1"] == ["m0:0.9", f"m0:{ACC}", "m2:0.99"]
    assert [f["name"] for f in adds["iter1"]] == ["m0.jpg", "m2.jpg"]  # a frame with nothing accepted adds nothing
    assert ids["random"] == ["r0:0.7"]
    assert ids["oracle"] == ["gt"] and ids["continue"] == []
    mined_ids = {x["id"] for f in mined.frames for x in f["labels"]}
    for arm in ("random", "oracle", "continue"):
        assert not mined_ids & set(ids[arm]), f"{arm} trains on the mined auto-labels"
    assert set(adds) == {"iter1", "random", "oracle", "continue"}
    assert experiment.arm_additions("random", {"mined": auto["mined"]}, [], ["r0.jpg"], {}) == []  # no random set labelled
