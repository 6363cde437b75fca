"""Issue 24's rules: the arms' frames (per-seed random draws, the replay set, equal steps),
the two controls (G1 negative, G2 positive), the verdict table, the share-recovered arithmetic,
and that no confirmation-set number feeds any choice (slice, thresholds, recipe)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bdd_engine import experiment, slices
from bdd_engine.config import load_config

CI_IN, CI_POS, CI_NEG = [-0.01, 0.01], [0.01, 0.05], [-0.05, -0.01]


def _pools(n_pool: int = 300, n_train: int = 120) -> pd.DataFrame:
    rows = [{"name": f"p{i:04d}.jpg", "pool": "pool"} for i in range(n_pool)]
    wt = [("clear", "daytime"), ("rainy", "night"), ("snowy", "daytime")]
    rows += [{"name": f"t{i:04d}.jpg", "pool": "train", "weather": wt[i % 3][0], "timeofday": wt[i % 3][1],
              "image_path": f"/x/t{i:04d}.jpg"} for i in range(n_train)]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------- random draws per seed
def test_random_frames_are_drawn_per_seed_and_reproducible():
    p = _pools()
    a, b = experiment.random_pool_names(p, 50, 42), experiment.random_pool_names(p, 50, 43)
    assert a == experiment.random_pool_names(p, 50, 42) and len(a) == len(b) == 50
    assert a != b and set(a) <= set(p.loc[p["pool"] == "pool", "name"])


def test_random_gt_takes_the_same_frames_as_random_of_its_seed():
    names = ["p0001.jpg", "p0002.jpg", "p0003.jpg"]
    auto = [{"name": n, "labels": [{"category": "car", "score": 0.9}]} for n in names + ["p0009.jpg"]]
    gt = {n: {"name": n, "labels": [{"category": "car"}, {"category": "bus"}]} for n in names + ["p0009.jpg"]}
    extra = {"random": auto, "mined": []}
    r, rg = (experiment.arm_additions(a, extra, [], names, gt) for a in ("random", "random_gt"))
    assert [f["name"] for f in r] == [f["name"] for f in rg] == names
    assert all(len(f["labels"]) == 2 for f in rg) and all(len(f["labels"]) == 1 for f in r)


def test_retrain_runs_cover_the_2x2_plus_continue_per_seed():
    runs = experiment.retrain_runs(["random", "oracle", "random_gt", "continue"], [42, 43, 44], True)
    assert len(runs) == 15 and {a for _, a, _ in runs} == set(experiment.ARMS)
    assert ("random_gt_s43", "random_gt", 43) in runs


# ----------------------------------------------------------------- replay set, equal steps
def test_replay_split_is_stratified_seeded_and_disjoint_from_the_filler():
    train = _pools()[lambda d: d["pool"] == "train"]
    replay, filler = experiment.replay_split(train, 60, 30, seed=42)
    assert len(replay) == 60 and len(filler) == 30 and not set(replay) & set(filler)
    strata = train.set_index("name").loc[replay, "weather"].value_counts()
    assert strata.tolist() == [20, 20, 20]                       # stratified by weather x timeofday
    assert experiment.replay_split(train, 60, 30, seed=42) == (replay, filler)
    assert experiment.replay_split(train, 60, 30, seed=43)[0] != replay


def test_replay_zero_means_all_of_train_but_the_continue_frames():
    train = _pools()[lambda d: d["pool"] == "train"]
    replay, filler = experiment.replay_split(train, 0, 20, seed=1)
    assert len(replay) == 100 and len(filler) == 20 and set(replay) | set(filler) == set(train["name"])


def test_replay_too_large_for_the_train_pool_is_refused():
    train = _pools()[lambda d: d["pool"] == "train"]
    with pytest.raises(ValueError, match="retrain_replay 101 \\+ mine_k 20"):
        experiment.replay_split(train, 101, 20, seed=1)


def test_every_arm_has_replay_plus_k_frames():
    replay = [{"name": f"r{i}"} for i in range(10)]
    filler = [{"name": f"f{i}"} for i in range(4)]
    for added in ([], [{"name": "a"}], [{"name": f"a{i}"} for i in range(4)]):
        s = experiment.arm_frames(replay, added, filler, 4)
        assert len(s) == 14 and s[10:10 + len(added)] == added
        assert [f["name"] for f in s[10 + len(added):]] == [f"f{i}" for i in range(4 - len(added))]
    with pytest.raises(ValueError):
        experiment.arm_frames(replay, [{"name": "x"}] * 5, filler, 4)


# ----------------------------------------------------------------- G1, G2
@pytest.mark.parametrize("delta,ci,pool,ok", [
    (0.0, CI_IN, 0.0, True),
    (0.010, [-0.005, 0.02], -0.010, True),      # every bound inclusive
    (0.0101, [-0.005, 0.02], 0.0, False),       # |mean| above tol
    (-0.0101, [-0.02, 0.005], 0.0, False),
    (0.0, [0.001, 0.02], 0.0, False),           # CI excludes 0 from above
    (0.0, [-0.02, -0.001], 0.0, False),         # ... from below
    (0.0, [0.0, 0.02], 0.0, True),              # 0 on the bound is contained
    (0.0, CI_IN, -0.0101, False),               # eval-pool part
    (None, CI_IN, 0.0, False), (0.0, [None, None], 0.0, False), (0.0, CI_IN, None, False),
])
def test_g1_continue(delta, ci, pool, ok):
    assert experiment.g1_continue(delta, ci, pool, 0.010)["pass"] is ok


@pytest.mark.parametrize("ci,ok", [([0.001, 0.05], True), ([0.0, 0.05], False), ([-0.01, 0.05], False),
                                   ([None, None], False)])
def test_g2_selection_needs_a_positive_lower_bound(ci, ok):
    assert experiment.g2_selection({"delta": 0.02, "ci": ci})["pass"] is ok
    assert experiment.g2_selection(None)["pass"] is False


# ----------------------------------------------------------------- verdict table
PASS, FAIL = {"pass": True}, {"pass": False}


@pytest.mark.parametrize("g1,g2,ci,expected", [
    (PASS, PASS, CI_POS, "improved"), (PASS, PASS, CI_NEG, "worse"), (PASS, PASS, CI_IN, "no_gain"),
    (PASS, PASS, [0.0, 0.05], "no_gain"), (PASS, PASS, [-0.05, 0.0], "no_gain"),
    (FAIL, PASS, CI_POS, "inconclusive"), (PASS, FAIL, CI_POS, "inconclusive"), (FAIL, FAIL, CI_NEG, "inconclusive"),
    (PASS, FAIL, CI_NEG, "inconclusive"), (FAIL, PASS, CI_IN, "inconclusive"), (PASS, PASS, [None, None], "inconclusive"),
])
def test_verdict_table(g1, g2, ci, expected):
    assert experiment.verdict_label(g1, g2, {"delta": 0.0, "ci": ci}) == expected


def _confirm(cont_ci=CI_IN, sel_ci=CI_POS, head_ci=CI_POS, cont=0.0):
    return {"arms": {"continue": {"delta": cont, "ci": cont_ci}},
            "contrasts": {"iter1-random": {"delta": 0.02, "ci": head_ci}, "oracle-random_gt": {"delta": 0.04, "ci": sel_ci}}}


def test_controls_end_to_end_each_failing_control_gives_inconclusive():
    assert experiment.controls(_confirm(), 0.0, 0.01)["verdict"] == "improved"
    assert experiment.controls(_confirm(cont_ci=[0.005, 0.03], cont=0.015), 0.0, 0.01)["verdict"] == "inconclusive"
    assert experiment.controls(_confirm(), -0.02, 0.01)["verdict"] == "inconclusive"   # eval-pool part of G1
    assert experiment.controls(_confirm(sel_ci=[-0.01, 0.05]), 0.0, 0.01)["verdict"] == "inconclusive"


def test_inconclusive_case_study_never_says_does_not_beat():
    from bdd_engine import casestudy
    h = {**experiment.controls(_confirm(sel_ci=[-0.01, 0.05], head_ci=CI_NEG), 0.0, 0.01),
         "contrast_iter1_random": {"delta": -0.03, "ci": CI_NEG}}
    text = casestudy.verdict_block(h)
    assert text.startswith("**Verdict: INCONCLUSIVE.** G2 failed") and "not beat" not in text
    assert text.index("G1, the negative control") < text.index("G2, the positive control")
    ok = {**experiment.controls(_confirm(), 0.0, 0.01), "contrast_iter1_random": {"delta": 0.02, "ci": CI_POS}}
    assert casestudy.verdict_block(ok).startswith("**Verdict: IMPROVED.** Both controls passed")


# ----------------------------------------------------------------- share recovered
def test_share_recovered_arithmetic():
    share, txt = experiment.share_recovered({"delta": 0.015, "ci": CI_IN}, {"delta": 0.06, "ci": [0.01, 0.1]})
    assert share == pytest.approx(0.25) and "0.25" in txt and "25%" in txt
    share, _ = experiment.share_recovered({"delta": -0.03, "ci": CI_NEG}, {"delta": 0.06, "ci": [0.01, 0.1]})
    assert share == pytest.approx(-0.5)


@pytest.mark.parametrize("den_ci", [[0.0, 0.1], [-0.01, 0.1], [None, None]])
def test_share_recovered_is_none_when_the_selection_effect_is_not_above_zero(den_ci):
    share, txt = experiment.share_recovered({"delta": 0.01, "ci": CI_IN}, {"delta": 0.05, "ci": den_ci})
    assert share is None and "not defined" in txt


# ----------------------------------------------------------------- no confirmation number feeds a choice
def test_confirmation_labels_and_predictions_feed_no_choice():
    """The slice, the eligibility and the pools depend on the confirmation set only through
    its per-slice frame counts: perturbing its boxes (ground truth or predictions) changes no
    choice; changing a count across a threshold does."""
    from tests.test_rules_slices import frame_table
    frames = frame_table()
    conf = pd.DataFrame({"name": [f"c{i}.jpg" for i in range(600)],
                         "slice": np.repeat(slices.slice_index(frames)["slice"].tolist(), 120)[:600]})
    n = conf["slice"].value_counts().to_dict()
    p1 = slices.make_pools(frames, 120, 60, 0, 12, 7, confirm_n=n, min_confirm=100, min_pool=5)
    rng = np.random.default_rng(0)
    conf_perturbed = conf.assign(labels=[rng.integers(0, 9, 3).tolist() for _ in range(600)],
                                 score=rng.random(600))  # any box or score change
    p2 = slices.make_pools(frames, 120, 60, 0, 12, 7, confirm_n=conf_perturbed["slice"].value_counts().to_dict(),
                           min_confirm=100, min_pool=5)
    pd.testing.assert_frame_equal(p1, p2)
    res = pd.DataFrame({"slice": list(n), "level": "full", "n_frames": 20, "AP50": np.linspace(0.1, 0.5, len(n))})
    assert experiment.confirmable(res, n, 100).equals(experiment.confirmable(res, conf_perturbed["slice"].value_counts().to_dict(), 100))


def test_no_choice_key_reads_the_confirmation_set():
    """The recipe keys, thresholds and slice rule live in sections that never read §8's
    confirmation scores: §3 (pools), §5 (slice) and §7 (recipe) hash no §8 key, and no
    upstream of §3/§5/§7 is §8 (turn 1)."""
    from bdd_engine.sections import SPECS
    for n in (3, 5, 7):
        assert 8 not in SPECS[n].upstream and "control_" not in SPECS[n].prefixes
    cfg = load_config("demo", env=False)
    tol = load_config("demo", {"control_continue_tol": 0.5}, env=False)
    assert all(cfg.section_hash(n) == tol.section_hash(n) for n in (3, 5, 6, 7))


# ----------------------------------------------------------------- the recipe choice
RECIPES = [{"name": "a", "cost_steps": 800, "pool_delta": -0.03}, {"name": "b", "cost_steps": 800, "pool_delta": -0.004},
           {"name": "b2", "cost_steps": 800, "pool_delta": 0.002}, {"name": "c", "cost_steps": 4000, "pool_delta": 0.01}]


def test_choose_recipe_keeps_the_cheapest_passing_then_the_highest_delta():
    assert experiment.choose_recipe(RECIPES, 0.01) == "b2"
    assert experiment.choose_recipe([RECIPES[0], RECIPES[3]], 0.01) == "c"        # only the costly one passes
    assert experiment.choose_recipe([{**RECIPES[0], "pool_delta": -0.01}], 0.01) == "a"  # -tol passes (inclusive)
    assert experiment.choose_recipe([RECIPES[0]], 0.01) is None


def test_choose_recipe_ignores_confirmation_numbers():
    noisy = [{**r, "confirm_delta": v, "confirm_ci": [v - 1, v + 1]} for r, v in zip(RECIPES, (0.9, -0.9, -0.9, 0.9))]
    assert experiment.choose_recipe(noisy, 0.01) == experiment.choose_recipe(RECIPES, 0.01)


def test_design_card_shows_the_measured_recipe_table_or_says_where_to_get_it():
    from bdd_engine import casestudy
    cfg = load_config("demo", env=False)
    none = casestudy.design_card(cfg, None, None)
    assert "pre-registered" in none and "bench_recipe.py" in none and "bench_assay.py" in none
    rows = [{**r, "seeds": [42, 43, 44], "train_s_per_seed": 40.0, "pool_ci": [r["pool_delta"] - 0.004,
             r["pool_delta"] + 0.004], "pool_delta_per_seed": [r["pool_delta"]] * 3} for r in RECIPES]
    recipe = {"chosen": "b", "rule": experiment.RECIPE_RULE, "table": rows}
    assay = {"sentence": "adding all 35 ...", "table": [{"dose": "all", "frames": 35, "slice_delta": 0.004,
             "slice_ci": [-0.001, 0.01], "random_delta": -0.001, "random_ci": [-0.008, 0.005], "contrast": 0.005,
             "contrast_ci": [-0.0008, 0.0117]}]}
    card = casestudy.design_card(cfg, recipe, assay)
    assert "chosen: **b**" in card and "| b2 |" in card
    assert "adding all 35" in card and "| -0.0300 | [-0.0340, -0.0260] |" in card and "[-0.0008, +0.0117]" in card
