"""mine.py's failure rule pinned at its thresholds: ``ap50 <= mine_fail_ap or recall50 <
mine_fail_recall`` (NaN = no GT = never a failure), the below-median fallback, the
frames-based worst-slice fallback, and that mine() hands both thresholds to the rule (the §6
runner passes the profile's keys; the boundary cases use the values default.yaml declares)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bdd_engine import mine as M
from bdd_engine.config import load_config

W = "rainy | night | city street"
_DEMO = load_config("demo", env=False)
PROFILE = {"fail_ap": float(_DEMO.mine_fail_ap), "fail_recall": float(_DEMO.mine_fail_recall)}  # 0.0 / 0.3


def case(ap, rec, slices=None):
    n = len(ap)
    names = [f"f{i:02d}.jpg" for i in range(n)]
    ev = pd.DataFrame({"name": names, "slice": slices or [W] * n})
    pf = pd.DataFrame({"name": names, "ap50": ap, "recall50": rec})
    return pf, ev


@pytest.mark.parametrize("ap,rec,fail", [
    (0.0, 0.9, True),        # ap50 exactly on fail_ap (0.0): <= → failure
    (0.001, 0.9, False),     # just above
    (0.5, 0.3, False),       # recall exactly on fail_recall: < → not a failure
    (0.5, 0.2999, True),     # just below
    (0.5, 0.0, True),
    (0.0, 0.0, True),
    (0.5, np.nan, False),    # recall NaN alone cannot fail (comparison is False)
])
def test_failure_rule_of_the_profile_at_the_boundaries(ap, rec, fail):
    # frame 0 is the probe; frames 1-2 are clearly fine, frame 3 clearly fails (no fallback)
    pf, ev = case([ap, 0.9, 0.8, 0.0], [rec, 1.0, 0.9, 0.0])
    names, rule = M.failure_frames(pf, ev, W, **PROFILE)
    assert rule == "ap50 <= 0.0 or recall50 < 0.3"
    assert ("f00.jpg" in names) is fail and "f03.jpg" in names and "f01.jpg" not in names


@pytest.mark.parametrize("fail_ap,fail_rec,expect", [
    (0.2, 0.3, ["f00.jpg", "f01.jpg"]),               # ap 0.2 == fail_ap: in
    (0.19, 0.3, ["f00.jpg"]),
    (0.0, 0.5, ["f00.jpg", "f02.jpg"]),                # recall 0.4 < 0.5 in, 0.5 == 0.5 out
    (0.0, 0.4, ["f00.jpg"]),                           # recall 0.4 == 0.4 out
])
def test_failure_rule_uses_given_thresholds(fail_ap, fail_rec, expect):
    pf, ev = case([0.0, 0.2, 0.6, 0.7, 0.9], [0.0, 0.9, 0.4, 0.5, 1.0])
    names, rule = M.failure_frames(pf, ev, W, fail_ap=fail_ap, fail_recall=fail_rec)
    assert names == expect and rule == f"ap50 <= {fail_ap} or recall50 < {fail_rec}"


def test_no_gt_frames_and_other_slices_never_fail():
    pf, ev = case([np.nan, 0.0, 0.9, 0.0], [np.nan, 0.0, 1.0, 0.0], slices=[W, W, W, "clear | daytime | highway"])
    names, _ = M.failure_frames(pf, ev, W, **PROFILE)
    assert names == ["f01.jpg"]
    # a slice whose frames all lack GT is an error, not an empty failure set
    pf2, ev2 = case([np.nan, np.nan], [np.nan, np.nan])
    with pytest.raises(ValueError, match="no eval frame with ground truth"):
        M.failure_frames(pf2, ev2, W, **PROFILE)


def test_fallback_is_below_or_at_the_median_and_says_so():
    pf, ev = case([0.1, 0.4, 0.5, 0.6, 0.9, np.nan], [0.9] * 5 + [np.nan])
    names, rule = M.failure_frames(pf, ev, W, **PROFILE)               # nothing meets the rule
    assert names == ["f00.jpg", "f01.jpg", "f02.jpg"]                  # median 0.5 included (<=)
    assert rule == "fallback: no frame met 'ap50 <= 0.0 or recall50 < 0.3'; used ap50 <= slice median 0.500"
    pf, ev = case([0.1, 0.4, 0.6, 0.9], [0.9] * 4)                     # even count: median 0.5
    assert M.failure_frames(pf, ev, W, **PROFILE)[0] == ["f00.jpg", "f01.jpg"]


def test_failures_are_sorted_names():
    pf, ev = case([0.0, 0.9, 0.0], [0.0, 1.0, 0.0])
    pf = pf.iloc[::-1]
    assert M.failure_frames(pf, ev, W, **PROFILE)[0] == ["f00.jpg", "f02.jpg"]


def test_worst_slice_by_frames_min_frames_boundary():
    ev = pd.DataFrame({"name": [f"f{i}" for i in range(9)],
                       "slice": ["a | a | a"] * 3 + ["b | b | b"] * 2 + ["c | c | c"] * 4})
    pf = pd.DataFrame({"name": ev["name"], "ap50": [0.5, 0.5, 0.5, 0.1, 0.1, 0.3, 0.3, 0.3, np.nan],
                       "recall50": 0.5})
    assert M.worst_slice_by_frames(pf, ev, min_frames=2) == "b | b | b"    # 2 frames == min: qualifies
    assert M.worst_slice_by_frames(pf, ev, min_frames=3) == "c | c | c"    # c: 3 frames with GT (NaN dropped)
    with pytest.raises(ValueError, match=">= 4 evaluated frames"):
        M.worst_slice_by_frames(pf, ev, min_frames=4)


def test_mine_hands_both_thresholds_to_the_rule():
    rng = np.random.default_rng(0)
    n_pool, d = 60, 8
    pool = pd.DataFrame({"name": [f"p{i:03d}.jpg" for i in range(n_pool)], "weather": "rainy",
                         "timeofday": "night", "scene": "city street"})
    pool["slice"] = W
    pf, ev = case([0.0, 0.2, 0.6, 0.7, 0.9], [0.0, 0.9, 0.4, 0.5, 1.0])
    names = list(pool["name"]) + list(pf["name"])
    x = rng.normal(size=(len(names), d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    base = {"seed": 1, "k": 5, "strategy": "prototype", "by": ["weather", "timeofday", "scene"], "hybrid_targeted": 0.7,
            "ivf_above": 200_000, "ivf_recall": 0.95, "min_frames": 15, "synthetic": False,
            "max_per_drive": 0, "min_distance": 0.0}
    r = M.mine(pf, ev, pool, x, names, worst_slice=W, **base, fail_ap=0.2, fail_recall=0.5)
    assert r.failure_names == ["f00.jpg", "f01.jpg", "f02.jpg"]
    assert r.failure_rule == "ap50 <= 0.2 or recall50 < 0.5" and r.counts["failure_frames"] == 3
    r = M.mine(pf, ev, pool, x, names, worst_slice=W, **base, **PROFILE)   # the profile's 0.0 / 0.3
    assert r.failure_names == ["f00.jpg"]


# ----------------------------------------------------------------- issue 23, item 21: turns never re-mine
def test_turn_t_mines_and_draws_its_random_control_only_from_frames_no_earlier_turn_mined(tmp_path):
    """§6/§7 of turn t read the mining pool through flywheel._unused_pool: turn 2 never sees turn 1's
    mined frames, turn 3 neither turn 1's nor turn 2's (the fast twin of test_notebook's 2-turn run)."""
    from bdd_engine import experiment
    from bdd_engine import flywheel as fw
    from bdd_engine.checkpoint import atomic_write_df
    from conftest import make_cfg

    cfg = make_cfg(tmp_path, tmp_path / "out", flywheel_turns=3)
    pools = pd.DataFrame({"name": [f"p{i:02d}.jpg" for i in range(20)] + ["t0.jpg", "e0.jpg"],
                          "pool": ["pool"] * 20 + ["train", "eval"]})
    mined = {1: [f"p{i:02d}.jpg" for i in range(0, 6)], 2: [f"p{i:02d}.jpg" for i in range(6, 12)]}
    for t, names in mined.items():
        atomic_write_df(fw.artifacts.section_dir(cfg.out, 6, t) / "mined.csv", pd.DataFrame({"name": names}))
    pool_names = set(pools["name"][:20])
    assert set(fw._unused_pool(cfg, pools, 1)["name"]) == pool_names
    assert set(fw._unused_pool(cfg, pools, 2)["name"]) == pool_names - set(mined[1])
    assert set(fw._unused_pool(cfg, pools, 3)["name"]) == pool_names - set(mined[1]) - set(mined[2])
    for seed in range(5):  # the random control of turn 2 draws from the same unused pool
        drawn = experiment.random_pool_names(fw._unused_pool(cfg, pools, 2), 6, seed)
        assert len(drawn) == 6 and not set(drawn) & set(mined[1])
