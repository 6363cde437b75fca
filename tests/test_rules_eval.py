"""evaluate.py rules pinned at their boundaries, against an *independent* reference.

The reference below re-implements Scalabel's conversion with literal constants (the
category tables, the +1 pixel width) and runs pycocotools' COCOeval, so a change in
``bdd``/``evaluate`` constants cannot move both sides at once. Pinned here: every COCO
metric (AP, AP50, AP75, APs, APm, APl, per class too), per-frame recall50 and ap50,
the CI level and the per-slice resample seed, the p-value direction, maxDets, area and
IoU boundaries, eval-slice choice (min frames, NaN, level), duplicate names and
``pred_frames_not_in_gt``.
"""

from __future__ import annotations

import contextlib
import io
import math
import zlib

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bdd_engine.evaluate import boot_map50, evaluate, paired_delta, worst_slice
from tests.test_evaluate import gen_case

# ----------------------------------------------------------------------------- independent reference
CLS = ["pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "traffic light", "traffic sign"]
NAME_MAP = {"bike": "bicycle", "caravan": "car", "motor": "motorcycle", "person": "pedestrian", "van": "car"}
IGN_MAP = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}


def _cat(c):
    if c in CLS:
        return c, False
    if c in NAME_MAP:
        return NAME_MAP[c], False
    if c in IGN_MAP:
        return IGN_MAP[c], True
    return None, False


def coco_eval(gts, preds) -> tuple[COCOeval, dict[str, int]]:
    """Scalabel det conversion + COCOeval, predictions matched to GT frames by name."""
    names = sorted(f["name"] for f in gts)
    img = {n: i + 1 for i, n in enumerate(names)}
    anns, dts = [], []

    def bbox(b):
        w, h = b["x2"] - b["x1"] + 1, b["y2"] - b["y1"] + 1          # Scalabel box2d_to_bbox
        return [b["x1"], b["y1"], w, h], w * h

    for f in sorted(gts, key=lambda f: f["name"]):
        for lb in f.get("labels") or []:
            c, ign = _cat(lb.get("category"))
            if c is None or not lb.get("box2d"):
                continue
            bb, area = bbox(lb["box2d"])
            crowd = bool((lb.get("attributes") or {}).get("crowd"))
            anns.append(dict(id=len(anns) + 1, image_id=img[f["name"]], category_id=CLS.index(c) + 1,
                             iscrowd=int(crowd or ign), bbox=bb, area=area))
    for f in sorted(preds, key=lambda f: f["name"]):
        if f["name"] not in img:
            continue
        for lb in f.get("labels") or []:
            c, _ = _cat(lb.get("category"))
            if c is None or not lb.get("box2d"):
                continue
            dts.append(dict(image_id=img[f["name"]], category_id=CLS.index(c) + 1, score=lb["score"],
                            bbox=bbox(lb["box2d"])[0]))
    cats = [dict(id=i + 1, name=c) for i, c in enumerate(CLS)]
    images = [dict(id=i, file_name=n, height=720, width=1280) for n, i in img.items()]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dict(images=images, annotations=anns, categories=cats)
        gt.createIndex()
        dt = gt.loadRes(dts) if dts else COCO()
        if not dts:
            dt.dataset = dict(images=images, annotations=[], categories=cats)
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(img.values())
        ev.evaluate()
        ev.accumulate()
    return ev, img


def _score(x):
    x = x[x > -1]
    return float(np.mean(x)) if len(x) else math.nan


