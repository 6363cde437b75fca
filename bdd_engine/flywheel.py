"""The section runners: ``s1_collect(cfg)`` … ``s8_delta(cfg)``, one per notebook section.

Each runner is a short sequence of named steps. It computes only when its checkpoint is
stale (config, inputs or an upstream section changed; an artifact is missing) or when
the run recomputes from an earlier section (:func:`recompute_from`, what ``run --from N``
sets in the executed notebook). Each section reads earlier sections only from their
checkpoint folders (:mod:`bdd_engine.artifacts`), so any section can run first in a fresh
kernel. This is the only module that reads the config: every step below it takes
explicit arguments.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bdd_engine import (artifacts, attributes, autolabel, bdd, benchstamp, casestudy, collect, confusion, curate, embed,
                        evaluate, experiment, figures, images, labelissues, mine, report, slices, synth, tracking, train)
from bdd_engine import executor as executors
from bdd_engine.checkpoint import (Section, acquire_lock, atomic_path, atomic_write_json, claim_folder,
                                   df_to_markdown, input_row, release_lock, reset_peak_rss)
from bdd_engine.config import Config, ConfigError
from bdd_engine.yolo import export_yolo

_RUN: dict[str, int | None] = {"from": None}  # this kernel's run options (set by the executed notebook)


def recompute_from(n: int | None) -> None:
    """Recompute section ``n`` and every later one in this kernel (``run --from N`` injects
    this call as the executed notebook's first cell); None restores normal freshness."""
    if n is not None and n not in range(1, 9):
        raise ValueError(f"recompute_from: sections are 1..8, got {n}")
    _RUN["from"] = n


def forced(n: int) -> bool:
    """True when this run recomputes section ``n`` regardless of its checkpoint."""
    f = _RUN["from"]
    return f is not None and f <= n


TURN_MARKER = "TURN.json"  # marks outputs/turn<t>/ as made by the flywheel (never write into another folder)


def needs_run(sec: Section) -> bool:
    """Decide (and say) whether a section computes; while it does, hold the outputs lock.
    A later turn's folder (``outputs/turn<t>/``) is created and marked first, or refused
    when it exists without our marker."""
    reason = f"recomputing from §{_RUN['from']}" if forced(sec.number) else sec.staleness()
    if reason:
        acquire_lock(sec.root)  # one process computes per outputs folder (released by the writer)
        reason = reason if forced(sec.number) else sec.staleness()  # another run may have just written it
    if reason:
        print(f"§{sec.number} {sec.key}: computing — {reason}")
        if sec.turn > 1:
            claim_folder(sec.base, TURN_MARKER, "bdd_engine.flywheel", {"turn": sec.turn})
        sec.started = time.time()  # timing.json then covers the whole computation, not just the writer
        reset_peak_rss()  # ... and its peak RSS is this section's alone
        return True
    release_lock(sec.root)
    print(f"§{sec.number} {sec.key}: fresh checkpoint, loading")
    return False


@dataclass
class Result:
    """What a section hands to the notebook: its folder, tables and key numbers."""

    section: int
    dir: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, k: str) -> pd.DataFrame:
        return self.tables[k]


# ----------------------------------------------------------------------------- §1
def data_root(cfg: Config) -> Path:
    """§1's data root. A synthetic profile's world is generated if missing (synth refuses
    any folder it did not create); a real-data profile refuses one of our synthetic worlds,
    so synthetic frames can never be reported as ``synthetic: false``."""
    if cfg.synthetic:
        return synth.ensure_world(cfg)
    if synth.world_marker(cfg.data_dir) is not None:
        raise ValueError(
            f"{cfg.data_dir} holds a synthetic world made by bdd_engine ({synth.MARKER}), but profile "
            f"{cfg.profile!r} says synthetic: false. Put the real BDD100K download there (README 'Real BDD100K'), "
            f"or use a synthetic profile (demo, tiny).")
    return cfg.data_dir


def _labels_fix(cfg: Config) -> str:
    return ("Regenerate the world: python -m bdd_engine synth --profile " + cfg.profile + " --force." if cfg.synthetic
            else bdd.DOWNLOAD_HINT)


def s1_collect(cfg: Config) -> Result:
    """Load BDD labels (or the synthetic world), validate labels and images, collect stratified.

    Artifacts (``01_collect/``): frames.csv (collected frame table, with each image's
    width/height in pixels), gt_collected.json, strata.csv, slice_index.csv,
    confirm_frames.csv + gt_confirm.json (the confirmation candidates: labelled frames of
    ``confirm_label_files`` sharing no frame or drive with the collect label files) and
    confirm_dropped.json, ingested.json (with ``pool_sources: [labels, ingested]``: the frames of
    ``ingest_dir`` joined or left out; frames.csv's ``origin`` says labels | ingested),
    validation_issues.csv, validation.json, inputs.csv (every input file's content hash:
    editing a label file or an image makes §1 and everything after it stale).
    """
    sec = Section(cfg, 1)
    if needs_run(sec):
        t0 = time.time()
        root = data_root(cfg)
        index = bdd.index_images(root, cfg.image_sets)
        paths = collect.label_paths(cfg.data_dir, cfg.label_files)
        frames, table, empty = collect.load_labels(paths, index, _labels_fix(cfg))
        cpaths = collect.label_paths(cfg.data_dir, cfg.confirm_label_files)
        cframes, ctable, cempty = collect.load_labels(cpaths, index, _labels_fix(cfg), allow_empty=True)
        checks = collect.check_frame_images(frames + cframes, index, cfg.out / ".cache" / "image_checks.parquet",
                                            workers=max(2, int(cfg.workers)))
        unreadable = set(checks.loc[~checks["ok"], "name"])
        have, total = bdd.image_coverage(frames + cframes, {n: p for n, p in index.items() if n not in unreadable})
        report_ = bdd.validate(frames + cframes, index, image_wh=images.sizes_of(checks, checks["name"]))
        report_.add(collect.image_issues(checks))
        (frames, bad), (cframes, cbad) = bdd.drop_bad_boxes(frames), bdd.drop_bad_boxes(cframes)  # listed above
        source = collect.frame_table(table, checks)
        collected, strata = slices.collect(source, cfg.collect_total, cfg.collect_min_floor, cfg.seed)
        confirm, dropped = collect.confirm_candidates(collect.frame_table(ctable, checks), source)
        label_files = [p for _, p in paths + cpaths]
        inputs = collect.input_table(root, cfg.image_sets, label_files, checks)
        collected, ingested = collected.assign(origin="labels"), {"ingested": 0, "ingested_joined": 0}
        if collect.check_pool_sources(cfg.pool_sources, cfg.ingest_dir):  # unlabelled frames: mining pool only
            rows, ing_inputs = collect.ingested_frames(cfg.path("ingest_dir"))
            collected, ingested = collect.join_ingested(collected, rows, source, confirm)
            inputs = pd.concat([inputs, ing_inputs], ignore_index=True)
        label_sha = collect.label_file_hashes(inputs, root, label_files)
        summary = collect.validation_summary(report_, len(index), have, total, checks, empty + cempty, label_sha,
                                             synthetic=bool(cfg.synthetic), boxes_left_out=bad + cbad)
        with sec.writer() as w:
            w.write_df("frames.csv", collected)
            bdd.write_bdd_json(collect.first_frames(frames, set(collected["name"])), w.path("gt_collected.json"))
            w.write_df("strata.csv", strata)
            w.write_df("confirm_frames.csv", confirm)
            bdd.write_bdd_json(collect.first_frames(cframes, set(confirm["name"])), w.path("gt_confirm.json"))
            w.write_json("confirm_dropped.json", dropped)
            w.write_json("ingested.json", ingested)
            w.write_df("slice_index.csv", slices.slice_index(collected))
            w.write_df("validation_issues.csv", report_.issues)
            w.record_inputs(inputs, label_files=label_sha)
            w.write_json("validation.json", summary)
            w.counts.update({"labelled": total, "with_image": have, "collected": len(collected),
                             "validation_issues": len(report_.issues), "boxes_left_out": bad + cbad,
                             "unreadable_images": len(unreadable),
                             "confirm_candidates": len(confirm), "ingested_joined": ingested["ingested_joined"]})
        print(f"§1 done in {time.time() - t0:.1f} s")
    return Result(1, sec.dir, {
        "frames": sec.read_df("frames.csv"), "strata": sec.read_df("strata.csv"),
        "slice_index": sec.read_df("slice_index.csv"), "validation_issues": sec.read_df("validation_issues.csv"),
    }, sec.load_json("validation.json"))


