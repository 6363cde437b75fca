"""Training throughput on this CPU: Ultralytics' default settings vs ours, same data, same recipe.

Both runs fine-tune the demo's pretrained init (``train_init_weights``) on the demo's §3
train pool with the profile's recipe (model, imgsz, batch, optimizer, lr, epochs, mosaic);
only the settings that decide speed differ:

* ``default`` — Ultralytics' defaults for them: fp32 (Ultralytics enables mixed precision
  only on CUDA), no image cache, per-epoch validation and training plots on;
* ``ours``    — the profile's: bf16 autocast + channels-last on a CPU with native bf16
  (``train.cpu_bf16_autocast``; fp32 elsewhere), ``cache="ram"``, no per-epoch val or plots;
* ``fp32_noval`` — ours without bf16 and cache (the demo's settings before this benchmark),
  so the gain of the arithmetic and the cache is visible apart from val/plots;
* ``ours_b32`` — ours at batch 32 (nominal batch 32): fewer, larger steps. A recipe change,
  not a throughput setting, so it is reported but not in the profile (``--only ours_b32``).

Per run: wall time of the whole ``train`` call, images/s (epochs × train images / wall),
and where an epoch's time goes, from Ultralytics callbacks: loading + augmentation (between
batches), the step (forward, loss, backward, optimizer), and the rest (start-up, caching,
epoch ends, val, plots). Accuracy: each run's weights are scored with the official metric
(``evaluate.evaluate``) on the demo eval pool: mAP@0.5 must agree within ±0.02.

Run: ``.venv/bin/python benchmarks/bench_train.py`` (about 10 min on 2 cores; it generates
the demo world and runs §1–§3 into its own outputs folder first if needed). Nothing else
should run on the machine: oversubscribed cores distort every timing (../shared/facts.md).
Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bdd_engine import artifacts, evaluate, flywheel, train  # noqa: E402
from bdd_engine.config import load_config  # noqa: E402

SETTINGS = {
    "default": {"cpu_bf16": False, "cache": "off", "val": True, "plots": True},
    "ours": {},
    "fp32_noval": {"cpu_bf16": False, "cache": "off"},
    "ours_b32": {"batch": 32, "nbs": 32},   # not the profile's: a recipe change (half the optimizer steps), measured for the record
}


def _timeline() -> tuple[list, dict]:
    ev: list[tuple[str, float]] = []
    mk = lambda tag: (lambda _t: ev.append((tag, time.time())))  # noqa: E731
    events = ("on_train_start", "on_train_epoch_start", "on_train_batch_start", "on_train_batch_end",
              "on_train_epoch_end", "on_train_end")
    return ev, {e: mk(e) for e in events}


def _breakdown(ev: list[tuple[str, float]], wall: float) -> dict[str, float]:
    """Seconds spent loading (batch end/epoch start → next batch start) and stepping (batch start → end)."""
    load = step = 0.0
    for (a, ta), (b, tb) in zip(ev, ev[1:]):
        if a == "on_train_batch_start" and b == "on_train_batch_end":
            step += tb - ta
        elif b == "on_train_batch_start" and a in ("on_train_batch_end", "on_train_epoch_start"):
            load += tb - ta
    return {"wall_s": round(wall, 1), "load_augment_s": round(load, 1), "step_s": round(step, 1),
            "other_s": round(wall - load - step, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--epochs", type=int, default=None, help="default: the profile's train_epochs")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bdd_bench_train"), help="bench outputs folder (§1–§3 + runs)")
    ap.add_argument("--data-root", default=None, help="world root (default: the profile's data_root)")
    ap.add_argument("--only", nargs="*", default=["default", "ours", "fp32_noval"], choices=list(SETTINGS))
    args = ap.parse_args(argv)
    over = {"outputs_dir": str(args.out), "curate_map_method": "pca"}
    cfg = load_config(args.profile, {**over, **({"data_root": args.data_root} if args.data_root else {})}, env=False)
    for step in (flywheel.s1_collect, flywheel.s2_curate, flywheel.s3_pools):  # fresh checkpoints are reused
        step(cfg)
    data_yaml = artifacts.section_dir(cfg.out, 3) / "yolo" / "data.yaml"
    n_train = int((artifacts.read_df(cfg.out, 3, "pools.csv")["pool"] == "train").sum())
    ev_pool = artifacts.read_df(cfg.out, 3, "pools.csv").query("pool == 'eval'")
    gt = artifacts.load_gt(cfg.out, 3, "eval")
    base = flywheel.train_spec(cfg)
    epochs = int(args.epochs or base.epochs)
    out: dict[str, dict] = {}
    for name in args.only:
        spec = replace(base, epochs=epochs, **SETTINGS[name])
        ev, cbs = _timeline()
        t0 = time.time()
        w = train.train(spec, data_yaml, cfg.out / "bench_runs", name=f"{name}_e{epochs}", callbacks=cbs)
        wall = time.time() - t0
        if not ev:
            raise SystemExit(f"{name}: a finished run was reused; delete {cfg.out / 'bench_runs'} to time it again")
        preds = train.predict(w, list(ev_pool["image_path"]), conf=float(cfg.eval_conf), device=str(cfg.device),
                              progress=False)
        res = evaluate.evaluate(gt, preds, by=cfg.eval_by, n_boot=0)
        card = json.loads((w.parent.parent / "run_card.json").read_text())
        out[name] = {**_breakdown(ev, wall), "img_per_s": round(epochs * n_train / wall, 2),
                     "map50": round(res.AP50, 4), "precision": card.get("precision")}
        print(name, out[name], flush=True)
    result = {"epochs": epochs, "train_images": n_train, "model": base.model, "imgsz": base.imgsz,
              "init": base.init_weights, "cpu_bf16_native": train.cpu_has_bf16(), "load_avg": os.getloadavg()[0],
              "runs": out, "synthetic": True}
    if "ours" in out and "default" in out:
        result.update({"img_per_s": out["ours"]["img_per_s"], "img_per_s_default": out["default"]["img_per_s"],
                       "speedup": round(out["ours"]["img_per_s"] / out["default"]["img_per_s"], 2),
                       "map50": out["ours"]["map50"], "map50_default": out["default"]["map50"],
                       "map50_within_0.02": abs(out["ours"]["map50"] - out["default"]["map50"]) <= 0.02})
    if "ours" in out and "fp32_noval" in out:
        result["speedup_vs_fp32_noval"] = round(out["ours"]["img_per_s"] / out["fp32_noval"]["img_per_s"], 2)
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