def coco_metrics(ev: COCOeval) -> dict[str, object]:
    P = ev.eval["precision"]  # (T, R, K, A, M)
    out = {"AP": _score(P[:, :, :, 0, 2]), "AP50": _score(P[0, :, :, 0, 2]), "AP75": _score(P[5, :, :, 0, 2]),
           "APs": _score(P[:, :, :, 1, 2]), "APm": _score(P[:, :, :, 2, 2]), "APl": _score(P[:, :, :, 3, 2])}
    for col, sl in [("AP", (slice(None), 0)), ("AP50", (0, 0)), ("AP75", (5, 0)), ("AP_small", (slice(None), 1)),
                    ("AP_medium", (slice(None), 2)), ("AP_large", (slice(None), 3))]:
        t, a = sl
        out["cls_" + col] = np.array([_score(P[t, :, k, a, 2]) for k in range(len(CLS))])
    R = ev.eval["recall"]  # (T, K, A, M)
    out["cls_recall50"] = np.where(R[0, :, 0, 2] > -1, R[0, :, 0, 2], np.nan)
    return out


def coco_frame_recall50(ev: COCOeval, img: dict[str, int]) -> dict[str, float]:
    """Per frame: detections matched to non-ignored GT at IoU 0.5 / non-ignored GT, classes pooled."""
    tp, ngt = {}, {}
    for e in ev.evalImgs:
        if e is None or e["aRng"] != [0, 1e10]:
            continue
        i = e["image_id"]
        ngt[i] = ngt.get(i, 0) + int((np.asarray(e["gtIgnore"]) == 0).sum())
        m = np.asarray(e["dtMatches"])[0] > 0 if len(e["dtIds"]) else np.zeros(0, bool)
        ig = np.asarray(e["dtIgnore"])[0].astype(bool) if len(e["dtIds"]) else np.zeros(0, bool)
        tp[i] = tp.get(i, 0) + int((m & ~ig).sum())
    return {n: (tp.get(i, 0) / ngt[i] if ngt.get(i, 0) > 0 else math.nan) for n, i in img.items()}


# ----------------------------------------------------------------------------- helpers
def frame(name, labels, attrs=None):
    return {"name": name, "attributes": attrs if attrs is not None else {}, "labels": labels}


def lb(cat, x1, y1, x2, y2, score=None, crowd=False):
    d = {"category": cat, "attributes": {"crowd": crowd}, "box2d": dict(x1=x1, y1=y1, x2=x2, y2=y2)}
    if score is not None:
        d["score"] = score
    return d


# ----------------------------------------------------------------------------- COCO metrics
@pytest.mark.parametrize("seed,crowded", [(21, False), (22, False), (121, True), (122, True)])
def test_every_coco_metric_equals_pycocotools(seed, crowded):
    gts, preds = gen_case(seed, n_frames=50, crowded=crowded)
    res = evaluate(gts, preds, n_boot=0)
    ref = coco_metrics(coco_eval(gts, preds)[0])
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert getattr(res, key) == pytest.approx(ref[key], abs=1e-9, nan_ok=True), key
    for col in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "recall50"):
        ours, theirs = res.per_class[col].to_numpy(float), ref["cls_" + col]
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=col)
        np.testing.assert_allclose(ours, theirs, atol=1e-9, equal_nan=True, err_msg=col)
    # the metrics are distinct numbers here, so a swapped column cannot pass
    assert len({round(getattr(res, k), 9) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}) == 6


def test_area_ranges_are_inclusive_at_32sq_and_96sq():
    """+1 widths: x2 - x1 = 31 → a 32x32 = 1024 px² box, exactly on the small/medium border,
    counts in both ranges (COCO bounds are inclusive); 96x96 likewise for medium/large."""
    gt = [frame("a.jpg", [lb("car", 0, 0, 31, 31), lb("truck", 100, 100, 195, 195), lb("bus", 300, 300, 331, 332)])]
    pred = [frame("a.jpg", [lb("car", 0, 0, 31, 31, 0.9), lb("truck", 100, 100, 195, 195, 0.9),
                            lb("bus", 300, 300, 331, 332, 0.9)])]
    res = evaluate(gt, pred, n_boot=0)
    pc = res.per_class
    one = pytest.approx(1.0)
    assert pc.loc["car", ["AP_small", "AP_medium"]].tolist() == [one, one] and np.isnan(pc.loc["car", "AP_large"])
    assert pc.loc["truck", ["AP_medium", "AP_large"]].tolist() == [one, one] and np.isnan(pc.loc["truck", "AP_small"])
    assert np.isnan(pc.loc["bus", "AP_small"]) and pc.loc["bus", "AP_medium"] == one   # 32x33 > 1024: medium only
    ref = coco_metrics(coco_eval(gt, pred)[0])
    np.testing.assert_allclose(pc["AP_small"], ref["cls_AP_small"], equal_nan=True)
    np.testing.assert_allclose(pc["AP_large"], ref["cls_AP_large"], equal_nan=True)


