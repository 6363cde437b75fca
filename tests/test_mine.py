"""mine.py: failure frames, FAISS exact/IVF, hybrid, uncertainty, mining precision, artefacts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bdd_engine import mine as M
from bdd_engine.bdd import SLICE_SEP
from bdd_engine.config import load_config

WORST = "foggy | night | highway"
SLICES = [WORST, "clear | daytime | city street", "foggy | daytime | highway", "clear | night | highway",
          "rainy | night | city street"]


def world(n_pool: int = 400, n_eval: int = 100, d: int = 32, noise: float = 0.6, seed: int = 0):
    """Frames + embeddings: each slice has a centre, frames are centre + noise (unit rows).

    The worst slice is 10% of the pool. Eval frames of the worst slice: even index → AP 0."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(SLICES), d))
    def frames(prefix: str, n: int, p_worst: float) -> pd.DataFrame:
        p = np.full(len(SLICES), (1 - p_worst) / (len(SLICES) - 1))
        p[0] = p_worst
        s = rng.choice(len(SLICES), size=n, p=p)
        rows = [dict(zip(("weather", "timeofday", "scene"), SLICES[i].split(SLICE_SEP))) for i in s]
        df = pd.DataFrame(rows)
        df.insert(0, "name", [f"{prefix}{i:04d}.jpg" for i in range(n)])
        df["slice"] = [SLICES[i] for i in s]
        df["_c"] = s
        return df
    pool, ev = frames("p", n_pool, 0.1), frames("e", n_eval, 0.3)
    allf = pd.concat([pool, ev], ignore_index=True)
    x = centres[allf["_c"].to_numpy()] + noise * rng.normal(size=(len(allf), d)) * np.sqrt(d) / 4
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    w = ev[ev["slice"] == WORST].reset_index(drop=True)
    per_frame = pd.DataFrame({"name": ev["name"], "ap50": 0.8, "recall50": 0.9, "n_gt": 3, "n_pred": 3})
    bad = per_frame["name"].isin(w["name"][::2])
    per_frame.loc[bad, ["ap50", "recall50"]] = [0.0, 0.1]
    return pool.drop(columns="_c"), ev.drop(columns="_c"), per_frame, x, list(allf["name"])


def opts(**kw):
    """mine()'s keyword arguments (the demo profile's values, k 30)."""
    base = {"k": 30, "strategy": "prototype", "by": ["weather", "timeofday", "scene"], "fail_ap": 0.0,
            "fail_recall": 0.3, "hybrid_targeted": 0.7, "ivf_above": 200_000, "ivf_recall": 0.95, "min_frames": 15,
            "seed": 42, "synthetic": False, "max_per_drive": 0, "min_distance": 0.0}
    return {**base, **kw}


# ----------------------------------------------------------------------------- pieces
def test_failure_frames_rule_and_fallback():
    ev = pd.DataFrame({"name": list("abcdef"), "slice": [WORST] * 5 + ["x"]})
    pf = pd.DataFrame({"name": list("abcdef"), "ap50": [0.0, 0.5, 0.9, np.nan, 0.7, 0.0],
                       "recall50": [0.0, 0.2, 0.9, np.nan, 0.35, 0.0]})
    names, rule = M.failure_frames(pf, ev, WORST, fail_ap=0.0, fail_recall=0.3)
    assert names == ["a", "b"] and "recall50 < 0.3" in rule  # NaN (no GT) and other slices never fail
    pf2 = pf.assign(ap50=[0.4, 0.5, 0.9, np.nan, 0.7, 0.0], recall50=0.9)
    names, rule = M.failure_frames(pf2, ev, WORST, fail_ap=0.0, fail_recall=0.3)
    assert names == ["a", "b"] and rule.startswith("fallback")  # below-median AP, said so
    with pytest.raises(ValueError, match="no frames"):
        M.failure_frames(pf, ev, "nope | nope | nope", fail_ap=0.0, fail_recall=0.3)
    with pytest.raises(ValueError, match="columns"):
        M.failure_frames(pf.drop(columns="recall50"), ev, WORST, fail_ap=0.0, fail_recall=0.3)


