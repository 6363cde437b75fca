"""Promotion gates: may a candidate model replace the incumbent? Numbers in, verdicts out.

Three kinds of gate (seed 001's "investigate before continuing", seed 002's safety recall):

* **overall mAP@0.5** may drop by at most ``map_tol`` (fractions in [0, 1]);
* **safety recall**: no safety-critical class (``bdd.SAFETY_CLASSES``) may lose more than
  ``recall_tol`` of recall@0.5 (IoU 0.5, the evaluation's ``per_class.recall50``);
* **golden-QA drift**: no drift flag (``report.golden_qa``), unless waived by config.

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
PASSING = frozenset({PASS, WAIVED, NO_GT})
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


def drift_gate(flags: Sequence[str] | None, waive: bool) -> dict[str, Any]:
    """Golden-QA drift flags must be clear (value = number of flags), or waived by config."""
    if flags is None:
        return {"name": "golden-QA drift flags", "value": None, "threshold": 0, "verdict": NOT_MEASURED, "flags": []}
    verdict = PASS if not flags else WAIVED if waive else FAIL
    return {"name": "golden-QA drift flags", "value": len(flags), "threshold": 0, "verdict": verdict,
            "flags": list(flags)}


def promotion_gates(map_before: Any, map_after: Any, recall_before: Mapping[str, Any] | None,
                    recall_after: Mapping[str, Any] | None, n_gt: Mapping[str, Any] | None,
                    drift_flags: Sequence[str] | None, *, map_tol: float, recall_tol: float, waive_drift: bool,
                    classes: Sequence[str] = SAFETY_CLASSES) -> dict[str, Any]:
    """Every gate of one candidate vs the incumbent: ``{"gates": [{name, value, threshold,
    verdict, ...}], "promote": bool}``. Recalls and mAP are fractions in [0, 1]; ``n_gt`` per
    class counts the eval pool's non-ignored GT boxes. None for a mapping = not measured."""
    rb, ra, ng = recall_before or {}, recall_after or {}, n_gt or {}
    gates = [map_gate(map_before, map_after, map_tol),
             *(recall_gate(c, rb.get(c), ra.get(c), ng.get(c), recall_tol) for c in classes),
             drift_gate(drift_flags, waive_drift)]
    return {"gates": gates, "promote": all(g["verdict"] in PASSING for g in gates)}


def class_recalls(per_class: pd.DataFrame | None) -> tuple[dict[str, float | None], dict[str, int]] | tuple[None, None]:
    """``EvalResult.per_class`` (index class; recall50, n_gt) -> ({class: recall or None}, {class: n_gt})."""
    if per_class is None:
        return None, None
    return ({str(c): _num(r) for c, r in per_class["recall50"].items()},
            {str(c): int(n) for c, n in per_class["n_gt"].items()})


def drift_flags_of(golden: Mapping[str, Any] | None) -> list[str] | None:
    """Every drift flag of a ``report.golden_qa`` entry, prefixed by its labeler; None if no entry."""
    if golden is None:
        return None
    return [f"{name}: {flag}" for name, v in golden["labelers"].items() for flag in v["drift_flags"]]


def gates_table(registry: Mapping[str, Any]) -> pd.DataFrame:
    """registry.json's gates as rows: run, gate, before, after, value, threshold, verdict."""
    rows = [{"run": run, "gate": g["name"], "before": g.get("before"), "after": g.get("after"), "value": g["value"],
             "threshold": g["threshold"], "verdict": g["verdict"]}
            for run, res in registry.get("gates", {}).items() for g in res["gates"]]
    return pd.DataFrame(rows, columns=["run", "gate", "before", "after", "value", "threshold", "verdict"])
