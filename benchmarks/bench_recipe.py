"""Issue 24, item 1: the continuation recipe, chosen on the EVAL POOL before any arm is scored.

For each pre-registered candidate (default.yaml's retrain_* comment) the `continue` arm — the
replay set + mine_k train frames iter0 already saw, i.e. no new data, exactly as §7 builds it —
is trained per seed and scored on the eval pool against iter0 (overall mAP@0.5, paired
bootstrap CI of the seed mean). The rule (``experiment.choose_recipe``) keeps the cheapest
candidate whose overall Δ >= -control_continue_tol (G1's eval-pool part); among equal cost the
highest Δ. The confirmation set is never read.

Needs §1–§5 of the run in ``--out`` (``python -m bdd_engine run --profile demo`` up to §5, or
any finished run). Trains in ``<out>/bench_recipe/<candidate>/``; writes
``<out>/benchmarks/recipe.json`` and, stamped (world hash, commit, date, SYNTHETIC), the committed
``benchmarks/results/<profile>/recipe.json`` (the case study's design card shows it). A finished run shows it after ``python -m bdd_engine run --from 8`` (§8 writes the case study). Last line:
``RESULT {json}``. Run: ``.venv/bin/python benchmarks/bench_recipe.py [--candidates a,b,b2,c]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bdd_engine import artifacts, bdd, benchstamp, evaluate, experiment  # noqa: E402
from bdd_engine import flywheel as fw  # noqa: E402
from bdd_engine.config import load_config, parse_overrides  # noqa: E402
from bench_assay import stamp_of  # noqa: E402

# the pre-registered candidates (default.yaml, retrain_* comment); c: from the pretrained init at iter0's schedule
CANDIDATES = {
    "a": {"retrain_lr0": 0.002, "retrain_lrf": 0.01, "retrain_warmup_epochs": 1, "retrain_warmup_bias_lr": 0.1},
    "b": {"retrain_lr0": 0.0001, "retrain_lrf": 1.0, "retrain_warmup_epochs": 0, "retrain_warmup_bias_lr": 0.0},
    "b2": {"retrain_lr0": 0.0001, "retrain_lrf": 0.1, "retrain_warmup_epochs": 0, "retrain_warmup_bias_lr": 0.0},
    "c": {"retrain_warm_start": False},
}
C_SEEDS = 1  # candidate c costs train_epochs per run: one seed measures its cost (the design asks for >= 1 run)


def measure(cfg, name: str, seeds: list[int]) -> dict:
    """Train candidate ``name``'s continue arm per seed; its overall eval-pool Δ vs iter0."""
    pools = artifacts.read_df(cfg.out, 3, "pools.csv")
    paths = dict(zip(pools["name"], pools["image_path"]))
    sizes = artifacts.image_sizes(artifacts.read_df(cfg.out, 1, "frames.csv"))
    train_by = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "train")}
    k = int(cfg.mine_k)
    replay_n, filler_n = experiment.replay_split(pools[pools["pool"] == "train"], int(cfg.retrain_replay), k, int(cfg.seed))
    frames = experiment.arm_frames([train_by[n] for n in replay_n], [], [train_by[n] for n in filler_n], k)
    val = artifacts.load_gt(cfg.out, 3, "train")[:32]
    w0 = artifacts.start_weights(cfg.out, 1)
    res0 = fw._evaluate(cfg, bdd.load_frames(artifacts.section_dir(cfg.out, 5) / "predictions.json"))
    ev = fw._eval_pool(cfg)
    results, secs, epochs = [], [], None
    for s in seeds:
        weights, card, _, epochs = fw._train_arm(cfg, cfg.out / "bench_recipe" / name, f"continue_s{s}", s, frames, val,
                                                 paths, sizes, w0)
        secs.append(card.get("wall_time_s"))
        results.append(fw._evaluate(cfg, fw._predict(cfg, weights, ev)))
        print(f"  {name} seed {s}: overall AP50 {results[-1].AP50:.4f} (iter0 {res0.AP50:.4f}), "
              f"{secs[-1]:.0f} s train", flush=True)
    d = evaluate.paired_delta(res0, results, None, int(cfg.eval_n_boot), int(cfg.seed))
    per_seed = [r.AP50 - res0.AP50 for r in results]
    return {"name": name, **{k: v for k, v in CANDIDATES[name].items()}, "seeds": seeds, "epochs": int(epochs),
            "frames": len(frames), "cost_steps": int(epochs) * len(frames),
            "train_s_per_seed": round(sum(secs) / len(secs), 1), "pool_delta": d["delta"],
            "pool_ci": d["ci"], "pool_delta_per_seed": [round(x, 4) for x in per_seed]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--set", action="append", default=[], help="key=value config override (as the CLI)")
    ap.add_argument("--candidates", default="a,b,b2,c")
    ap.add_argument("--merge", action="store_true", help="add to an existing recipe.json instead of replacing it")
    args = ap.parse_args()
    base = parse_overrides(args.set)
    cfg0 = load_config(args.profile, base)
    rows, t0 = [], time.time()
    for name in args.candidates.split(","):
        cfg = load_config(args.profile, {**base, **CANDIDATES[name]})
        seeds = [int(s) for s in cfg.retrain_seeds][: C_SEEDS if name == "c" else None]
        rows.append(measure(cfg, name, seeds))
    out = cfg0.out / "benchmarks" / "recipe.json"
    if args.merge and out.is_file():
        old = {r["name"]: r for r in json.loads(out.read_text())["table"]}
        old.update({r["name"]: r for r in rows})
        rows = [old[n] for n in CANDIDATES if n in old]
    tol = float(cfg0.control_continue_tol)
    chosen = experiment.choose_recipe(rows, tol)
    result = {"chosen": chosen, "rule": experiment.RECIPE_RULE.replace("tol", f"{tol}"), "tol": tol,
              "table": [{k: v for k, v in r.items()} for r in rows], "minutes": round((time.time() - t0) / 60, 1),
              "synthetic": bool(cfg0.synthetic), "stamp": stamp_of(cfg0, None)}
    benchstamp.save(cfg0.out, str(cfg0.profile), "recipe", result)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
