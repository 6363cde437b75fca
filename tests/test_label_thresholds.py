"""The threshold that feeds training (issue 24 item 6): P/R measured at it, per-class
thresholds chosen by F-beta on the EVAL POOL only, and per-class accept in the training set."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bdd_engine import autolabel as al
from bdd_engine.bdd import CLASSES


def _lb(cat, box, score=None):
    lb = {"id": "x", "category": cat, "attributes": {}, "box2d": dict(zip(("x1", "y1", "x2", "y2"), map(float, box)))}
    if score is not None:
        lb["score"] = score
    return lb


def _fr(name, labels):
    return {"name": name, "attributes": {}, "labels": labels}


B = [[10 + 40 * i, 10, 40 + 40 * i, 40] for i in range(6)]  # six disjoint boxes


def _world():
    """GT: 4 cars and 2 pedestrians on f1; labels: cars at 0.9 (TP), 0.7 (TP), 0.5 (FP), 0.4 (TP);
    pedestrian at 0.45 (TP); the other car and pedestrian missed."""
    gt = [_fr("f1.jpg", [_lb("car", B[0]), _lb("car", B[1]), _lb("car", B[2]), _lb("car", B[3]),
                         _lb("pedestrian", B[4]), _lb("pedestrian", B[5])])]
    pred = [_fr("f1.jpg", [_lb("car", B[0], 0.9), _lb("car", B[1], 0.7), _lb("car", [300, 300, 330, 330], 0.5),
                           _lb("car", B[2], 0.4), _lb("pedestrian", B[4], 0.45)])]
    return gt, pred


def test_quality_at_accept_measures_only_the_labels_that_feed_training():
    gt, pred = _world()
    run = al.LabelRun("t", pred)
    q = al.quality_at_accept(run, gt, 0.6).set_index("class")
    assert q.loc["car", ["tp", "fp", "fn"]].tolist() == [2, 0, 2] and q.loc["car", "recall"] == 0.5
    assert q.loc["pedestrian", "tp"] == 0 and q.loc["pedestrian", "recall"] == 0.0  # its 0.45 is below accept
    assert q.loc["overall", "recall"] == pytest.approx(2 / 6) and q.loc["overall", "precision"] == 1.0
    # per-class accept: pedestrian's threshold 0.4 keeps its 0.45 label
    q2 = al.quality_at_accept(run, gt, {"car": 0.6, "pedestrian": 0.4}).set_index("class")
    assert q2.loc["pedestrian", "tp"] == 1 and q2.loc["overall", "recall"] == pytest.approx(3 / 6)
    s = al.pr_summary(al.quality_at_accept(run, gt, 0.6))
    assert s["recall"] == pytest.approx(0.3333, abs=1e-4) and s["classes_found"] == 1
    assert s["per_class"]["car"] == {"n_gt": 4, "precision": 1.0, "recall": 0.5} and set(s["per_class"]) == {"car", "pedestrian"}


def test_accepted_frames_take_a_threshold_per_class():
    _, pred = _world()
    run = al.LabelRun("t", pred)
    keep = al.accepted_frames(run, {"car": 0.8, "pedestrian": 0.4})
    assert [(lb["category"], lb["score"]) for lb in keep[0]["labels"]] == [("car", 0.9), ("pedestrian", 0.45)]
    with pytest.raises(KeyError, match="'pedestrian'"):
        al.accepted_frames(run, {"car": 0.8})


def test_fbeta_threshold_per_class_numbers():
    gt, pred = _world()
    chosen, table = al.fbeta_thresholds(pred, gt, default=0.6, grid=[0.35, 0.45, 0.55, 0.75, 0.95], beta=1.0, min_gt=2)
    t = table.set_index("class")
    # car: 0.35 -> P 3/4 R 3/4 F 0.75; 0.45/0.55 -> P 2/3 R 1/2 F 0.571; 0.75 -> P 1 R 1/4 F 0.4
    assert chosen["car"] == 0.35 and t.loc["car", "f_beta"] == pytest.approx(0.75)
    # pedestrian: 0.35 and 0.45 both F = 2/3: the tie goes to the higher threshold
    assert chosen["pedestrian"] == 0.45 and t.loc["pedestrian", "recall"] == 0.5
    # classes without enough GT keep the default, and every class has an entry
    assert chosen["bus"] == 0.6 and set(chosen) == set(CLASSES)
    assert math.isnan(t.loc["bus", "f_beta"]) and t.loc["bus", "chosen_from"].startswith("default")
    # beta < 1 weighs precision: car moves to a stricter threshold
    assert al.fbeta_thresholds(pred, gt, default=0.6, grid=[0.35, 0.75], beta=0.3, min_gt=2)[0]["car"] == 0.75
    assert al.fbeta_thresholds(pred, gt, default=0.6, grid=[0.35], min_gt=5)[0]["car"] == 0.6  # 4 GT < 5
    with pytest.raises(ValueError, match="beta"):
        al.fbeta_thresholds(pred, gt, default=0.6, grid=[0.5], beta=0)
    assert al.threshold_grid(0.35) == [0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


class _Recorder:
    """A labeler that predicts each frame's own GT boxes at score 0.5 and records what it was asked to label."""
    is_oracle = False

    def __init__(self, gt_by_name):
        self.gt, self.asked = gt_by_name, []

    def label(self, frames, paths, progress=True):
        self.asked += [f["name"] for f in frames]
        return al.LabelRun("rec", [_fr(f["name"], [{**lb, "score": 0.5} for lb in self.gt[f["name"]]["labels"]])
                                   for f in frames])