# ----------------------------------------------------------------------------- §2
def _executor(cfg: Config) -> executors.Executor:
    """Where the per-frame stages run (``executor``, ``ray_*`` keys): results do not depend on it."""
    return executors.Executor(str(cfg.executor), address=cfg.ray_address, workers=int(cfg.ray_workers),
                              cpus_per_actor=float(cfg.ray_cpus_per_actor),
                              gpus_per_actor=float(cfg.ray_gpus_per_actor), max_restarts=int(cfg.ray_max_restarts))


def _embedder(cfg: Config) -> embed.Embedder:
    """The profile's embedder (``embed_*`` keys)."""
    return embed.get_embedder(str(cfg.embed_model), device=str(cfg.device), imgsz=int(cfg.embed_imgsz),
                              clip_arch=str(cfg.embed_clip_arch), clip_weights=cfg.embed_clip_weights,
                              dinov2_dir=cfg.embed_dinov2_dir, backend=str(cfg.infer_backend),
                              precision=str(cfg.infer_precision))


def _embeddings(cfg: Config, frames: pd.DataFrame) -> tuple[Any, list[str], Any]:
    """(L2-normalised (N, D) memmap, names, embedder) for ``frames``, cached under outputs/.cache."""
    emb_model = _embedder(cfg)
    arr, names = embed.embed_frames(emb_model, list(frames["image_path"]), list(frames["name"]),
                                    cfg.out / ".cache" / "embeddings", batch_size=int(cfg.embed_batch),
                                    workers=int(cfg.workers), dtype=str(cfg.embed_dtype), executor=_executor(cfg))
    return arr, names, emb_model


def s2_curate(cfg: Config) -> Result:
    """Embed every collected frame; slice index, imbalance stats, distribution figures, embedding map.

    Artifacts: ``02_curate/`` slice_index.csv, imbalance.json, embedding_map.csv,
    embeddings.json (which cache entry); figures slice_distribution.png,
    slice_long_tail.png, embedding_map.png.
    """
    sec = Section(cfg, 2)
    if needs_run(sec):
        frames = artifacts.read_df(cfg.out, 1, "frames.csv")
        emb, names, model = _embeddings(cfg, frames)
        res = curate.curate(frames, emb, names, embedder_name=model.name, small_slice=int(cfg.curate_small_slice),
                            map_method=str(cfg.curate_map_method), map_points=int(cfg.curate_map_points),
                            seed=int(cfg.seed), synthetic=bool(cfg.synthetic))
        with sec.writer() as w:
            curate.write_artifacts(res, w)
            w.write_json("embeddings.json", {**embed.load_meta(emb), "path": str(Path(emb.filename).relative_to(cfg.out))})
            w.add_external(emb.filename)
            w.counts.update({"embedded": len(names), "dim": int(emb.shape[1]), "slices": len(res.index)})
    return Result(2, sec.dir, {"slice_index": sec.read_df("slice_index.csv")},
                  {"imbalance": sec.load_json("imbalance.json"), "embeddings": sec.load_json("embeddings.json")})


# ----------------------------------------------------------------------------- §3
def s3_pools(cfg: Config) -> Result:
    """Split collected frames into train / eval / mining pool by drive group; export YOLO.

    Ingested frames (no labels) are pool-only: mining pool, or holdout when they share a drive
    with eval; gt_pool.json holds only the pool frames that have ground truth.
    Artifacts (``03_pools/``): pools.csv, pool_summary.csv, eval_slices.csv,
    gt_{train,eval,pool}.json, yolo/ (data.yaml, images -> links, labels).
    """
    sec = Section(cfg, 3)
    if needs_run(sec):
        frames = artifacts.read_df(cfg.out, 1, "frames.csv")
        confirm_n = artifacts.read_df(cfg.out, 1, "confirm_frames.csv")["slice"].value_counts().to_dict()
        pools = slices.make_pools(frames, cfg.pool_train_size, cfg.pool_eval_size, cfg.pool_eval_max_slices,
                                  cfg.pool_golden_size, cfg.seed, confirm_n=confirm_n,
                                  min_confirm=int(cfg.confirm_min_frames), min_pool=int(cfg.eval_min_pool_frames))
        gt = {f["name"]: f for f in artifacts.load_gt(cfg.out, 1, "collected")}
        paths = dict(zip(pools["name"], pools["image_path"]))
        with sec.writer() as w:
            w.write_df("pools.csv", pools)
            w.write_df("pool_summary.csv", slices.pool_summary(pools))
            w.write_df("eval_slices.csv", slices.slice_index(pools[pools["pool"] == "eval"]))
            w.write_df("eligible_slices.csv", slices.eligibility_table(pools, confirm_n, int(cfg.confirm_min_frames),
                                                                       int(cfg.eval_min_pool_frames)))
            for p in ("train", "eval", "pool"):  # ingested pool frames have no ground truth
                bdd.write_bdd_json([gt[n] for n in pools.loc[pools["pool"] == p, "name"] if n in gt], w.path(f"gt_{p}.json"))
            train_frames = [gt[n] for n in pools.loc[pools["pool"] == "train", "name"]]
            # Ultralytics needs a val split; a slice of *train* keeps eval out of training decisions
            _, counts = export_yolo({"train": train_frames, "val": train_frames[:32]}, paths, w.path("yolo"),
                                    artifacts.image_sizes(frames))
            w.write_json("yolo_export.json", dict(counts))
            w.counts.update({p: int((pools["pool"] == p).sum()) for p in ("train", "eval", "pool", "holdout")})
            w.counts["golden"] = int(pools["golden"].sum())
            w.counts["ingested_pool"] = int(((pools["pool"] == "pool") & (pools["origin"] == "ingested")).sum())
    return Result(3, sec.dir, {
        "pools": sec.read_df("pools.csv"), "summary": sec.read_df("pool_summary.csv"),
        "eval_slices": sec.read_df("eval_slices.csv"),
    }, {"yolo_export": sec.load_json("yolo_export.json"), "data_yaml": sec.dir / "yolo" / "data.yaml"})


# ----------------------------------------------------------------------------- §4
def train_spec(cfg: Config) -> train.TrainSpec:
    """The profile's ``train_*`` keys (+ seed, workers, device) as a training spec; §7's arms
    replace seed, epochs and init weights. Values go through unconverted: the spec's
    fingerprint is the one these keys always gave."""
    return train.TrainSpec(
        model=str(cfg.train_model), init_weights=cfg.train_init_weights, epochs=int(cfg.train_epochs),
        imgsz=cfg.train_imgsz, batch=cfg.train_batch, nbs=cfg.train_nbs, optimizer=cfg.train_optimizer,
        lr0=cfg.train_lr0, cos_lr=cfg.train_cos_lr, warmup_epochs=cfg.train_warmup_epochs,
        close_mosaic=cfg.train_close_mosaic, mosaic=cfg.train_mosaic, val=cfg.train_val, plots=bool(cfg.train_plots),
        seed=int(cfg.seed), cpu_bf16=bool(cfg.train_cpu_bf16), cache=str(cfg.train_cache), workers=int(cfg.workers), device=str(cfg.device), synthetic=bool(cfg.synthetic),
        profile=cfg.profile, resume=bool(cfg.train_resume))


def s4_train(cfg: Config) -> Result:
    """Train iter0 on the train pool (Ultralytics). Run in ``runs/iter0``; card in ``04_train/``."""
    sec = Section(cfg, 4)
    if needs_run(sec):
        pools_sec = Section(cfg, 3)
        tracker = _tracker(cfg)  # a tracking server that does not answer fails here, before training
        weights = train.train(train_spec(cfg), pools_sec.dir / "yolo" / "data.yaml", cfg.out / "runs", name="iter0",
                              data_hash=pools_sec.manifest_hash())
        tracker.training(weights.parent.parent)
        card_path = weights.parent.parent / "run_card.json"
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        with sec.writer() as w:
            w.write_json("run_card.json", card)
            w.write_json("weights.json", {"weights": str(Path(weights).resolve().relative_to(cfg.out.resolve()))})
            w.add_external(weights)
            w.counts["epochs"] = int(cfg.train_epochs)
    card = sec.load_json("run_card.json")
    return Result(4, sec.dir, {}, {"run_card": card, "weights": artifacts.iter0_weights(cfg.out)})


# ----------------------------------------------------------------------------- §5 / §8 shared
def _predict(cfg: Config, weights: Path, frames: pd.DataFrame) -> list[dict[str, Any]]:
    """One inference pass over ``frames`` at the eval threshold; BDD frames with scores."""
    return train.predict(weights, list(frames["image_path"]), conf=float(cfg.eval_conf), device=str(cfg.device),
                         executor=_executor(cfg), backend=str(cfg.infer_backend),
                         precision=str(cfg.infer_precision))


def _evaluate(cfg: Config, preds: Any) -> evaluate.EvalResult:
    """Official metric on §3's eval pool for a prediction set (frames or box table)."""
    gt = artifacts.load_gt(cfg.out, 3, "eval")
    return evaluate.evaluate(gt, preds, by=cfg.eval_by, n_boot=int(cfg.eval_n_boot), seed=int(cfg.seed))