def test_iou_boundaries_at_050_and_075():
    # GT 10x10 (+1 widths). Det heights 5 and 7.5 px (+1) → IoU exactly 0.5 and 0.75.
    gt = [frame("a.jpg", [lb("car", 0, 0, 9, 9)]), frame("b.jpg", [lb("car", 0, 0, 9, 9)]),
          frame("c.jpg", [lb("car", 0, 0, 9, 9)])]
    pred = [frame("a.jpg", [lb("car", 0, 0, 9, 4, 0.9)]),          # IoU 0.50: TP at 0.5 only
            frame("b.jpg", [lb("car", 0, 0, 9, 6.5, 0.8)]),        # IoU 0.75: TP up to 0.75
            frame("c.jpg", [lb("car", 0, 0, 9, 3.9, 0.7)])]        # IoU 0.49: never
    res = evaluate(gt, pred, n_boot=0)
    ref = coco_metrics(coco_eval(gt, pred)[0])
    assert res.AP50 == pytest.approx(ref["AP50"]) and res.AP75 == pytest.approx(ref["AP75"])
    # one ranking over frames: 0.9 0.8 0.7; at 0.5 two TPs first (67 of 101 recall points at precision 1),
    # at 0.75 only the 0.8 one (34 points at precision 1/2)
    assert res.AP50 == pytest.approx(67 / 101) and res.AP75 == pytest.approx(34 * 0.5 / 101)
    rec = res.per_frame.set_index("name")["recall50"]
    assert rec.tolist() == [1.0, 1.0, 0.0]


def test_max_dets_is_100_per_frame_and_class():
    """101 car detections on one frame: the lowest-scored one (the only TP) is cut, as in COCOeval."""
    gt = [frame("a.jpg", [lb("car", 0, 0, 9, 9)])]
    fps = [lb("car", 500 + i, 300, 540 + i, 340, 0.9 - i * 1e-3) for i in range(100)]
    pred = [frame("a.jpg", fps + [lb("car", 0, 0, 9, 9, 0.01), lb("truck", 0, 0, 9, 9, 0.01)])]
    res = evaluate(gt, pred, n_boot=0)
    assert res.report["pred_beyond_maxdets"] == 1
    assert res.AP50 == 0.0 == coco_metrics(coco_eval(gt, pred)[0])["AP50"]
    # 100 exactly: nothing cut
    pred100 = [frame("a.jpg", fps[:99] + [lb("car", 0, 0, 9, 9, 0.01)])]
    r100 = evaluate(gt, pred100, n_boot=0)
    assert r100.report["pred_beyond_maxdets"] == 0 and r100.AP50 == pytest.approx(0.01)


