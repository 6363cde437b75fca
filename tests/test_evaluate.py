"""bdd_engine.evaluate == BDD's official detection eval (Scalabel → pycocotools), per slice too."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bdd_engine import bdd
from bdd_engine.evaluate import (boot_map50, evaluate, main_evaluate, paired_delta, resample_weights,
                                 worst_slice)
from bdd_engine.evaluate import pycocotools_reference as coco_reference

# ----------------------------------------------------------------------------- generated cases
RAW = ["pedestrian", "person", "rider", "car", "van", "caravan", "truck", "bus", "motor", "bike",
       "bicycle", "traffic light", "traffic sign", "other vehicle", "other person", "trailer"]
PRED_CATS = RAW[:13] + ["train"]   # "train" never in GT: a predicted class absent from GT


def _box(rng, W, H):
    s = rng.choice([8, 20, 40, 80, 200])          # spans small / medium / large
    w, h = rng.uniform(0.5, 2, 2) * s
    x, y = rng.uniform(0, max(W - w, 1)), rng.uniform(0, max(H - h, 1))
    if rng.random() < 0.5:                         # integer pixels → exact IoU ties occur
        x, y, w, h = round(x), round(y), round(w), round(h)
    return dict(x1=float(x), y1=float(y), x2=float(x + w), y2=float(y + h))


def gen_case(seed: int, n_frames: int = 40, crowded: bool = False, tied_scores: bool = True):
    """Random GT/pred pair with crowd boxes, ignore-mapped categories, frames without GT,
    frames missing from the predictions, a predicted class absent from GT, duplicates,
    score ties, a non-box label and frames without slice attributes."""
    rng = np.random.default_rng(seed)
    W, H = (260, 200) if crowded else (1280, 720)
    gts, preds = [], []
    for i in range(n_frames):
        name = f"{rng.integers(16**8):08x}-{i:04d}.jpg"
        attrs = {"weather": str(rng.choice(["clear", "foggy"])), "timeofday": str(rng.choice(["daytime", "night"])),
                 "scene": "highway"} if rng.random() > 0.05 else {}
        labels = []
        for j in range(0 if rng.random() < 0.15 else int(rng.integers(1, 15))):
            labels.append({"id": str(j), "category": str(rng.choice(RAW)),
                           "attributes": {"crowd": bool(rng.random() < 0.1)}, "box2d": _box(rng, W, H)})
        if rng.random() < 0.3:
            labels.append({"id": "d", "category": "drivable area", "poly2d": [{"vertices": [[0, 0]]}]})
        gts.append({"name": name, "attributes": attrs, "labels": labels})
        if rng.random() < 0.1:
            continue                                   # frame absent from the prediction file
        plabels = []
        for lb in labels:
            if "box2d" not in lb or rng.random() < 0.2:
                continue
            b, cat = lb["box2d"], lb["category"] if rng.random() < 0.85 else str(rng.choice(PRED_CATS))
            nb = {k: v + rng.normal(0, max(b["x2"] - b["x1"], 4) * 0.15) for k, v in b.items()}
            nb["x1"], nb["x2"] = sorted((nb["x1"], nb["x2"]))
            nb["y1"], nb["y2"] = sorted((nb["y1"], nb["y2"]))
            for _ in range(2 if rng.random() < 0.3 else 1):   # duplicate detections
                sc = float(np.round(rng.random(), 2)) if tied_scores else float(rng.random())
                plabels.append({"category": cat, "box2d": dict(nb), "score": sc})
        for _ in range(int(rng.integers(0, 25))):
            plabels.append({"category": str(rng.choice(PRED_CATS)), "box2d": _box(rng, W, H), "score": float(rng.random())})
        preds.append({"name": name, "attributes": {}, "labels": plabels})
    return gts, preds


def _case_features(gts, preds) -> set[str]:
    have = set()
    pnames = {p["name"] for p in preds}
    for f in gts:
        cats = [lb["category"] for lb in f["labels"]]
        if any(lb.get("attributes", {}).get("crowd") for lb in f["labels"]):
            have.add("crowd")
        if set(cats) & set(bdd.IGNORE_MAPPING):
            have.add("ignored category")
        if not [c for c in cats if c != "drivable area"]:
            have.add("frame without GT")
        if f["name"] not in pnames:
            have.add("frame without predictions")
    if any(lb["category"] == "train" for p in preds for lb in p["labels"]):
        have.add("class absent from GT")
    for p in preds:
        boxes = [tuple(lb["box2d"].values()) for lb in p["labels"]]
        if len(boxes) != len(set(boxes)):
            have.add("duplicate detection")
    return have


ALL_FEATURES = {"crowd", "ignored category", "frame without GT", "frame without predictions",
                "class absent from GT", "duplicate detection"}


@pytest.mark.parametrize("seed,crowded", [(s, False) for s in range(6)] + [(100 + s, True) for s in range(6)])
def test_equals_pycocotools(seed, crowded):
    gts, preds = gen_case(seed, crowded=crowded)
    assert _case_features(gts, preds) == ALL_FEATURES  # the case really exercises every rule
    res = evaluate(gts, preds, n_boot=0)
    ref = coco_reference(gts, preds)
    for key, ours in [("AP50", res.AP50), ("AP", res.AP), ("APs", res.APs), ("APl", res.APl)]:
        assert ours == pytest.approx(ref[key], abs=1e-4), key
    for col, key in [("AP50", "cls_AP50"), ("AP", "cls_AP")]:
        ours = res.per_class[col].to_numpy()
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref[key]))
        np.testing.assert_allclose(ours, ref[key], atol=1e-4, equal_nan=True)
    assert np.isnan(res.per_class.loc["train", "AP50"])   # predicted but absent from GT: excluded
    assert res.per_class.loc["train", "n_gt"] == 0


def _frame(name, labels, attrs=None):
    return {"name": name, "attributes": attrs or {}, "labels": labels}


def _lb(cat, x1, y1, x2, y2, score=None, crowd=False):
    d = {"category": cat, "attributes": {"crowd": crowd}, "box2d": dict(x1=x1, y1=y1, x2=x2, y2=y2)}
    if score is not None:
        d["score"] = score
    return d


def test_hand_computed_conventions():
    gt = [_frame("a.jpg", [_lb("car", 0, 0, 9, 9), _lb("car", 100, 100, 199, 199, crowd=True),
                           _lb("other vehicle", 300, 300, 399, 399)])]
    # (0,0,9,4) vs (0,0,9,9): IoU 50/100 = 0.5 only with Scalabel's +1 widths → TP at 0.5
    pred = [_frame("a.jpg", [_lb("car", 0, 0, 9, 4, 0.5),
                             _lb("car", 120, 120, 150, 150, 0.9),      # inside crowd box: ignored
                             _lb("car", 310, 310, 390, 390, 0.8)])]    # on "other vehicle": ignored
    res = evaluate(gt, pred, n_boot=0)
    assert res.AP50 == pytest.approx(1.0)
    assert res.per_class.loc["car", "n_gt"] == 1
    # a higher-scoring false positive halves precision at recall 1
    pred[0]["labels"].append(_lb("car", 500, 500, 540, 540, 0.95))
    assert evaluate(gt, pred, n_boot=0).AP50 == pytest.approx(0.5)
    # ignore-mapped *predictions* are ordinary detections of the mapped class (loadRes: iscrowd=0)
    pred2 = [_frame("a.jpg", [_lb("other vehicle", 0, 0, 9, 9, 0.9)])]
    assert evaluate(gt, pred2, n_boot=0).AP50 == pytest.approx(1.0)


def test_slices_equal_subset_evaluation_and_unsliced_frames():
    gts, preds = gen_case(7, n_frames=60)
    res = evaluate(gts, preds, n_boot=0)
    no_attr = [f["name"] for f in gts if not f["attributes"]]
    assert no_attr, "case must contain frames without slice attributes"
    assert set(res.slices["level"]) == {"weather", "timeofday", "scene", "full"}
    for row in res.slices.itertuples():
        names = set(res.frames_in(row.slice))
        assert not names & set(no_attr)
        sub = evaluate([f for f in gts if f["name"] in names], [p for p in preds if p["name"] in names], n_boot=0)
        assert row.n_frames == len(names)
        assert row.AP50 == pytest.approx(sub.AP50, abs=1e-12, nan_ok=True)
        assert row.AP == pytest.approx(sub.AP, abs=1e-12, nan_ok=True)
    full = res.slices[res.slices["level"] == "full"]
    assert full["n_frames"].sum() == len(gts) - len(no_attr)      # unsliced frames: overall only
    assert "foggy | * | *" in set(res.slices["slice"])


def test_per_frame_table():
    gts, preds = gen_case(3)
    res = evaluate(gts, preds, n_boot=0)
    pf = res.per_frame.set_index("name")
    for f in gts[:12]:
        one = evaluate([f], [p for p in preds if p["name"] == f["name"]], n_boot=0)
        assert pf.loc[f["name"], "ap50"] == pytest.approx(one.AP50, abs=1e-12, nan_ok=True)
        assert pf.loc[f["name"], "n_gt"] == one.per_class["n_gt"].sum()
    assert pf["ap50"].isna().sum() == (pf["n_gt"] == 0).sum() > 0
    assert ((pf["recall50"] >= 0) & (pf["recall50"] <= 1) | pf["recall50"].isna()).all()


def test_weighted_bootstrap_equals_duplicated_frames():
    """A resample (frame multiplicities) scored from the cache == pycocotools on the
    dataset with those frames physically duplicated."""
    gts, preds = gen_case(11, n_frames=30, tied_scores=False)
    res = evaluate(gts, preds, n_boot=0)
    frames = np.arange(len(res.cache.names))
    w = resample_weights(len(frames), 4, np.random.default_rng(0))
    ours = boot_map50(res.cache, frames, w)
    gd, pdict = {f["name"]: f for f in gts}, {p["name"]: p for p in preds}
    for b in range(len(w)):
        G, P = [], []
        for i, n in enumerate(res.cache.names):
            for c in range(w[b, i]):
                G.append(dict(gd[n], name=f"{n}#{c}"))
                if n in pdict:
                    P.append(dict(pdict[n], name=f"{n}#{c}"))
        assert ours[b] == pytest.approx(coco_reference(G, P)["AP50"], abs=1e-9)


def test_ci_contains_point_estimate_and_is_deterministic():
    gts, preds = gen_case(5, n_frames=80)
    r1 = evaluate(gts, preds, n_boot=300, seed=1)
    r2 = evaluate(gts, preds, n_boot=300, seed=1)
    pd.testing.assert_frame_equal(r1.slices, r2.slices)
    s = r1.slices.dropna(subset=["AP50"])
    big = s[s["n_frames"] >= 20]
    assert len(big) > 0
    assert ((big["ci_lo"] <= big["AP50"]) & (big["AP50"] <= big["ci_hi"])).all()
    assert (big["ci_hi"] - big["ci_lo"] > 0).all()
    r3 = evaluate(gts, preds, n_boot=300, seed=2)
    assert not np.allclose(r3.slices["ci_lo"].fillna(0), r1.slices["ci_lo"].fillna(0))


def _table(rows):
    return pd.DataFrame(rows, columns=["slice", "level", "n_frames", "AP50"])


def test_worst_slice_ties_and_none_qualifies():
    t = _table([("a | x | y", "full", 20, 0.30), ("b | x | y", "full", 30, 0.30), ("c | x | y", "full", 40, 0.5),
                ("d | x | y", "full", 5, 0.01), ("e | x | y", "full", 50, np.nan), ("f | * | *", "weather", 99, 0.1)])
    # tie at 0.30 → more frames wins; the 5-frame slice and the NaN slice never qualify
    assert worst_slice(t, min_frames=15)["slice"] == "b | x | y"
    t.loc[1, "n_frames"] = 20                       # full tie → alphabetical
    assert worst_slice(t, min_frames=15)["slice"] == "a | x | y"
    assert worst_slice(t, min_frames=15, level=None)["slice"] == "f | * | *"
    with pytest.raises(ValueError, match=r"largest: 'e \| x \| y' with 50 frames"):
        worst_slice(t, min_frames=60)


def test_paired_delta():
    gts, preds = gen_case(9, n_frames=80)
    r0 = evaluate(gts, preds, n_boot=0)
    same = paired_delta(r0, r0, None, n_boot=200)
    assert same["delta"] == 0 and same["ci"] == [0.0, 0.0]
    # model 1 = model 0 plus a perfect detection for every GT box of the evaluated classes
    better = []
    for f, p in zip(gts, [next((p for p in preds if p["name"] == g["name"]), {"name": g["name"], "labels": []}) for g in gts]):
        extra = [dict(lb, score=1.0) for lb in f["labels"] if "box2d" in lb]
        better.append({"name": f["name"], "labels": list(p["labels"]) + extra})
    r1 = evaluate(gts, better, n_boot=0)
    d = paired_delta(r0, r1, r0.slices["slice"].iloc[0], n_boot=200)
    assert d["delta"] > 0 and d["ci"][0] > 0 and d["p_le0"] == 0.0
    assert d["delta"] == pytest.approx(d["AP50_1"] - d["AP50_0"])
    with pytest.raises(KeyError):
        paired_delta(r0, r1, "no such slice")


def test_prediction_table_input_equals_frames():
    gts, preds = gen_case(4)
    a = evaluate(gts, preds, n_boot=50)
    b = evaluate(gts, bdd.boxes_table(preds), n_boot=50)
    assert a.AP == b.AP and a.AP50 == b.AP50
    pd.testing.assert_frame_equal(a.slices, b.slices)


def test_missing_score_is_an_error():
    gt = [_frame("a.jpg", [_lb("car", 0, 0, 9, 9)])]
    with pytest.raises(ValueError, match="without 'score'"):
        evaluate(gt, [_frame("a.jpg", [_lb("car", 0, 0, 9, 9)])], n_boot=0)


def test_cli_writes_issue_schema(tmp_path, capsys):
    gts, preds = gen_case(2)
    g, p, out = tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "res.json"
    g.write_text(json.dumps(gts))
    p.write_text(json.dumps(preds))
    assert main_evaluate(["--gt", str(g), "--pred", str(p), "--json", str(out), "--n-boot", "50"]) == 0
    assert "AP50" in capsys.readouterr().out
    js = json.loads(out.read_text())
    assert {"AP50", "AP", "per_class", "slices"} <= set(js)
    assert js["AP50"] == pytest.approx(coco_reference(gts, preds)["AP50"], abs=1e-4)
    assert set(js["per_class"]) == set(bdd.CLASSES)
    assert js["per_class"]["train"] == {**js["per_class"]["train"], "AP50": None, "AP": None, "n_gt": 0}
    s = js["slices"][0]
    assert {"slice", "n_frames", "AP50", "ci"} <= set(s) and len(s["ci"]) == 2
    assert all(0 <= v <= 1 for v in (js["AP50"], js["AP"]))


# ----------------------------------------------------------------------------- issue 23: bad inputs at the CLI
def _write(tmp_path, gts, preds):
    g, p = tmp_path / "gt.json", tmp_path / "pred.json"
    g.write_text(json.dumps(gts))
    p.write_text(json.dumps(preds))  # Python writes NaN, as a careless exporter would
    return g, p


@pytest.mark.parametrize("score,shown", [("absent", "'missing'"), (None, "None"), (float("nan"), "nan"),
                                         ("high", "'high'")])
def test_cli_bad_score_is_one_line_naming_the_file_and_the_first_bad_box(tmp_path, capsys, score, shown):
    gt = [_frame("a.jpg", [_lb("car", 0, 0, 9, 9)]), _frame("b.jpg", [_lb("car", 0, 0, 9, 9)])]
    bad = {"id": "7", "category": "car", "box2d": dict(x1=1, y1=2, x2=3, y2=4)}
    if score != "absent":
        bad["score"] = score
    preds = [_frame("a.jpg", [_lb("car", 0, 0, 9, 9, score=0.9)]),
             _frame("b.jpg", [_lb("car", 0, 0, 9, 9, score=0.8), bad, dict(bad, id="8")])]
    g, p = _write(tmp_path, gt, preds)
    assert main_evaluate(["--gt", str(g), "--pred", str(p), "--n-boot", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {p}: predictions: 2 box(es) without 'score'")
    assert "frame 'b.jpg': id '7' 'car'" in err and f"score {shown}" in err


def test_cli_names_that_never_match_exit_2_with_an_example_of_each_side(tmp_path, capsys):
    gt = [_frame("a1.jpg", [_lb("car", 0, 0, 9, 9)])]
    g, p = _write(tmp_path, gt, [_frame("a1", [_lb("car", 0, 0, 9, 9, score=0.9)])])  # names without .jpg
    assert main_evaluate(["--gt", str(g), "--pred", str(p), "--n-boot", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no prediction frame matches a GT frame" in err
    assert "'a1.jpg'" in err and "'a1'" in err and str(g) in err and str(p) in err
    p.write_text("[]")
    assert main_evaluate(["--gt", str(g), "--pred", str(p), "--n-boot", "0"]) == 2
    assert "hold no frames" in capsys.readouterr().err


def test_cli_names_that_partly_match_are_counted_with_examples(tmp_path, capsys):
    gt = [_frame(f"f{i}.jpg", [_lb("car", 0, 0, 9, 9)]) for i in range(5)]
    preds = [_frame(f"f{i}.jpg", [_lb("car", 0, 0, 9, 9, score=0.9)]) for i in range(3)]
    preds += [_frame("zz.png", [_lb("car", 0, 0, 9, 9, score=0.9)])]
    g, p = _write(tmp_path, gt, preds)
    assert main_evaluate(["--gt", str(g), "--pred", str(p), "--n-boot", "0"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("names: "))
    assert "2 GT frame(s) have no prediction frame (e.g. 'f3.jpg', 'f4.jpg'" in line
    assert "1 prediction frame(s) are not in the GT (e.g. 'zz.png'" in line
    g.write_text(json.dumps(preds[:3]))
    p.write_text(json.dumps(preds[:3]))
    assert main_evaluate(["--gt", str(g), "--pred", str(p), "--n-boot", "0"]) == 0
    assert "names: " not in capsys.readouterr().out  # silent when every name matches


def test_cli_counts_bad_boxes_of_gt_and_predictions_and_goes_on(tmp_path, capsys):
    gt = [_frame("a.jpg", [_lb("car", 0, 0, 9, 9), _lb("car", float("nan"), 0, 9, 9)]),
          _frame("b.jpg", [_lb("bus", 0, 0, 20, 20), _lb("car", 5, 5, 1, 9)])]  # inverted: x2 < x1
    preds = [_frame("a.jpg", [_lb("car", 0, 0, 9, 9, score=0.9), _lb("car", 0, 0, 9, None, score=0.8)]),
             _frame("b.jpg", [_lb("bus", 0, 0, 20, 20, score=0.7)])]
    g, p = _write(tmp_path, gt, preds)
    assert main_evaluate(["--gt", str(g), "--pred", str(p), "--n-boot", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("frames 2   AP50 1.0000")  # the good boxes, scored as if the bad ones were absent
    assert "gt_dropped_degenerate_box=2" in out and "pred_dropped_degenerate_box=1" in out