def _write_eval(w: Any, res: evaluate.EvalResult, preds: list, prefix: str = "") -> None:
    """Standard evaluation artifacts of one model into a section writer."""
    train.save_predictions(preds, w.path(f"{prefix}predictions.json"), w.path(f"{prefix}predictions.parquet"))
    res.write_json(w.path(f"{prefix}eval.json"))
    w.write_df(f"{prefix}slices.csv", res.slices)
    w.write_df(f"{prefix}per_class.csv", res.per_class.reset_index())
    w.write_df(f"{prefix}per_frame.csv", res.per_frame)


def _eval_pool(cfg: Config) -> pd.DataFrame:
    pools = artifacts.read_df(cfg.out, 3, "pools.csv")
    return pools[pools["pool"] == "eval"]


def _tracker(cfg: Config) -> tracking.Tracker:
    """The profile's MLflow store (``mlflow_tracking_uri``; null = ``<outputs>/mlflow/``); a
    server is checked now. Sections call it only while they compute: a fresh one logs nothing."""
    return tracking.open_tracker(cfg.mlflow_tracking_uri, cfg.out, f"bdd_engine-{cfg.profile}", bool(cfg.synthetic))


def _track_eval(tracker: tracking.Tracker, n: int, turn: int, model: str, weights: Path, res: evaluate.EvalResult,
                worst: str, extra: Mapping[str, float] | None = None, files: Mapping[str, Any] | None = None) -> None:
    """One model's §``n`` evaluation in MLflow: headline metrics and its per-slice/per-class tables."""
    sl = res.slices.set_index("slice")["AP50"]
    tracker.evaluation(f"s{n}" if turn == 1 else f"turn{turn}/s{n}", model, weights,
                       {"AP50": res.AP50, "AP": res.AP, "worst_slice_AP50": float(sl.get(worst, float("nan"))),
                        **(extra or {})}, {"slices.csv": res.slices, "per_class.csv": res.per_class.reset_index()}, files)


