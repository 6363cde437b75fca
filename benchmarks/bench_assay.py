"""Issue 24, item 4: assay sensitivity — can this world show a selection effect at all?

Measured BEFORE iter1 is scored. With the chosen slice (§5's worst slice) and N = its mining-pool
frames that have ground truth, each of 3 seeds trains, with the §7 recipe on the same replay set:
- ``zero``: no new data (the replay set topped up with seen train frames);
- ``slice_half`` / ``slice_all``: N/2 (a seeded draw per seed) / all N of the slice's pool frames, GT labels;
- ``random_half`` / ``random_all``: as many random labelled pool frames (drawn per seed), GT labels.
Every run takes the same number of steps (replay + max(mine_k, N) frames, topped up with seen
train frames). Each is scored on the confirmation set (§5's frames, the same hierarchical
bootstrap as §8): Δ vs iter0 per arm and, per dose, the contrast slice − random (G2's form).
A Slice-Tuner-style per-slice learning curve (Δ against frames added) is drawn to
``<out>/benchmarks/assay.png``; numbers to ``<out>/benchmarks/assay.json``, both also to the
committed ``benchmarks/results/<profile>/`` with a provenance stamp (world hash, commit, date, slice,
SYNTHETIC; ``bdd_engine.benchstamp``): the case study's design card shows them and says when the
stamp is not its run's. A finished run shows it after ``python -m bdd_engine run --from 8`` (§8 writes the case study). Last line: ``RESULT {json}``.
Run: ``.venv/bin/python benchmarks/bench_assay.py`` (needs §1–§5 in the outputs folder).
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

from bdd_engine import artifacts, benchstamp, experiment, figures, synth, train  # noqa: E402
from bdd_engine import flywheel as fw  # noqa: E402
from bdd_engine.config import load_config, parse_overrides  # noqa: E402


def plan(cfg) -> tuple[str, list[str], list[str], int]:
    """(slice, its labelled pool frames, every labelled pool frame, k: frames per run beyond the replay)."""
    worst = artifacts.load_json(cfg.out, 5, "worst_slice.json")["worst_slice"]
    gt_names = {f["name"] for f in artifacts.load_gt(cfg.out, 3, "pool")}
    pool = fw._unused_pool(cfg, artifacts.read_df(cfg.out, 3, "pools.csv"), 1)
    pool = pool[pool["name"].isin(gt_names)]
    in_slice = sorted(pool.loc[pool["slice"] == worst, "name"])
    return worst, in_slice, sorted(pool["name"]), max(int(cfg.mine_k), len(in_slice))


def _zero_dir(cfg, k: int) -> Path:
    """Where the zero dose trains. With k == mine_k it is exactly the `continue` arm that
    bench_recipe.py trained for the chosen recipe (same replay, filler, recipe, seeds: the same
    fingerprint), so train() finds those runs fresh instead of training them again — unless the
    profile's recipe is not the chosen one (then the assay trains its own)."""
    p = cfg.out / "benchmarks" / "recipe.json"
    if k == int(cfg.mine_k) and p.is_file():
        r = json.loads(p.read_text())
        row = next((x for x in r["table"] if x["name"] == r["chosen"]), None)
        keys = ("retrain_lr0", "retrain_lrf", "retrain_warmup_epochs", "retrain_warmup_bias_lr")
        if row and bool(cfg.retrain_warm_start) and all(row.get(key) == cfg[key] for key in keys):
            return cfg.out / "bench_recipe" / str(r["chosen"])
    return cfg.out / "bench_assay"


def run_arms(cfg, k: int, in_slice: list[str], labelled: list[str]) -> pd.DataFrame:
    """Train every (arm, seed) of the assay; one row per run with its weights."""
    pools = artifacts.read_df(cfg.out, 3, "pools.csv")
    paths = dict(zip(pools["name"], pools["image_path"]))
    sizes = artifacts.image_sizes(artifacts.read_df(cfg.out, 1, "frames.csv"))
    train_by = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "train")}
    gt_pool = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "pool")}
    r_n, f_n = experiment.replay_split(pools[pools["pool"] == "train"], int(cfg.retrain_replay), k, int(cfg.seed))
    replay, filler = [train_by[n] for n in r_n], [train_by[n] for n in f_n]
    w0, val = artifacts.start_weights(cfg.out, 1), list(train_by.values())[:32]
    n_all, n_half = len(in_slice), len(in_slice) // 2
    labelled_df = pd.DataFrame({"name": labelled, "pool": "pool"})
    rows = []
    for s in [int(x) for x in cfg.retrain_seeds]:
        half = sorted(np.random.default_rng([s, 7]).choice(in_slice, size=n_half, replace=False).tolist())
        added = {"zero": [], "slice_half": half, "slice_all": in_slice,
                 "random_half": experiment.random_pool_names(labelled_df, n_half, s),
                 "random_all": experiment.random_pool_names(labelled_df, n_all, s)}
        for arm, names in added.items():
            frames = experiment.arm_frames(replay, [gt_pool[n] for n in names], filler, k)
            where, name = (_zero_dir(cfg, k), f"continue_s{s}") if arm == "zero" else (cfg.out / "bench_assay", f"{arm}_s{s}")
            weights, card, dhash, _ = fw._train_arm(cfg, where, name, s, frames, val, paths, sizes, w0)
            rows.append({"run": f"{arm}_s{s}", "arm": arm, "seed": s, "added": len(names),
                         "in_slice": len(set(names) & set(in_slice)), "weights": str(weights),
                         "train_s": card.get("wall_time_s"), "data_hash": dhash})
            print(f"  trained {arm}_s{s}: +{len(names)} frames ({rows[-1]['in_slice']} in slice), "
                  f"{card.get('wall_time_s', 0):.0f} s", flush=True)
    return pd.DataFrame(rows)


