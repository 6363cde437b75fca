"""Promotion and deployment gates: may a candidate replace the incumbent, and may the
result ship? Numbers in, verdicts out.

A model's **stage** (:func:`stage_of`): ``candidate`` (a relative gate held it) ->
``promoted`` (beats the incumbent under every relative gate below) -> ``deployable`` (also
meets the absolute targets, :func:`deploy_gates`: recall@0.5 >= ``report_safety_recall`` for
each safety class with GT, overall mAP@0.5 >= ``report_deploy_min_map``). A model can be
promoted without being deployable: relative gates stop regressions, absolute ones say
whether it is good enough to ship.

Three kinds of relative gate (seed 001's "investigate before continuing", seed 002's safety recall):

* **overall mAP@0.5** may drop by at most ``map_tol`` (fractions in [0, 1]);
* **safety recall**: no safety-critical class (``bdd.SAFETY_CLASSES``) may lose more than
  ``recall_tol`` of recall@0.5 (IoU 0.5, the evaluation's ``per_class.recall50``);
* **golden-QA drift**: no drift flag on the candidate's *own* labels (``report.golden_qa``'s
  entry ``teacher_<run>``: the candidate as next turn's teacher), unless waived by config.
  Flags raised by other labelers (the incumbent teacher, a fixed gsam2 labeler) say nothing
  about the candidate; a candidate that labels nothing gets ``not a labeler``, which passes.

What "loses recall" means at the edges (decided here, pinned by tests/test_gates.py):

* a drop exactly equal to the tolerance passes (as the mAP rule ``>= iter0 - tol`` always
  did); differences are compared with a 1e-9 slack so that float noise (0.80 - 0.79 =
  0.010000000000000009) does not fail a drop that *is* the tolerance;
* recall 0 before and 0 after is **no loss**: the gate passes (with a note). The gate guards
  against regressions; that the class is never found is the action plan's finding (its
  ``report_safety_recall`` target), and blocking here would freeze every later model behind
  a class the incumbent cannot see either;
* a class with **no GT** in the eval pool has no recall to lose: verdict ``no GT``, which
  does not block and is recorded so the reader sees it was not measured;
* a number the caller did not supply (None/NaN where GT exists) is ``not measured`` and
  **blocks**: a gate fails closed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from bdd_engine.bdd import SAFETY_CLASSES

PASS, FAIL, WAIVED, NO_GT, NOT_MEASURED = "pass", "fail", "waived", "no GT", "not measured"
NOT_LABELER = "not a labeler"
PASSING = frozenset({PASS, WAIVED, NO_GT, NOT_LABELER})
CANDIDATE, PROMOTED, DEPLOYABLE = "candidate", "promoted", "deployable"
DRIFT = "golden-QA drift flags"
EPS = 1e-9  # float slack: a drop equal to its tolerance is within it


def _num(v: Any) -> float | None:
    """A finite float, or None (missing / NaN)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _drop_gate(name: str, before: Any, after: Any, tol: float) -> dict[str, Any]:
    """{name, value = before - after, threshold = tol, verdict, before, after}: pass iff drop <= tol."""
    b, a = _num(before), _num(after)
    if b is None or a is None:
        return {"name": name, "value": None, "threshold": tol, "verdict": NOT_MEASURED, "before": b, "after": a}
    drop = b - a
    return {"name": name, "value": drop, "threshold": tol, "verdict": PASS if drop <= tol + EPS else FAIL,
            "before": b, "after": a}


def map_gate(before: Any, after: Any, tol: float) -> dict[str, Any]:
    """Overall mAP@0.5 (fraction) may drop by at most ``tol``."""
    return _drop_gate("overall mAP@0.5 drop", before, after, tol)


def recall_gate(cls: str, before: Any, after: Any, n_gt: Any, tol: float) -> dict[str, Any]:
    """Recall@0.5 of ``cls`` may drop by at most ``tol``; ``n_gt`` = its GT boxes in the eval pool."""
    name = f"{cls} recall@0.5 drop"
    if n_gt is not None and int(n_gt) == 0:
        return {"name": name, "value": None, "threshold": tol, "verdict": NO_GT, "before": None, "after": None,
                "n_gt": 0, "note": "no GT box of this class in the eval pool: no recall to lose"}
    g = _drop_gate(name, before, after, tol)
    g["n_gt"] = None if n_gt is None else int(n_gt)
    if g["before"] == 0.0 and g["after"] == 0.0:
        g["note"] = "recall 0 before and after: no loss, but the class is never found (see the action plan)"
    return g


def drift_gate(flags: Sequence[str] | None, waive: bool, labels: bool = True) -> dict[str, Any]:
    """Golden-QA drift flags of the candidate's own labels must be clear (value = number of
    flags), or waived by config; ``labels=False``: the candidate labels nothing (``not a labeler``)."""
    if not labels:
        return {"name": DRIFT, "value": None, "threshold": 0, "verdict": NOT_LABELER, "flags": [],
                "note": "the candidate labels no frames (the labeler is not a trained model): no drift of its own"}
    if flags is None:
        return {"name": DRIFT, "value": None, "threshold": 0, "verdict": NOT_MEASURED, "flags": []}
    verdict = PASS if not flags else WAIVED if waive else FAIL
    return {"name": DRIFT, "value": len(flags), "threshold": 0, "verdict": verdict, "flags": list(flags)}


