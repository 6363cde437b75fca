"""Issue 24, item 8: pick the slice by expected gain (Slice Tuner, Tae & Whang, SIGMOD 2021).

For every ELIGIBLE slice (§3's eligible_slices.csv: >= confirm_min_frames confirmation frames and
>= eval_min_pool_frames unused mining-pool frames), one point of its learning curve: add ``dose``
(mine_k // 2 by default) of the slice's ground-truth pool frames to the replay set (topped up to
mine_k with seen train frames, the §7 recipe: every run takes the same steps) and measure the
slice's Δ mAP@0.5 vs iter0 on the EVAL POOL; the zero dose is the `continue` run (no new data).
The slope of Δ against frames added ranks the slices (``experiment.slice_slopes``); the `gain`
rule takes the steepest (``experiment.pick_slice``), `worst` (the default) the lowest-AP slice.
The confirmation set is never read. Cost: (eligible slices + 1) training runs per seed.

Writes ``<out>/benchmarks/slice_gain.json`` + ``slice_gain.png`` and the stamped, committed copy
in ``benchmarks/results/<profile>/`` (the case study reports both picks from it). A finished run shows it after ``python -m bdd_engine run --from 8`` (§8 writes the case study). Last line:
``RESULT {json}``. Run: ``.venv/bin/python benchmarks/bench_slice_gain.py [--set outputs_dir=...]``
(needs §1–§5 in the outputs folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bdd_engine import artifacts, benchstamp, experiment, figures  # noqa: E402
from bdd_engine import flywheel as fw  # noqa: E402
from bdd_engine.config import load_config, parse_overrides  # noqa: E402
from bench_assay import stamp_of  # noqa: E402


def _slice_ap(res) -> dict[str, float]:
    full = res.slices[res.slices["level"] == "full"]
    return dict(zip(full["slice"], full["AP50"].astype(float)))


def measure(cfg, dose: int, seeds: list[int]) -> tuple[pd.DataFrame, list[str], dict[str, float]]:
    """Curve points (slice, seed, frames, delta on the eval pool) for every eligible slice."""
    pools = artifacts.read_df(cfg.out, 3, "pools.csv")
    elig = artifacts.read_df(cfg.out, 3, "eligible_slices.csv")
    eligible = sorted(elig.loc[elig["eligible"].astype(bool), "slice"])
    paths = dict(zip(pools["name"], pools["image_path"]))
    sizes = artifacts.image_sizes(artifacts.read_df(cfg.out, 1, "frames.csv"))
    train_by = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "train")}
    gt_pool = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "pool")}
    unused = fw._unused_pool(cfg, pools, 1)
    unused = unused[unused["name"].isin(gt_pool)]
    k = int(cfg.mine_k)
    r_n, f_n = experiment.replay_split(pools[pools["pool"] == "train"], int(cfg.retrain_replay), k, int(cfg.seed))
    replay, filler = [train_by[n] for n in r_n], [train_by[n] for n in f_n]
    w0, val, ev = artifacts.start_weights(cfg.out, 1), list(train_by.values())[:32], fw._eval_pool(cfg)
    s0 = artifacts.read_df(cfg.out, 5, "slices.csv")  # iter0 on the eval pool (§5)
    ap0 = dict(zip(s0.loc[s0["level"] == "full", "slice"], s0.loc[s0["level"] == "full", "AP50"].astype(float)))
    where, rows = cfg.out / "bench_slice_gain", []
    for s in seeds:
        arms = {"zero": []}
        for i, sl in enumerate(eligible):
            names = sorted(unused.loc[unused["slice"] == sl, "name"])
            arms[sl] = sorted(np.random.default_rng([s, 11, i]).choice(names, size=min(dose, len(names)),
                                                                         replace=False).tolist())
        for j, (arm, names) in enumerate(arms.items()):
            frames = experiment.arm_frames(replay, [gt_pool[n] for n in names], filler, k)
            weights, card, _, _ = fw._train_arm(cfg, where, f"{'zero' if arm == 'zero' else f'slice{j:02d}'}_s{s}", s,
                                                frames, val, paths, sizes, w0)
            ap = _slice_ap(fw._evaluate(cfg, fw._predict(cfg, weights, ev)))
            for sl in eligible if arm == "zero" else [arm]:
                rows.append({"slice": sl, "seed": s, "frames": len(names), "delta": ap.get(sl, np.nan) - ap0.get(sl, np.nan)})
            print(f"  {arm} seed {s}: +{len(names)} frames, {card.get('wall_time_s', 0):.0f} s train", flush=True)
    return pd.DataFrame(rows), eligible, ap0


def draw(slopes: pd.DataFrame, worst: str | None, gain: str, synthetic: bool, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    d = slopes.iloc[::-1]
    fig, ax = plt.subplots(figsize=(8.0, 0.32 * len(d) + 1.8))
    colors = ["tab:red" if s == gain else "tab:blue" if s == worst else "tab:gray" for s in d["slice"]]
    ax.barh(d["slice"], d["slope_per_100"], color=colors)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("learning-curve slope: Δ mAP@0.5 on the eval pool per 100 GT frames of the slice", fontsize=9)
    ax.set_title(f"gain picks {gain} (red)\nworst picks {worst} (blue)" + (" — SYNTHETIC" if synthetic else ""),
                 fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    figures.close_all()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--set", action="append", default=[], help="key=value config override (as the CLI)")
    ap.add_argument("--dose", type=int, default=None, help="GT frames of the slice per run (default mine_k // 2)")
    ap.add_argument("--seeds", type=int, default=1, help="first N of retrain_seeds (cost: runs x N)")
    args = ap.parse_args()
    cfg = load_config(args.profile, parse_overrides(args.set))
    t0, dose = time.time(), args.dose or int(cfg.mine_k) // 2
    seeds = [int(s) for s in cfg.retrain_seeds][: args.seeds]
    points, eligible, ap0 = measure(cfg, dose, seeds)
    slopes = experiment.slice_slopes(points)
    worst_p = artifacts.section_dir(cfg.out, 5) / "worst_slice.json"
    worst = json.loads(worst_p.read_text())["worst_slice"] if worst_p.is_file() else None
    gain = experiment.pick_slice("gain", worst or "", slopes, eligible)
    out = cfg.out / "benchmarks"
    draw(slopes, worst, gain, bool(cfg.synthetic), out / "slice_gain.png")
    table = slopes.assign(iter0_AP50=[ap0.get(s) for s in slopes["slice"]])
    result = {"picks": {"worst": worst, "gain": gain}, "eligible": eligible, "dose": dose, "seeds": seeds,
              "rule": "gain = the eligible slice with the steepest learning curve (Δ on the eval pool per frame added); "
                      "worst = the eligible slice with the lowest iter0 AP on the eval pool",
              "table": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}
                        for r in table.to_dict("records")],
              "points": points.round(5).to_dict("records"), "minutes": round((time.time() - t0) / 60, 1),
              "synthetic": bool(cfg.synthetic), "stamp": stamp_of(cfg, worst)}
    benchstamp.save(cfg.out, str(cfg.profile), "slice_gain", result, out / "slice_gain.png")
    print("RESULT " + json.dumps(result, default=str))


if __name__ == "__main__":
    main()