def test_mining_precision_numbers():
    pool = pd.DataFrame({"weather": ["foggy"] * 4 + ["clear"] * 16, "timeofday": ["night"] * 10 + ["daytime"] * 10,
                         "scene": ["highway"] * 20})
    mined = pool.iloc[[0, 1, 2, 10, 4]].assign(rank=[1, 2, 3, 4, 5])
    p = M.mining_precision(mined, pool, {"weather": "foggy", "timeofday": "night", "scene": "highway"}, cutoffs=(3,))
    get = lambda lvl, top: p[(p.level == lvl) & (p.top == top)].iloc[0]  # noqa: E731
    assert get("slice", 3).precision == 1.0 and get("slice", 3).base_rate == pytest.approx(4 / 20)
    assert get("slice", 5).precision == pytest.approx(3 / 5) and get("slice", 5).lift == pytest.approx(3.0)
    assert get("timeofday", 5).precision == pytest.approx(4 / 5) and get("timeofday", 5).base_rate == 0.5
    assert get("scene", 5).lift == 1.0


def test_greedy_k_center_picks_far_points():
    x = np.array([[1, 0], [0.99, 0.141], [0, 1], [-1, 0], [0.7071, 0.7071]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids, d = M.greedy_k_center(x, 2, init=[0], seed=42)
    assert list(ids) == [3, 2] and d[0] == pytest.approx(2.0, abs=1e-5)  # opposite first, then orthogonal
    ids2, _ = M.greedy_k_center(x, 3, seed=1)
    assert len(set(ids2)) == 3 and list(ids2) == list(M.greedy_k_center(x, 3, seed=1)[0])


def test_round_robin_union_dedups_and_interleaves():
    ids = np.array([[5, 6, 7], [5, 8, 9]])
    sc = np.array([[0.9, 0.8, 0.7], [0.95, 0.6, 0.5]], np.float32)
    out, s = M.round_robin_union(ids, sc, 4)
    assert out == [5, 6, 8, 7] and s[0] == pytest.approx(0.9)


def test_uncertainty_scores():
    boxes = pd.DataFrame({"name": ["a", "a", "b", "c"], "score": [0.9, 0.5, 0.05, 0.5]})
    u = M.uncertainty_scores(boxes, ["a", "b", "c", "d"]).set_index("name")
    assert u.loc["a", "uncertainty"] == pytest.approx(0.1) and u.loc["d", "uncertainty"] == 1.0
    assert u.loc["c", "entropy"] == pytest.approx(1.0)  # p = 0.5 → 1 bit
    assert np.isnan(u.loc["b", "entropy"]) and np.isnan(u.loc["d", "entropy"])  # below 0.1 / no boxes
    assert u.loc["d", "n_pred"] == 0 and u.loc["a", "n_pred"] == 2
    frames = [{"name": "a", "labels": [{"category": "car", "box2d": {"x1": 0, "y1": 0, "x2": 5, "y2": 5}, "score": 0.7}]}]
    assert M.uncertainty_scores(frames, ["a"]).loc[0, "uncertainty"] == pytest.approx(0.3)


def test_ivf_recall_and_determinism():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(40, 16))
    x = c[rng.integers(0, 40, 6000)] + 0.3 * rng.normal(size=(6000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    flat = M.build_index(x, ivf_above=10_000, seed=42, k=100, target_recall=0.95)
    ivf = M.build_index(x, ivf_above=1000, k=20, target_recall=0.95, seed=3)
    assert flat.info["kind"] == "flat" and ivf.info["kind"] == "ivf" and ivf.info["nlist"] == 64
    assert ivf.info["calib_recall"] >= 0.95 and 1 <= ivf.info["nprobe"] < 64
    q = x[rng.choice(6000, 30, replace=False)] + 0.05 * rng.normal(size=(30, 16)).astype(np.float32)
    _, e = flat.search(q, 20)
    _, a = ivf.search(q, 20)
    assert M.recall_at_k(a, e) >= 0.9
    _, b = M.build_index(x, ivf_above=1000, k=20, target_recall=0.95, seed=3).search(q, 20)
    assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- mine()
def test_mine_prototype_precision_and_determinism():
    pool, ev, pf, x, names = world()
    r = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts())
    assert r.index_info["kind"] == "flat" and len(r.mined) == 30
    assert list(r.mined.columns[:4]) == ["rank", "name", "score", "source"]
    assert r.mined["score"].is_monotonic_decreasing and r.mined["name"].is_unique
    assert set(r.mined["name"]) <= set(pool["name"])
    h = r.headline()
    assert h["base_rate"] == pytest.approx((pool["slice"] == WORST).mean())
    assert h["precision"] >= 3 * h["base_rate"] and h["precision"] >= 0.8
    n_worst_eval = (ev["slice"] == WORST).sum()
    assert len(r.failure_names) == (n_worst_eval + 1) // 2  # the even-indexed ones were set to AP 0
    r2 = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts())
    pd.testing.assert_frame_equal(r.mined, r2.mined)


def test_mine_picks_ivf_above_threshold_and_matches_exact():
    pool, ev, pf, x, names = world(n_pool=3000)
    exact = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts())
    ivf = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts(ivf_above=1000))
    assert exact.index_info["kind"] == "flat" and ivf.index_info["kind"] == "ivf"
    overlap = len(set(exact.mined["name"]) & set(ivf.mined["name"])) / 30
    assert overlap >= 0.9


