"""slices.py's leakage rule on every pool pair and the pool invariants it guards.

An eval drive group may share frames with no other pool but ``holdout`` (its own
leftovers): check_leakage must catch eval∩train and eval∩pool, accept eval∩holdout, and
make_pools must produce pools that are group-disjoint for every other pair."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from bdd_engine import slices

POOLS = ("eval", "train", "pool", "holdout")
SLICES = [("clear", "daytime", "city street"), ("clear", "night", "city street"), ("rainy", "night", "highway"),
          ("overcast", "daytime", "highway"), ("foggy", "dawn/dusk", "residential")]


def frame_table(n_groups: int = 80, per_group: int = 4, seed: int = 0) -> pd.DataFrame:
    """Drives of ``per_group`` frames; a drive mostly stays in one slice, sometimes not."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        s = int(rng.choice(len(SLICES), p=[0.35, 0.25, 0.2, 0.15, 0.05]))
        for i in range(per_group):
            si = s if rng.random() < 0.8 else int(rng.integers(len(SLICES)))
            w, t, sc = SLICES[si]
            rows.append({"name": f"{g:08x}-{i:08x}.jpg", "weather": w, "timeofday": t, "scene": sc,
                         "group": f"{g:08x}"})
    return pd.DataFrame(rows)


def plant(pools: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Move one frame of pool ``b`` into a drive group of pool ``a``."""
    p = pools.copy()
    g = p.loc[p["pool"] == a, "group"].iloc[0]
    i = p.index[(p["pool"] == b) & (p["group"] != g)][0]
    p.loc[i, "group"] = g
    return p


@pytest.fixture(scope="module")
def pools():
    p = slices.make_pools(frame_table(), train_size=120, eval_size=60, max_slices=3, golden_size=12, seed=7)
    assert set(p["pool"]) == set(POOLS)                      # every pool is populated: every pair is exercised
    return p


@pytest.mark.parametrize("a,b", [("eval", "train"), ("train", "eval"), ("eval", "pool"), ("pool", "eval")])
def test_leak_between_eval_and_train_or_pool_is_caught(pools, a, b):
    slices.check_leakage(pools)                              # clean before the plant
    other = b if a == "eval" else a
    with pytest.raises(slices.LeakageError, match=rf"1 eval drive group\(s\) also in '{other}'"):
        slices.check_leakage(plant(pools, a, b))


@pytest.mark.parametrize("a,b", [("eval", "holdout"), ("holdout", "eval")])
def test_eval_sharing_a_group_with_its_holdout_is_by_design(pools, a, b):
    slices.check_leakage(plant(pools, a, b))


def test_make_pools_groups_are_disjoint_for_every_pair_but_eval_holdout(pools):
    groups = {p: set(pools.loc[pools["pool"] == p, "group"]) for p in POOLS}
    for a, b in itertools.combinations(POOLS, 2):
        shared = groups[a] & groups[b]
        if {a, b} == {"eval", "holdout"}:
            continue
        assert not shared, (a, b, sorted(shared)[:3])
    # holdout frames are exactly the eval groups' leftovers
    assert groups["holdout"] <= groups["eval"]
    assert pools["golden"].sum() == 12 and pools.loc[pools["golden"], "pool"].eq("eval").all()


def test_make_pools_eval_quota_per_top_slice(pools):
    ev = pools[pools["pool"] == "eval"]
    top = slices.slice_index(pools)["slice"].head(3).tolist()
    assert set(ev["slice"]) <= set(top)
    assert ev["slice"].value_counts().to_dict() == {s: 20 for s in top}


def test_slice_key_is_missing_when_any_attribute_is():
    df = pd.DataFrame({"weather": ["clear", None, "rainy"], "timeofday": ["night", "night", None],
                       "scene": ["highway", "highway", "tunnel"]})
    k = slices.key(df)
    assert k.iloc[0] == "clear | night | highway" and k.iloc[1:].isna().all()
    assert slices.key(df, ("weather",)).tolist()[::2] == ["clear", "rainy"]


# ----------------------------------------------------------------- §1 stratified allocation (issue 23, item 16)
def _source(sizes: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = [{"name": f"{w}-{t}-{i:05d}.jpg".replace("/", "_"), "weather": w, "timeofday": t, "scene": "highway",
             "image_path": "x.jpg"} for (w, t), n in sizes.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_collect_gives_a_rare_stratum_min_of_floor_and_its_size():
    # proportional shares of 100 would be 98.2 / 1.5 / 0.3; the floor of 10 lifts both rare strata:
    # "foggy | dawn/dusk" (3 frames < floor) keeps all 3; "rainy | night" (15 > floor) gets the floor
    # plus its share of what the floors leave (10 + 77 * 15/1015 = 11.1 -> 11); the rest goes to the big one.
    src = _source({("clear", "daytime"): 1000, ("rainy", "night"): 15, ("foggy", "dawn/dusk"): 3})
    got, table = slices.collect(src, total=100, floor=10, seed=42)
    n = table.set_index("stratum")["collected"].to_dict()
    assert n == {"clear | daytime": 86, "rainy | night": 11, "foggy | dawn/dusk": 3}
    assert len(got) == 100 and got["weather"].value_counts().to_dict() == {"clear": 86, "rainy": 11, "foggy": 3}
    # a floor of 0 is the plain proportional split (largest remainder): the rare strata nearly vanish
    n0 = slices.collect(src, total=100, floor=0, seed=42)[1].set_index("stratum")["collected"].to_dict()
    assert n0 == {"clear | daytime": 98, "rainy | night": 2, "foggy | dawn/dusk": 0}
    # a floor above every stratum's size: each keeps min(floor, size) and the total is still met
    n50 = slices.collect(src, total=100, floor=50, seed=42)[1].set_index("stratum")["collected"].to_dict()
    assert n50 == {"clear | daytime": 82, "rainy | night": 15, "foggy | dawn/dusk": 3}


# ----------------------------------------------------------------- eligibility (issue 24)
@pytest.mark.parametrize("confirm,pool,ok", [(100, 40, True), (99, 40, False), (100, 39, False), (500, 1000, True),
                                             (0, 40, False)])
def test_eligible_needs_both_thresholds_inclusive(confirm, pool, ok):
    assert slices.eligible({"s": confirm}, {"s": pool}, min_confirm=100, min_pool=40) == (["s"] if ok else [])


def test_eligible_counts_a_slice_missing_from_the_pool_as_zero():
    assert slices.eligible({"a": 100, "b": 100}, {"a": 40}, 100, 40) == ["a"]
    assert slices.eligible({"a": 100, "b": 100}, {"a": 40}, 100, 0) == ["a", "b"]


def _pool_counts(p: pd.DataFrame, pool: str) -> dict:
    return p.loc[p["pool"] == pool, "slice"].value_counts().to_dict()


def test_make_pools_balances_eval_over_eligible_slices_not_the_most_frequent():
    frames = frame_table()
    names = slices.slice_index(frames)["slice"].tolist()          # most frequent first
    confirm = {s: 100 for s in names}
    confirm[names[0]] = 99                                       # the most frequent slice cannot be confirmed
    p = slices.make_pools(frames, train_size=120, eval_size=60, max_slices=0, golden_size=12, seed=7,
                          confirm_n=confirm, min_confirm=100, min_pool=10)
    ev, pool = _pool_counts(p, "eval"), _pool_counts(p, "pool")
    assert names[0] not in ev                                    # fails the confirmation threshold
    assert set(ev) == {s for s in names[1:] if pool.get(s, 0) >= 10}  # every eligible slice, long tail included
    assert max(ev.values()) - min(ev.values()) <= 1 and sum(ev.values()) == 60  # balanced: equal quota each
    assert all(pool.get(s, 0) >= 10 for s in ev)                 # each keeps a real dose in the mining pool


def test_make_pools_drops_a_slice_whose_pool_dose_is_too_small_and_rebalances():
    frames = frame_table()
    names = slices.slice_index(frames)["slice"].tolist()
    confirm = {s: 100 for s in names}
    loose = slices.make_pools(frames, 120, 60, 0, 12, 7, confirm_n=confirm, min_confirm=100, min_pool=0)
    pool0 = _pool_counts(loose, "pool")
    rare = min(_pool_counts(loose, "eval"), key=lambda s: pool0.get(s, 0))
    need = pool0.get(rare, 0) + 1                                # one frame more than the rarest slice keeps
    strict = slices.make_pools(frames, 120, 60, 0, 12, 7, confirm_n=confirm, min_confirm=100, min_pool=need)
    ev, pool = _pool_counts(strict, "eval"), _pool_counts(strict, "pool")
    assert rare not in ev and ev and all(pool[s] >= need for s in ev)
    assert sum(ev.values()) == 60                                # the freed quota goes to the eligible slices


def test_make_pools_refuses_when_no_slice_is_eligible():
    with pytest.raises(ValueError, match="no slice is eligible"):
        slices.make_pools(frame_table(), 120, 60, 0, 12, 7, confirm_n={}, min_confirm=100, min_pool=0)


def test_eligibility_table_marks_exactly_the_eval_slices():
    frames = frame_table()
    confirm = {s: 100 for s in slices.slice_index(frames)["slice"]}
    p = slices.make_pools(frames, 120, 60, 0, 12, 7, confirm_n=confirm, min_confirm=100, min_pool=10)
    t = slices.eligibility_table(p, confirm, 100, 10)
    assert set(t.loc[t["eligible"], "slice"]) == set(_pool_counts(p, "eval"))
    assert (t.loc[t["eligible"], "n_pool"] >= 10).all() and (t.loc[t["eligible"], "n_confirm"] >= 100).all()