def _track_s8(cfg: Config, tracker: tracking.Tracker, turn: int, arms: pd.DataFrame, res0: evaluate.EvalResult,
              results: Mapping[str, evaluate.EvalResult], deltas: pd.DataFrame, headline: Mapping[str, Any],
              runs: pd.DataFrame, worst: str) -> None:
    """§8 in MLflow: iter0's evaluation with the headline (numbers + headline.json, deltas.csv),
    each arm's with its Δ on the worst slice, runs.csv's metrics on the training runs, and
    registry.json's stages as aliases."""
    nums = {f"headline/{k}": float(v) for k, v in headline.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    _track_eval(tracker, 8, turn, "iter0", artifacts.start_weights(cfg.out, turn), res0, worst, nums,
                {"headline.json": dict(headline), "deltas.csv": deltas})
    for r in arms.itertuples(index=False):
        d = deltas.loc[(deltas["run"] == r.run) & (deltas["slice"] == worst), "delta"]
        _track_eval(tracker, 8, turn, r.run, cfg.out / r.weights, results[r.run], worst,
                    {"delta_worst_slice": float(d.iloc[0])} if len(d) else {})
    tracker.runs_table(runs, turn)
    tracker.registry(artifacts.registry(cfg.out, turn), runs, turn)


# ----------------------------------------------------------------------------- §5
def _worst_slice_info(res: evaluate.EvalResult, min_frames: int, confirm_n: Mapping[str, int],
                      min_confirm: int, pool_n: Mapping[str, int] | None = None, min_pool: int = 0) -> dict[str, Any]:
    """worst_slice.json: worst and best ranked slice with CIs, the gap, overall mAP. Only an
    eligible slice (:func:`slices.eligible`: >= ``min_confirm`` confirmation frames, ``confirm_n``,
    and >= ``min_pool`` frames in this turn's unused mining pool, ``pool_n``) may be the worst:
    its Δ must be confirmable on frames that played no part in choosing it, and movable by a real dose."""
    eligible = experiment.confirmable(res.slices, confirm_n, min_confirm, pool_n, min_pool)
    worst = evaluate.worst_slice(eligible, min_frames)
    full = evaluate.ranked_slices(res.slices, min_frames)
    best = full.sort_values("AP50", ascending=False).iloc[0]
    return {"worst_slice": worst["slice"], "n_eval": int(worst["n_frames"]), "AP50": float(worst["AP50"]),
            "ci": [float(worst["ci_lo"]), float(worst["ci_hi"])], "best_slice": best["slice"],
            "best_AP50": float(best["AP50"]), "best_ci": [float(best["ci_lo"]), float(best["ci_hi"])],
            "gap": float(best["AP50"] - worst["AP50"]), "overall_AP50": res.AP50, "overall_AP": res.AP,
            "ranked_slices": int(len(full)), "min_eval_frames": int(min_frames),
            "confirmable_slices": int(len(evaluate.ranked_slices(eligible, min_frames))),
            "min_confirm_frames": int(min_confirm), "confirm_candidates": int(confirm_n.get(worst["slice"], 0)),
            "min_pool_frames": int(min_pool),
            "pool_frames": None if pool_n is None else int(pool_n.get(worst["slice"], 0))}


def _apply_slice_rule(cfg: Config, info: dict[str, Any], res: evaluate.EvalResult, confirm_n: Mapping[str, int],
                      pool_n: Mapping[str, int]) -> dict[str, Any]:
    """``eval_slice_rule``: ``worst`` keeps the lowest-AP eligible slice; ``gain`` targets the eligible slice
    with the steepest learning curve, read from bench_slice_gain.py's result in THIS outputs folder on
    this world (``worst_by_ap`` keeps the other pick). Rerunning the benchmark needs ``run --from 5``."""
    info = {**info, "slice_rule": str(cfg.eval_slice_rule)}
    if cfg.eval_slice_rule == "worst":
        return info
    gain, where = benchstamp.load(cfg.out, str(cfg.profile), "slice_gain")
    world = synth.world_hash(cfg) if cfg.synthetic else None
    if gain is None or where != "this outputs folder" or benchstamp.mismatch(gain.get("stamp"), world, None):
        raise ValueError(f"eval_slice_rule: gain needs {cfg.out / 'benchmarks' / 'slice_gain.json'} measured on this "
                         "world: run `benchmarks/bench_slice_gain.py` on this outputs folder after §4, or use "
                         "eval_slice_rule: worst")
    eligible = slices.eligible(confirm_n, pool_n, int(cfg.confirm_min_frames), int(cfg.eval_min_pool_frames))
    pick = experiment.pick_slice("gain", info["worst_slice"], pd.DataFrame(gain["table"]), eligible)
    row = res.slices[(res.slices["level"] == "full") & (res.slices["slice"] == pick)].iloc[0]
    return {**info, "worst_by_ap": info["worst_slice"], "worst_slice": pick, "n_eval": int(row["n_frames"]),
            "AP50": float(row["AP50"]), "ci": [float(row["ci_lo"]), float(row["ci_hi"])],
            "gap": float(info["best_AP50"] - row["AP50"]), "confirm_candidates": int(confirm_n.get(pick, 0)),
            "pool_frames": int(pool_n.get(pick, 0))}


def s5_eval(cfg: Config, turn: int = 1) -> Result:
    """Predict once on the eval pool; official mAP overall / per class / per slice / per frame; worst slice.

    ``turn`` > 1: the same with the model turn-1's registry promoted, in ``turn<t>/``.

    Artifacts (``05_eval_iter0/``): predictions.json/.parquet, eval.json, slices.csv,
    slices.md, per_class.csv, per_frame.csv, worst_slice.json, confirm.csv (the worst
    slice's confirmation frames, fixed here, scored only in §8), confusion_iter0.csv; figures
    slice_map_iter0.png, worst_slice_failures.png, confusion_iter0.png.
    """
    sec = Section(cfg, 5, turn)
    if needs_run(sec):
        ev = _eval_pool(cfg)
        tracker = _tracker(cfg)
        preds = _predict(cfg, artifacts.start_weights(cfg.out, turn), ev)
        res = _evaluate(cfg, preds)
        cand = artifacts.read_df(cfg.out, 1, "confirm_frames.csv")
        pool_n = _unused_pool(cfg, artifacts.read_df(cfg.out, 3, "pools.csv"), turn)["slice"].value_counts().to_dict()
        confirm_n = cand["slice"].value_counts().to_dict()
        info = _worst_slice_info(res, int(cfg.eval_min_frames), confirm_n, int(cfg.confirm_min_frames), pool_n,
                                 int(cfg.eval_min_pool_frames))
        info = _apply_slice_rule(cfg, info, res, confirm_n, pool_n)
        worst = info["worst_slice"]
        confirm = experiment.confirm_set(cand, worst, int(cfg.confirm_max_frames), int(cfg.seed))
        with sec.writer() as w:
            w.write_df("confirm.csv", confirm)
            _write_eval(w, res, preds)
            w.write_text("slices.md", df_to_markdown(res.slices[res.slices["level"] == "full"]) + "\n")
            w.write_json("worst_slice.json", info)
            w.save_fig("slice_map_iter0.png", figures.slice_figure(
                evaluate.ranked_slices(res.slices, int(cfg.eval_min_frames)), "iter0 mAP@0.5 per slice (eval pool)",
                worst, bool(cfg.synthetic)))
            w.save_fig("worst_slice_failures.png", figures.failures_figure(
                ev.loc[ev["slice"] == worst, ["name", "image_path"]], worst, res.per_frame,
                artifacts.load_gt(cfg.out, 3, "eval"), preds, cfg.eval_vis_conf, bool(cfg.synthetic)))
            _write_confusion(cfg, w, "confusion_iter0", ev, worst, {"iter0": preds})
            w.counts.update({"eval_frames": len(ev), "slices_ranked": info["ranked_slices"]})
            _track_eval(tracker, 5, turn, "iter0", artifacts.start_weights(cfg.out, turn), res, worst)
        figures.close_all()
    return Result(5, sec.dir, {"slices": sec.read_df("slices.csv"), "per_class": sec.read_df("per_class.csv"),
                               "per_frame": sec.read_df("per_frame.csv")}, sec.load_json("worst_slice.json"))


def _write_confusion(cfg: Config, w: Any, file: str, ev: pd.DataFrame, worst: str,
                     models: Mapping[str, list[dict[str, Any]]]) -> None:
    """<file>.csv + figure <file>.png: each model's (name -> eval-pool predictions) per-class
    confusion matrix at the operating threshold on the eval pool and on the worst slice."""
    gt = artifacts.load_gt(cfg.out, 3, "eval")
    ws = ev.loc[ev["slice"] == worst, "name"].tolist()
    conf = float(cfg.eval_vis_conf)
    panels = {}
    for name, preds in models.items():
        panels[f"{name} · eval pool ({len(ev)} frames)"] = confusion.confusion_matrix(gt, preds, conf)
        panels[f"{name} · worst slice {worst} ({len(ws)} frames)"] = confusion.confusion_matrix(gt, preds, conf, names=ws)
    w.write_df(f"{file}.csv", confusion.to_long(panels))
    w.save_fig(f"{file}.png", figures.confusion_figure(panels, conf, bool(cfg.synthetic)))


# ----------------------------------------------------------------------------- §6
def s6_mine(cfg: Config, turn: int = 1) -> Result:
    """Mine the worst slice from the pool: failure prototype → FAISS → top-K; precision vs base rate.

    Also predicts once on the mining pool with iter0 (uncertainty signal, reported per slice).
    Pool frames without attributes (ingested) get predicted ones (``attr_source: predicted``,
    with a confidence), which their slice uses; mined.csv says which frames have ground truth.
    Artifacts (``06_mine/``): mined.csv, mining_precision.csv, mining_summary.json,
    uncertainty_by_slice.csv, pool_predictions.parquet, pool_attributes.csv,
    attribute_accuracy.csv; figures mined_frames_grid.png, attribute_confusion.png.
    """
    sec = Section(cfg, 6, turn)
    if needs_run(sec):
        pools = artifacts.read_df(cfg.out, 3, "pools.csv")
        per_frame = artifacts.read_df(cfg.out, 5, "per_frame.csv", turn)
        worst = artifacts.load_json(cfg.out, 5, "worst_slice.json", turn)["worst_slice"]
        emb, names = artifacts.load_embeddings(cfg.out)
        pool, attr_acc, attr_conf = _pool_attributes(cfg, _unused_pool(cfg, pools, turn), pools, emb, names)
        preds_pool = _predict(cfg, artifacts.start_weights(cfg.out, turn), pool)
        res = mine.mine(per_frame, pools[pools["pool"] == "eval"], pool, emb, names, k=int(cfg.mine_k),
                        strategy=str(cfg.mine_strategy), by=list(cfg.eval_by), fail_ap=float(cfg.mine_fail_ap),
                        fail_recall=float(cfg.mine_fail_recall), hybrid_targeted=float(cfg.mine_hybrid_targeted),
                        ivf_above=int(cfg.mine_ivf_above), ivf_recall=float(cfg.mine_ivf_recall),
                        ivfpq_above=int(cfg.mine_ivfpq_above), min_frames=int(cfg.eval_min_frames), seed=int(cfg.seed), synthetic=bool(cfg.synthetic),
                        max_per_drive=int(cfg.mine_max_per_drive), min_distance=float(cfg.mine_min_distance),
                        preds_pool=preds_pool, worst_slice=worst)
        extra = ["attr_source", *[f"{a}_conf" for a in cfg.eval_by], "origin"]
        res.mined = res.mined.merge(pool[["name", *extra]], on="name", how="left")
        res.counts.update({"mined_with_gt": int((res.mined["origin"] == "labels").sum()),
                           "mined_predicted_attrs": int((res.mined["attr_source"] == "predicted").sum()),
                           "pool_ingested": int((pool["origin"] == "ingested").sum())})
        with sec.writer() as w:
            mine.write_artifacts(res, w, dict(zip(pools["name"], pools["image_path"])))
            train.save_predictions(preds_pool, w.path("pool_predictions.json"), w.path("pool_predictions.parquet"))
            w.write_df("pool_attributes.csv", pool[["name", *cfg.eval_by, "slice", *extra]])
            w.write_df("attribute_accuracy.csv", attr_acc)
            w.save_fig("attribute_confusion.png", attributes.confusion_figure(
                attr_conf, attr_acc, f"Attribute predictor ({cfg.mine_attr_predictor}) on the labelled pool frames "
                f"(drives it never saw){' — SYNTHETIC data' if cfg.synthetic else ''}"))
            w.counts.update({"mined": len(res.mined), "failure_frames": len(res.failure_names), "pool": len(pool)})
        figures.close_all()
    unc = sec.dir / "uncertainty_by_slice.csv"
    return Result(6, sec.dir, {"mined": sec.read_df("mined.csv"), "precision": sec.read_df("mining_precision.csv"),
                               "attributes": sec.read_df("attribute_accuracy.csv"),
                               "uncertainty_by_slice": pd.read_csv(unc) if unc.exists() else pd.DataFrame()},
                  sec.load_json("mining_summary.json"))


def _unused_pool(cfg: Config, pools: pd.DataFrame, turn: int) -> pd.DataFrame:
    """The mining pool's rows no earlier turn mined (turn t mines and draws its random
    control only from frames turns 1..t-1 did not add to train)."""
    used = set()
    for t in range(1, int(turn)):
        used |= set(artifacts.read_df(cfg.out, 6, "mined.csv", t)["name"])
    return pools[(pools["pool"] == "pool") & ~pools["name"].isin(used)]


def _pool_attributes(cfg: Config, pool: pd.DataFrame, pools: pd.DataFrame, emb: Any,
                     names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """The mining pool ``pool`` (rows of pools.csv) with every frame's attributes: labels where
    they exist, else predicted (``mine_attr_predictor``: a probe fitted on train+eval frames, or
    CLIP zero-shot), plus the predictor's accuracy on the labelled pool frames
    (see attributes.pool_attributes)."""
    row = {n: i for i, n in enumerate(names)}
    def X(df: pd.DataFrame) -> np.ndarray:  # frames without an embedding get a zero row (mine skips them)
        out = np.zeros((len(df), emb.shape[1]), np.float32)
        have = [(j, row[n]) for j, n in enumerate(df["name"]) if n in row]
        if have:
            out[[j for j, _ in have]] = np.asarray(emb[[r for _, r in have]], np.float32)
        return out
    fit = pools[pools["pool"].isin(["train", "eval"])]
    method = str(cfg.mine_attr_predictor)
    texts = attributes.clip_embedder_texts(_embedder(cfg), str(cfg.embed_clip_arch)) if method == "zero_shot" else None
    return attributes.pool_attributes(pool, X(pool), fit, X(fit), method=method, text_emb=texts,
                                      attrs=list(cfg.eval_by), seed=int(cfg.seed), executor=_executor(cfg))


# ----------------------------------------------------------------------------- §7
def _label_sets(cfg: Config, w: Any, labeler: Any, sets: Mapping[str, list[str]], gt_pool: Mapping[str, dict],
                paths: Mapping[str, str], train_accept: autolabel.Accept) -> tuple[dict[str, list], dict[str, Any]]:
    """Label each named frame set, write its outputs (labels, quality, router, cost, exports)
    under ``labels_<set>/``; returns (frames each arm adds to train, labeling.json).
    ``train_accept``: the threshold that feeds training (:func:`_train_accept`); its P/R per set
    is labeling.json's ``at_accept``."""
    accept, review = float(cfg.label_accept), float(cfg.label_review)
    extra, labeling = {}, {}
    for which, names in sets.items():
        frames = [gt_pool.get(n) or {"name": n, "attributes": {}, "labels": []} for n in names]  # ingested: no GT
        gt = [f for f in frames if f["name"] in gt_pool]  # label quality only where ground truth exists
        run = labeler.label(frames, [paths[n] for n in names], executor=_executor(cfg))
        t = autolabel.write_outputs(w.path(f"labels_{which}"), run, gt, paths, accept=accept, review=review,
                                    spot_check=int(cfg.label_spot_check), seed=int(cfg.seed), train_accept=train_accept)
        extra[which] = gt if run.is_oracle else autolabel.accepted_frames(run, train_accept)
        q = t["quality"]
        labeling[which] = {"labeler": run.labeler, "frames": run.n_frames, "frames_with_gt": len(gt),
                           "failed": run.n_failed,
                           "labels": run.n_labels, "seconds": round(run.seconds, 2),
                           "train_frames": len(extra[which]),
                           "train_labels": sum(len(f["labels"]) for f in extra[which]),
                           **(_overall_pr(q.all_frames) if q is not None else {})}
        if q is not None:  # classes the labeler found at least once (a TP): the breadth of its labels
            per = q.all_frames[q.all_frames["class"] != "overall"]
            labeling[which]["classes_labelled"] = int((per["tp"] > 0).sum())
        if t.get("quality_accept") is not None:  # P/R of exactly the labels that feed training
            labeling[which]["at_accept"] = autolabel.pr_summary(t["quality_accept"])
    return extra, labeling


def _train_accept(cfg: Config, labeler: Any, pools: pd.DataFrame,
                  paths: Mapping[str, str]) -> tuple[autolabel.Accept, dict[str, Any]]:
    """The threshold that feeds training: ``label_accept`` (rule ``global``), or per-class thresholds
    chosen by F-beta on the EVAL POOL's frames and ground truth (rule ``fbeta``; never the
    confirmation set, never the frames being labelled). Returns (threshold, labeling.json's ``accept``)."""
    accept, rule = float(cfg.label_accept), str(cfg.label_accept_rule)
    if rule not in ("global", "fbeta"):
        raise ConfigError(f"label_accept_rule: {rule!r}; choose global | fbeta")
    if rule == "global" or labeler.is_oracle:
        return accept, {"rule": "global", "accept": accept}
    gt_eval = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "eval")}
    chosen, table, seconds = autolabel.choose_on_eval_pool(
        labeler, pools, gt_eval, paths, default=accept, grid=autolabel.threshold_grid(float(cfg.label_review)),
        beta=float(cfg.label_accept_beta), min_gt=int(cfg.label_accept_min_gt))
    return chosen, {"rule": "fbeta", "accept": accept, "beta": float(cfg.label_accept_beta), "chosen_on": "eval pool",
                    "seconds": round(seconds, 2), "thresholds": chosen,
                    "table": json.loads(table.to_json(orient="records"))}