def test_per_class_thresholds_read_only_eval_pool_data():
    """The choice labels only eval-pool frames and scores against their GT: changing every
    other frame's ground truth (mining pool, train, confirmation) changes nothing."""
    pools = pd.DataFrame({"name": ["e1.jpg", "p1.jpg", "t1.jpg", "c1.jpg", "e2.jpg"],
                          "pool": ["eval", "pool", "train", "confirm", "eval"]})
    gt = {n: _fr(n, [_lb("car", B[i]) for i in range(3)]) for n in pools["name"]}
    paths = {n: f"/nowhere/{n}" for n in pools["name"]}
    rec = _Recorder(gt)
    chosen, table, _ = al.choose_on_eval_pool(rec, pools, gt, paths, default=0.6, grid=[0.35, 0.55], min_gt=2)
    assert rec.asked == ["e1.jpg", "e2.jpg"]
    assert chosen["car"] == 0.35 and table.set_index("class").loc["car", "n_gt"] == 6
    other = {**gt, **{n: _fr(n, []) for n in ("p1.jpg", "t1.jpg", "c1.jpg")}}
    rec2 = _Recorder(gt)
    assert al.choose_on_eval_pool(rec2, pools, other, paths, default=0.6, grid=[0.35, 0.55], min_gt=2)[0] == chosen
    assert [f["name"] for f in al.eval_pool_frames(pools, gt)] == ["e1.jpg", "e2.jpg"]


def test_write_outputs_reports_quality_at_the_training_threshold(tmp_path):
    from PIL import Image

    gt, pred = _world()
    run = al.LabelRun("t", pred)
    Image.new("RGB", (400, 400)).save(tmp_path / "f1.jpg")
    img = {"f1.jpg": str(tmp_path / "f1.jpg")}
    t = al.write_outputs(tmp_path / "out", run, gt, img, accept=0.6, review=0.35,
                         yolo=False, train_accept={**{c: 0.6 for c in CLASSES}, "pedestrian": 0.4})
    q = pd.read_csv(tmp_path / "out" / "quality_accept.csv").set_index("class")
    assert q.loc["pedestrian", "tp"] == 1 and q.loc["car", "tp"] == 2
    assert [lb["score"] for lb in t["train_frames"][0]["labels"]] == [0.9, 0.7, 0.45]
    assert "feed training" in (tmp_path / "out" / "summary.md").read_text()
    t0 = al.write_outputs(tmp_path / "o2", run, gt, img, accept=0.6, review=0.35, yolo=False)
    assert t0["quality_accept"].set_index("class").loc["pedestrian", "tp"] == 0  # default: label_accept


