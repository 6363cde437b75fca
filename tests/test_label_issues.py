"""Issue 29: planted label errors in the synthetic world, the label-issues stage, its command."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from bdd_engine import synth
from bdd_engine.config import load_config
from bdd_engine.geometry import box_iou


@pytest.fixture(scope="module")
def specs():
    cfg = load_config("tiny", {"synth_n_train": 30, "synth_n_val": 0, "synth_share_10k": 0.0}, env=False)
    return synth.plan_world(cfg)


def _digest(frames):
    h = hashlib.sha256()
    for img, labels in frames:
        h.update(img.tobytes())
        h.update(json.dumps(labels, sort_keys=True).encode())
    return h.hexdigest()[:16]


def test_clean_world_is_unchanged_and_plants_nothing(specs):
    """Noise 0 draws no extra random number: the first frames render exactly as before issue 29
    (digest pinned from the pre-change code), and nothing is recorded."""
    planted: list = []
    frames = [synth.render_frame(s, planted) for s in specs[:4]]
    assert planted == []
    assert _digest(frames) == "9d2e234c981f4ee4"


def test_every_planted_kind_is_recorded_and_true(specs):
    planted: list = []
    out = {s.name: (s, synth.render_frame(replace(s, label_noise=0.3), planted)[1]) for s in specs[:12]}
    kinds = {e["kind"] for e in planted}
    assert kinds == set(synth.NOISE_KINDS), kinds
    for e in planted:
        spec, labels = out[e["name"]]
        clean = synth.render_frame(spec)[1]  # the same frame without noise: the truth
        by_id = {lb["id"]: lb for lb in labels}
        clean_boxes = np.array([synth._xyxy(lb) for lb in clean])
        if e["kind"] == "dropped":
            assert e["label_id"] is None
            assert box_iou(np.array([e["true_box"]]), np.array([synth._xyxy(lb) for lb in labels]).reshape(-1, 4),
                           pixel_shift=0).max(initial=0) < 0.99, "a dropped box is still in the labels"
            continue
        lb = by_id[e["label_id"]]
        assert synth._xyxy(lb) == e["box"] and lb["category"] == e["category"]
        best = box_iou(np.array([e["box"]]), clean_boxes, pixel_shift=0).max(initial=0)
        if e["kind"] == "swapped":
            assert e["category"] == synth.SWAP[e["true_category"]] != e["true_category"] and best > 0.99
        elif e["kind"] == "shifted":
            assert e["category"] == e["true_category"] and best < 0.999
        else:  # spurious: overlaps no true box
            assert e["true_box"] is None and best == 0.0


def test_world_writes_the_sidecar_only_with_noise(tmp_path):
    base = {"synth_n_train": 6, "synth_n_val": 2, "synth_share_10k": 0.0}
    clean = synth.generate(load_config("tiny", base, env=False), tmp_path / "clean", workers=1)
    noisy = synth.generate(load_config("tiny", {**base, "synth_label_noise": 0.3}, env=False), tmp_path / "noisy", workers=1)
    assert not (clean / synth.PLANTED_FILE).exists()
    side = json.loads((noisy / synth.PLANTED_FILE).read_text())
    assert side["label_noise"] == 0.3 and side["errors"]
    names = {f["name"] for s in ("train", "val") for f in json.loads((noisy / f"labels/det_20/det_{s}.json").read_text())}
    assert {e["name"] for e in side["errors"]} <= names


# ----------------------------------------------------------------------------- the stage on hand-built cases
def _lb(i, cat, box, score=None):
    d = {"id": str(i), "category": cat, "attributes": {}, "box2d": dict(zip(("x1", "y1", "x2", "y2"), map(float, box)))}
    return d if score is None else {**d, "score": score}


@pytest.fixture(scope="module")
def issues():
    from bdd_engine import labelissues

    labels = [{"name": "f.jpg", "labels": [
        _lb("clean", "car", (100, 100, 200, 180)),
        _lb("swap", "truck", (300, 100, 400, 180)),
        _lb("loose", "car", (10, 10, 60, 50)),
        _lb("ghost", "car", (500, 200, 560, 260)),
        _lb("clean2", "car", (250, 250, 300, 290)),
        _lb("both", "car", (400, 300, 460, 340)),  # its own class wins over a weaker other class: not a swap
        _lb("crowd", "pedestrian", (0, 300, 100, 350)) | {"attributes": {"crowd": True}}]}]
    preds = [{"name": "f.jpg", "labels": [
        _lb(0, "car", (101, 100, 200, 181), 0.9), _lb(1, "car", (300, 100, 400, 180), 0.9),
        _lb(2, "car", (10, 10, 60, 72), 0.9), _lb(3, "car", (250, 250, 300, 290), 0.9),
        _lb(7, "car", (400, 300, 460, 340), 0.9), _lb(8, "truck", (400, 300, 460, 340), 0.6),
        _lb(4, "pedestrian", (600, 20, 630, 90), 0.8), _lb(5, "pedestrian", (601, 21, 630, 90), 0.7),
        _lb(6, "pedestrian", (10, 305, 40, 345), 0.9)]}]
    return labelissues.score_labels(labels, preds)


def test_each_mistake_kind_is_flagged_with_its_reason(issues):
    t = issues.set_index(issues["label_id"].where(issues["row"] == "label", "missed"))
    assert t.loc["swap", "reason"] == "wrong class: looks like car" and t.loc["swap", "wrong_class"] == pytest.approx(0.9)
    assert t.loc["loose", "reason"].startswith("badly placed") and t.loc["loose", "badly_placed"] > 0.5
    assert t.loc["ghost", "reason"].startswith("spurious box")
    assert t.loc["ghost", "spurious_box"] == pytest.approx(3 / 4, abs=1e-3)  # 3 of the 4 boxes of its size band are supported
    assert t.loc["both", "wrong_class"] == pytest.approx(0.6 * (1 - 0.9)) and not t.loc["both", "flagged"]
    assert t.loc["missed", "reason"] == "missed object: unlabelled pedestrian (score 0.80)"
    assert (issues["row"] == "missed").sum() == 1, "the duplicate and the prediction in the crowd region are not missed objects"
    assert set(issues.loc[issues["flagged"], "label_id"]) == {"swap", "loose", "ghost", ""}
    assert set(issues["label_id"].tolist()[-3:]) == {"clean", "clean2", "both"}, "clean boxes rank last"
    assert "crowd" not in set(issues["label_id"])


def test_issues_csv_is_written_atomically(issues, tmp_path):
    from bdd_engine import labelissues

    path = labelissues.write_issues(issues, tmp_path / "labels.issues.csv")
    back = __import__("pandas").read_csv(path, keep_default_na=False)
    assert list(back.columns) == labelissues.COLUMNS and len(back) == len(issues)
    assert not list(tmp_path.glob("*.tmp*"))


# ----------------------------------------------------------------------------- the command
@pytest.fixture
def folder(tmp_path):
    from PIL import Image

    img = tmp_path / "imgs"
    img.mkdir()
    Image.new("RGB", (64, 48)).save(img / "a.jpg")
    return tmp_path, img


def _cli(*argv):
    from bdd_engine.__main__ import main

    return main(["label-issues", "--set", "device=cpu", *map(str, argv)])


def test_cli_refuses_out_inside_images(folder, capsys):
    tmp, img = folder
    (tmp / "l.json").write_text(json.dumps([{"name": "a.jpg", "labels": [_lb(0, "car", (1, 1, 20, 20))]}]))
    assert _cli("--labels", tmp / "l.json", "--images", img, "--weights", synth.__file__, "--out", img / "x") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out") and "inside --images" in err and "\n" not in err
    assert not (img / "x").exists()


@pytest.mark.parametrize("labels, words", [
    ([{"name": "gone.jpg", "labels": [_lb(0, "car", (1, 1, 20, 20))]}], "have no image"),
    ([{"name": "a.jpg", "labels": [_lb(0, "spaceship", (1, 1, 20, 20))]}], "unknown classes 'spaceship'")])
def test_cli_bad_labels_one_line(folder, capsys, labels, words):
    tmp, img = folder
    (tmp / "l.json").write_text(json.dumps(labels))
    assert _cli("--labels", tmp / "l.json", "--images", img, "--weights", synth.__file__, "--out", tmp / "o") == 2
    err = capsys.readouterr().err.strip()
    assert words in err and str(tmp / "l.json") in err and "\n" not in err
    assert not (tmp / "o").exists()


def test_review_queue_takes_the_most_suspicious_frames_first(issues):
    from bdd_engine import labelissues

    other = issues.assign(name="g.jpg", score=issues["score"] / 2)  # the same rows, half as suspicious
    both = __import__("pandas").concat([other, issues])
    assert labelissues.suspect_frames(both, 5) == ["f.jpg", "g.jpg"]
    assert labelissues.suspect_frames(both, 1) == ["f.jpg"]
    assert labelissues.suspect_frames(both.assign(flagged=False), 5) == []
