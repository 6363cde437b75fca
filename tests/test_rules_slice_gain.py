"""Issue 24, items 4 (the world's dose rule), 8 (slice_rule gain) and the design benchmarks'
provenance: the pure rules over curve points and stamps, §5's rule switch, the case study's
report of where each benchmark table came from."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from bdd_engine import benchstamp, casestudy, experiment
from bdd_engine import flywheel as fw
from bdd_engine.config import load_config

A, B, C = "clear | daytime | city street", "snowy | night | city street", "rainy | night | city street"


def _points() -> pd.DataFrame:
    rows = [(A, 0, 0.00), (A, 50, 0.01), (B, 0, -0.01), (B, 50, 0.04), (C, 0, 0.0), (C, 50, 0.02), (C, 50, 0.04)]
    return pd.DataFrame(rows, columns=["slice", "frames", "delta"])


# ----------------------------------------------------------------- item 8: the gain rule
def test_slice_slopes_are_least_squares_slopes_ranked_steepest_first():
    s = experiment.slice_slopes(_points())
    assert list(s["slice"]) == [B, C, A]
    got = dict(zip(s["slice"], s["slope"]))
    assert got[B] == pytest.approx(0.05 / 50) and got[A] == pytest.approx(0.01 / 50)
    assert got[C] == pytest.approx(0.03 / 50)  # two seeds at one dose: the fit goes through their mean
    assert dict(zip(s["slice"], s["slope_per_100"]))[B] == pytest.approx(0.1)


def test_a_slice_with_one_dose_has_no_slope_and_ranks_last():
    two_seeds_one_dose = pd.DataFrame([{"slice": "z", "frames": 50, "delta": 0.9}, {"slice": "z", "frames": 50, "delta": 0.7}])
    s = experiment.slice_slopes(pd.concat([_points(), two_seeds_one_dose], ignore_index=True))
    assert s["slice"].iloc[-1] == "z" and s["slope"].isna().iloc[-1] and s["doses"].iloc[-1] == 1
    assert s["points"].iloc[-1] == 2


def test_pick_slice_worst_keeps_the_worst_and_gain_takes_the_steepest_eligible():
    s = experiment.slice_slopes(_points())
    assert experiment.pick_slice("worst", A, s, [A, B, C]) == A
    assert experiment.pick_slice("gain", A, s, [A, B, C]) == B
    assert experiment.pick_slice("gain", A, s, [A, C]) == C  # B not eligible: never picked
    with pytest.raises(ValueError, match="bench_slice_gain"):
        experiment.pick_slice("gain", A, s, ["other"])
    with pytest.raises(ValueError, match="slice_rule must be one of"):
        experiment.pick_slice("best", A, s, [A])


def test_s5_slice_rule_gain_reads_this_outputs_folders_benchmark_or_refuses(tmp_path):
    cfg = load_config("tiny", {"outputs_dir": str(tmp_path), "eval_slice_rule": "gain", "confirm_min_frames": 1,
                               "eval_min_pool_frames": 1}, env=False)
    res = SimpleNamespace(slices=pd.DataFrame([
        {"level": "full", "slice": A, "AP50": 0.5, "ci_lo": 0.4, "ci_hi": 0.6, "n_frames": 20},
        {"level": "full", "slice": B, "AP50": 0.2, "ci_lo": 0.1, "ci_hi": 0.3, "n_frames": 18}]))
    info = {"worst_slice": B, "best_AP50": 0.5, "AP50": 0.2}
    cn, pn = {A: 5, B: 5}, {A: 5, B: 5}
    with pytest.raises(ValueError, match="bench_slice_gain.py"):
        fw._apply_slice_rule(cfg, info, res, cn, pn)
    table = experiment.slice_slopes(pd.DataFrame([(A, 0, 0.0), (A, 6, 0.06), (B, 0, 0.0), (B, 6, 0.01)],
                                                 columns=["slice", "frames", "delta"])).to_dict("records")
    from bdd_engine import synth
    st = benchstamp.stamp("tiny", synth.world_hash(cfg), True, "c0ffee", B)
    benchstamp.save(cfg.out, "tiny", "slice_gain", {"table": table, "stamp": st}, committed=tmp_path / "committed")
    got = fw._apply_slice_rule(cfg, info, res, cn, pn)
    assert got["worst_slice"] == A and got["worst_by_ap"] == B and got["slice_rule"] == "gain"
    assert got["AP50"] == 0.5 and got["n_eval"] == 20 and got["gap"] == 0.0
    worst = load_config("tiny", {"outputs_dir": str(tmp_path)}, env=False)
    assert fw._apply_slice_rule(worst, info, res, cn, pn) == {**info, "slice_rule": "worst"}
    other = {"table": table, "stamp": {**st, "world_hash": "another"}}
    benchstamp.save(cfg.out, "tiny", "slice_gain", other, committed=tmp_path / "committed")
    with pytest.raises(ValueError, match="measured on this world"):
        fw._apply_slice_rule(cfg, info, res, cn, pn)


# ----------------------------------------------------------------- provenance of design benchmarks
def test_stamp_mismatch_names_the_other_world_and_slice():
    st = benchstamp.stamp("demo", "w1", True, "abc", B, now=dt.datetime(2026, 12, 3, tzinfo=dt.timezone.utc))
    assert st["date"] == "2026-12-03T00:00:00Z" and st["synthetic"] is True
    assert benchstamp.mismatch(st, "w1", B) == [] and benchstamp.mismatch(st, "w1", None) == []
    assert benchstamp.mismatch(st, "w2", B) == ["measured on world `w1`, this run's is `w2`"]
    assert benchstamp.mismatch(st, "w1", A) == [f"measured on slice {B}, this run chose {A}"]
    assert benchstamp.mismatch(None, "w1", B) == ["no provenance stamp"]


def test_bench_results_load_from_the_outputs_folder_first_then_the_committed_copy(tmp_path):
    out, com = tmp_path / "out", tmp_path / "committed"
    assert benchstamp.load(out, "demo", "assay", committed=com) == (None, "")
    png = out / "benchmarks" / "assay.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG fake")
    benchstamp.save(out, "demo", "assay", {"v": 1}, png, committed=com)
    assert json.loads((com / "demo" / "assay.json").read_text()) == {"v": 1}
    assert (com / "demo" / "assay.png").read_bytes() == b"\x89PNG fake"
    assert benchstamp.load(out, "demo", "assay", committed=com) == ({"v": 1}, "this outputs folder")
    (out / "benchmarks" / "assay.json").unlink()
    assert benchstamp.load(out, "demo", "assay", committed=com) == ({"v": 1}, "committed")
    assert benchstamp.png_of(out, "demo", "assay", "committed", committed=com) == com / "demo" / "assay.png"


def test_design_card_says_whether_each_table_is_this_runs_and_reports_both_slice_picks():
    cfg = load_config("demo", env=False)
    st = benchstamp.stamp("demo", "w-old", True, "0123456789abcdef", B)
    assay = {"sentence": "adding all 35 ...", "stamp": st, "table": [{"dose": "all", "frames": 35, "slice_delta": 0.004,
             "slice_ci": [-0.001, 0.01], "random_delta": -0.001, "random_ci": [-0.008, 0.005], "contrast": 0.005,
             "contrast_ci": [-0.0008, 0.0117]}]}
    gain = {"picks": {"worst": B, "gain": C}, "dose": 50, "seeds": [42], "stamp": st,
            "table": [{"slice": C, "iter0_AP50": 0.3, "slope_per_100": 0.04, "doses": 2},
                      {"slice": B, "iter0_AP50": 0.14, "slope_per_100": 0.01, "doses": 2}]}
    where = {"assay": "committed", "slice_gain": "committed"}
    figs = {"assay": "../figures/bench_assay.png", "slice_gain": "../figures/bench_slice_gain.png"}
    other = casestudy.design_card(cfg, None, assay, gain, world="w-new", slice_=B, where=where, figs=figs)
    assert "**Not this run's measurement** (measured on world `w-old`, this run's is `w-new`)" in other
    assert "![Assay sensitivity" in other and "(../figures/bench_slice_gain.png)" in other
    assert f"`worst` → **{B}**, `gain` → **{C}**" in other and "| +0.0400 |" in other
    same = casestudy.design_card(cfg, None, assay, gain, world="w-old", slice_=B, where=where, figs=figs)
    assert "Not this run's" not in same and "Same world and slice as this run." in same
    assert "commit `0123456789ab`" in same and "(SYNTHETIC)" in same
    none = casestudy.design_card(cfg, None, None)
    assert "eval_slice_rule: worst" in none and "bench_slice_gain.py" in none


# ----------------------------------------------------------------- item 4: the world's dose rule
def test_demo_eligibility_needs_a_full_mining_dose():
    """A slice is eligible only when the miner could fill its whole budget from it (issue 24 item 4:
    at 30 pool frames the chosen slice could not show a selection effect even all ground-truth labelled)."""
    cfg = load_config("demo", env=False)
    assert int(cfg.eval_min_pool_frames) >= int(cfg.mine_k)

