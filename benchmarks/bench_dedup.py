"""Near-duplicate control in mining: how the per-drive cap and the cosine-distance floor change
the mined set's distinct drives and slice precision, on the demo world (SYNTHETIC).

Reads a run's §2 embeddings, §3 pools, §5 per-frame evaluation and worst slice (default the
demo profile's ``outputs/``; missing sections are computed first through the section runners,
so a fresh clone pays §1–§5 once, ~15 min on 2 cores). Then mines the demo's ``mine_k`` frames
with the profile's strategy for every (``mine_max_per_drive``, ``mine_min_distance``) pair of
the grid, through ``mine.mine`` itself, and reports per pair: frames, distinct drive groups,
slice precision (and per attribute), frames skipped by the cap and by the distance floor.
It also measures the cosine distances that separate a same-drive pair from the nearest frame
of another drive in the pool (what the distance floor can tell apart).

Choice rule for the default (printed in the RESULT): among the pairs whose slice precision is
at least the unfiltered precision minus ``--tol`` (default 0.02, two frames of 100), the one with the most
distinct drives; ties → the milder setting (larger cap, then smaller distance). Deterministic:
seed 42, the same mined set for the same checkpoints. Last line: ``RESULT {json}``.

Run: ``.venv/bin/python benchmarks/bench_dedup.py [--profile demo] [--out DIR]`` (~1 min once
§1–§5 exist).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bdd_engine.env import setup_env  # noqa: E402

setup_env()
from bdd_engine import artifacts, flywheel, mine  # noqa: E402
from bdd_engine.config import load_config  # noqa: E402

CAPS = (0, 1, 2, 3)
DISTANCES = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05)


def distance_stats(x: np.ndarray, groups: list[str]) -> dict[str, float]:
    """Cosine distances (1 − cos) in the pool: each frame to its nearest same-drive frame and to
    its nearest frame of another drive (quantiles over frames that have a drive-mate)."""
    sim = x @ x.T
    g = np.asarray(groups)
    same = g[:, None] == g[None, :]
    np.fill_diagonal(sim, -np.inf)
    s_same = np.where(same, sim, -np.inf).max(1)
    s_other = np.where(~same, sim, -np.inf).max(1)
    has = np.isfinite(s_same)
    d_same, d_other = 1 - s_same[has], 1 - s_other[has]
    q = lambda a, p: round(float(np.quantile(a, p)), 5)  # noqa: E731
    return {"frames_with_drive_mate": int(has.sum()), "same_drive_nearest_p10": q(d_same, .1),
            "same_drive_nearest_median": q(d_same, .5), "same_drive_nearest_p90": q(d_same, .9),
            "other_drive_nearest_p10": q(d_other, .1), "other_drive_nearest_median": q(d_other, .5),
            "other_drive_nearest_p90": q(d_other, .9),
            "share_other_drive_closer_than_same": round(float((d_other < d_same).mean()), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--out", type=Path, default=None, help="outputs folder (default: the profile's)")
    ap.add_argument("--tol", type=float, default=0.02, help="slice precision a setting may lose vs no filter")
    args = ap.parse_args(argv)
    cfg = load_config(args.profile, {"outputs_dir": str(args.out)} if args.out else None, env=False)
    for run in (flywheel.s1_collect, flywheel.s2_curate, flywheel.s3_pools, flywheel.s4_train, flywheel.s5_eval):
        run(cfg)  # loads fresh checkpoints, computes missing ones
    pools = artifacts.read_df(cfg.out, 3, "pools.csv")
    per_frame = artifacts.read_df(cfg.out, 5, "per_frame.csv")
    worst = artifacts.load_json(cfg.out, 5, "worst_slice.json")["worst_slice"]
    emb, names = artifacts.load_embeddings(cfg.out)
    pool, ev = pools[pools["pool"] == "pool"], pools[pools["pool"] == "eval"]
    row = {n: i for i, n in enumerate(names)}
    xp = np.asarray(emb)[[row[n] for n in pool["name"]]]
    stats = distance_stats(xp, [str(g) for g in pool["group"]])
    print("distances:", stats, flush=True)
    in_slice = pool[pool["slice"] == worst]
    per_drive = in_slice.groupby("group").size()
    stats["worst_slice_pool_frames"] = int(len(in_slice))
    stats["worst_slice_pool_drives"] = int(len(per_drive))
    for c in CAPS[1:]:  # the most worst-slice frames a mined set can hold under each cap
        stats[f"worst_slice_frames_reachable_cap{c}"] = int(per_drive.clip(upper=c).sum())
    opts = dict(k=int(cfg.mine_k), strategy=str(cfg.mine_strategy), by=list(cfg.eval_by),
                fail_ap=float(cfg.mine_fail_ap), fail_recall=float(cfg.mine_fail_recall),
                hybrid_targeted=float(cfg.mine_hybrid_targeted), ivf_above=int(cfg.mine_ivf_above),
                ivf_recall=float(cfg.mine_ivf_recall), min_frames=int(cfg.eval_min_frames), seed=int(cfg.seed),
                synthetic=bool(cfg.synthetic), worst_slice=worst)
    grid = []
    for cap in CAPS:
        for dist in DISTANCES:
            r = mine.mine(per_frame, ev, pool, emb, names, max_per_drive=cap, min_distance=dist, **opts)
            p = r.precision[r.precision["top"] == len(r.mined)].set_index("level")["precision"]
            d = r.dedup
            grid.append({"max_per_drive": cap, "min_distance": dist, "frames": d["after"]["frames"],
                         "drives": d["after"]["drives"], "precision": round(d["after"]["precision"], 4),
                         **{f"precision_{a}": round(float(p[a]), 4) for a in cfg.eval_by},
                         "capped": d["capped"], "near_duplicates": d["near_duplicates"]})
            print(grid[-1], flush=True)
    base = grid[0]
    ok = [g for g in grid if g["precision"] >= base["precision"] - args.tol - 1e-9]
    best = max(ok, key=lambda g: (g["drives"], -(g["max_per_drive"] or 99), -g["min_distance"]))
    print("RESULT " + json.dumps({
        "profile": cfg.profile, "synthetic": bool(cfg.synthetic), "worst_slice": worst, "k": int(cfg.mine_k),
        "strategy": str(cfg.mine_strategy), "pool_frames": int(len(pool)), "pool_drives": int(pool["group"].nunique()),
        "distances": stats, "before": {k: base[k] for k in ("frames", "drives", "precision")}, "tol": args.tol,
        "chosen": best, "grid": grid}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
