"""The experiment's rules: which arms train, what makes two training sets equal, how
seeds aggregate, which slices the headline reports, the headline itself and its verdict,
the runs table and the registry's promotion rule.

Everything here takes explicit arguments (no config), so each rule can be pinned by a test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from bdd_engine import gates, slices
from bdd_engine.evaluate import percentile_ci, ranked_slices

ARMS = ("iter1", "random", "oracle", "random_gt", "continue")
CONTROLS = ("random", "oracle", "random_gt", "continue")
# issue 24's contrasts on the confirmation set: the headline, the selection effect (G2: frame choice with
# ground-truth labels on both sides), the labelling cost, and iter1 against no new data
CONTRASTS = (("iter1", "random"), ("oracle", "random_gt"), ("oracle", "iter1"), ("iter1", "continue"))
VERDICTS = ("improved", "no_gain", "worse", "inconclusive")


def retrain_runs(controls: Sequence[str], seeds: Sequence[int], warm_start: bool) -> list[tuple[str, str, int]]:
    """(run name, arm, seed) for every §7 training run; arm ``iter1`` first.

    One seed → runs are named by arm (``iter1``, ``random``, ...); several seeds →
    ``<arm>_s<seed>``. Warm-starting without the ``continue`` control is refused: extra
    epochs alone move the numbers, so Δ would be uninterpretable without it.
    """
    arms = ["iter1", *[a for a in controls if a != "iter1"]]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown retrain_controls {sorted(unknown)}; choose from random, oracle, random_gt, continue")
    if warm_start and "continue" not in arms:
        raise ValueError("retrain_warm_start: true needs the `continue` control in retrain_controls "
                         "(extra epochs alone move mAP; without it the Δ cannot be attributed to the data)")
    seeds = [int(s) for s in seeds]
    return [(a if len(seeds) == 1 else f"{a}_s{s}", a, s) for a in arms for s in seeds]


RECIPE_RULE = ("the cheapest candidate (training steps: epochs x frames x seeds) whose `continue` arm's overall Δ on the "
               "eval pool (seed mean) is >= -tol; among equal cost the highest such Δ; eval-pool numbers only")


def choose_recipe(rows: Sequence[Mapping[str, Any]], tol: float) -> str | None:
    """The continuation recipe to keep (:data:`RECIPE_RULE`), from candidate rows with
    ``name``, ``cost_steps`` (epochs x frames per arm-seed: the design's cost, not the
    machine's seconds) and ``pool_delta`` (the continue arm's overall Δ on the EVAL POOL).
    Reads no other field, so no confirmation-set number can feed the choice. None when no
    candidate passes."""
    ok = [r for r in rows if r["pool_delta"] is not None and r["pool_delta"] >= -float(tol)]
    if not ok:
        return None
    return min(ok, key=lambda r: (r["cost_steps"], -r["pool_delta"]))["name"]


SLICE_RULES = ("worst", "gain")


def slice_slopes(points: pd.DataFrame) -> pd.DataFrame:
    """Slice Tuner's ranking quantity (Tae & Whang, SIGMOD 2021): per slice, the least-squares slope
    of its learning curve, Δ of the slice's metric against the number of that slice's frames added.
    ``points``: one row per (slice, frames, delta) — several seeds per dose allowed. A slice needs
    >= 2 distinct doses, else its slope is NaN (it cannot be ranked). Returns slice, slope (Δ per
    frame), slope_per_100, doses, points, sorted by slope (highest first; NaN last), ties by name."""
    rows = []
    for s, g in points.groupby("slice", sort=True):
        x, y = g["frames"].astype(float).to_numpy(), g["delta"].astype(float).to_numpy()
        ok = np.isfinite(y)
        x, y = x[ok], y[ok]
        slope = float(np.polyfit(x, y, 1)[0]) if len(np.unique(x)) >= 2 else float("nan")
        rows.append({"slice": s, "slope": slope, "slope_per_100": slope * 100, "doses": int(len(np.unique(x))),
                     "points": int(len(x))})
    df = pd.DataFrame(rows, columns=["slice", "slope", "slope_per_100", "doses", "points"])
    df["_nan"] = df["slope"].isna()
    return df.sort_values(["_nan", "slope", "slice"], ascending=[True, False, True],
                          kind="stable").drop(columns="_nan").reset_index(drop=True)


def pick_slice(rule: str, worst: str, slopes: pd.DataFrame | None, eligible: Sequence[str]) -> str:
    """The slice a turn targets: ``worst`` = the lowest-AP eligible slice (``worst``, the seed's rule);
    ``gain`` = the eligible slice whose learning curve (:func:`slice_slopes`) rises fastest."""
    if rule == "worst":
        return worst
    if rule != "gain":
        raise ValueError(f"slice_rule must be one of {list(SLICE_RULES)}, got {rule!r}")
    ranked = [] if slopes is None else [s for s, v in zip(slopes["slice"], slopes["slope"])
                                        if s in set(eligible) and np.isfinite(v)]
    if not ranked:
        raise ValueError("slice_rule gain: no eligible slice has a learning curve with >= 2 doses "
                         "(run benchmarks/bench_slice_gain.py on this outputs folder first)")
    return ranked[0]


def frames_hash(frames: list[dict[str, Any]]) -> str:
    """Content hash of a training set (names + labels): what makes two YOLO sets equal."""
    payload = json.dumps([[f["name"], f.get("labels") or []] for f in sorted(frames, key=lambda f: f["name"])],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def random_pool_names(pools: pd.DataFrame, k: int, seed: int) -> list[str]:
    """The random control's frames: ``k`` pool frames drawn with the run's seed (one draw per
    training seed, so the CI holds the variance of the draw; ``random_gt`` of a seed reuses
    ``random``'s frames of that seed)."""
    names = sorted(pools.loc[pools["pool"] == "pool", "name"])
    rng = np.random.default_rng(int(seed))
    return sorted(rng.choice(names, size=min(k, len(names)), replace=False).tolist())


def arm_additions(arm: str, auto: Mapping[str, list], mined_gt: list, random_names: Sequence[str],
                  gt_pool: Mapping[str, dict]) -> list[dict[str, Any]]:
    """What one §7 arm adds to the replay set (beside the carried frames): ``iter1`` the mined
    frames' auto-labels the router accepted (``auto["mined"]``); ``random`` that seed's random
    frames' (``random_names``) accepted auto-labels (``auto["random"]``, absent without that
    arm); ``random_gt`` the same frames' ground truth (``gt_pool``: name → GT frame); ``oracle``
    the mined frames' ground truth (``mined_gt``); ``continue`` nothing. Accepted mined labels
    reach iter1 only, so every other arm is a control for them."""
    if arm == "iter1":
        return list(auto["mined"])
    if arm == "oracle":
        return list(mined_gt)
    if arm == "random":
        pick = set(random_names)
        return [f for f in auto.get("random", []) if f["name"] in pick]
    if arm == "random_gt":
        return [gt_pool[n] for n in random_names if n in gt_pool]
    if arm == "continue":
        return []
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def replay_split(train: pd.DataFrame, replay: int, k: int, seed: int) -> tuple[list[str], list[str]]:
    """(replay, filler) frame names of the train pool ``train`` (rows with name, weather,
    timeofday, image_path). replay: ``replay`` frames stratified by weather x timeofday
    (seeded, :func:`slices.collect`; 0 = all of train but ``k``), replayed by every arm;
    filler: ``k`` other train frames in a seeded order, iter0 saw them all — the ``continue``
    arm's additions and the top-up of an arm that adds fewer than ``k`` frames
    (:func:`arm_frames`), so every arm takes the same number of steps."""
    n, k = len(train), int(k)
    size = n - k if int(replay) == 0 else int(replay)
    if size <= 0 or size + k > n:
        raise ValueError(f"retrain_replay {replay} + mine_k {k} needs {size + k} train frames, the train pool has {n}; "
                         "lower retrain_replay (0 = all of train but mine_k) or mine_k")
    picked, _ = slices.collect(train, size, 0, int(seed))
    rest = train[~train["name"].isin(set(picked["name"]))].sort_values("name", kind="stable")
    filler = rest["name"].iloc[np.random.default_rng([int(seed), 31]).permutation(len(rest))][:k]
    return sorted(picked["name"]), list(filler)


def arm_frames(replay: list[dict[str, Any]], added: list[dict[str, Any]], filler: list[dict[str, Any]],
               k: int) -> list[dict[str, Any]]:
    """One arm's training set: the replay set, its added frames, topped up with the first
    ``k - len(added)`` filler frames (already seen by iter0: no new data), so every arm has
    ``len(replay) + k`` frames and takes the same number of steps."""
    if len(added) > int(k):
        raise ValueError(f"an arm adds {len(added)} frames, more than mine_k {k}")
    return [*replay, *added, *filler[: int(k) - len(added)]]


def confirmable(slices_df: pd.DataFrame, confirm_n: Mapping[str, int], min_confirm: int,
                pool_n: Mapping[str, int] | None = None, min_pool: int = 0) -> pd.DataFrame:
    """The rows of an eval slice table that may be chosen as the worst slice: any non-``full``
    row, and the full slices :func:`slices.eligible` keeps: >= ``min_confirm`` confirmation
    candidates (``confirm_n``: slice → count) and >= ``min_pool`` frames left in the mining
    pool (``pool_n``; None = not checked). Raises naming the best-covered slice when no full
    slice qualifies."""
    pool_n = {s: min_pool for s in confirm_n} if pool_n is None else pool_n
    ok_full = set(slices.eligible(confirm_n, pool_n, min_confirm, min_pool))
    ok = (slices_df["level"] != "full") | slices_df["slice"].isin(ok_full)
    if not (ok & (slices_df["level"] == "full")).any():
        top = max(confirm_n.items(), key=lambda kv: kv[1], default=("(none)", 0))
        raise ValueError(f"no eval slice has >= {min_confirm} confirmation frames and >= {min_pool} unused mining-pool "
                         f"frames (best confirmed: {top[0]!r} with {top[1]}); enlarge the confirm label files "
                         "(synth_n_val for a synthetic world) or lower confirm_min_frames / eval_min_pool_frames")
    return slices_df[ok]


def confirm_set(candidates: pd.DataFrame, worst: str, max_frames: int, seed: int) -> pd.DataFrame:
    """The worst slice's confirmation frames: its candidates (§1), a seeded sample of
    ``max_frames`` when there are more (whole table rows, sorted by name)."""
    c = candidates[candidates["slice"] == worst]
    if len(c) > max_frames:
        c = c.sample(n=int(max_frames), random_state=int(seed))
    return c.sort_values("name", kind="stable").reset_index(drop=True)


Z_POWER = 1.959964 + 0.841621  # two-sided α = 0.05 plus 80% power: MDE = this × SE


def hierarchical_deltas(point: Mapping[str, float], boot: Mapping[str, np.ndarray], runs: pd.DataFrame,
                        seed: int) -> dict[str, Any]:
    """Δ of every arm vs iter0 and the contrasts that answer the question, with 95% CIs from a
    hierarchical bootstrap over frames *and* training seeds.

    ``point``: run → mAP@0.5 on the confirmation set (``iter0`` included); ``boot``: run →
    (B,) mAP@0.5 of the same B frame resamples (shared by every run: paired over frames);
    ``runs``: one row per training run (``run``, ``arm``, ``seed``). Per resample b, each arm's
    seeds are drawn with replacement (its runs are independent trainings) and averaged, so the
    CI holds frame-sampling and seed variance together. Point estimates: seed means.
    Returns ``arms`` {arm: {delta, ci, sd_seeds, n_seeds}}, ``contrasts`` {"<a>-<b>" for each
    pair of :data:`CONTRASTS` present: {delta, ci, se}} and ``mde`` (of iter1-random: the
    true contrast this design detects with 80% power at α = 0.05, two-sided: 2.8 × SE).
    """
    rng = np.random.default_rng([int(seed), 17])
    b0 = np.asarray(boot["iter0"], float)
    n_boot = len(b0)
    arm_point, arm_boot, arms = {}, {}, {}
    for arm, g in runs.groupby("arm", sort=False):
        m = np.stack([np.asarray(boot[r], float) for r in g["run"]])          # (S, B)
        pick = rng.integers(0, len(g), size=(n_boot, len(g)))                 # seeds drawn per resample
        arm_boot[arm] = m[pick, np.arange(n_boot)[:, None]].mean(axis=1) - b0
        d = np.array([point[r] - point["iter0"] for r in g["run"]], float)
        arm_point[arm] = float(d.mean())
        arms[arm] = {"delta": arm_point[arm], "ci": _ci_or_none(arm_boot[arm]), "n_seeds": int(len(g)),
                     "sd_seeds": float(d.std(ddof=1)) if len(g) > 1 else None}
    contrasts = {}
    for a, b in CONTRASTS:
        if a in arm_boot and b in arm_boot:
            diff = arm_boot[a] - arm_boot[b]
            contrasts[f"{a}-{b}"] = {"delta": arm_point[a] - arm_point[b], "ci": _ci_or_none(diff),
                                     "se": float(np.nanstd(diff, ddof=1))}
    se = contrasts.get("iter1-random", {}).get("se")
    return {"arms": arms, "contrasts": contrasts, "mde": None if se is None else Z_POWER * se,
            "n_boot": int(n_boot), "method": "hierarchical bootstrap: frames resampled (shared by all runs), "
                                              "then each arm's training seeds resampled with replacement"}


def _ci_or_none(samples: np.ndarray) -> list[float | None]:
    """:func:`evaluate.percentile_ci` as a JSON list, None (not NaN) when nothing was finite."""
    return [None if v != v else v for v in percentile_ci(samples)]


def report_slices(slices_df: pd.DataFrame, worst: str, min_frames: int, top_n: int) -> list[str | None]:
    """The headline table's rows: the worst slice, the top-N ranked slices by eval frames, overall (None)."""
    full = ranked_slices(slices_df, min_frames)
    top = full[full["slice"] != worst].sort_values(["n_frames", "slice"], ascending=[False, True])
    return [worst, *top["slice"].head(int(top_n)).tolist(), None]


def _num(v: Any) -> float | None:
    v = float(v)
    return None if v != v else v


def headline_table(agg: pd.DataFrame, deltas: pd.DataFrame, rows_sel: list, warm: bool) -> pd.DataFrame:
    """slice, n_eval, iter0, iter1, Δ, 95% CI, random/oracle/continue Δ (one row per reported slice)."""
    out = []
    for s in rows_sel:
        key = s if s is not None else "__all__"
        a = agg[agg["slice"] == key].set_index("arm")
        d0 = deltas[(deltas["slice"] == key)].iloc[0]
        row = {"slice": "overall (all eval frames)" if s is None else s, "n_eval": int(d0["n_frames"]),
               "iter0": d0["AP50_0"], "iter1": a.loc["iter1", "AP50_1"], "delta": a.loc["iter1", "delta"],
               "ci_lo": a.loc["iter1", "ci_lo"], "ci_hi": a.loc["iter1", "ci_hi"]}
        if a["sd"].notna().any():
            row["delta_sd"] = a.loc["iter1", "sd"]
        for arm in CONTROLS:
            if arm in a.index:
                row[f"{arm}_delta"] = a.loc[arm, "delta"]
        out.append(row)
    return pd.DataFrame(out)


def _ci_ok(ci: Sequence[float | None] | None) -> bool:
    return ci is not None and len(ci) == 2 and all(v is not None and v == v for v in ci)


def g1_continue(delta: float | None, ci: Sequence[float | None] | None, pool_delta: float | None,
                tol: float) -> dict[str, Any]:
    """G1, the negative control (issue 24): ``continue`` adds no new data, so the recipe alone
    must not move the model. Passes iff its Δ on the confirmation set (``delta``, 95% ``ci``)
    has a CI containing 0 AND |Δ| <= ``tol``, AND its overall Δ on the eval pool
    (``pool_delta``) >= -``tol`` (all bounds inclusive). Anything not measured fails."""
    ok = (delta is not None and _ci_ok(ci) and ci[0] <= 0 <= ci[1] and abs(delta) <= tol
          and pool_delta is not None and pool_delta >= -tol)
    return {"delta": delta, "ci": None if ci is None else list(ci), "pool_overall_delta": pool_delta,
            "tol": float(tol), "pass": bool(ok)}


def g2_selection(contrast: Mapping[str, Any] | None) -> dict[str, Any]:
    """G2, the positive control (assay sensitivity): Δ(oracle) − Δ(random_gt) — the mined frames
    against random frames, both with ground-truth labels — has a 95% CI lower bound > 0.
    Not measured (no such contrast, no CI) fails."""
    c = contrast or {}
    ci = c.get("ci")
    return {"delta": c.get("delta"), "ci": ci, "pass": bool(_ci_ok(ci) and ci[0] > 0)}


def verdict_label(g1: Mapping[str, Any], g2: Mapping[str, Any], contrast: Mapping[str, Any] | None) -> str:
    """The verdict that follows from the controls (one of :data:`VERDICTS`): ``inconclusive``
    when G1 or G2 fails (the design could not have told), else the headline iter1 − random's
    95% CI: lower bound > 0 ``improved``, upper bound < 0 ``worse``, else ``no_gain``."""
    ci = (contrast or {}).get("ci")
    if not (g1["pass"] and g2["pass"]) or not _ci_ok(ci):
        return "inconclusive"
    return "improved" if ci[0] > 0 else "worse" if ci[1] < 0 else "no_gain"


def share_recovered(headline_c: Mapping[str, Any] | None, selection_c: Mapping[str, Any] | None) -> tuple[float | None, str]:
    """(share, sentence): (iter1 − random) / (oracle − random_gt), the part of what targeted
    ground truth gives that mining + auto-labelling recovers. None when the denominator's CI
    lower bound is <= 0 (or not measured): targeted ground truth did not measurably beat
    random ground truth, so there is nothing to take a share of."""
    den = selection_c or {}
    if not headline_c or not _ci_ok(den.get("ci")) or den["ci"][0] <= 0:
        lo = (den.get("ci") or [None])[0]
        why = "not measured" if lo is None else f"its 95% CI lower bound is {lo:+.3f} <= 0"
        return None, (f"share recovered: not defined — the selection effect Δ(oracle) − Δ(random_gt) is the "
                      f"denominator and {why}: targeted ground truth did not measurably beat random ground truth.")
    share = float(headline_c["delta"]) / float(den["delta"])
    return share, (f"share recovered = (Δ(iter1) − Δ(random)) / (Δ(oracle) − Δ(random_gt)) = "
                   f"{headline_c['delta']:+.3f} / {den['delta']:+.3f} = {share:.2f}: mining + auto-labelling recovers "
                   f"{share:.0%} of what ground truth on the mined frames gives over random ground-truth frames.")


def controls(confirm: Mapping[str, Any] | None, pool_continue_delta: float | None, tol: float) -> dict[str, Any]:
    """headline.json's control keys from :func:`hierarchical_deltas`' output (``confirm``) and
    the continue arm's overall Δ on the eval pool: g1_continue, g2_selection, verdict,
    share_recovered (+ its sentence)."""
    arms, c = (confirm or {}).get("arms", {}), (confirm or {}).get("contrasts", {})
    cont = arms.get("continue") or {}
    g1 = g1_continue(cont.get("delta"), cont.get("ci"), pool_continue_delta, tol)
    g2 = g2_selection(c.get("oracle-random_gt"))
    share, sentence = share_recovered(c.get("iter1-random"), c.get("oracle-random_gt"))
    return {"g1_continue": g1, "g2_selection": g2, "verdict": verdict_label(g1, g2, c.get("iter1-random")),
            "share_recovered": share, "share_recovered_sentence": sentence}


def headline(agg: pd.DataFrame, res0: Any, worst: str, n_eval: int, mining: Mapping[str, Any],
             labeling: Mapping[str, Any], confirm: Mapping[str, Any] | None = None, *, synthetic: bool,
             seeds: Sequence[int], warm_start: bool, retrain_epochs: int, control_tol: float = 0.01) -> dict[str, Any]:
    """headline.json: the verdict and the two controls that license it (:func:`controls`),
    the answer on the confirmation set (``confirm``: from :func:`hierarchical_deltas` plus
    ``slice``/``n_frames``/``iter0``) — iter1 − random, oracle − random_gt, oracle − iter1
    with hierarchical CIs and the design's MDE — then the eval-pool view the worst slice was
    chosen on (iter0 → iter1 mAP@0.5, Δ with CI, the controls' Δ), mining and labelling
    quality, the design (seeds, warm start, epochs). ``reading``: the numbers in words."""
    it1 = agg[(agg["arm"] == "iter1")].set_index("slice")
    arm_d = {a: agg[(agg["arm"] == a) & (agg["slice"] == worst)]["delta"] for a in CONTROLS}
    h = {
        "worst_slice": worst, "n_eval": int(n_eval),
        "iter0": float(res0.slices.set_index("slice").loc[worst, "AP50"]),
        "iter1": float(it1.loc[worst, "AP50_1"]), "delta": float(it1.loc[worst, "delta"]),
        "delta_ci": [float(it1.loc[worst, "ci_lo"]), float(it1.loc[worst, "ci_hi"])],
        "delta_sd": _num(it1.loc[worst, "sd"]), "p_delta_le0": float(it1.loc[worst, "p_le0"]),
        **{f"{a}_delta": (float(v.iloc[0]) if len(v) else None) for a, v in arm_d.items()},
        "overall_iter0": float(res0.AP50), "overall_iter1": float(it1.loc["__all__", "AP50_1"]),
        "mining_precision": mining["precision"], "slice_base_rate": mining["base_rate"],
        "labeler": labeling["mined"]["labeler"], "label_precision": labeling["mined"].get("precision"),
        "label_recall": labeling["mined"].get("recall"), "synthetic": bool(synthetic),
        "seeds": [int(s) for s in seeds], "warm_start": bool(warm_start),
        "retrain_epochs": int(retrain_epochs),
    }
    if not warm_start:
        h["continue_delta"] = None
    h.update({"iter0_overall": h["overall_iter0"], "teacher_recall": h["label_recall"],
              "teacher_precision": h["label_precision"], "teacher_classes": labeling["mined"].get("classes_labelled")})
    if confirm is not None:
        h.update(confirm_keys(confirm))
    pool_cont = agg[(agg["arm"] == "continue") & (agg["slice"] == "__all__")]["delta"]
    h.update(controls(confirm, float(pool_cont.iloc[0]) if len(pool_cont) else None, float(control_tol)))
    h["reading"] = verdict(h)
    return h


def confirm_keys(confirm: Mapping[str, Any]) -> dict[str, Any]:
    """headline.json's confirmation-set keys from :func:`hierarchical_deltas`' output."""
    c = confirm["contrasts"]
    pick = lambda k: {"delta": c[k]["delta"], "ci": c[k]["ci"]} if k in c else None  # noqa: E731
    ir = c.get("iter1-random")
    return {"confirm_slice": confirm["slice"], "confirm_n": int(confirm["n_frames"]), "confirm_iter0": confirm["iter0"],
            "confirm_delta": {a: {"delta": v["delta"], "ci": v["ci"]} for a, v in confirm["arms"].items()},
            "contrast_iter1_random": pick("iter1-random"), "contrast_oracle_random_gt": pick("oracle-random_gt"),
            "contrast_oracle_iter1": pick("oracle-iter1"), "contrast_iter1_continue": pick("iter1-continue"),
            "mde": confirm["mde"],
            "contrast_halfwidth": None if ir is None or None in ir["ci"] else (ir["ci"][1] - ir["ci"][0]) / 2,
            "contrast_method": confirm["method"] + f" ({confirm['n_boot']} resamples)"}


def verdict(h: Mapping[str, Any]) -> str:
    """What the headline supports, from the numbers only: the confirmation-set contrast
    first (when the run has one), then the eval-pool sentence (:func:`pool_verdict`)."""
    c = h.get("contrast_iter1_random")
    if not c:
        return pool_verdict(h)
    return confirm_verdict(h) + " On the eval pool the slice was chosen on: " + pool_verdict(h)


def _ci_words(delta: float, ci: Sequence[float | None], what: str) -> str:
    lo, hi = ci
    if lo is None or hi is None:
        return f"{what} {delta:+.3f} (no CI)"
    sig = ("above 0 beyond its CI" if lo > 0 else "below 0 beyond its CI" if hi < 0 else "within noise (CI contains 0)")
    return f"{what} {delta:+.3f} (95% CI [{lo:+.3f}, {hi:+.3f}]): {sig}"


def confirm_verdict(h: Mapping[str, Any]) -> str:
    """The answer on the confirmation set: iter1 − random (does mining + auto-labelling beat
    the same number of random frames?) and oracle − random_gt (does the frame choice pay
    with perfect labels on both sides?), with the design's minimum detectable effect."""
    parts = [_ci_words(h["contrast_iter1_random"]["delta"], h["contrast_iter1_random"]["ci"],
                       f"On {h['confirm_n']} held-out frames of {h['confirm_slice']}, Δ(iter1) − Δ(random) =")]
    o = h.get("contrast_oracle_random_gt")
    if o:
        parts.append(_ci_words(o["delta"], o["ci"], "Δ(oracle) − Δ(random_gt) ="))
    if h.get("mde") is not None:
        parts.append(f"this design detects a true contrast of {h['mde']:.3f} with 80% power (α = 0.05, "
                     f"{len(h.get('seeds') or [])} seeds per arm)")
    return "; ".join(parts) + "."


def pool_verdict(h: Mapping[str, Any]) -> str:
    """One sentence on what the eval-pool headline Δ supports, from the numbers only.

    Comparisons are made at the 3 decimals the sentence prints, so a difference that
    reads ``+0.000`` is never "beyond" a CI half-width that reads ``0.000`` (a zero-width
    CI: identical resamples), and a difference equal to the half-width is inside it.
    A missing CI (None/NaN) is said to be missing, not read as "contains 0".
    """
    lo, hi = h["delta_ci"]
    if lo is None or hi is None or lo != lo or hi != hi:  # null in JSON, or NaN
        ci_txt = f"Δ {h['delta']:+.3f} (no CI was computed)"
        sig, half = "no CI, so the change cannot be told from noise", None
    else:
        ci_txt = f"Δ {h['delta']:+.3f} (95% CI [{lo:+.3f}, {hi:+.3f}])"
        half = round((hi - lo) / 2, 3)
        if lo > 0:
            sig = "the worst slice improved beyond its CI"
        elif hi < 0:
            sig = "the worst slice got worse beyond its CI"
        else:
            sig = "the worst-slice change is within noise (its CI contains 0)"
    cmp = []
    for arm in ("random", "continue"):
        v = h.get(f"{arm}_delta")
        if v is not None:
            beat = h["delta"] - v
            where = ("" if half is None else " (inside the CI half-width)" if abs(round(beat, 3)) <= half
                     else " (beyond the CI half-width)")
            cmp.append(f"minus the {arm} control ({v:+.3f}) = {beat:+.3f}" + where)
    o = h.get("oracle_delta")
    parts = [f"{ci_txt}: {sig}", *(f"iter1 {c}" for c in cmp)]
    if o is not None:
        parts.append(f"the oracle control reached {o:+.3f}")
    return "; ".join(parts) + "."


def runs_table(card0: Mapping[str, Any], weights0: str, seed: int, config_hashes: tuple[str, str], arms: pd.DataFrame,
               res0: Any, results: Mapping[str, Any], worst: str) -> pd.DataFrame:
    """One row per training run: arm, status, data hash, config hash, commit, device, duration, mAPs, weights.

    ``card0``/``weights0``: iter0's run card and weights path (relative to outputs);
    ``config_hashes``: the §4 and §7 config hashes (iter0's and the arms')."""
    sl = lambda r: float(r.slices.set_index("slice").loc[worst, "AP50"])  # noqa: E731
    rows = [{"run": "iter0", "arm": "iter0", "seed": int(seed), "status": "finished" if card0.get("finished") else "unknown",
             "data_hash": card0.get("data_hash"), "config_hash": config_hashes[0], "commit": card0.get("git_commit"),
             "device": card0.get("device"), "duration_s": card0.get("wall_time_s"), "epochs": card0.get("epochs"),
             "overall_AP50": float(res0.AP50), "worst_slice_AP50": sl(res0), "weights": weights0}]
    for r in arms.itertuples(index=False):
        res = results[r.run]
        rows.append({"run": r.run, "arm": r.arm, "seed": int(r.seed), "status": "finished", "data_hash": r.data_hash,
                     "config_hash": config_hashes[1], "commit": r.commit, "device": r.device,
                     "duration_s": r.wall_time_s, "epochs": r.epochs, "overall_AP50": float(res.AP50),
                     "worst_slice_AP50": sl(res), "weights": r.weights})
    return pd.DataFrame(rows)


def registry(runs: pd.DataFrame, tol: float, per_class: Mapping[str, pd.DataFrame] | None = None,
             golden: Mapping[str, Any] | None = None, *, safety_tol: float = 0.0,
             waive_drift: bool = False, teacher: bool = True, recall_target: float | None = None,
             map_floor: float | None = None) -> dict[str, Any]:
    """The promoted model: best worst-slice mAP@0.5 among iter0 (the incumbent) and the iter1
    runs that pass every promotion gate against iter0 (:func:`gates.promotion_gates`):
    overall mAP@0.5 drop <= ``tol``, safety-class recall@0.5 drop <= ``safety_tol``, golden-QA
    drift flags of the candidate's own labels clear or ``waive_drift``. Controls are
    experiments, never promoted.

    ``per_class``: run name -> ``EvalResult.per_class`` (recall50, n_gt), iter0 included;
    ``golden``: ``report.golden_qa``'s entry, where the candidate's own labels are the entry
    ``teacher_<run>`` when ``teacher`` (the model labels the next turn), and it labels nothing
    otherwise. Without them those gates read "not measured" and block (a gate fails closed).
    Each iter1 run's gates go to ``gates``; every candidate's absolute targets
    (:func:`gates.deploy_gates`: ``recall_target`` per safety class with GT, ``map_floor``
    overall; None = not set, which blocks) to ``deploy_gates``, and its stage (candidate ->
    promoted -> deployable) with the gates that held it to ``stages``."""
    base = runs[runs["arm"] == "iter0"].iloc[0]
    cand = runs[runs["arm"].isin(["iter0", "iter1"])]
    per_class = per_class or {}
    rec0, _ = gates.class_recalls(per_class.get(base["run"]))
    verdicts = {}
    for r in cand[cand["arm"] == "iter1"].itertuples(index=False):
        rec1, n_gt = gates.class_recalls(per_class.get(r.run))
        verdicts[r.run] = gates.promotion_gates(base["overall_AP50"], r.overall_AP50, rec0, rec1, n_gt,
                                                gates.drift_flags_of(golden, f"teacher_{r.run}"), map_tol=tol,
                                                recall_tol=safety_tol, waive_drift=waive_drift, labels=teacher)
    ok = cand[[run not in verdicts or verdicts[run]["promote"] for run in cand["run"]]]
    best = ok.sort_values(["worst_slice_AP50", "run"], ascending=[False, True]).iloc[0]
    failed = {run: [g["name"] for g in v["gates"] if g["verdict"] not in gates.PASSING] for run, v in verdicts.items()}
    deploy, stages = _deploy_stages(cand, per_class, verdicts, recall_target, map_floor)
    return {"promoted": best["run"], "weights": best["weights"], "stage": stages[best["run"]]["stage"],
            "rule": (f"max worst-slice mAP@0.5 among iter0 and the iter1 runs passing every gate: overall mAP@0.5 "
                     f"drop <= {tol}; {'/'.join(gates.SAFETY_CLASSES)} recall@0.5 drop <= {safety_tol} each; "
                     f"golden-QA drift flags of the candidate's own labels clear"
                     f"{' (waived by config)' if waive_drift else ''}"),
            "deploy_rule": (f"deployable = promoted and overall mAP@0.5 >= {map_floor} and recall@0.5 >= "
                            f"{recall_target} for each of {'/'.join(gates.SAFETY_CLASSES)} with GT"),
            "candidates": cand[["run", "overall_AP50", "worst_slice_AP50"]].to_dict("records"),
            "gates": verdicts, "deploy_gates": deploy, "stages": stages,
            "rejected": {run: f for run, f in failed.items() if f},
            "rejected_for_overall_regression": sorted(run for run, f in failed.items() if "overall mAP@0.5 drop" in f)}


def _deploy_stages(cand: pd.DataFrame, per_class: Mapping[str, pd.DataFrame], verdicts: Mapping[str, Any],
                   recall_target: float | None, map_floor: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each candidate's absolute targets and its stage (the incumbent iter0 has no relative gate)."""
    deploy, stages = {}, {}
    for r in cand.itertuples(index=False):
        rec, n_gt = gates.class_recalls(per_class.get(r.run))
        deploy[r.run] = gates.deploy_gates(r.overall_AP50, rec, n_gt, recall_target=recall_target,
                                           map_floor=map_floor)
        stages[r.run] = gates.stage_of(verdicts.get(r.run), deploy[r.run])
    return deploy, stages


def turn_point(turn: int, h: Mapping[str, Any], head: pd.DataFrame, registry: Mapping[str, Any]) -> dict[str, Any]:
    """One flywheel turn for the learning curve (``figures.LEARNING_KEYS``), mAP@0.5 fractions
    on the eval pool: the turn's start model (``start_*``: its iter0, the previous turn's
    promotion) and iter1 (seed mean) on the turn's worst slice and on all eval frames, the
    random control as start + its mean Δ (None without one). ``h``: the turn's headline.json;
    ``head``: its headline.csv (the overall row gives the controls' overall Δ); ``registry``:
    its registry.json (what the next turn starts from). Adds the confirmation contrast."""
    overall = head[head["slice"] == "overall (all eval frames)"].iloc[0]
    rnd = overall["random_delta"] if "random_delta" in head else None
    rnd = None if rnd is None or rnd != rnd else float(rnd)
    c = h.get("contrast_iter1_random") or {}
    return {"turn": int(turn), "worst_slice": h["worst_slice"], "start_worst_AP50": h["iter0"], "worst_AP50": h["iter1"],
            "random_worst_AP50": None if h.get("random_delta") is None else h["iter0"] + h["random_delta"],
            "start_overall_AP50": h["overall_iter0"], "overall_AP50": h["overall_iter1"],
            "random_overall_AP50": None if rnd is None else h["overall_iter0"] + rnd,
            "contrast_iter1_random": c.get("delta"), "contrast_ci": c.get("ci"), "promoted": registry["promoted"]}


CONFIG_KEYS = ("imgsz", "batch", "nbs", "optimizer", "lr0", "epochs")


def config_table(runs: pd.DataFrame, cards: Mapping[str, Mapping[str, Any]], results: Mapping[str, Any],
                 classes: Sequence[str] = ("car", "pedestrian")) -> pd.DataFrame:
    """The training configuration of every run with its scores on the eval pool: run, arm,
    seed, model, init, the Ultralytics arguments in :data:`CONFIG_KEYS`, data hash,
    mAP@0.5:0.95 and mAP@0.5 overall (fractions), recall@0.5 of each of ``classes`` (None
    when the class has no GT). ``runs``: :func:`runs_table`; ``cards``: run → run card;
    ``results``: run → ``evaluate.EvalResult`` (``iter0`` included)."""
    rows = []
    for r in runs.itertuples(index=False):
        card, res = cards.get(r.run) or {}, results[r.run]
        args = card.get("config") or {}
        row = {"run": r.run, "arm": r.arm, "seed": int(r.seed), "model": Path(str(card.get("model"))).name,
               "init": _init_name(card.get("init_weights")),
               **{k: args.get(k) for k in CONFIG_KEYS}, "data_hash": r.data_hash,
               "mAP@0.5:0.95": float(res.AP), "mAP@0.5": float(res.AP50)}
        pc = res.per_class
        for c in classes:
            ok = c in pc.index and int(pc.loc[c, "n_gt"]) > 0
            row[f"recall {c}"] = float(pc.loc[c, "recall50"]) if ok else None
        rows.append(row)
    return pd.DataFrame(rows)


def _init_name(init: str | None) -> str:
    """A run card's ``init_weights`` as the run it came from (``runs/iter0/weights/last.pt`` →
    ``iter0``, ``turn2/runs/iter1/weights/best.pt`` → ``turn2/iter1``), a file name, or ``scratch``."""
    if not init:
        return "scratch"
    p = Path(init)
    if p.parent.name != "weights":
        return p.name
    turn = [q for q in p.parts if q.startswith("turn") and q[4:].isdigit()]
    return "/".join(turn[-1:] + [p.parent.parent.name])
