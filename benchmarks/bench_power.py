"""Power of the headline design: CI half-width of Δ(iter1) − Δ(random) against seeds,
confirmation frames and minutes, measured on a finished run.

Reads a run's outputs (default ``outputs/``): the confirmation set (§5 ``confirm.csv``, §1
``gt_confirm.json``), every run's predictions on it (§8 ``confirm/<run>_predictions.parquet``)
and the arms' training times (§7 ``arms.csv``). For each number of seeds per arm (1..S, the
first seeds) and of confirmation frames (a seeded subsample), it recomputes the contrast with
the same hierarchical bootstrap as §8 (``experiment.hierarchical_deltas``) and reports the
95% CI half-width and the MDE. A two-component model, SE² = a / frames + b / seeds, fitted by
least squares to the measured grid, projects the seeds and frames a half-width of 0.03 would
need, and the minutes of §7 training that costs on this machine (measured per arm-seed).

No training happens here: every number comes from the run's own predictions. Last line:
``RESULT {json}``. Run: ``.venv/bin/python benchmarks/bench_power.py [--out outputs]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bdd_engine import artifacts, evaluate, experiment  # noqa: E402

TARGET = 0.03


def _evaluations(out: Path, runs: list[str], gt: list) -> dict[str, evaluate.EvalResult]:
    """Each run's evaluation on the confirmation frames, from its saved §8 predictions."""
    return {run: evaluate.evaluate(gt, pd.read_parquet(artifacts.section_dir(out, 8) / "confirm" /
                                                       f"{run}_predictions.parquet"), n_boot=0) for run in runs}


def _grid_point(caches: dict, arms: pd.DataFrame, frames: np.ndarray, n_seeds: int, n_boot: int, seed: int) -> dict:
    seeds = sorted(arms["seed"].unique())[:n_seeds]
    sub = arms[arms["seed"].isin(seeds)]
    w = evaluate.resample_weights(len(frames), n_boot, np.random.default_rng([seed, 23]))
    point, boot = {}, {}
    for run in ["iter0", *sub["run"]]:
        c = caches[run].cache
        point[run], boot[run] = evaluate.frames_map50(c, frames), evaluate.boot_map50(c, frames, w)
    h = experiment.hierarchical_deltas(point, boot, sub, seed)
    c = h["contrasts"]["iter1-random"]
    return {"seeds": n_seeds, "frames": int(len(frames)), "delta": round(c["delta"], 4),
            "halfwidth": round((c["ci"][1] - c["ci"][0]) / 2, 4), "se": round(c["se"], 4), "mde": round(h["mde"], 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    out = args.out
    conf = artifacts.read_df(out, 5, "confirm.csv")
    gt_by = {f["name"]: f for f in artifacts.load_gt(out, 1, "confirm")}
    gt = [gt_by[n] for n in conf["name"]]
    arms = artifacts.read_df(out, 7, "arms.csv")
    caches = _evaluations(out, ["iter0", *arms["run"]], gt)
    n_all, s_all = len(gt), arms["seed"].nunique()
    rng = np.random.default_rng(args.seed)
    sizes = sorted({n for n in (50, 100, 200, n_all) if n <= n_all})
    grid = []
    for n in sizes:
        frames = np.sort(rng.choice(n_all, size=n, replace=False)) if n < n_all else np.arange(n_all)
        for s in range(1, s_all + 1):
            grid.append(_grid_point(caches, arms, frames, s, args.n_boot, args.seed))
            print(grid[-1], flush=True)
    g = pd.DataFrame(grid)
    # SE² = a/frames + b/seeds (least squares on the measured grid, non-negative components)
    X = np.stack([1 / g["frames"], 1 / g["seeds"]], axis=1)
    coef, *_ = np.linalg.lstsq(X, g["se"] ** 2, rcond=None)
    a, b = (max(float(c), 0.0) for c in coef)
    min_per_seed = float(arms.groupby("seed")["wall_time_s"].sum().mean()) / 60
    proj = []
    for frames in (n_all, 2 * n_all, 4 * n_all):
        for seeds in (3, 5, 10, 20):
            half = 1.96 * np.sqrt(a / frames + b / seeds)
            proj.append({"frames": frames, "seeds": seeds, "halfwidth": round(float(half), 4),
                         "train_minutes": round(seeds * min_per_seed, 1)})
    reach = [p for p in proj if p["halfwidth"] <= TARGET]
    result = {"measured": grid, "model": {"a_frames": a, "b_seeds": b, "formula": "SE^2 = a/frames + b/seeds"},
              "minutes_per_seed_s7": round(min_per_seed, 2), "projection": proj,
              "cheapest_reaching_0.03": min(reach, key=lambda p: p["train_minutes"]) if reach else None,
              "confirm_n": n_all, "seeds": s_all, "synthetic": True}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