def _overall_pr(pr: pd.DataFrame) -> dict[str, float]:
    o = pr.set_index("class").loc["overall"]
    return {"precision": float(o["precision"]), "recall": float(o["recall"])}


def retrain_spec(cfg: Config, seed: int, w0: Path) -> train.TrainSpec:
    """An arm's training spec. Warm start: iter0's spec continued from ``w0`` for
    ``retrain_epochs`` with the continuation recipe (``retrain_lr0``, ``retrain_lrf``,
    ``retrain_warmup_epochs``, ``retrain_warmup_bias_lr``: no restart cost, issue 24); else
    iter0's spec and schedule from the pretrained init."""
    if not bool(cfg.retrain_warm_start):
        return replace(train_spec(cfg), seed=int(seed), epochs=int(cfg.train_epochs), init_weights=cfg.train_init_weights)
    return replace(train_spec(cfg), seed=int(seed), epochs=int(cfg.retrain_epochs), init_weights=str(w0),
                   lr0=float(cfg.retrain_lr0), lrf=float(cfg.retrain_lrf),
                   warmup_epochs=int(cfg.retrain_warmup_epochs), warmup_bias_lr=float(cfg.retrain_warmup_bias_lr))


def _train_arm(cfg: Config, runs_dir: Path, run_name: str, seed: int, frames: list, val: list,
               paths: Mapping[str, str], sizes: Mapping[str, tuple[int, int]],
               w0: Path) -> tuple[Path, dict[str, Any], str, int]:
    """Export one arm's YOLO set to ``runs_dir/data/<run>`` and train it in ``runs_dir/<run>``
    (:func:`retrain_spec`); (weights, run card, data hash, epochs)."""
    dhash = experiment.frames_hash(frames)
    data_dir = runs_dir / "data" / run_name
    shutil.rmtree(data_dir, ignore_errors=True)   # never train on a previous set's leftovers
    # Ultralytics needs a val split; the first train frames keep eval out of training
    data_yaml, _ = export_yolo({"train": frames, "val": val}, paths, data_dir, sizes)
    spec = retrain_spec(cfg, seed, w0)
    weights = train.train(spec, data_yaml, runs_dir, name=run_name, data_hash=dhash)
    return weights, json.loads((weights.parent.parent / "run_card.json").read_text()), dhash, int(spec.epochs)



def _reviewed_path(cfg: Config, turn: int) -> Path | None:
    """``flywheel_reviewed``'s entry for turn ``turn``'s review queue (an ``import-labels``
    folder or its labels.json, relative to the project root), or None when not given."""
    entries = list(cfg.flywheel_reviewed)
    if len(entries) < int(turn):
        return None
    p = Path(str(entries[int(turn) - 1])).expanduser()
    p = p if p.is_absolute() else cfg.root / p
    p = p / autolabel.review_import.LABELS if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"flywheel_reviewed[{int(turn) - 1}] = {entries[int(turn) - 1]!r}: no {p} (make it with "
                                f"python -m bdd_engine import-labels --label-studio EXPORT.json --out DIR)")
    return p


def _reviewed_frames(cfg: Config, turn: int) -> tuple[list[dict[str, Any]], Path | None]:
    """(turn ``turn``'s reviewed frames, their file) or ([], None) when not given; a file that
    is not an ``import-labels`` output is a ConfigError naming the entry and the fix."""
    path = _reviewed_path(cfg, turn)
    if path is None:
        return [], None
    try:
        return autolabel.review_import.reviewed_frames(path), path
    except autolabel.ExportError as e:
        entry = list(cfg.flywheel_reviewed)[int(turn) - 1]
        raise ConfigError(f"flywheel_reviewed[{int(turn) - 1}] = {entry!r}: {e}") from None


def preflight(cfg: Config) -> None:
    """What a run reads from the user beyond the profile, checked before any section runs
    (the notebook's first cell, and ``run`` before it starts a kernel): every
    ``flywheel_reviewed`` entry must be an ``import-labels`` output. A missing one, or a raw
    Label Studio export, fails here with one line instead of after turn 2's §5–§6."""
    for turn in range(1, len(cfg.flywheel_reviewed) + 1):
        _reviewed_frames(cfg, turn)


def _carried(cfg: Config, turn: int, pool_names: set[str]) -> tuple[list[dict[str, Any]], dict[str, Any], Path | None]:
    """Frames every arm of turn ``turn`` adds to train because earlier turns labelled them:
    turn t-1's carried frames + its accepted mined auto-labels, with turn t-1's reviewed
    labels (``flywheel_reviewed[t-2]``) replacing the auto-labels of their frames
    (``review_import.next_turn_frames``). Returns (BDD frames sorted by name, counts, the
    reviewed labels file read or None). Turn 1 carries nothing."""
    if int(turn) == 1:
        return [], {}, None
    prev = int(turn) - 1
    before = bdd.load_frames(artifacts.section_dir(cfg.out, 7, prev) / "carried.json") if prev > 1 else []
    labelled = bdd.load_frames(artifacts.section_dir(cfg.out, 7, prev) / "labels_mined" / "labels.json")
    accepted = autolabel.accepted_frames(autolabel.LabelRun("previous turn", labelled), float(cfg.label_accept))
    reviewed, path = _reviewed_frames(cfg, prev)
    unknown = sorted({f["name"] for f in reviewed} - pool_names)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} reviewed frames are not mining-pool frames of this run "
                         f"({unknown[:3]}); import the review queue of turn {prev} of this outputs folder")
    frames, counts = autolabel.next_turn_frames(before + accepted, reviewed)
    return frames, {"from_turn": prev, "earlier_turns_frames": len(before), "reviewed_file": str(path) if path else None,
                    **counts}, path