# ----------------------------------------------------------------------------- per frame
def test_per_frame_recall50_hand_computed():
    gt = [
        frame("a.jpg", [lb("car", 0, 0, 99, 99), lb("car", 200, 0, 299, 99), lb("car", 400, 0, 499, 99),
                        lb("pedestrian", 0, 200, 49, 299), lb("car", 600, 0, 699, 99, crowd=True),
                        lb("other vehicle", 800, 0, 899, 99)]),
        frame("b.jpg", []),                                                # no GT, has predictions
        frame("c.jpg", [lb("car", 0, 0, 99, 99, crowd=True)]),             # only a crowd region
        frame("d.jpg", [lb("truck", 0, 0, 99, 99)]),                       # GT, no predictions
        frame("e.jpg", [lb("truck", 0, 0, 99, 99), lb("bus", 200, 0, 299, 99)]),
    ]
    pred = [
        frame("a.jpg", [lb("car", 0, 0, 99, 99, 0.9), lb("car", 0, 0, 99, 99, 0.95),   # duplicate: counts once
                        lb("car", 200, 0, 299, 99, 0.01),                              # any score counts
                        lb("pedestrian", 0, 200, 49, 249, 0.5),                        # IoU 0.5 exactly (+1): TP
                        lb("car", 600, 0, 699, 99, 0.8), lb("car", 800, 0, 899, 99, 0.8)]),  # on ignore regions
        frame("b.jpg", [lb("car", 0, 0, 9, 9, 0.9)]),
        frame("c.jpg", [lb("car", 0, 0, 99, 99, 0.9)]),
        frame("e.jpg", [lb("car", 0, 0, 99, 99, 0.9), lb("bus", 200, 0, 299, 99, 0.9)]),  # wrong class on the truck
    ]
    res = evaluate(gt, pred, n_boot=0)
    pf = res.per_frame.set_index("name")
    assert pf.loc["a.jpg", "recall50"] == pytest.approx(3 / 4) and pf.loc["a.jpg", "n_gt"] == 4
    assert np.isnan(pf.loc["b.jpg", "recall50"]) and pf.loc["b.jpg", "n_gt"] == 0
    assert np.isnan(pf.loc["c.jpg", "recall50"]) and pf.loc["c.jpg", "n_gt"] == 0
    assert pf.loc["d.jpg", "recall50"] == 0.0 and pf.loc["d.jpg", "n_pred"] == 0
    assert pf.loc["e.jpg", "recall50"] == 0.5
    assert pf["n_pred"].tolist() == [6, 1, 1, 0, 2]
    # ap50: mean over the classes with GT in the frame (e: truck 0, bus 1)
    assert pf.loc["e.jpg", "ap50"] == pytest.approx(0.5) and np.isnan(pf.loc["b.jpg", "ap50"])
    assert np.isnan(pf.loc["c.jpg", "ap50"]) and pf.loc["d.jpg", "ap50"] == 0.0
    ev, img = coco_eval(gt, pred)
    ref = coco_frame_recall50(ev, img)
    np.testing.assert_allclose(pf["recall50"].to_numpy(), [ref[n] for n in pf.index], equal_nan=True)


def test_per_frame_recall50_equals_pycocotools_on_generated_cases():
    for seed in (31, 131):
        gts, preds = gen_case(seed, n_frames=40, crowded=seed > 100)
        res = evaluate(gts, preds, n_boot=0)
        ev, img = coco_eval(gts, preds)
        ref = coco_frame_recall50(ev, img)
        pf = res.per_frame.set_index("name")
        np.testing.assert_allclose(pf["recall50"].to_numpy(), [ref[n] for n in pf.index], atol=1e-12, equal_nan=True)
        vals = pf["recall50"].dropna()
        assert ((vals > 0) & (vals < 1)).any()          # not a degenerate all-0/all-1 case


