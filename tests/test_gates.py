"""Promotion gates (bdd_engine.gates) and the registry that uses them: a planted regression in
safety recall blocks promotion, a drift flag blocks unless waived, an mAP drop beyond the
tolerance blocks, all-clear promotes; edges exactly at the tolerance, 0 -> 0 and no-GT classes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bdd_engine import experiment, gates
from bdd_engine.bdd import SAFETY_CLASSES
from bdd_engine.checkpoint import atomic_write_json
from bdd_engine.config import load_config

REC = {"pedestrian": 0.80, "rider": 0.50, "bicycle": 0.40, "motorcycle": 0.60}
NGT = {c: 20 for c in SAFETY_CLASSES}


def _gates(map_after=0.30, rec_after=None, flags=(), waive=False, n_gt=None, map_tol=0.01, recall_tol=0.02):
    return gates.promotion_gates(0.30, map_after, REC, {**REC, **(rec_after or {})}, n_gt or NGT, list(flags),
                                 map_tol=map_tol, recall_tol=recall_tol, waive_drift=waive)


def _by_name(res):
    return {g["name"]: g for g in res["gates"]}


def test_all_clear_promotes_and_every_gate_has_number_threshold_verdict():
    res = _gates(map_after=0.31, rec_after={"rider": 0.55})
    assert res["promote"] is True
    assert [g["name"] for g in res["gates"]] == (["overall mAP@0.5 drop"] + [f"{c} recall@0.5 drop" for c in SAFETY_CLASSES]
                                                + ["golden-QA drift flags"])
    g = _by_name(res)
    assert g["overall mAP@0.5 drop"]["value"] == pytest.approx(-0.01) and g["overall mAP@0.5 drop"]["threshold"] == 0.01
    assert g["rider recall@0.5 drop"]["value"] == pytest.approx(-0.05) and g["rider recall@0.5 drop"]["n_gt"] == 20
    assert {x["verdict"] for x in res["gates"]} == {"pass"}


def test_planted_safety_recall_regression_blocks():
    res = _gates(map_after=0.35, rec_after={"pedestrian": 0.70})  # better mAP, worse pedestrians
    g = _by_name(res)["pedestrian recall@0.5 drop"]
    assert res["promote"] is False and g["verdict"] == "fail" and g["value"] == pytest.approx(0.10)
    assert (g["before"], g["after"], g["threshold"]) == (0.80, 0.70, 0.02)


@pytest.mark.parametrize("after, verdict", [(0.78, "pass"), (0.7799, "fail")])
def test_recall_drop_exactly_at_tolerance_passes(after, verdict):
    # 0.80 - 0.78 is 0.020000000000000018 in floats: still "exactly the tolerance"
    assert _by_name(_gates(rec_after={"pedestrian": after}))["pedestrian recall@0.5 drop"]["verdict"] == verdict


@pytest.mark.parametrize("after, promote", [(0.29, True), (0.2899, False), (0.25, False)])
def test_map_drop_beyond_tolerance_blocks(after, promote):
    res = _gates(map_after=after)
    assert res["promote"] is promote
    assert _by_name(res)["overall mAP@0.5 drop"]["verdict"] == ("pass" if promote else "fail")


def test_drift_flag_blocks_unless_waived():
    flags = ["teacher_iter1: share of rider 0.00 vs GT 0.08"]
    blocked, waived = _gates(flags=flags), _gates(flags=flags, waive=True)
    assert blocked["promote"] is False and _by_name(blocked)["golden-QA drift flags"]["verdict"] == "fail"
    d = _by_name(waived)["golden-QA drift flags"]
    assert waived["promote"] is True and d["verdict"] == "waived" and d["value"] == 1 and d["flags"] == flags


def test_zero_recall_before_and_after_is_no_loss_and_no_gt_is_not_gated():
    rec0 = {**REC, "rider": 0.0, "bicycle": 0.0}
    res = gates.promotion_gates(0.3, 0.3, rec0, {**rec0, "motorcycle": float("nan")}, {**NGT, "motorcycle": 0}, [],
                                map_tol=0.01, recall_tol=0.02, waive_drift=False)
    g = _by_name(res)
    assert g["rider recall@0.5 drop"]["verdict"] == "pass" and "never found" in g["rider recall@0.5 drop"]["note"]
    assert g["motorcycle recall@0.5 drop"]["verdict"] == "no GT" and g["motorcycle recall@0.5 drop"]["value"] is None
    assert res["promote"] is True


def test_unmeasured_numbers_fail_closed():
    res = gates.promotion_gates(0.3, 0.3, None, None, None, None, map_tol=0.01, recall_tol=0.02, waive_drift=True)
    assert res["promote"] is False
    assert {g["verdict"] for g in res["gates"][1:]} == {"not measured"}, "even a waiver cannot pass unmeasured drift"


# ----------------------------------------------------------------------------- the registry
def _runs():
    return pd.DataFrame([
        {"run": "iter0", "arm": "iter0", "overall_AP50": 0.30, "worst_slice_AP50": 0.10, "weights": "w0"},
        {"run": "iter1", "arm": "iter1", "overall_AP50": 0.31, "worst_slice_AP50": 0.20, "weights": "w1"},
        {"run": "random", "arm": "random", "overall_AP50": 0.40, "worst_slice_AP50": 0.50, "weights": "wr"},
    ])


def _pc(rec):
    return pd.DataFrame({"recall50": [rec[c] for c in SAFETY_CLASSES], "n_gt": [20] * 4}, index=list(SAFETY_CLASSES))


def test_registry_records_gates_and_blocks_a_planted_safety_regression(tmp_path):
    golden = {"labelers": {"teacher_iter0": {"drift_flags": []}, "teacher_iter1": {"drift_flags": []}}}
    ok = experiment.registry(_runs(), 0.01, {"iter0": _pc(REC), "iter1": _pc(REC)}, golden, safety_tol=0.02)
    assert ok["promoted"] == "iter1" and ok["rejected"] == {} and ok["gates"]["iter1"]["promote"] is True
    bad = experiment.registry(_runs(), 0.01, {"iter0": _pc(REC), "iter1": _pc({**REC, "rider": 0.0})}, golden,
                              safety_tol=0.02)
    assert bad["promoted"] == "iter0" and bad["rejected"] == {"iter1": ["rider recall@0.5 drop"]}
    # registry.json is strict JSON with each gate's number and verdict
    reg = json.loads(atomic_write_json(tmp_path / "registry.json", bad).read_text())
    table = gates.gates_table(reg).set_index("gate")
    assert table.loc["rider recall@0.5 drop", "value"] == pytest.approx(0.5)
    assert table.loc["rider recall@0.5 drop", "verdict"] == "fail" and len(table) == 6


def test_registry_drift_flag_blocks_unless_config_waives():
    golden = {"labelers": {"teacher_iter1": {"drift_flags": ["share of rider 0.00 vs GT 0.08"]}}}
    pcs = {"iter0": _pc(REC), "iter1": _pc(REC)}
    assert experiment.registry(_runs(), 0.01, pcs, golden)["promoted"] == "iter0"
    r = experiment.registry(_runs(), 0.01, pcs, golden, waive_drift=True)
    assert r["promoted"] == "iter1" and "waived" in r["rule"]
    assert r["gates"]["iter1"]["gates"][-1]["flags"] == ["teacher_iter1: share of rider 0.00 vs GT 0.08"]


def test_gate_keys_are_in_the_default_profile():
    cfg = load_config("demo", env=False)
    assert cfg.report_safety_recall_tol == 0.02 and cfg.report_waive_drift is False


# ----------------------------------------------------------------------------- stages: candidate -> promoted -> deployable
DEPLOY = {"recall_target": 0.35, "map_floor": 0.25}  # REC clears 0.35 everywhere; both runs clear 0.25 overall


def _stages(rec1=None, golden=None, runs=None, **kw):
    golden = golden if golden is not None else {"labelers": {"teacher_iter1": {"drift_flags": []}}}
    return experiment.registry(runs if runs is not None else _runs(), 0.01,
                               {"iter0": _pc(REC), "iter1": _pc({**REC, **(rec1 or {})})}, golden,
                               safety_tol=0.02, **{**DEPLOY, **kw})


def test_all_gates_clear_makes_the_promoted_model_deployable():
    r = _stages()
    assert r["promoted"] == "iter1" and r["stage"] == "deployable"
    assert r["stages"] == {"iter0": {"stage": "deployable", "held_by": []}, "iter1": {"stage": "deployable", "held_by": []}}
    assert {g["verdict"] for g in r["deploy_gates"]["iter1"]["gates"]} == {"pass"}
    assert "deployable" in r["deploy_rule"] and "0.35" in r["deploy_rule"]


@pytest.mark.parametrize("plant, stage, held", [
    ({"rec1": {"pedestrian": 0.70}}, "candidate", ["pedestrian recall@0.5 drop"]),          # relative: safety regression
    ({"runs": "map_drop"}, "candidate", ["overall mAP@0.5 drop"]),                           # relative: overall mAP drop
    ({"golden": {"labelers": {"teacher_iter1": {"drift_flags": ["share of car 0.9 vs GT 0.5"]}}}},
     "candidate", ["golden-QA drift flags"]),                                                 # relative: own drift
    ({"golden": {"labelers": {"teacher_iter0": {"drift_flags": []}}}}, "candidate", ["golden-QA drift flags"]),  # own labels unmeasured
    ({"recall_target": 0.45}, "promoted", ["bicycle recall@0.5 target"]),                    # absolute: bicycle 0.40 < 0.45
    ({"map_floor": 0.32}, "promoted", ["overall mAP@0.5 floor"]),                            # absolute: overall 0.31 < 0.32
    ({"recall_target": None}, "promoted", [f"{c} recall@0.5 target" for c in SAFETY_CLASSES]),  # no target set: fails closed
])
def test_each_planted_failing_gate_holds_the_model_at_its_stage(plant, stage, held):
    plant = dict(plant)
    if plant.get("runs") == "map_drop":
        plant["runs"] = _runs().assign(overall_AP50=[0.30, 0.25, 0.40])
    r = _stages(**plant)
    assert r["stages"]["iter1"] == {"stage": stage, "held_by": held}
    if stage == "candidate":
        assert r["promoted"] == "iter0" and r["rejected"] == {"iter1": held}
    else:
        assert r["promoted"] == "iter1" and r["stage"] == "promoted"  # promoted without being deployable
    table = gates.stages_table(r).set_index("run")
    assert table.loc["iter1", "stage"] == stage and held[0] in table.loc["iter1", "held by"]


def test_drift_flags_of_other_labelers_do_not_block_the_candidate():
    """The drift gate judges only the candidate's own labels: the incumbent teacher's flags
    (or another run's) say nothing about iter1 (today's code blocked on them)."""
    golden = {"labelers": {"teacher_iter0": {"drift_flags": ["share of rider 0.00 vs GT 0.08"]},
                           "teacher_iter1": {"drift_flags": []}}}
    r = _stages(golden=golden)
    assert r["promoted"] == "iter1" and r["gates"]["iter1"]["gates"][-1]["verdict"] == "pass"
    assert r["gates"]["iter1"]["gates"][-1]["flags"] == []


def test_a_candidate_that_labels_nothing_is_not_held_by_the_labelers_drift():
    golden = {"labelers": {"gsam2": {"drift_flags": ["share of rider 0.00 vs GT 0.08"]}}}
    r = _stages(golden=golden, teacher=False)
    d = r["gates"]["iter1"]["gates"][-1]
    assert r["promoted"] == "iter1" and d["verdict"] == "not a labeler" and d["flags"] == []


def test_a_safety_class_without_gt_is_not_a_deployment_gate():
    pc = _pc(REC).assign(n_gt=[20, 0, 20, 20])  # rider: no GT, recall 0
    pc.loc["rider", "recall50"] = float("nan")
    res = gates.deploy_gates(0.3, *gates.class_recalls(pc), recall_target=0.35, map_floor=0.25)
    g = {x["name"]: x for x in res["gates"]}
    assert res["deployable"] is True and g["rider recall@0.5 target"]["verdict"] == "no GT"
    assert g["pedestrian recall@0.5 target"]["value"] == pytest.approx(0.80)


def test_deploy_floor_key_is_in_the_default_profile():
    cfg = load_config("demo", env=False)
    assert cfg.report_deploy_min_map == 0.5 and cfg.report_safety_recall == 0.8


def test_case_study_says_the_stage_and_the_gate_that_held_it():
    from bdd_engine import casestudy

    r = _stages(map_floor=0.32)
    text = casestudy.model_stage_sentence(r)
    assert "**iter1**: **promoted**, held by: overall mAP@0.5 floor" in text and ">= 0.32" in text
    assert "**deployable**" in casestudy.model_stage_sentence(_stages())


def test_a_fixed_teacher_makes_the_candidates_not_labelers():
    """The drift gate judges a candidate's own labels only when the candidate labels the next turn:
    `teacher` with label_teacher_weights null (tiny). The demo's shipped teacher labels every turn,
    so its candidates label nothing (the gate reads `not a labeler`); gsam2 likewise."""
    from bdd_engine.config import load_config
    from bdd_engine.flywheel import _model_labels_next_turn
    assert _model_labels_next_turn(load_config("tiny", env=False))
    assert load_config("demo", env=False).label_teacher_weights
    assert not _model_labels_next_turn(load_config("demo", env=False))
    assert not _model_labels_next_turn(load_config("tiny", {"label_labeler": "gsam2"}, env=False))