def test_mine_hybrid_split_and_coverage():
    pool, ev, pf, x, names = world()
    r = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts(strategy="hybrid"))
    assert (r.mined["source"] == "targeted").sum() == 21 and (r.mined["source"] == "coverage").sum() == 9
    assert r.mined["name"].is_unique
    cov = r.mined[r.mined["source"] == "coverage"]
    assert cov["slice"].nunique() >= 2  # coverage reaches beyond the failing slice
    tgt = r.mined[r.mined["source"] == "targeted"]
    assert tgt["match_slice"].mean() >= 0.8


def test_mine_uncertainty_strategy_and_slice_report():
    pool, ev, pf, x, names = world()
    rng = np.random.default_rng(1)
    # the model is blind on the worst slice: low scores there
    sc = np.where(pool["slice"] == WORST, rng.uniform(0.05, 0.3, len(pool)), rng.uniform(0.6, 0.95, len(pool)))
    preds = pd.DataFrame({"name": pool["name"], "score": sc})
    r = M.mine(pf, ev, pool, x, names, preds_pool=preds, worst_slice=WORST, **opts(strategy="uncertainty"))
    assert r.mined["source"].eq("uncertainty").all() and r.mined["score"].is_monotonic_decreasing
    assert r.uncertainty_by_slice.iloc[0]["slice"] == WORST
    assert r.mined["uncertainty"].notna().all()
    with pytest.raises(ValueError, match="preds_pool"):
        M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts(strategy="uncertainty"))


def test_mine_skips_and_counts_missing_and_unreadable():
    pool, ev, pf, x, names = world()
    x = x.copy()
    x[names.index(pool["name"][0])] = 0.0  # unreadable image
    keep = [i for i, n in enumerate(names) if n != pool["name"][1]]  # not embedded
    r = M.mine(pf, ev, pool, x[keep], [names[i] for i in keep], worst_slice=WORST, **opts())
    assert r.counts["pool_unreadable_image"] == 1 and r.counts["pool_without_embedding"] == 1
    assert r.counts["pool"] == len(pool) - 2
    assert not {pool["name"][0], pool["name"][1]} & set(r.mined["name"])


def test_worst_slice_fallback_from_frames():
    pool, ev, pf, x, names = world()
    assert M.worst_slice_by_frames(pf, ev, min_frames=5) == WORST
    r = M.mine(pf, ev, pool, x, names, **opts(min_frames=5))
    assert r.worst_slice == WORST


def test_write_artifacts(tmp_path):
    pool, ev, pf, x, names = world()
    paths = {}
    for i, n in enumerate(pool["name"][:60]):
        p = tmp_path / "img" / n
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (64, 36), (i * 4 % 255, 80, 120)).save(p)
        paths[n] = str(p)
    r = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts())
    c = load_config("tiny", overrides={"outputs_dir": str(tmp_path / "out")}, env=False)
    from bdd_engine.checkpoint import Section

    sec = Section(c, 6)
    with sec.writer() as w:
        M.write_artifacts(r, w, paths)
    mined = pd.read_csv(sec.dir / "mined.csv")
    assert list(mined["name"]) == list(r.mined["name"]) and {"weather", "timeofday", "scene", "score", "rank"} <= set(mined)
    assert (tmp_path / "out" / "figures" / "mined_frames_grid.png").stat().st_size > 10_000
    summary = sec.load_json("mining_summary.json")
    assert summary["precision"] == pytest.approx(r.headline()["precision"]) and "build_s" not in summary["index"]
    assert summary["dedup"] == r.dedup and set(r.dedup) == {"max_per_drive", "min_distance", "before", "after",
                                                            "capped", "near_duplicates"}
    arts = sec.manifest()["artifacts"]
    assert "06_mine/mined.csv" in arts and "figures/mined_frames_grid.png" in arts