def s7_autolabel_retrain(cfg: Config, turn: int = 1) -> Result:
    """Auto-label the mined frames (and the random control's), then retrain every arm.

    Arms (identical epochs, hyper-parameters, start point and number of steps: every set is
    the replay set + ``mine_k`` frames, :func:`experiment.arm_frames`): ``iter1`` = mined
    frames with the profile's labeler (auto-accepted labels only); ``random`` = as many
    unused pool frames drawn with the run's seed, same labeler; ``oracle`` = the mined frames
    with their GT; ``random_gt`` = that seed's random frames with their GT; ``continue`` =
    train frames iter0 already saw (no new data).
    Artifacts (``07_autolabel_retrain/``): labels_mined/ and labels_random/ (labels,
    quality, router, cost, exports — :func:`autolabel.write_outputs`), arms.csv,
    random_frames.csv, labeling.json. Runs in ``runs/<run>/``, YOLO sets in ``runs/data/<run>/``.

    ``turn`` > 1 (in ``turn<t>/``): the labeler is the turn's start model (turn t-1's
    promotion) and every arm's train also holds the carried frames (:func:`_carried`:
    earlier turns' accepted auto-labels and reviewed labels), written to carried.json;
    the reviewed labels file is a recorded input (editing it makes this turn stale).
    """
    sec = Section(cfg, 7, turn)
    if needs_run(sec):
        pools = artifacts.read_df(cfg.out, 3, "pools.csv")
        paths = dict(zip(pools["name"], pools["image_path"]))
        sizes = artifacts.image_sizes(artifacts.read_df(cfg.out, 1, "frames.csv"))
        mined = artifacts.read_df(cfg.out, 6, "mined.csv", turn)["name"].tolist()
        gt_pool = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "pool")}
        gt_train = artifacts.load_gt(cfg.out, 3, "train")
        carried, carry_info, reviewed_file = _carried(cfg, turn, set(pools.loc[pools["pool"] == "pool", "name"]))
        w0 = artifacts.start_weights(cfg.out, turn)
        runs = experiment.retrain_runs(cfg.retrain_controls, cfg.retrain_seeds, bool(cfg.retrain_warm_start))
        labeler = autolabel.get_labeler(cfg, start_weights=w0, gt_frames=list(gt_pool.values()))
        k = int(cfg.mine_k)
        train_by = {f["name"]: f for f in gt_train}
        replay_names, filler_names = experiment.replay_split(pools[pools["pool"] == "train"], int(cfg.retrain_replay),
                                                             k, int(cfg.seed))
        replay, filler = [train_by[n] for n in replay_names], [train_by[n] for n in filler_names]
        unused = _unused_pool(cfg, pools, turn)
        random_by_seed = {s: experiment.random_pool_names(unused, len(mined), s)  # one draw per training seed
                          for _, a, s in runs if a in ("random", "random_gt")}
        sets = {"mined": mined}
        if random_by_seed:  # labelled once: a frame's labels do not depend on which draw it came from
            sets["random"] = sorted(set().union(*random_by_seed.values()))
        runs_dir = artifacts.turn_dir(cfg.out, turn) / "runs"
        init = "iter0" if turn == 1 else f"turn{turn - 1} promoted"
        train_accept, accept_info = _train_accept(cfg, labeler, pools, paths)
        tracker = _tracker(cfg)  # before any training: a tracking server that does not answer fails here
        with sec.writer() as w:
            extra, labeling = _label_sets(cfg, w, labeler, sets, gt_pool, paths, train_accept)
            labeling["accept"] = accept_info
            del labeler  # the arms train without the labeler's models beside them (gsam2: GBs)
            train.free_memory()
            mined_gt = [gt_pool[n] for n in mined if n in gt_pool]  # ingested frames have no GT to give
            rows = []
            for run_name, arm, seed in runs:
                add = experiment.arm_additions(arm, extra, mined_gt, random_by_seed.get(seed, []), gt_pool)
                frames = carried + experiment.arm_frames(replay, add, filler, k)
                weights, card, dhash, epochs = _train_arm(cfg, runs_dir, run_name, seed, frames, gt_train[:32], paths,
                                                          sizes, w0)
                tracker.training(weights.parent.parent)
                rows.append({"run": run_name, "arm": arm, "seed": seed,
                             "init": init if cfg.retrain_warm_start else "scratch/config",
                             **({"carried_frames": len(carried)} if turn > 1 else {}),
                             "epochs": epochs, "train_frames": len(frames), "replay_frames": len(replay),
                             "extra_frames": len(add), "filler_frames": k - len(add),
                             "extra_labels": sum(len(f.get("labels") or []) for f in add), "data_hash": dhash,
                             "wall_time_s": card.get("wall_time_s"), "device": card.get("device"),
                             "commit": card.get("git_commit"),
                             "weights": str(Path(weights).resolve().relative_to(cfg.out.resolve()))})
                w.add_external(weights)
            w.write_df("arms.csv", pd.DataFrame(rows))
            w.write_df("random_frames.csv", pd.DataFrame(
                [{"seed": s, "name": n} for s, names in random_by_seed.items() for n in names], columns=["seed", "name"]))
            labeling["replay"] = {"frames": len(replay), "names": replay_names, "filler": filler_names,
                                  "rule": "every arm = replay + its added frames + filler up to mine_k (same steps)"}
            if turn > 1:
                bdd.write_bdd_json(carried, w.path("carried.json"))
                labeling["carried"] = carry_info
            # recorded inputs: the profile's teacher weights (rebuilding them makes §7 stale) and the reviewed labels
            inputs = [input_row(p) for p in autolabel.labeler_input_files(cfg)]
            if reviewed_file is not None:
                inputs.append(input_row(reviewed_file))
            if inputs:
                w.record_inputs(pd.DataFrame(inputs), **({"reviewed_labels": str(reviewed_file)} if reviewed_file else {}))
            w.write_json("labeling.json", labeling)
            w.counts.update({"runs": len(rows), "mined_labelled": len(mined)})
            _label_issues(cfg, w, {"autolabels": extra.get("mined", []), "gt": mined_gt,
                                   "reviewed": _reviewed_frames(cfg, turn - 1)[0] if turn > 1 else []}, paths, gt_train)
    return Result(7, sec.dir, _label_tables(sec.dir), {"labeling": sec.load_json("labeling.json")})


def _label_issues(cfg: Config, w: Any, sets: Mapping[str, list[dict[str, Any]]], paths: Mapping[str, str],
                  train_frames: list[dict[str, Any]]) -> None:
    """Issue 29: score this turn's label sets against a model that never trained on their frames, into
    ``label_issues/<set>.issues.csv`` + ``label_issues/summary.json``: the mined frames' accepted
    auto-labels and ground truth, and the imported reviewed labels, against iter0 (trained on the train
    pool only); the train pool's labels against the profile's teacher .pt when it has one (trained on a
    disjoint world; iter0 trained on them, so without a teacher they are not scored: a K-fold cross-fit
    is not built). Runs after the arms have trained and writes only its own folder."""
    jobs = [(artifacts.iter0_weights(cfg.out), "iter0 (never trained on pool frames)",
             {k: v for k, v in sets.items() if v})]
    teacher = autolabel.labeler_input_files(cfg)
    if teacher and train_frames:
        jobs.append((teacher[0], f"the teacher {teacher[0].name} (trained on a disjoint world)", {"train": train_frames}))
    out = {}
    for weights, about, todo in jobs:
        names = sorted({f["name"] for v in todo.values() for f in v})
        if not names:
            continue
        preds = train.predict(weights, [paths[n] for n in names], conf=0.01, device=str(cfg.device), progress=False)
        for which, frames in todo.items():
            table = labelissues.score_labels(frames, preds)
            labelissues.write_issues(table, w.path(f"label_issues/{which}.issues.csv"))
            out[which] = {"scored_against": about, **labelissues.summary(table)}
    if out:
        w.write_json("label_issues/summary.json", {"synthetic": bool(cfg.synthetic), "sets": out})


def _label_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """§7's tables for the notebook: arms, and quality/router/cost of each labelled set."""
    tables = {"runs": pd.read_csv(folder / "arms.csv", keep_default_na=False, na_values=[""])}
    for which in ("mined", "random"):
        d = folder / f"labels_{which}"
        for key in ("quality_all", "quality_accept", "router", "cost"):
            if (d / f"{key}.csv").exists():
                tables[f"{key}_{which}" if which != "mined" else key] = pd.read_csv(d / f"{key}.csv")
    tables["quality"] = tables.get("quality_all", pd.DataFrame())
    return tables