# ----------------------------------------------------------------------------- bootstrap CI + p-value
def _weights(seed: int, name: str, n: int, n_boot: int) -> np.ndarray:
    """The documented contract: a slice's resamples come from rng([seed, crc32(name)])."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def test_slice_ci_is_the_95_percent_percentile_interval_of_the_resamples():
    gts, preds = gen_case(41, n_frames=60)
    res = evaluate(gts, preds, n_boot=150, seed=7)
    rows = res.slices.dropna(subset=["ci_lo"])
    assert len(rows) >= 6
    for r in rows.itertuples():
        fr = res.members[r.slice]
        s = boot_map50(res.cache, fr, _weights(7, r.slice, len(fr), 150))
        s = s[~np.isnan(s)]
        lo, hi = np.percentile(s, [2.5, 97.5])
        assert (r.ci_lo, r.ci_hi) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12)), r.slice
    # the level is visible: some slice's 90% interval differs from its 95% one
    assert any(r.ci_hi - r.ci_lo > 0 for r in rows.itertuples())


def test_slice_ci_against_pycocotools_on_physically_resampled_frames():
    """Fully independent: each resample is rebuilt as a dataset with frames duplicated and
    scored by COCOeval; the slice's CI = 2.5/97.5 percentiles of those mAP@0.5s."""
    gts, preds = gen_case(43, n_frames=24, tied_scores=False)
    res = evaluate(gts, preds, n_boot=20, seed=3)
    row = res.slices.set_index("slice").loc["foggy | * | *"]
    name = row.name
    names = res.frames_in(name)
    assert 8 <= len(names) < len(gts)
    w = _weights(3, name, len(names), 20)
    gd, pdict = {f["name"]: f for f in gts}, {p["name"]: p for p in preds}
    maps = []
    for b in range(len(w)):
        G, P = [], []
        for i, n in enumerate(names):
            for c in range(w[b, i]):
                G.append(dict(gd[n], name=f"{n}#{c}"))
                if n in pdict:
                    P.append(dict(pdict[n], name=f"{n}#{c}"))
        maps.append(coco_metrics(coco_eval(G, P)[0])["AP50"])
    lo, hi = np.percentile(np.array(maps)[~np.isnan(maps)], [2.5, 97.5])
    assert row["ci_lo"] == pytest.approx(lo, abs=1e-9) and row["ci_hi"] == pytest.approx(hi, abs=1e-9)
    assert row["ci_lo"] < row["AP50"] < row["ci_hi"]


def test_paired_delta_p_value_direction_and_ci_level():
    gts, preds = gen_case(45, n_frames=60, tied_scores=False)
    r0 = evaluate(gts, preds, n_boot=0)
    # model 1: better on some frames (perfect detections added), worse on others (predictions dropped)
    names = sorted(f["name"] for f in gts)
    better, dropped = set(names[::6]), set(names[1::3])
    p1 = []
    pmap = {p["name"]: p for p in preds}
    for g in gts:
        p = pmap.get(g["name"], {"name": g["name"], "labels": []})
        extra = [dict(x, score=1.0) for x in g["labels"] if "box2d" in x] if g["name"] in better else []
        p1.append({"name": g["name"], "labels": ([] if g["name"] in dropped else list(p["labels"])) + extra})
    r1 = evaluate(gts, p1, n_boot=0)
    d = paired_delta(r0, r1, None, n_boot=300, seed=5)
    w = _weights(5, "__all__", len(names), 300)
    frames = np.arange(len(names))
    diff = boot_map50(r1.cache, frames, w) - boot_map50(r0.cache, frames, w)
    diff = diff[~np.isnan(diff)]
    assert 0 < d["p_le0"] < 1                                    # a mixed case: the direction matters
    assert d["p_le0"] == pytest.approx(float((diff <= 0).mean()))
    assert d["p_le0"] != pytest.approx(float((diff >= 0).mean()))
    lo, hi = np.percentile(diff, [2.5, 97.5])
    assert d["ci"] == [pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12)]
    assert d["delta"] == pytest.approx(r1.AP50 - r0.AP50, abs=1e-12)
    # reversed roles: the p-value of a worse model is the complement (no ties here)
    back = paired_delta(r1, r0, None, n_boot=300, seed=5)
    assert back["p_le0"] == pytest.approx(1 - d["p_le0"]) and back["delta"] == pytest.approx(-d["delta"])
    # a uniformly worse model: every resample has delta <= 0
    worse = evaluate(gts, [{"name": g["name"], "labels": []} for g in gts], n_boot=0)   # detects nothing
    dw = paired_delta(r0, worse, None, n_boot=100)
    assert dw["delta"] < 0 and dw["p_le0"] == 1.0 and dw["ci"][1] < 0
    # identical models: delta 0 in every resample counts as "<= 0"
    assert paired_delta(r0, r0, None, n_boot=50)["p_le0"] == 1.0