# ----------------------------------------------------------------------------- near-duplicate control
def test_diversify_caps_drives_and_drops_near_copies():
    x = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3, 1]]          # rows 0/1 identical, 2/5 identical
    x[1] = [0.999, 0.0447, 0, 0]                                   # cos(0, 1) = 0.999 → distance 0.001
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups = ["a", "b", "a", "c", "c", "d"]
    kept, c = M.diversify([0, 1, 2, 3, 4, 5], x, groups, k=10, max_per_drive=1, min_distance=0.01)
    # 1: near copy of 0 (other drive); 2: drive a full; 4: drive c full; 5: row 2's copy, but 2 was never kept
    assert kept == [0, 3, 5] and c == {"capped": 2, "near_duplicates": 1, "examined": 6}
    kept, c = M.diversify([0, 1, 2, 3, 4, 5], x, groups, k=10, max_per_drive=2, min_distance=0.0)
    assert kept == [0, 1, 2, 3, 4, 5] and c["capped"] == 0            # cap 2: no drive is over it
    kept, c = M.diversify([0, 1, 2, 3, 4, 5], x, groups, k=10, max_per_drive=0, min_distance=0.0005)
    assert kept == [0, 1, 2, 3, 4] and c["near_duplicates"] == 1       # 0.001 >= 0.0005 keeps 1; 5 == 2 dropped
    kept, _ = M.diversify([2, 3, 4], x, groups, k=1, max_per_drive=1, min_distance=0.0, kept=[0])
    assert kept == [3]                                                # already-kept rows count: drive a is full


def _drives(pool: pd.DataFrame, per: int) -> pd.DataFrame:
    """Give the pool drive groups of ``per`` consecutive frames (names stay unique)."""
    return pool.assign(group=[f"g{i // per:04d}" for i in range(len(pool))])


def test_mine_cap_per_drive_and_before_after_report():
    pool, ev, pf, x, names = world()
    pool = _drives(pool.sort_values(["slice", "name"]).reset_index(drop=True), 4)  # same-slice drives of 4
    plain = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts())
    r = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts(max_per_drive=1))
    assert len(r.mined) == 30 and r.mined["group"].is_unique
    d = r.dedup
    assert d["before"] == {"frames": 30, "drives": plain.mined["group"].nunique(),
                           "precision": pytest.approx(plain.headline()["precision"])}
    assert d["after"]["drives"] == 30 > d["before"]["drives"] and d["capped"] > 0 and d["near_duplicates"] == 0
    assert d["after"]["precision"] == pytest.approx(r.headline()["precision"])
    # the first frame of every drive keeps its place in the ranking; the others are skipped
    first = plain.mined.drop_duplicates("group")["name"].tolist()
    assert r.mined["name"].tolist()[: len(first)] == first
    assert plain.dedup["capped"] == 0 and plain.dedup["after"] == plain.dedup["before"]
    r2 = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts(max_per_drive=1))
    pd.testing.assert_frame_equal(r.mined, r2.mined)


def test_mine_min_distance_and_hybrid_respect_the_rules():
    pool, ev, pf, x, names = world()
    pool = _drives(pool, 2)
    r = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts(min_distance=0.3))
    m = x[[names.index(n) for n in r.mined["name"]]]
    sim = m @ m.T - 2 * np.eye(len(m))
    assert len(r.mined) == 30 and 1 - sim.max() >= 0.3 and r.dedup["near_duplicates"] > 0
    h = M.mine(pf, ev, pool, x, names, worst_slice=WORST, **opts(strategy="hybrid", max_per_drive=1))
    assert (h.mined["source"] == "targeted").sum() == 21 and (h.mined["source"] == "coverage").sum() == 9
    assert h.mined["group"].is_unique and h.dedup["after"]["drives"] == 30