# ----------------------------------------------------------------------------- §8
def _arm_deltas(cfg: Config, arms: pd.DataFrame, results: Mapping[str, evaluate.EvalResult],
                res0: evaluate.EvalResult, rows_sel: list, deltas: pd.DataFrame) -> pd.DataFrame:
    """Each arm's seed-mean Δ per reported slice, with the paired bootstrap CI of that mean
    (was the first seed's CI beside the mean) and the sd of its seeds' Δ."""
    n_boot, seed = int(cfg.eval_n_boot), int(cfg.seed)
    rows = []
    for arm, g in arms.groupby("arm", sort=False):
        for s in rows_sel:
            d = evaluate.paired_delta(res0, [results[r] for r in g["run"]], s, n_boot, seed)
            per = deltas.loc[(deltas["arm"] == arm) & (deltas["slice"] == d["slice"]), "delta"]
            rows.append({"arm": arm, "slice": d["slice"], "delta": d["delta"],
                         "sd": per.std(ddof=1) if len(per) > 1 else float("nan"), "ci_lo": d["ci"][0],
                         "ci_hi": d["ci"][1], "AP50_1": d["AP50_1"], "p_le0": d["p_le0"]})
    return pd.DataFrame(rows)


def _evaluate_arms(cfg: Config, w: Any, arms: pd.DataFrame, res0: evaluate.EvalResult,
                   rows_sel: list) -> tuple[dict[str, evaluate.EvalResult], pd.DataFrame]:
    """Predict + evaluate every arm on the eval pool; paired Δ vs iter0 per reported slice."""
    ev = _eval_pool(cfg)
    n_boot, seed = int(cfg.eval_n_boot), int(cfg.seed)
    results, deltas = {}, []
    for r in arms.itertuples(index=False):
        preds = _predict(cfg, cfg.out / r.weights, ev)
        res = _evaluate(cfg, preds)
        results[r.run] = res
        _write_eval(w, res, preds, prefix=f"{r.run}_")
        for s in rows_sel:
            d = evaluate.paired_delta(res0, res, s, n_boot, seed)
            deltas.append({"run": r.run, "arm": r.arm, "seed": r.seed, **{k: v for k, v in d.items() if k != "ci"},
                           "ci_lo": d["ci"][0], "ci_hi": d["ci"][1]})
    return results, pd.DataFrame(deltas)


def _confirm(cfg: Config, w: Any, arms: pd.DataFrame, turn: int) -> dict[str, Any]:
    """Score iter0 and every arm on §5's confirmation set (the worst slice's held-out
    frames); Δ per arm and the contrasts with hierarchical-bootstrap CIs (confirm.json)."""
    weights = {"iter0": artifacts.start_weights(cfg.out, turn), **{r.run: cfg.out / r.weights for r in arms.itertuples()}}
    point, boot, rows, conf = confirm_scores(cfg, weights, turn, lambda run, preds: w.write_df(
        f"confirm/{run}_predictions.parquet", bdd.boxes_table(preds)))
    table = pd.DataFrame(rows).merge(arms[["run", "arm", "seed"]], on="run", how="left").fillna({"arm": "iter0"})
    w.write_df("confirm_runs.csv", table)
    out = {"slice": str(conf["slice"].iloc[0]), "n_frames": len(conf), "iter0": point["iter0"],
           **experiment.hierarchical_deltas(point, boot, arms, int(cfg.seed))}
    w.write_json("confirm.json", out)
    return out


def confirm_scores(cfg: Config, weights: Mapping[str, Path], turn: int = 1,
                   keep: Any = None) -> tuple[dict[str, float], dict[str, np.ndarray], list[dict], pd.DataFrame]:
    """Score each model (``weights``: run -> .pt) on §5's confirmation set: (point mAP@0.5,
    the (B,) mAP@0.5 of the same B frame resamples for every run — paired over frames, as
    :func:`experiment.hierarchical_deltas` needs —, one row per run, the confirmation table).
    ``keep(run, predictions)`` is called per run (§8 saves them)."""
    conf = artifacts.read_df(cfg.out, 5, "confirm.csv", turn)
    gt_by = {f["name"]: f for f in artifacts.load_gt(cfg.out, 1, "confirm")}
    gt = [gt_by[n] for n in conf["name"]]
    n_boot, seed = int(cfg.eval_n_boot), int(cfg.seed)
    frames_w = evaluate.resample_weights(len(gt), n_boot, np.random.default_rng([seed, 23]))
    point, boot, rows = {}, {}, []
    for run, wts in weights.items():
        preds = _predict(cfg, wts, conf)
        res = evaluate.evaluate(gt, preds, by=cfg.eval_by, n_boot=0, seed=seed)
        point[run], boot[run] = res.AP50, evaluate.boot_map50(res.cache, np.arange(len(gt)), frames_w)
        if keep is not None:
            keep(run, preds)
        rows.append({"run": run, "AP50": res.AP50, "AP": res.AP})
    return point, boot, rows, conf


def _write_runs(cfg: Config, w: Any, runs: pd.DataFrame, per_class: Mapping[str, pd.DataFrame],
                golden: Mapping[str, Any], turn: int) -> None:
    """runs/runs.csv + runs.md (one row per training run) and runs/registry.json, whose promotion
    gates read ``per_class`` (run -> EvalResult.per_class, iter0 included) and this run's golden-QA entry."""
    runs_dir = artifacts.turn_dir(cfg.out, turn) / "runs"
    for p, write in ((runs_dir / "runs.csv", lambda p: runs.to_csv(p, index=False)),
                     (runs_dir / "runs.md", lambda p: p.write_text(df_to_markdown(runs) + "\n"))):
        with atomic_path(p) as tmp:
            write(tmp)
        w.add_external(p)
    atomic_write_json(runs_dir / "registry.json", experiment.registry(
        runs, float(cfg.report_promote_tol), per_class, golden,
        safety_tol=float(cfg.report_safety_recall_tol), waive_drift=bool(cfg.report_waive_drift),
        teacher=_model_labels_next_turn(cfg), recall_target=float(cfg.report_safety_recall),
        map_floor=float(cfg.report_deploy_min_map)))
    w.add_external(runs_dir / "registry.json")


def _failure_report(cfg: Config, w: Any, arms: pd.DataFrame, results: Mapping[str, Any],
                    w5: Mapping[str, Any]) -> tuple[pd.DataFrame, list]:
    """Failure modes + action plan of the candidate next model (the first iter1 run)."""
    ev = _eval_pool(cfg)
    first_iter1 = arms[arms["arm"] == "iter1"].iloc[0]["run"]
    preds1 = bdd.load_frames(w.path(f"{first_iter1}_predictions.json"))
    modes = report.failure_modes(artifacts.load_gt(cfg.out, 3, "eval"), preds1, float(cfg.eval_vis_conf),
                                 dict(zip(ev["name"], ev["slice"])))
    w.write_df("failure_modes.csv", modes)
    plan, actions = report.action_plan(results[first_iter1].per_class.reset_index(), results[first_iter1].slices,
                                       modes, w5, first_iter1, float(cfg.report_safety_recall), bool(cfg.synthetic))
    w.write_text("action_plan.md", plan)
    w.write_json("actions.json", actions)
    return modes, actions


def _model_labels_next_turn(cfg: Config) -> bool:
    """True when the trained model is the next turn's labeler (``teacher`` without a fixed
    ``label_teacher_weights``): only then are a candidate's own golden-set labels its drift gate."""
    return str(cfg.label_labeler) == "teacher" and not cfg.label_teacher_weights


def _golden_run(cfg: Config, pools: pd.DataFrame, arms: pd.DataFrame, turn: int) -> dict[str, Any]:
    """Golden QA entry for this run: GT vs the labeler of this turn (and, for a model
    labeler, the next turn's candidates: each iter1 run as teacher, ``teacher_<run>``, whose
    flags are that run's drift gate in the registry). Turn t > 1 keeps its history in
    ``turn<t>/golden_qa.json``, started from turn t-1's, so drift is also checked turn to turn."""
    gold = pools[pools["golden"]]
    gt_by = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "eval")}
    gt = [gt_by[n] for n in gold["name"]]
    paths = list(gold["image_path"])
    labelled = {}
    name, where = str(cfg.label_labeler), _executor(cfg)
    if name == "teacher" and not _model_labels_next_turn(cfg):  # a fixed, shipped teacher: its own entry
        labelled["teacher"] = autolabel.get_labeler(cfg).label(gt, paths, progress=False, executor=where).frames
    elif name == "teacher":
        cands = arms[arms["arm"] == "iter1"]
        for tag, wts in (("teacher_iter0", artifacts.start_weights(cfg.out, turn)),
                         *((f"teacher_{r}", cfg.out / w) for r, w in zip(cands["run"], cands["weights"]))):
            labelled[tag] = autolabel.get_labeler(cfg, start_weights=wts).label(gt, paths, progress=False,
                                                                                executor=where).frames
    elif name == "gsam2":
        labelled["gsam2"] = autolabel.get_labeler(cfg).label(gt, paths, progress=False, executor=where).frames
    run_id = f"{cfg.profile}-{cfg.hash()}-{Section(cfg, 6, turn).manifest_hash()}"  # config + mined set = one iteration
    history = artifacts.turn_dir(cfg.out, turn) / "golden_qa.json"
    if turn > 1:  # this turn's history starts as the previous turn's (rewritten on every recompute: deterministic)
        atomic_write_json(history, json.loads((artifacts.turn_dir(cfg.out, turn - 1) / "golden_qa.json").read_text()))
    return report.golden_qa(history, run_id, gt, labelled, float(cfg.report_drift_tol), bool(cfg.synthetic))