def test_paired_delta_of_several_seeds_is_their_mean_with_the_ci_of_that_mean():
    """§8's arm rows: the seed-mean Δ stands beside the CI of the seed mean (per resample, the
    seeds' Δ averaged), not beside one seed's CI (the old rule could leave the mean outside it)."""
    gts, preds = gen_case(45, n_frames=60, tied_scores=False)
    r0 = evaluate(gts, preds, n_boot=0)
    names = sorted(f["name"] for f in gts)
    good = evaluate(gts, [{"name": g["name"], "labels": [dict(x, score=1.0) for x in g["labels"] if "box2d" in x]}
                          for g in gts], n_boot=0)                                  # every GT found
    bad = evaluate(gts, [{"name": g["name"], "labels": []} for g in gts], n_boot=0)  # nothing found
    one = paired_delta(r0, good, None, n_boot=300, seed=5)
    assert paired_delta(r0, [good], None, n_boot=300, seed=5) == one                  # one seed: unchanged
    both = paired_delta(r0, [good, bad], None, n_boot=300, seed=5)
    assert both["delta"] == pytest.approx((good.AP50 + bad.AP50) / 2 - r0.AP50, abs=1e-12)
    assert both["AP50_1"] == pytest.approx((good.AP50 + bad.AP50) / 2, abs=1e-12)
    w = _weights(5, "__all__", len(names), 300)
    frames = np.arange(len(names))
    mean = (boot_map50(good.cache, frames, w) + boot_map50(bad.cache, frames, w)) / 2 - boot_map50(r0.cache, frames, w)
    lo, hi = np.percentile(mean[~np.isnan(mean)], [2.5, 97.5])
    assert both["ci"] == [pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12)]
    assert both["ci"][0] <= both["delta"] <= both["ci"][1] and both["ci"][1] < one["ci"][0]  # not the first seed's CI


def test_resamples_depend_on_the_slice_name_not_on_other_slices():
    gts, preds = gen_case(47, n_frames=60)
    full = evaluate(gts, preds, n_boot=60, seed=9)
    fog = [f for f in gts if f["attributes"].get("weather") == "foggy"]
    assert 5 < len(fog) < len(gts) - 5
    only = evaluate(fog, preds, n_boot=60, seed=9)                    # the other slices are gone
    a = full.slices.set_index("slice").loc["foggy | * | *", ["ci_lo", "ci_hi"]].tolist()
    b = only.slices.set_index("slice").loc["foggy | * | *", ["ci_lo", "ci_hi"]].tolist()
    assert a == b and a[0] < a[1]
    other = evaluate(gts, preds, n_boot=60, seed=10).slices.set_index("slice").loc["foggy | * | *", ["ci_lo", "ci_hi"]]
    assert other.tolist() != a                                        # ... and the seed matters


# ----------------------------------------------------------------------------- eval-slice choice
def _table(rows):
    return pd.DataFrame(rows, columns=["slice", "level", "n_frames", "AP50"])


