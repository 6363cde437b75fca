"""§8 reporting pieces on hand-made inputs: failure modes, golden-QA drift, registry rule,
template rendering, the flowchart, arm planning. (The end-to-end run is test_notebook.py.)"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bdd_engine import casestudy, experiment, report
from bdd_engine.config import load_config


def frame(name, *boxes):
    """boxes: (category, x1, y1, x2, y2[, score])."""
    labels = []
    for i, b in enumerate(boxes):
        lb = {"id": str(i), "category": b[0], "box2d": dict(zip(("x1", "y1", "x2", "y2"), b[1:5]))}
        if len(b) > 5:
            lb["score"] = b[5]
        labels.append(lb)
    return {"name": name, "attributes": {}, "labels": labels}


def test_failure_modes_classifies_each_error_once():
    gt = [frame("a.jpg", ("car", 0, 0, 99, 99), ("pedestrian", 200, 200, 239, 299), ("truck", 400, 0, 499, 99),
                ("bus", 600, 0, 699, 99), ("car", 800, 0, 899, 99))]
    preds = [frame("a.jpg",
                   ("car", 0, 0, 99, 99, 0.9),            # TP
                   ("pedestrian", 200, 240, 239, 339, 0.8),  # same class, IoU ~0.43: mislocalised
                   ("car", 400, 0, 499, 99, 0.7),         # truck labelled car: confusion (+ FP? no: overlaps GT)
                   ("car", 1000, 500, 1099, 599, 0.6),    # nothing there: false positive
                   ("car", 800, 0, 899, 99, 0.1))]        # below the operating threshold: ignored → missed
    m = report.failure_modes(gt, preds, conf=0.25, frame_slice={"a.jpg": "s"})
    got = sorted(zip(m["class"], m["mode"]))
    assert got == sorted([("pedestrian", "mislocalised"), ("truck", "class confusion"), ("bus", "missed"),
                          ("car", "missed"), ("car", "false positive")])
    assert set(m["slice"]) == {"s"}
    counts = report.mode_counts(m, "class").set_index("class")
    assert counts.loc["car", "missed"] == 1 and counts.loc["car", "false positive"] == 1 and counts.loc["car", "total"] == 2


def test_golden_qa_flags_drift_and_replaces_same_run(tmp_path):
    gt = [frame(f"{i}.jpg", ("car", 0, 0, 50, 50), ("pedestrian", 60, 0, 80, 50)) for i in range(10)]
    same = [dict(f) for f in gt]
    half = [frame(f"{i}.jpg", ("car", 0, 0, 50, 50, 0.9)) if i < 5 else frame(f"{i}.jpg") for i in range(10)]
    h = tmp_path / "golden_qa.json"
    e1 = report.golden_qa(h, "run1", gt, {"good": same, "bad": half}, tol=0.25, synthetic=True)
    assert e1["labelers"]["good"]["drift_flags"] == []
    flags = e1["labelers"]["bad"]["drift_flags"]
    assert any(f.startswith("empty_frames 5") for f in flags) and any("pedestrian" in f for f in flags)
    report.golden_qa(h, "run1", gt, {"good": same, "bad": half}, tol=0.25, synthetic=True)
    assert len(json.loads(h.read_text())["history"]) == 1, "same run id replaces its entry"
    e2 = report.golden_qa(h, "run2", gt, {"good": half}, tol=0.25, synthetic=True)
    assert any("previous run" in f for f in e2["labelers"]["good"]["drift_flags"])
    assert [x["run_id"] for x in json.loads(h.read_text())["history"]] == ["run1", "run2"]


def test_registry_promotes_best_worst_slice_without_overall_regression():
    runs = pd.DataFrame([
        {"run": "iter0", "arm": "iter0", "overall_AP50": 0.30, "worst_slice_AP50": 0.10, "weights": "w0"},
        {"run": "iter1", "arm": "iter1", "overall_AP50": 0.25, "worst_slice_AP50": 0.20, "weights": "w1"},
        {"run": "oracle", "arm": "oracle", "overall_AP50": 0.40, "worst_slice_AP50": 0.50, "weights": "wo"},
    ])
    pc = pd.DataFrame({"recall50": [0.9] * 4, "n_gt": [10] * 4}, index=["pedestrian", "rider", "bicycle", "motorcycle"])
    clear = {"per_class": {"iter0": pc, "iter1": pc, "oracle": pc}, "golden": {"labelers": {"teacher_iter1": {"drift_flags": []}}}}
    r = experiment.registry(runs, tol=0.01, **clear)
    assert r["promoted"] == "iter0" and r["rejected_for_overall_regression"] == ["iter1"]
    assert experiment.registry(runs, tol=0.06, **clear)["promoted"] == "iter1", "controls are never promoted"
    assert experiment.registry(runs, tol=0.06)["promoted"] == "iter0", "unmeasured gates fail closed"


def test_render_refuses_missing_fields_and_finds_leftovers():
    with pytest.raises(KeyError, match="missing_one"):
        report.render("a {{ x }} b {{missing_one}}", {"x": 1})
    assert report.render("a {{ x }}", {"x": 1}) == "a 1"
    for bad in ("left {{ over", "see e.g. this", "TODO later", "[insert number]"):
        assert report.leftovers(bad), bad
    assert report.leftovers("a clean sentence, i.e. fine") == []


def test_template_renders_every_field_and_has_the_flowchart():
    text = casestudy.TEMPLATE.read_text()
    nodes, edges = report.parse_flowchart(casestudy.flowchart())
    assert list(nodes) == [f"s{i}" for i in range(1, 9)]
    assert ("s8", "s5", True, "next turn: promoted model, new worst slice") in edges
    for n in range(1, 15):
        assert f"\n## {n}. " in text
    assert text.index("## Problem, hypothesis and success metric") < text.index("## 1. Summary")
    assert "e.g." not in text


def test_retrain_runs_refuses_warm_start_without_continue():
    cfg = load_config("tiny", env=False)

    def runs(c):
        return experiment.retrain_runs(c.retrain_controls, c.retrain_seeds, c.retrain_warm_start)

    one = load_config("tiny", {"retrain_seeds": [42]}, env=False)
    assert [r[0] for r in runs(one)] == ["iter1", "random", "oracle", "random_gt", "continue"]
    seeds = load_config("tiny", {"retrain_seeds": [42, 43]}, env=False)
    assert [r[0] for r in runs(seeds)][:2] == ["iter1_s42", "iter1_s43"]
    with pytest.raises(ValueError, match="continue"):
        runs(load_config("tiny", {"retrain_controls": ["random"]}, env=False))
    cold = load_config("tiny", {"retrain_controls": ["random"], "retrain_warm_start": False, "retrain_seeds": [42]},
                       env=False)
    assert [r[1] for r in runs(cold)] == ["iter1", "random"]


# ----------------------------------------------------------------------------- learning curve
def _turns():
    return [{"turn": 1, "worst_slice": "foggy | night | highway", "start_worst_AP50": 0.20, "worst_AP50": 0.28,
             "random_worst_AP50": 0.22, "start_overall_AP50": 0.40, "overall_AP50": 0.42, "random_overall_AP50": 0.41},
            {"turn": 2, "worst_slice": "rainy | night | city street", "start_worst_AP50": 0.25, "worst_AP50": 0.31,
             "random_worst_AP50": None, "start_overall_AP50": 0.42, "overall_AP50": 0.45, "random_overall_AP50": 0.43}]


def test_learning_curve_draws_each_turn_and_the_control(tmp_path):
    from bdd_engine import figures
    from bdd_engine.checkpoint import atomic_save_fig

    fig = figures.learning_curve(_turns(), synthetic=True)
    left, right = fig.axes
    model = [ln for ln in left.lines if ln.get_linestyle() == "-"]
    control = [ln for ln in left.lines if ln.get_linestyle() == "--"]
    assert [list(ln.get_ydata()) for ln in model] == [[0.20, 0.28], [0.25, 0.31]]
    assert [list(ln.get_xdata()) for ln in model] == [[0, 1], [1, 2]]
    assert [list(ln.get_ydata()) for ln in control] == [[0.20, 0.22]], "turn 2's missing control is not drawn"
    assert [list(ln.get_ydata()) for ln in right.lines if ln.get_linestyle() == "--"] == [[0.40, 0.41], [0.42, 0.43]]
    assert {a.get_text() for a in left.texts} == {"foggy | night | highway", "rainy | night | city street"}
    assert "SYNTHETIC" in fig._suptitle.get_text()
    p = atomic_save_fig(tmp_path / "learning_curve.png", fig)
    assert p.stat().st_size > 10_000
    bad = [{k: v for k, v in _turns()[0].items() if k != "random_worst_AP50"}]
    with pytest.raises(ValueError, match="random_worst_AP50"):
        figures.learning_curve(bad, synthetic=False)


# ----------------------------------------------------------------- golden-QA drift tolerance (issue 23, item 18)
def _stats(fwl, empty, bpf):
    return {"frames_with_labels": fwl, "empty_frames": empty, "boxes_per_frame": bpf,
            "class_share": {c: 0.1 for c in report.CLASSES}}


def test_drift_at_exactly_the_relative_tolerance_is_not_flagged():
    ref = _stats(64, 16, 10.0)
    # every statistic moved by exactly 25 % of its reference (exact binary fractions: no rounding)
    assert report.drift_flags(_stats(80, 12, 12.5), ref, 0.25, "GT") == []
    assert report.drift_flags(_stats(80.5, 12, 12.5), ref, 0.25, "GT") == ["frames_with_labels 80.5 vs GT 64"]


def test_a_large_statistic_is_judged_relative_not_absolute():
    ref = _stats(1000, 400, 10.0)
    # +50 frames, -20 empty, +0.4 boxes/frame: far more than 0.1 in absolute terms, 5 % / 5 % / 4 % relative
    assert report.drift_flags(_stats(1050, 380, 10.4), ref, 0.1, "GT") == []
    assert report.drift_flags(_stats(1101, 380, 10.4), ref, 0.1, "previous run") == \
        ["frames_with_labels 1.1e+03 vs previous run 1e+03"]