def _start_card(cfg: Config, turn: int) -> tuple[dict[str, Any], str, str]:
    """(run card, weights relative to outputs, config hash) of the model a turn starts from."""
    if turn == 1:
        return (artifacts.load_json(cfg.out, 4, "run_card.json"),
                artifacts.load_json(cfg.out, 4, "weights.json")["weights"], cfg.section_hash(4))
    wts = artifacts.start_weights(cfg.out, turn)
    return (artifacts.run_card(wts), str(wts.resolve().relative_to(cfg.out.resolve())),
            cfg.section_hash(7, turn - 1))


def _resumed_runs(cfg: Config, card0: Mapping[str, Any], arms: pd.DataFrame) -> list[str]:
    """Runs behind this turn's numbers whose training was interrupted and resumed (``train_resume:
    true``): their numbers differ from an uninterrupted run with the same seed."""
    cards = {"iter0": card0, **{r.run: artifacts.run_card(cfg.out / r.weights) for r in arms.itertuples()}}
    return [run for run, card in cards.items() if card.get("resumed")]


def _learning_curve(cfg: Config, turn: int, headline: Mapping[str, Any], head: pd.DataFrame) -> list[dict[str, Any]]:
    """One :func:`experiment.turn_point` per turn 1..``turn`` (earlier turns from their §8,
    this one from the tables in hand)."""
    points = []
    for t in range(1, int(turn)):
        d = artifacts.section_dir(cfg.out, 8, t)
        points.append(experiment.turn_point(t, json.loads((d / "headline.json").read_text()),
                                            pd.read_csv(d / "headline.csv"), artifacts.registry(cfg.out, t)))
    return points + [experiment.turn_point(turn, headline, head, artifacts.registry(cfg.out, turn))]


def s8_delta(cfg: Config, turn: int = 1) -> Result:
    """Evaluate every §7 arm on the eval pool; paired Δ vs iter0 per slice; runs table,
    registry, golden QA, action plan and the case study.

    Artifacts (``08_delta/``): deltas.csv (every run × slice), headline.csv/.md/.json,
    <run>_eval.json / _slices.csv / _per_class.csv / _per_frame.csv / _predictions.*,
    failure_modes.csv, action_plan.md, golden_qa.json (this run's entry), confusion.csv
    (iter0 and the first iter1 run, eval pool and worst slice; figure confusion.png); outside it:
    runs/runs.csv/.md, runs/registry.json, golden_qa.json (history),
    case_study/case_study_v1.md/.pdf, figures slice_delta.png, confirm_contrast.png,
    learning_curve.png (+ learning_curve.json here: one point per turn so far) and architecture.png.
    ``turn`` > 1: the same for that turn, everything under ``turn<t>/`` (its case study covers
    every turn so far).
    """
    sec = Section(cfg, 8, turn)
    if needs_run(sec):
        w5 = artifacts.load_json(cfg.out, 5, "worst_slice.json", turn)
        worst = w5["worst_slice"]
        res0 = _evaluate(cfg, bdd.load_frames(artifacts.section_dir(cfg.out, 5, turn) / "predictions.json"))
        arms = artifacts.read_df(cfg.out, 7, "arms.csv", turn)
        rows_sel = experiment.report_slices(res0.slices, worst, int(cfg.eval_min_frames), int(cfg.report_top_slices))
        tracker = _tracker(cfg)
        with sec.writer() as w:
            results, deltas = _evaluate_arms(cfg, w, arms, res0, rows_sel)
            w.write_df("deltas.csv", deltas)
            confirm = _confirm(cfg, w, arms, turn)
            agg = _arm_deltas(cfg, arms, results, res0, rows_sel, deltas)
            head = experiment.headline_table(agg, deltas, rows_sel, warm=bool(cfg.retrain_warm_start))
            w.write_df("headline.csv", head)
            w.write_text("headline.md", df_to_markdown(head) + "\n")
            headline = experiment.headline(
                agg, res0, worst, w5["n_eval"], artifacts.load_json(cfg.out, 6, "mining_summary.json", turn),
                artifacts.load_json(cfg.out, 7, "labeling.json", turn), confirm, synthetic=bool(cfg.synthetic),
                seeds=cfg.retrain_seeds, warm_start=bool(cfg.retrain_warm_start), retrain_epochs=int(cfg.retrain_epochs),
                control_tol=float(cfg.control_continue_tol))
            card0, weights0, hash0 = _start_card(cfg, turn)
            headline["resumed_runs"] = _resumed_runs(cfg, card0, arms)
            w.write_json("headline.json", headline)
            w.save_fig("slice_delta.png", figures.delta_figure(head, bool(cfg.synthetic)))
            w.save_fig("confirm_contrast.png", figures.confirm_figure(confirm, bool(cfg.synthetic)))
            runs = experiment.runs_table(card0, weights0, int(cfg.seed), (hash0, cfg.section_hash(7, turn)), arms, res0,
                                         results, worst)
            entry = _golden_run(cfg, artifacts.read_df(cfg.out, 3, "pools.csv"), arms, turn)  # before the registry: drift gate
            _write_runs(cfg, w, runs, {"iter0": res0.per_class, **{k: r.per_class for k, r in results.items()}}, entry,
                        turn)
            modes, actions = _failure_report(cfg, w, arms, results, w5)
            it1 = arms[arms["arm"] == "iter1"].iloc[0]["run"]  # the run the failure report reads
            _write_confusion(cfg, w, "confusion", _eval_pool(cfg), worst, {
                "iter0": bdd.load_frames(artifacts.section_dir(cfg.out, 5, turn) / "predictions.json"),
                it1: bdd.load_frames(w.path(f"{it1}_predictions.json"))})
            w.write_json("golden_qa.json", entry)
            w.add_external(artifacts.turn_dir(cfg.out, turn) / "golden_qa.json")
            curve = _learning_curve(cfg, turn, headline, head)
            w.write_json("learning_curve.json", curve)
            w.save_fig("learning_curve.png", figures.learning_curve(curve, bool(cfg.synthetic)))
            w.save_fig("architecture.png", report.architecture_figure(casestudy.flowchart()))
            figures.close_all()
            config_table = experiment.config_table(
                runs, {"iter0": card0, **{r.run: artifacts.run_card(cfg.out / r.weights) for r in arms.itertuples()}},
                {"iter0": res0, **results})
            md_path, pdf_path = casestudy.write(cfg, w, headline=headline, head=head, runs=runs, actions=actions,
                                                golden=entry, modes=modes, turn=turn, curve=curve,
                                                config_table=config_table)
            w.add_external(md_path)
            w.add_external(pdf_path)
            w.counts.update({"runs_evaluated": len(results), "slices_reported": len(rows_sel)})
            _track_s8(cfg, tracker, turn, arms, res0, results, deltas, headline, runs, worst)
        figures.close_all()
    info = sec.load_json("headline.json")
    base = artifacts.turn_dir(cfg.out, turn)
    return Result(8, sec.dir, {"headline": sec.read_df("headline.csv"), "runs": pd.read_csv(base / "runs" / "runs.csv"),
                               "learning_curve": pd.DataFrame(sec.load_json("learning_curve.json"))},
                  {"verdict": info["verdict"], "headline": info, "turn": turn,
                   "case_study": base / "case_study" / "case_study_v1.md"})


# ----------------------------------------------------------------------------- turns
def more_turns(cfg: Config) -> list[Result]:
    """Turns 2..``flywheel_turns`` of §5–§8 (each in ``outputs/turn<t>/``, each from the
    model the previous turn's registry promoted); the §8 Result of every turn run. Turn 1
    is the notebook's §5–§8 above; with ``flywheel_turns: 1`` this does nothing."""
    out = []
    for t in range(2, int(cfg.flywheel_turns) + 1):
        t0 = time.time()
        s5_eval(cfg, t)
        s6_mine(cfg, t)
        s7_autolabel_retrain(cfg, t)
        out.append(s8_delta(cfg, t))
        print(f"§5–§8 turn {t}: done in {time.time() - t0:.1f} s ({artifacts.turn_dir(cfg.out, t)})")
    return out