def curve(cfg, runs: pd.DataFrame, n_all: int) -> tuple[list[dict], dict]:
    """Score every run on the confirmation set; per dose: slice and random Δ vs iter0 and their contrast."""
    weights = {"iter0": artifacts.start_weights(cfg.out, 1), **dict(zip(runs["run"], map(Path, runs["weights"])))}
    point, boot, _, conf = fw.confirm_scores(cfg, weights)
    seed = int(cfg.seed)
    table = []
    for dose, n in (("zero", 0), ("half", n_all // 2), ("all", n_all)):
        if dose == "zero":
            sub = runs[runs["arm"] == "zero"].assign(arm="oracle")
            d = experiment.hierarchical_deltas(point, boot, sub, seed)["arms"]["oracle"]
            table.append({"dose": dose, "frames": 0, "slice_delta": d["delta"], "slice_ci": d["ci"],
                          "random_delta": d["delta"], "random_ci": d["ci"], "contrast": 0.0, "contrast_ci": [0.0, 0.0]})
            continue
        sub = runs[runs["arm"].isin([f"slice_{dose}", f"random_{dose}"])].replace(
            {"arm": {f"slice_{dose}": "oracle", f"random_{dose}": "random_gt"}})
        h = experiment.hierarchical_deltas(point, boot, sub, seed)
        c = h["contrasts"]["oracle-random_gt"]
        table.append({"dose": dose, "frames": n, "slice_delta": h["arms"]["oracle"]["delta"],
                      "slice_ci": h["arms"]["oracle"]["ci"], "random_delta": h["arms"]["random_gt"]["delta"],
                      "random_ci": h["arms"]["random_gt"]["ci"], "contrast": c["delta"], "contrast_ci": c["ci"]})
    return table, {"slice": str(conf["slice"].iloc[0]), "n_confirm": len(conf), "iter0": point["iter0"]}


def draw(table: list[dict], meta: dict, synthetic: bool, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = [r["frames"] for r in table]
    for key, label, color in (("slice", "the slice's pool frames (GT)", "tab:red"),
                              ("random", "random pool frames (GT)", "tab:gray")):
        y = np.array([r[f"{key}_delta"] for r in table])
        ci = np.array([[np.nan if v is None else v for v in r[f"{key}_ci"]] for r in table])
        ax.plot(x, y, "o-", color=color, label=label)
        ax.fill_between(x, ci[:, 0], ci[:, 1], color=color, alpha=0.15)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("ground-truth frames added to the replay set")
    ax.set_ylabel(f"Δ mAP@0.5 vs iter0 on {meta['n_confirm']} confirmation frames")
    ax.set_title(f"Assay sensitivity: {meta['slice']}" + (" — SYNTHETIC" if synthetic else ""), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    figures.close_all()


def stamp_of(cfg, slice_: str | None) -> dict:
    """This result's provenance (the world it was measured on, the commit, the date, the slice)."""
    return benchstamp.stamp(str(cfg.profile), synth.world_hash(cfg) if cfg.synthetic else None, bool(cfg.synthetic),
                            train.git_commit(), slice_)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--set", action="append", default=[], help="key=value config override (as the CLI)")
    args = ap.parse_args()
    cfg = load_config(args.profile, parse_overrides(args.set))
    t0 = time.time()
    worst, in_slice, labelled, k = plan(cfg)
    print(f"assay on {worst}: {len(in_slice)} labelled pool frames in the slice, {len(labelled)} labelled pool frames; "
          f"each run = replay {cfg.retrain_replay} + {k} frames", flush=True)
    runs = run_arms(cfg, k, in_slice, labelled)
    table, meta = curve(cfg, runs, len(in_slice))
    out = cfg.out / "benchmarks"
    draw(table, meta, bool(cfg.synthetic), out / "assay.png")
    top = table[-1]
    g2 = experiment.g2_selection({"delta": top["contrast"], "ci": top["contrast_ci"]})["pass"]
    fmt = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
    sentence = (f"adding all {top['frames']} of {worst}'s labelled pool frames moved the confirmation set by "
                f"{fmt(top['slice_delta'])} against {fmt(top['random_delta'])} for as many random labelled frames: "
                f"contrast {fmt(top['contrast'])}, 95% CI [{fmt(top['contrast_ci'][0])}, {fmt(top['contrast_ci'][1])}] "
                f"({'G2 form passes: CI lower bound > 0' if g2 else 'G2 form fails: CI lower bound <= 0'}; "
                f"{len(cfg.retrain_seeds)} seeds, SYNTHETIC)." if cfg.synthetic else "")
    result = {"slice": worst, "n_pool_gt": len(in_slice), "frames_per_run": int(cfg.retrain_replay) + k,
              "seeds": [int(s) for s in cfg.retrain_seeds], **meta,
              "table": [{k_: (round(v, 4) if isinstance(v, float) else v) for k_, v in r.items()} for r in table],
              "g2_all_pass": g2, "sentence": sentence, "runs": runs.drop(columns=["weights"]).to_dict("records"),
              "minutes": round((time.time() - t0) / 60, 1), "synthetic": bool(cfg.synthetic),
              "stamp": stamp_of(cfg, worst)}
    benchstamp.save(cfg.out, str(cfg.profile), "assay", result, out / "assay.png")
    print("RESULT " + json.dumps(result, default=str))


if __name__ == "__main__":
    main()