def promotion_gates(map_before: Any, map_after: Any, recall_before: Mapping[str, Any] | None,
                    recall_after: Mapping[str, Any] | None, n_gt: Mapping[str, Any] | None,
                    drift_flags: Sequence[str] | None, *, map_tol: float, recall_tol: float, waive_drift: bool,
                    classes: Sequence[str] = SAFETY_CLASSES, labels: bool = True) -> dict[str, Any]:
    """Every gate of one candidate vs the incumbent: ``{"gates": [{name, value, threshold,
    verdict, ...}], "promote": bool}``. Recalls and mAP are fractions in [0, 1]; ``n_gt`` per
    class counts the eval pool's non-ignored GT boxes. None for a mapping = not measured.
    ``drift_flags``: the candidate's own labels' flags; ``labels=False``: it labels nothing."""
    rb, ra, ng = recall_before or {}, recall_after or {}, n_gt or {}
    gates = [map_gate(map_before, map_after, map_tol),
             *(recall_gate(c, rb.get(c), ra.get(c), ng.get(c), recall_tol) for c in classes),
             drift_gate(drift_flags, waive_drift, labels)]
    return {"gates": gates, "promote": all(g["verdict"] in PASSING for g in gates)}


def class_recalls(per_class: pd.DataFrame | None) -> tuple[dict[str, float | None], dict[str, int]] | tuple[None, None]:
    """``EvalResult.per_class`` (index class; recall50, n_gt) -> ({class: recall or None}, {class: n_gt})."""
    if per_class is None:
        return None, None
    return ({str(c): _num(r) for c, r in per_class["recall50"].items()},
            {str(c): int(n) for c, n in per_class["n_gt"].items()})


def drift_flags_of(golden: Mapping[str, Any] | None, labeler: str) -> list[str] | None:
    """The drift flags of one labeler in a ``report.golden_qa`` entry, prefixed by its name;
    None (not measured) without an entry or when that labeler was not run on the golden set."""
    v = (golden or {}).get("labelers", {}).get(labeler)
    return None if v is None else [f"{labeler}: {flag}" for flag in v["drift_flags"]]


def _floor_gate(name: str, value: Any, target: float | None) -> dict[str, Any]:
    """{name, value, threshold = target, verdict}: pass iff value >= target (1e-9 slack); a
    missing value or target (None) blocks."""
    v = _num(value)
    verdict = NOT_MEASURED if v is None or target is None else PASS if v >= target - EPS else FAIL
    return {"name": name, "value": v, "threshold": target, "verdict": verdict}


def deploy_gates(overall: Any, recall: Mapping[str, Any] | None, n_gt: Mapping[str, Any] | None, *,
                 recall_target: float | None, map_floor: float | None, classes: Sequence[str] = SAFETY_CLASSES) -> dict[str, Any]:
    """The absolute targets of one model: ``{"gates": [...], "deployable": bool}``. Overall
    mAP@0.5 >= ``map_floor``; recall@0.5 >= ``recall_target`` for each of ``classes`` with GT
    in the eval pool (no GT: ``no GT``, not gated; a missing number blocks). Fractions in [0, 1]."""
    rec, ng = recall or {}, n_gt or {}
    gs = [_floor_gate("overall mAP@0.5 floor", overall, map_floor)]
    for c in classes:
        if ng.get(c) is not None and int(ng[c]) == 0:
            gs.append({"name": f"{c} recall@0.5 target", "value": None, "threshold": recall_target,
                       "verdict": NO_GT, "n_gt": 0})
        else:
            gs.append({**_floor_gate(f"{c} recall@0.5 target", rec.get(c), recall_target), "n_gt": ng.get(c)})
    return {"gates": gs, "deployable": all(g["verdict"] in PASSING for g in gs)}


def stage_of(promotion: Mapping[str, Any] | None, deploy: Mapping[str, Any]) -> dict[str, Any]:
    """A model's stage and the gates that held it there: ``promotion`` = :func:`promotion_gates`'
    result (None for the incumbent, which has nothing to beat), ``deploy`` = :func:`deploy_gates`'.
    ``{"stage": candidate | promoted | deployable, "held_by": [gate names]}``."""
    held = [g["name"] for g in (promotion or {"gates": []})["gates"] if g["verdict"] not in PASSING]
    if held:
        return {"stage": CANDIDATE, "held_by": held}
    held = [g["name"] for g in deploy["gates"] if g["verdict"] not in PASSING]
    return {"stage": PROMOTED if held else DEPLOYABLE, "held_by": held}


def stages_table(registry: Mapping[str, Any]) -> pd.DataFrame:
    """registry.json's stages as rows: run, stage, held by (the failing gates with their
    numbers, or "-"), and whether it is the registry's chosen model."""
    rows = []
    for run, st in registry.get("stages", {}).items():
        gs = {g["name"]: g for g in [*registry.get("gates", {}).get(run, {}).get("gates", []),
                                    *registry.get("deploy_gates", {}).get(run, {}).get("gates", [])]}
        held = "; ".join(_held_words(gs[n]) for n in st["held_by"]) or "-"
        rows.append({"run": run, "stage": st["stage"], "held by": held, "chosen": run == registry.get("promoted")})
    return pd.DataFrame(rows, columns=["run", "stage", "held by", "chosen"])


def _held_words(g: Mapping[str, Any]) -> str:
    """One failing gate as words: its name, value vs threshold, verdict."""
    v = g.get("value")
    num = "" if v is None else f" {v:.3f}" if isinstance(v, float) else f" {v}"
    return f"{g['name']}{num} (threshold {g['threshold']}: {g['verdict']})"


def gates_table(registry: Mapping[str, Any]) -> pd.DataFrame:
    """registry.json's gates as rows: run, gate, before, after, value, threshold, verdict."""
    rows = [{"run": run, "gate": g["name"], "before": g.get("before"), "after": g.get("after"), "value": g["value"],
             "threshold": g["threshold"], "verdict": g["verdict"]}
            for run, res in registry.get("gates", {}).items() for g in res["gates"]]
    return pd.DataFrame(rows, columns=["run", "gate", "before", "after", "value", "threshold", "verdict"])
