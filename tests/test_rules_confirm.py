"""The confirmation design's rules (issue 17): which frames may confirm, which slice may be
the worst, and how the contrasts and their CIs are computed. Pure functions, numbers in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bdd_engine import collect, experiment


def _table(rows):
    return pd.DataFrame(rows, columns=["name", "group", "image_path", "slice"])


def test_confirm_candidates_share_no_frame_or_drive_with_the_collect_files():
    source = _table([("a-1.jpg", "a", "p", "s"), ("b-1.jpg", "b", "p", "s")])
    confirm = _table([("a-2.jpg", "a", "p", "s"),      # same drive as a collected-side frame
                      ("b-1.jpg", "x", "p", "s"),      # same frame name
                      ("c-1.jpg", "c", "", "s"),       # no readable image
                      ("d-1.jpg", "d", "p", "s"), ("d-1.jpg", "d", "p", "s")])  # kept once
    keep, dropped = collect.confirm_candidates(confirm, source)
    assert keep["name"].tolist() == ["d-1.jpg"]
    assert dropped == {"no_readable_image": 1, "shares_frame_or_drive": 2}


def _slices(n_conf):
    rows = [{"slice": s, "level": "full", "n_frames": 40, "AP50": ap} for s, ap in (("x", 0.1), ("y", 0.2), ("z", 0.3))]
    rows.append({"slice": "night", "level": "timeofday", "n_frames": 80, "AP50": 0.05})
    return pd.DataFrame(rows)


def test_only_a_slice_with_enough_confirmation_frames_may_be_the_worst():
    t = _slices(None)
    ok = experiment.confirmable(t, {"x": 99, "y": 100, "z": 400}, 100)
    assert ok["slice"].tolist() == ["y", "z", "night"]          # x (the lowest AP) lacks confirmation frames
    with pytest.raises(ValueError, match="no eval slice has >= 500 confirmation frames .*'z' with 400.*synth_n_val"):
        experiment.confirmable(t, {"x": 99, "y": 100, "z": 400}, 500)


def test_confirm_set_is_the_worst_slice_capped_by_a_seeded_sample():
    c = pd.DataFrame({"name": [f"f{i:03d}.jpg" for i in range(300)], "slice": ["w"] * 250 + ["o"] * 50})
    a = experiment.confirm_set(c, "w", 100, seed=42)
    assert len(a) == 100 and set(a["slice"]) == {"w"} and a["name"].is_monotonic_increasing
    assert a.equals(experiment.confirm_set(c, "w", 100, seed=42))
    assert not a.equals(experiment.confirm_set(c, "w", 100, seed=43))
    assert len(experiment.confirm_set(c, "o", 100, seed=42)) == 50


def _runs(arms, seeds):
    return pd.DataFrame([{"run": f"{a}_s{s}", "arm": a, "seed": s} for a in arms for s in seeds])


def test_hierarchical_deltas_point_estimates_are_seed_means_of_paired_differences():
    runs = _runs(["iter1", "random"], [1, 2, 3])
    point = {"iter0": 0.30, "iter1_s1": 0.35, "iter1_s2": 0.37, "iter1_s3": 0.36,
             "random_s1": 0.31, "random_s2": 0.30, "random_s3": 0.32}
    boot = {k: np.full(200, v) for k, v in point.items()}     # no frame noise
    out = experiment.hierarchical_deltas(point, boot, runs, seed=42)
    assert out["arms"]["iter1"]["delta"] == pytest.approx(0.06) and out["arms"]["random"]["delta"] == pytest.approx(0.01)
    assert out["contrasts"]["iter1-random"]["delta"] == pytest.approx(0.05)
    lo, hi = out["contrasts"]["iter1-random"]["ci"]
    # the spread comes from the seeds alone: bounded by the extreme seed means, not a point
    assert 0.035 <= lo < 0.05 < hi <= 0.065
    # MDE at α = 0.05 two-sided and 80% power: (z_0.975 + z_0.80) × SE = 2.80 × SE
    assert out["mde"] == pytest.approx(2.8016 * out["contrasts"]["iter1-random"]["se"], rel=1e-4)
    assert out["arms"]["iter1"]["sd_seeds"] == pytest.approx(0.01)


def test_hierarchical_ci_is_wider_than_frames_alone_when_seeds_disagree():
    rng = np.random.default_rng(0)
    frames = rng.normal(0, 0.01, 500)                         # shared frame resample noise (paired)
    point = {"iter0": 0.3, "iter1_s1": 0.36, "random_s1": 0.31}
    base = {k: v + frames for k, v in point.items()}
    one = experiment.hierarchical_deltas(point, base, _runs(["iter1", "random"], [1]), seed=42)
    lo1, hi1 = one["contrasts"]["iter1-random"]["ci"]
    assert hi1 - lo1 == pytest.approx(0.0, abs=1e-12)          # paired frames cancel in the contrast
    point3 = {**point, "iter1_s2": 0.40, "iter1_s3": 0.32, "random_s2": 0.27, "random_s3": 0.35}
    boot3 = {k: v + frames for k, v in point3.items()}
    three = experiment.hierarchical_deltas(point3, boot3, _runs(["iter1", "random"], [1, 2, 3]), seed=42)
    lo3, hi3 = three["contrasts"]["iter1-random"]["ci"]
    assert hi3 - lo3 > 0.03 and three["mde"] > one["mde"]


def test_confirm_verdict_leads_and_reads_the_contrast_sign():
    h = {"contrast_iter1_random": {"delta": -0.041, "ci": [-0.07, -0.012]},
         "contrast_oracle_random_gt": {"delta": 0.02, "ci": [-0.01, 0.05]},
         "confirm_n": 140, "confirm_slice": "snowy | night | city street", "mde": 0.04, "seeds": [1, 2, 3],
         "delta": 0.01, "delta_ci": [-0.02, 0.04], "random_delta": None, "continue_delta": None, "oracle_delta": None}
    v = experiment.verdict(h)
    assert v.startswith("On 140 held-out frames of snowy | night | city street, Δ(iter1) − Δ(random) = -0.041 "
                        "(95% CI [-0.070, -0.012]): below 0 beyond its CI; Δ(oracle) − Δ(random_gt) = +0.020 "
                        "(95% CI [-0.010, +0.050]): within noise")
    assert "0.040 with 80% power" in v and "On the eval pool the slice was chosen on: Δ +0.010" in v


# ----------------------------------------------------------------- paired resamples (issue 23, item 17)
class _Writer:
    """Stands in for a section writer: keeps what _confirm writes."""

    def __init__(self):
        self.json, self.dfs = {}, {}

    def write_df(self, rel, df):
        self.dfs[rel] = df

    def write_json(self, rel, obj):
        self.json[rel] = obj


def _planted_confirm(monkeypatch, tmp_path, n=80):
    """A confirmation set of n one-car frames where frame difficulty dominates: every run finds the
    car on the same easy frames; iter1 finds it on 4 hard frames more than random does."""
    from bdd_engine import evaluate
    from bdd_engine import flywheel as fw
    from conftest import make_cfg

    rng = np.random.default_rng(5)
    names = [f"{i:08x}-0.jpg" for i in range(n)]
    easy = rng.random(n) < 0.5
    hard = np.flatnonzero(~easy)
    found = {"iter0": easy.copy(), "random": easy.copy(), "iter1": easy.copy()}
    found["iter1"][hard[:4]] = True
    car = {"category": "car", "attributes": {}, "box2d": {"x1": 10.0, "y1": 10.0, "x2": 60.0, "y2": 60.0}}
    gt = [{"name": nm, "attributes": {}, "labels": [dict(car)]} for nm in names]
    conf = pd.DataFrame({"name": names, "slice": "rainy | night | highway", "image_path": "x"})
    monkeypatch.setattr(fw.artifacts, "read_df", lambda out, n_, rel, turn=1: conf)
    monkeypatch.setattr(fw.artifacts, "load_gt", lambda out, n_, which: gt)
    monkeypatch.setattr(fw.artifacts, "start_weights", lambda out, turn: tmp_path / "iter0")

    def predict(cfg, weights, frames):
        hit = found[weights.name]
        return [{"name": nm, "labels": [dict(car, score=0.9)] if hit[i] else []} for i, nm in enumerate(names)]

    monkeypatch.setattr(fw, "_predict", predict)
    calls = []
    real = evaluate.boot_map50
    monkeypatch.setattr(fw.evaluate, "boot_map50", lambda cache, frames, weights: calls.append(weights) or
                        real(cache, frames, weights))
    cfg = make_cfg(tmp_path, tmp_path / "out", eval_n_boot=400)
    arms = pd.DataFrame({"run": ["iter1", "random"], "arm": ["iter1", "random"], "seed": [0, 0],
                         "weights": [str(tmp_path / "iter1"), str(tmp_path / "random")]})
    return fw, cfg, arms, calls, real, gt


def test_every_run_on_the_confirmation_set_is_bootstrapped_on_the_same_frame_resamples(monkeypatch, tmp_path):
    fw, cfg, arms, calls, real, gt = _planted_confirm(monkeypatch, tmp_path)
    out = fw._confirm(cfg, _Writer(), arms, 1)
    assert len(calls) == 3 and all(np.array_equal(c, calls[0]) for c in calls[1:])  # one set of resamples
    assert calls[0].shape == (400, len(gt))
    paired = out["contrasts"]["iter1-random"]
    assert paired["delta"] > 0
    # the same contrast with each run on its own resamples (what an unpaired design would give)
    from bdd_engine import evaluate

    boots = {}
    for i, run in enumerate(("iter0", "iter1", "random")):
        res = evaluate.evaluate(gt, fw._predict(cfg, tmp_path / run, None), n_boot=0)
        w = evaluate.resample_weights(len(gt), 400, np.random.default_rng([cfg.seed, 100 + i]))
        boots[run] = real(res.cache, np.arange(len(gt)), w)
    unpaired = experiment.hierarchical_deltas({r: 0.0 for r in boots}, boots, arms, int(cfg.seed))
    width = lambda c: c["ci"][1] - c["ci"][0]  # noqa: E731
    assert width(paired) < 0.5 * width(unpaired["contrasts"]["iter1-random"])
    assert paired["ci"][0] > 0 > unpaired["contrasts"]["iter1-random"]["ci"][0]  # pairing is what makes it visible