def test_worst_slice_min_frames_boundary_nan_and_level():
    t = _table([("a | x | y", "full", 15, 0.20), ("b | x | y", "full", 14, 0.05), ("c | x | y", "full", 40, np.nan),
                ("d | x | y", "full", 30, 0.25), ("e | * | *", "weather", 90, 0.01), ("f | x | y", "full", 16, 0.21)])
    assert worst_slice(t, min_frames=15)["slice"] == "a | x | y"      # exactly min_frames qualifies
    assert worst_slice(t, min_frames=14)["slice"] == "b | x | y"      # ... and 14 did not above
    assert worst_slice(t, min_frames=16)["slice"] == "f | x | y"
    with pytest.raises(TypeError):
        worst_slice(t)   # no default of its own: the profile's eval_min_frames decides
    assert worst_slice(t, min_frames=1, level=None)["slice"] == "e | * | *"
    assert worst_slice(t, min_frames=1, level="weather")["slice"] == "e | * | *"
    # NaN (no GT) never wins although it sorts nowhere and has the most frames
    only_nan = _table([("c | x | y", "full", 40, np.nan), ("d | x | y", "full", 30, 0.9)])
    assert worst_slice(only_nan, min_frames=15)["slice"] == "d | x | y"
    with pytest.raises(ValueError, match="no slice has >= 31 frames"):
        worst_slice(only_nan, min_frames=31)                          # the 40-frame NaN slice does not count
    with pytest.raises(ValueError, match="no slices at level 'scene'"):
        worst_slice(t, min_frames=15, level="scene")


def test_slices_skip_frames_missing_that_attribute_only():
    base = {"weather": "clear", "timeofday": "night", "scene": "highway"}
    gt = [frame("a.jpg", [lb("car", 0, 0, 9, 9)], dict(base)),
          frame("b.jpg", [lb("car", 0, 0, 9, 9)], {**base, "weather": None}),
          frame("c.jpg", [lb("car", 0, 0, 9, 9)], {**base, "weather": ""}),
          frame("d.jpg", [lb("car", 0, 0, 9, 9)], {"timeofday": "night", "scene": "highway"}),
          frame("e.jpg", [lb("car", 0, 0, 9, 9)], {**base, "weather": float("nan")})]
    res = evaluate(gt, [frame(f["name"], [lb("car", 0, 0, 9, 9, 0.9)]) for f in gt], n_boot=0)
    n = res.slices.set_index("slice")["n_frames"]
    assert n["* | night | *"] == 5 and n["* | * | highway"] == 5
    assert n["clear | * | *"] == 1 and n["clear | night | highway"] == 1
    assert set(res.slices["slice"]) == {"clear | * | *", "* | night | *", "* | * | highway", "clear | night | highway"}
    assert len(res.per_frame) == 5                                    # all count overall


# ----------------------------------------------------------------------------- inputs
def test_pred_frames_not_in_gt_counted_and_ignored():
    gts, preds = gen_case(51, n_frames=30)
    extra = [frame("zz-extra-1.jpg", [lb("car", 0, 0, 9, 9, 0.99)]), frame("zz-extra-2.jpg", [])]
    a = evaluate(gts, preds, n_boot=0)
    b = evaluate(gts, preds + extra, n_boot=0)
    assert a.report["pred_frames_not_in_gt"] == 0 and b.report["pred_frames_not_in_gt"] == 2
    assert (a.AP, a.AP50) == (b.AP, b.AP50)
    from bdd_engine import bdd
    c = evaluate(gts, bdd.boxes_table(preds + extra), n_boot=0)    # table input: frames with boxes only
    assert c.report["pred_frames_not_in_gt"] == 1 and c.AP == a.AP
    missing = {f["name"] for f in gts} - {p["name"] for p in preds}
    assert missing and a.report["gt_frames_without_pred_boxes"] >= len(missing)


def test_duplicate_frame_names_are_an_error():
    gt = [frame("a.jpg", [lb("car", 0, 0, 9, 9)]), frame("b.jpg", [])]
    with pytest.raises(ValueError, match=r"ground truth: 1 duplicate frame names"):
        evaluate(gt + [frame("a.jpg", [])], [], n_boot=0)
    with pytest.raises(ValueError, match=r"predictions: 2 duplicate frame names"):
        evaluate(gt, [frame("a.jpg", [])] * 3, n_boot=0)