def test_grey_uncertain_fills_only_unsure_boxes_outside_accepted_ones(tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((60, 100, 3), 200, np.uint8)).save(tmp_path / "a.jpg", quality=100)
    Image.fromarray(np.full((60, 100, 3), 200, np.uint8)).save(tmp_path / "b.jpg", quality=100)
    frames = [_fr("a.jpg", [_lb("car", [10, 10, 29, 29], 0.9),        # accepted: kept
                            _lb("car", [20, 20, 49, 49], 0.5),        # unsure: grey outside the accepted box
                            _lb("pedestrian", [60, 5, 69, 14], 0.5),  # pedestrian accepted at 0.45: kept
                            _lb("bus", [80, 40, 89, 49], 0.2)]),      # discarded: untouched
              _fr("b.jpg", [_lb("car", [10, 10, 29, 29], 0.9)])]   # nothing unsure: no copy
    paths = {n: str(tmp_path / n) for n in ("a.jpg", "b.jpg")}
    accept = {**{c: 0.6 for c in CLASSES}, "pedestrian": 0.45}
    out = al.grey_uncertain(frames, paths, tmp_path / "grey", accept=accept, review=0.35)
    assert list(out) == ["a.jpg"]
    g = np.asarray(Image.open(out["a.jpg"]).convert("L")).astype(int)
    near = lambda v, want: abs(v - want) <= 3  # noqa: E731 (JPEG q95)
    assert near(g[40, 40], 114) and near(g[25, 45], 114)          # unsure box, outside the accepted one
    assert near(g[25, 25], 200) and near(g[15, 15], 200)          # inside the accepted box
    assert near(g[10, 65], 200) and near(g[45, 85], 200) and near(g[55, 5], 200)  # per-class accept, discard, free
    assert near(np.asarray(Image.open(paths["a.jpg"]).convert("L"))[40, 40], 200)  # the original is untouched


def test_section_7_chooses_the_training_threshold_on_eval_pool_frames_only(tmp_path):
    """flywheel._train_accept (what §7 calls): rule fbeta labels exactly §3's eval-pool frames and
    scores them against gt_eval.json; rule global labels nothing; an unknown rule is refused."""
    from bdd_engine import artifacts, bdd, flywheel
    from bdd_engine.config import ConfigError, load_config

    cfg = load_config("tiny", {"outputs_dir": str(tmp_path / "out"), "label_accept_rule": "fbeta",
                               "label_accept_min_gt": 2}, env=False)
    pools = pd.DataFrame({"name": ["e1.jpg", "p1.jpg", "t1.jpg", "e2.jpg"], "pool": ["eval", "pool", "train", "eval"]})
    gt = {n: _fr(n, [_lb("car", B[i]) for i in range(3)]) for n in pools["name"]}
    d = artifacts.section_dir(cfg.out, 3)
    d.mkdir(parents=True)
    bdd.write_bdd_json([gt["e1.jpg"], gt["e2.jpg"]], d / "gt_eval.json")
    paths = {n: f"/nowhere/{n}" for n in pools["name"]}
    rec = _Recorder(gt)
    accept, info = flywheel._train_accept(cfg, rec, pools, paths)
    assert rec.asked == ["e1.jpg", "e2.jpg"] and info["chosen_on"] == "eval pool" and info["rule"] == "fbeta"
    # every label scores 0.5 and matches: F1 ties up to 0.5, the tie goes to the higher threshold
    assert accept["car"] == 0.5 and accept["bus"] == float(cfg.label_accept) == info["accept"]
    rec2 = _Recorder(gt)
    g = load_config("tiny", {"outputs_dir": str(tmp_path / "out")}, env=False)
    assert flywheel._train_accept(g, rec2, pools, paths) == (float(g.label_accept), {"rule": "global", "accept": float(g.label_accept)})
    assert rec2.asked == []
    with pytest.raises(ConfigError, match="label_accept_rule"):
        flywheel._train_accept(load_config("tiny", {"label_accept_rule": "magic"}, env=False), rec2, pools, paths)
