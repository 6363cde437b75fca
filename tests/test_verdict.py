"""experiment.verdict: the headline sentence's words follow the sign and size of Δ and of
each control difference, including a zero-width CI and a missing CI."""

from __future__ import annotations

import math

import pytest

from bdd_engine.experiment import verdict


def head(delta, ci, random=None, cont=None, oracle=None):
    return {"delta": delta, "delta_ci": list(ci), "random_delta": random, "continue_delta": cont,
            "oracle_delta": oracle}


@pytest.mark.parametrize("delta,ci,words", [
    (0.05, (0.01, 0.09), "the worst slice improved beyond its CI"),
    (0.05, (0.001, 0.09), "the worst slice improved beyond its CI"),    # lo just above 0
    (0.03, (0.0, 0.06), "within noise (its CI contains 0)"),             # lo exactly 0: contains 0
    (-0.04, (-0.08, -0.01), "the worst slice got worse beyond its CI"),
    (-0.03, (-0.06, 0.0), "within noise (its CI contains 0)"),           # hi exactly 0
    (0.01, (-0.02, 0.04), "within noise (its CI contains 0)"),
    (0.0, (0.0, 0.0), "within noise (its CI contains 0)"),               # zero-width CI at 0
])
def test_main_clause_follows_the_ci(delta, ci, words):
    v = verdict(head(delta, ci))
    assert words in v
    clauses = ("improved beyond its CI", "got worse beyond its CI", "within noise")
    assert sum(c in v for c in clauses) == 1, v                          # exactly one reading
    assert v.startswith(f"Δ {delta:+.3f} (95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}])")
    assert v.endswith(".") and not v.endswith("; .") and ";;" not in v


def test_zero_width_ci_and_zero_difference_is_inside():
    """The issue's bug: Δ = random = continue, CI [0, 0] → "+0.000 (beyond the CI half-width)"."""
    v = verdict(head(0.0, (0.0, 0.0), random=0.0, cont=0.0, oracle=0.0))
    assert "minus the random control (+0.000) = +0.000 (inside the CI half-width)" in v
    assert "minus the continue control (+0.000) = +0.000 (inside the CI half-width)" in v
    assert "beyond the CI half-width" not in v
    assert v.endswith("the oracle control reached +0.000.")
    # float noise that prints as 0.000 is still no difference
    v = verdict(head(0.047, (0.047, 0.047), random=0.047 - 1e-17, cont=0.04704))
    assert v.count("(inside the CI half-width)") == 2 and "beyond the CI half-width" not in v


def test_zero_width_ci_with_a_real_difference_is_beyond():
    v = verdict(head(0.0, (0.0, 0.0), random=0.002, cont=-0.002))
    assert "minus the random control (+0.002) = -0.002 (beyond the CI half-width)" in v
    assert "minus the continue control (-0.002) = +0.002 (beyond the CI half-width)" in v


@pytest.mark.parametrize("beat,where", [
    (0.049, "inside"), (0.050, "inside"), (0.051, "beyond"),           # half-width 0.05; equal = inside
    (-0.049, "inside"), (-0.050, "inside"), (-0.051, "beyond"),        # either sign
    (0.0, "inside"),
])
def test_control_difference_against_the_half_width(beat, where):
    delta, ci = 0.02, (-0.03, 0.07)                                      # half-width 0.050
    v = verdict(head(delta, ci, random=delta - beat))
    assert f"= {beat:+.3f} ({where} the CI half-width)" in v
    assert "continue control" not in v and "oracle" not in v


def test_controls_listed_in_order_and_missing_ones_left_out():
    v = verdict(head(0.1, (0.05, 0.15), random=0.02, cont=0.09, oracle=0.2))
    i_r, i_c, i_o = v.index("random control"), v.index("continue control"), v.index("oracle control")
    assert i_r < i_c < i_o
    assert "iter1 minus the random control (+0.020) = +0.080 (beyond the CI half-width)" in v
    assert "iter1 minus the continue control (+0.090) = +0.010 (inside the CI half-width)" in v
    assert v == ("Δ +0.100 (95% CI [+0.050, +0.150]): the worst slice improved beyond its CI; "
                 "iter1 minus the random control (+0.020) = +0.080 (beyond the CI half-width); "
                 "iter1 minus the continue control (+0.090) = +0.010 (inside the CI half-width); "
                 "the oracle control reached +0.200.")
    assert verdict(head(0.1, (0.05, 0.15))) == "Δ +0.100 (95% CI [+0.050, +0.150]): the worst slice improved beyond its CI."


@pytest.mark.parametrize("ci", [(None, None), (math.nan, math.nan), (0.01, math.nan)])
def test_missing_ci_is_said_not_read_as_noise(ci):
    v = verdict(head(0.03, ci, random=0.0))
    assert "no CI" in v and "contains 0" not in v and "nan" not in v.lower()
    assert "half-width" not in v and "minus the random control (+0.000) = +0.030" in v
