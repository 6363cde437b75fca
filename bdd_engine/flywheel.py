"""One function per notebook section. Each is checkpointed and resumable.

``sN_*(cfg)`` returns the section's results, computing them only when the section's
checkpoint is stale (config or upstream changed, artifact missing) or forced
(``BDD_FROM=N`` in the environment forces N onward — what ``run --from N`` sets).
Each section reads earlier sections only from their checkpoint folders, so any
section can run first in a fresh kernel.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from bdd_engine import artifacts, bdd, slices
from bdd_engine.checkpoint import Section, acquire_lock, atomic_path, release_lock


def forced(n: int) -> bool:
    """True when the caller asked to recompute section ``n`` (``BDD_FROM=k`` with k <= n)."""
    f = os.environ.get("BDD_FROM")
    return bool(f) and int(f) <= n


def needs_run(sec: Section) -> bool:
    reason = "forced (BDD_FROM)" if forced(sec.number) else sec.staleness()
    if reason:
        acquire_lock(sec.root)  # one process computes per outputs folder (released by the writer)
        reason = reason if forced(sec.number) else sec.staleness()  # another run may have just written it
    if reason:
        print(f"§{sec.number} {sec.name}: computing — {reason}")
        return True
    release_lock(sec.root)
    print(f"§{sec.number} {sec.name}: fresh checkpoint, loading")
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


# ----------------------------------------------------------------------------- helpers
def label_paths(cfg: Any) -> list[tuple[str, Path]]:
    """(split, path) for each configured label file; split from ``det_<split>.json``."""
    out = []
    for rel in cfg.label_files:
        p = cfg.data_dir / rel
        stem = p.stem
        split = stem.split("_")[-1] if "_" in stem else stem
        split = {"images": "train"}.get(split, split)
        out.append((split, p))
    return out




# ----------------------------------------------------------------------------- §1
def data_root(cfg: Any) -> Path:
    """§1's data root. A synthetic profile's world is generated if missing (synth refuses
    any folder it did not create); a real-data profile refuses one of our synthetic worlds,
    so synthetic frames can never be reported as ``synthetic: false``."""
    from bdd_engine import synth

    if cfg.synthetic:
        return synth.ensure_world(cfg)
    if synth.world_marker(cfg.data_dir) is not None:
        raise ValueError(
            f"{cfg.data_dir} holds a synthetic world made by bdd_engine ({synth.MARKER}), but profile "
            f"{cfg.profile!r} says synthetic: false. Put the real BDD100K download there (README 'Real BDD100K'), "
            f"or use a synthetic profile (demo, tiny).")
    return cfg.data_dir


def load_labels(cfg: Any, index: Mapping[str, Path]) -> tuple[list[dict], pd.DataFrame, list[str]]:
    """Every configured label file: (frames, frame table, label files that hold no frame).

    Raises naming the files when all of them are empty; one empty file is reported."""
    frames, tables, empty = [], [], []
    for split, path in label_paths(cfg):
        fr = bdd.load_frames(path)
        if not fr:
            empty.append(str(path))
            print(f"warning: {path} holds no frames (an empty list); continuing with the other label files")
        frames += fr
        tables.append(bdd.frames_table(fr, index, split=split))
    if not frames:
        raise ValueError(
            f"every label file is empty ({', '.join(empty)}): there is nothing to collect. Re-download the "
            f"det_20 labels (README 'Real BDD100K'){' or regenerate the world: python -m bdd_engine synth --profile ' + cfg.profile + ' --force' if cfg.synthetic else ''}.")
    return frames, pd.concat([t for t in tables if len(t)], ignore_index=True), empty


def check_frame_images(cfg: Any, frames: list[dict], index: Mapping[str, Path]) -> pd.DataFrame:
    """images.check_images for every labelled frame's image (first occurrence of a name),
    cached under outputs/.cache by size + mtime. Adds a ``name`` column."""
    from bdd_engine import images

    named = {}
    for fr in frames:
        if fr["name"] in index and fr["name"] not in named:
            named[fr["name"]] = index[fr["name"]]
    cache_path = cfg.out / ".cache" / "image_checks.parquet"
    old = images.load_cache(cache_path)
    checks = images.check_images(list(named.values()), old, workers=max(2, int(cfg.workers)))
    with atomic_path(cache_path) as tmp:
        images.merge_cache(old, checks).to_parquet(tmp, index=False)
    return checks.assign(name=list(named))


def image_issues(checks: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """Validation rows for unreadable images and for sizes other than the most common one."""
    rows = [(r.name, "", "unreadable image", f"{r.error}: {r.path}") for r in checks[~checks["ok"]].itertuples()]
    ok = checks[checks["ok"]]
    if len(ok):
        wh = ok["width"].astype(str) + "x" + ok["height"].astype(str)
        mode = wh.value_counts().index[0]
        rows += [(n, "", "image size", f"{s} (most frames are {mode}; each frame is normalised by its own size)")
                 for n, s in zip(ok["name"], wh) if s != mode]
    return rows


def input_table(root: Path, image_sets: list[str], label_files: list[Path], checks: pd.DataFrame) -> pd.DataFrame:
    """§1's inputs: label files and images by content hash, image folders by listing."""
    from bdd_engine.checkpoint import input_row

    rows = [input_row(p) for p in label_files if Path(p).exists()]
    rows += [{"path": r.path, "kind": "file", "size": r.size, "mtime_ns": r.mtime_ns, "sha256": r.sha256}
             for r in checks.itertuples() if r.sha256]
    rows += [input_row(d, kind="dir") for s in image_sets for d in sorted((root / s).glob("*")) if d.is_dir()]
    return pd.DataFrame(rows)


def s1_collect(cfg: Any) -> Result:
    """Load BDD labels (or the synthetic world), validate labels and images, collect stratified.

    Artifacts (``01_collect/``): frames.csv (collected frame table, with each image's
    width/height in pixels), gt_collected.json, strata.csv, slice_index.csv,
    validation_issues.csv, validation.json, inputs.csv (every input file's content hash:
    editing a label file or an image makes §1 and everything after it stale).
    """
    sec = Section(cfg, 1)
    if needs_run(sec):
        t0 = time.time()
        root = data_root(cfg)
        index = bdd.index_images(root, cfg.image_sets)
        frames, table, empty = load_labels(cfg, index)
        checks = check_frame_images(cfg, frames, index)
        sizes = dict(zip(checks["name"], zip(checks["width"], checks["height"])))
        unreadable = set(checks.loc[~checks["ok"], "name"])
        have, total = bdd.image_coverage(frames, {n: p for n, p in index.items() if n not in unreadable})
        report = bdd.validate(frames, index, image_wh={n: wh for n, wh in sizes.items() if n not in unreadable})
        report.add(image_issues(checks))
        # duplicates: keep the first occurrence (reported in validation), never two rows per name
        table = table.drop_duplicates("name", keep="first")
        table.loc[table["name"].isin(unreadable), "image_path"] = ""  # left out like a missing image
        table["width"] = [int(sizes.get(n, (0, 0))[0]) for n in table["name"]]
        table["height"] = [int(sizes.get(n, (0, 0))[1]) for n in table["name"]]
        collected, strata = slices.collect(table, cfg.collect_total, cfg.collect_min_floor, cfg.seed)
        keep = set(collected["name"])
        seen: set[str] = set()
        gt = []
        for f in frames:
            if f["name"] in keep and f["name"] not in seen:
                seen.add(f["name"])
                gt.append(f)
        label_files = [p for _, p in label_paths(cfg)]
        inputs = input_table(root, cfg.image_sets, label_files, checks)
        label_sha = {str(p.relative_to(root)) if p.is_relative_to(root) else str(p): h
                     for p, h in zip(map(Path, inputs["path"]), inputs["sha256"]) if p in set(label_files)}
        ok = checks[checks["ok"]]
        size_counts = (ok["width"].astype(str) + "x" + ok["height"].astype(str)).value_counts()
        with sec.writer() as w:
            w.write_df("frames.csv", collected)
            bdd.write_bdd_json(gt, w.path("gt_collected.json"))
            w.write_df("strata.csv", strata)
            w.write_df("slice_index.csv", slices.slice_index(collected))
            w.write_df("validation_issues.csv", report.issues)
            w.record_inputs(inputs, label_files=label_sha)
            w.write_json("validation.json", {
                "summary": report.summary(), "counts": report.counts, "n_frames": report.n_frames,
                "n_labels": report.n_labels, "images_indexed": len(index), "frames_with_image": have,
                "frames_labelled": total, "unreadable_images": len(unreadable),
                "image_sizes": {k: int(v) for k, v in size_counts.items()},
                "image_wh": [int(x) for x in size_counts.index[0].split("x")] if len(size_counts) else None,
                "empty_label_files": empty, "label_files_sha256": label_sha, "synthetic": bool(cfg.synthetic),
                "coverage": f"{have} of {total} labelled frames have a readable image on disk",
            })
            w.counts.update({"labelled": total, "with_image": have, "collected": len(collected),
                             "validation_issues": len(report.issues), "unreadable_images": len(unreadable)})
        print(f"§1 done in {time.time() - t0:.1f} s")
    return Result(1, sec.dir, {
        "frames": sec.read_df("frames.csv"), "strata": sec.read_df("strata.csv"),
        "slice_index": sec.read_df("slice_index.csv"), "validation_issues": sec.read_df("validation_issues.csv"),
    }, sec.load_json("validation.json"))




# ----------------------------------------------------------------------------- §3
def s3_pools(cfg: Any) -> Result:
    """Split collected frames into train / eval / mining pool by drive group; export YOLO.

    Artifacts (``03_pools/``): pools.csv, pool_summary.csv, eval_slices.csv,
    gt_{train,eval,pool}.json, yolo/ (data.yaml, images -> links, labels).
    """
    sec = Section(cfg, 3)
    if needs_run(sec):
        from bdd_engine.yolo import export_yolo

        c = Section(cfg, 1)
        frames = c.read_df("frames.csv")
        wh = artifacts.image_sizes(frames)
        pools = slices.make_pools(frames, cfg.pool_train_size, cfg.pool_eval_size, cfg.pool_eval_top_slices,
                                  cfg.pool_golden_size, cfg.seed)
        gt = {f["name"]: f for f in bdd.load_frames(c.dir / "gt_collected.json")}
        paths = dict(zip(pools["name"], pools["image_path"]))
        with sec.writer() as w:
            w.write_df("pools.csv", pools)
            w.write_df("pool_summary.csv", slices.pool_summary(pools))
            ev = pools[pools["pool"] == "eval"]
            w.write_df("eval_slices.csv", slices.slice_index(ev))
            for p in ("train", "eval", "pool"):
                names = pools.loc[pools["pool"] == p, "name"]
                bdd.write_bdd_json([gt[n] for n in names], w.path(f"gt_{p}.json"))
            train = [gt[n] for n in pools.loc[pools["pool"] == "train", "name"]]
            # Ultralytics needs a val split; a slice of *train* keeps eval out of training decisions
            _, counts = export_yolo({"train": train, "val": train[:32]}, paths, w.path("yolo"), wh)
            w.write_json("yolo_export.json", dict(counts))
            w.counts.update({p: int((pools["pool"] == p).sum()) for p in ("train", "eval", "pool", "holdout")})
            w.counts["golden"] = int(pools["golden"].sum())
    return Result(3, sec.dir, {
        "pools": sec.read_df("pools.csv"), "summary": sec.read_df("pool_summary.csv"),
        "eval_slices": sec.read_df("eval_slices.csv"),
    }, {"yolo_export": sec.load_json("yolo_export.json"), "data_yaml": sec.dir / "yolo" / "data.yaml"})


# ----------------------------------------------------------------------------- §2
def embeddings(cfg: Any, frames: pd.DataFrame) -> tuple[Any, list[str], Any]:
    """(L2-normalised (N, D) memmap, names, embedder) for ``frames``, cached under outputs/.cache."""
    from bdd_engine import embed

    emb_model = embed.get_embedder(cfg)
    arr, names = embed.embed_frames(emb_model, list(frames["image_path"]), list(frames["name"]),
                                    cfg.out / ".cache" / "embeddings", batch_size=int(cfg.embed_batch),
                                    workers=int(cfg.workers))
    return arr, names, emb_model


def s2_curate(cfg: Any) -> Result:
    """Embed every collected frame; slice index, imbalance stats, distribution figures, embedding map.

    Artifacts: ``02_curate/`` slice_index.csv, imbalance.json, embedding_map.csv,
    embeddings.json (which cache entry); figures slice_distribution.png,
    slice_long_tail.png, embedding_map.png.
    """
    from bdd_engine import curate, embed

    sec = Section(cfg, 2)
    if needs_run(sec):
        frames = Section(cfg, 1).read_df("frames.csv")
        emb, names, model = embeddings(cfg, frames)
        res = curate.curate(cfg, frames, emb, names, embedder_name=model.name)
        with sec.writer() as w:
            curate.write_artifacts(res, w)
            w.write_json("embeddings.json", {**embed.load_meta(emb), "path": str(Path(emb.filename).relative_to(cfg.out))})
            w.add_external(emb.filename)
            w.counts.update({"embedded": len(names), "dim": int(emb.shape[1]), "slices": len(res.index)})
    return Result(2, sec.dir, {"slice_index": sec.read_df("slice_index.csv")},
                  {"imbalance": sec.load_json("imbalance.json"), "embeddings": sec.load_json("embeddings.json")})




# ----------------------------------------------------------------------------- §4
def s4_train(cfg: Any) -> Result:
    """Train iter0 on the train pool (Ultralytics). Run in ``runs/iter0``; card in ``04_train/``."""
    from bdd_engine import train

    sec = Section(cfg, 4)
    if needs_run(sec):
        pools_sec = Section(cfg, 3)
        weights = train.train(cfg, pools_sec.dir / "yolo" / "data.yaml", cfg.out / "runs", name="iter0",
                              data_hash=pools_sec.manifest_hash())
        card = json.loads((weights.parent.parent / "run_card.json").read_text()) \
            if (weights.parent.parent / "run_card.json").exists() else {}
        with sec.writer() as w:
            w.write_json("run_card.json", card)
            w.write_json("weights.json", {"weights": str(Path(weights).resolve().relative_to(cfg.out.resolve()))})
            w.add_external(weights)
            w.counts["epochs"] = int(cfg.train_epochs)
    card = sec.load_json("run_card.json")
    return Result(4, sec.dir, {}, {"run_card": card, "weights": cfg.out / sec.load_json("weights.json")["weights"]})




# ----------------------------------------------------------------------------- §5 / §8 shared
def synthetic_note(cfg: Any) -> str:
    return " — SYNTHETIC data" if cfg.synthetic else ""


def predict_frames(cfg: Any, weights: Path, frames: pd.DataFrame) -> list[dict[str, Any]]:
    """One inference pass over ``frames`` at the eval threshold; BDD frames with scores."""
    from bdd_engine import train

    return train.predict(weights, list(frames["image_path"]), conf=float(cfg.eval_conf))


def evaluate_on_eval_pool(cfg: Any, preds: Any) -> Any:
    """Official metric on §3's eval pool for a prediction set (frames or box table)."""
    from bdd_engine import evaluate

    gt = artifacts.load_gt(cfg.out, 3, "eval")
    return evaluate.evaluate(gt, preds, by=cfg.eval_by, n_boot=int(cfg.eval_n_boot), seed=int(cfg.seed))


def slice_figure(cfg: Any, slices_df: pd.DataFrame, title: str, worst: str | None) -> Any:
    from bdd_engine import viz

    t = slices_df[(slices_df["level"] == "full") & (slices_df["n_frames"] >= int(cfg.eval_min_frames))]
    t = t.sort_values("AP50", ascending=True, kind="stable")
    labels = [f"{s}  (n={n})" for s, n in zip(t["slice"], t["n_frames"])]
    hl = [lab for lab, s in zip(labels, t["slice"]) if s == worst]
    return viz.ci_bars(labels, t["AP50"], t["ci_lo"], t["ci_hi"], title + synthetic_note(cfg),
                       "mAP@0.5 (bars) with bootstrap 95% CI (whiskers)", highlight=hl)


def failures_figure(cfg: Any, worst: str, per_frame: pd.DataFrame, gt: list, preds: list, n: int = 12) -> Any:
    """GT (green) vs predictions >= eval_vis_conf (red) on the worst slice's weakest frames."""
    from bdd_engine import train, viz

    pools = Section(cfg, 3).read_df("pools.csv")
    in_slice = pools.loc[(pools["pool"] == "eval") & (pools["slice"] == worst), ["name", "image_path"]]
    pf = per_frame.merge(in_slice, on="name").sort_values(["ap50", "recall50", "name"], na_position="last").head(n)
    gtb = bdd.boxes_table(gt)
    pdb = bdd.boxes_table(train.filter_conf(preds, float(cfg.eval_vis_conf)))
    images, caps = [], []
    for r in pf.itertuples(index=False):
        g, p = gtb[gtb["name"] == r.name], pdb[pdb["name"] == r.name]
        boxes = pd.concat([g, p])[["x1", "y1", "x2", "y2"]].values
        colors = [(40, 220, 60)] * len(g) + [(255, 50, 50)] * len(p)
        images.append(viz.draw_boxes(r.image_path, boxes, colors=colors))
        caps.append(f"{r.name[:17]}  AP50={r.ap50:.2f} R={r.recall50:.2f}")
    return viz.thumb_grid(images, caps, ncols=4, thumb_wh=(320, 180), fontsize=7, caption_lines=1,
                          title=f"Worst slice '{worst}': GT green, prediction red (score >= {cfg.eval_vis_conf})"
                                f"{synthetic_note(cfg)}")


def write_eval(w: Any, res: Any, preds: list, prefix: str = "") -> None:
    """Standard evaluation artifacts of one model into a section writer."""
    from bdd_engine import train

    train.save_predictions(preds, w.path(f"{prefix}predictions.json"), w.path(f"{prefix}predictions.parquet"))
    res.write_json(w.path(f"{prefix}eval.json"))
    w.write_df(f"{prefix}slices.csv", res.slices)
    w.write_df(f"{prefix}per_class.csv", res.per_class.reset_index())
    w.write_df(f"{prefix}per_frame.csv", res.per_frame)


# ----------------------------------------------------------------------------- §5
def s5_eval(cfg: Any) -> Result:
    """Predict once on the eval pool; official mAP overall / per class / per slice / per frame; worst slice.

    Artifacts (``05_eval_iter0/``): predictions.json/.parquet, eval.json, slices.csv,
    slices.md, per_class.csv, per_frame.csv, worst_slice.json; figures
    slice_map_iter0.png, worst_slice_failures.png.
    """
    from bdd_engine import evaluate

    sec = Section(cfg, 5)
    if needs_run(sec):
        pools = Section(cfg, 3).read_df("pools.csv")
        ev = pools[pools["pool"] == "eval"]
        preds = predict_frames(cfg, artifacts.iter0_weights(cfg.out), ev)
        res = evaluate_on_eval_pool(cfg, preds)
        worst = evaluate.worst_slice(res.slices, int(cfg.eval_min_frames))
        full = res.slices[(res.slices["level"] == "full") & (res.slices["n_frames"] >= int(cfg.eval_min_frames))]
        best = full.sort_values("AP50", ascending=False).iloc[0]
        info = {"worst_slice": worst["slice"], "n_eval": int(worst["n_frames"]), "AP50": float(worst["AP50"]),
                "ci": [float(worst["ci_lo"]), float(worst["ci_hi"])], "best_slice": best["slice"],
                "best_AP50": float(best["AP50"]), "best_ci": [float(best["ci_lo"]), float(best["ci_hi"])],
                "gap": float(best["AP50"] - worst["AP50"]), "overall_AP50": res.AP50, "overall_AP": res.AP,
                "ranked_slices": int(len(full)), "min_eval_frames": int(cfg.eval_min_frames)}
        with sec.writer() as w:
            write_eval(w, res, preds)
            w.write_text("slices.md", res.slices.pipe(lambda d: d[d["level"] == "full"]).pipe(_md) + "\n")
            w.write_json("worst_slice.json", info)
            w.save_fig("slice_map_iter0.png", slice_figure(cfg, res.slices, "iter0 mAP@0.5 per slice (eval pool)", worst["slice"]))
            w.save_fig("worst_slice_failures.png", failures_figure(cfg, worst["slice"], res.per_frame, artifacts.load_gt(cfg.out, 3, "eval"), preds))
            w.counts.update({"eval_frames": len(ev), "slices_ranked": len(full)})
        _close_figs()
    return Result(5, sec.dir, {"slices": sec.read_df("slices.csv"), "per_class": sec.read_df("per_class.csv"),
                               "per_frame": sec.read_df("per_frame.csv")}, sec.load_json("worst_slice.json"))


def _md(df: pd.DataFrame) -> str:
    from bdd_engine.checkpoint import df_to_markdown

    return df_to_markdown(df)


def _close_figs() -> None:
    import matplotlib.pyplot as plt

    plt.close("all")


# ----------------------------------------------------------------------------- notebook helpers
def cfg() -> Any:
    """The run's config: profile from ``$BDD_PROFILE`` (default demo) + ``BDD_<KEY>`` overrides."""
    from bdd_engine.config import load_config

    return load_config()


def banner(cfg: Any) -> None:
    """Title-cell summary: profile, config hash, the synthetic banner, section status."""
    from bdd_engine.checkpoint import status

    if cfg.synthetic:
        print("SYNTHETIC DATA — every number below is measured on a generated BDD100K-format world, "
              "not on BDD100K.")
    print(f"profile {cfg.profile} · config {cfg.hash()} · data {cfg.data_dir} · outputs {cfg.out} · seed {cfg.seed}")
    _display(status(cfg))


def _display(obj: Any) -> None:
    try:
        from IPython.display import display

        display(obj)
    except ImportError:
        print(obj)


def show(cfg: Any, *names: str) -> None:
    """Display figures from outputs/figures (inline in Jupyter, paths when headless)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display

        inline = get_ipython() is not None
    except ImportError:
        inline = False
    for n in names:
        p = cfg.out / "figures" / n
        if not p.exists():
            print(f"(figure not produced: {p})")
        elif inline:
            display(Image(filename=str(p)))
        else:
            print(f"figure: {p}")


CHECKPOINT_NOTES: dict[int, tuple[str, str]] = {
    # section: (what to check by eye, what is safe to delete)
    1: ("validation.json says 0 issues on synthetic data (real BDD: read validation_issues.csv); the coverage line; "
        "strata.csv keeps rare conditions at the floor.",
        "01_collect/ (recomputes in seconds; every later section recomputes after it). Never delete data/."),
    2: ("figures/slice_distribution.png: night ≈ a third, fog nearly absent (BDD's shape); slice_long_tail.png: a long tail; "
        "embedding_map.png: adverse conditions form regions, not noise.",
        "02_curate/ and outputs/.cache/embeddings/ (embeddings are recomputed, ~1 min on the demo)."),
    3: ("pool_summary.csv: train/eval/pool sizes; eval_slices.csv: eval balanced over the top slices; "
        "open a few files under 03_pools/yolo/labels/train to see YOLO lines.",
        "03_pools/ (then §4 onward recompute: training is the expensive part)."),
    4: ("runs/iter0/results.csv: the loss goes down; run_card.json: device, wall time, data hash.",
        "runs/iter0/weights/epoch*.pt if any; deleting 04_train/ or runs/iter0 retrains iter0."),
    5: ("figures/slice_map_iter0.png: the worst slice is an adverse condition and its CI is wide; "
        "worst_slice_failures.png: green GT boxes without red predictions are the misses.",
        "05_eval_iter0/ (re-predicts in seconds)."),
    6: ("figures/mined_frames_grid.png: mined frames look like the worst slice (captions give their real attributes); "
        "mining.json: precision vs base rate.",
        "06_mine/ (seconds)."),
    7: ("label_quality tables: head classes best, rare classes worst; router bucket precision rises with the threshold; "
        "runs/runs.csv: every arm finished with the same epochs.",
        "runs/<arm>/weights/ except last.pt; deleting 07_autolabel_retrain/ retrains every arm (the longest step)."),
    8: ("08_delta/headline.json and figures/slice_delta.png: the worst-slice Δ beside its CI and the controls; "
        "case_study/case_study_v1.md reads end to end with no placeholders.",
        "08_delta/ and case_study/ (regenerated in seconds from §5–§7)."),
}


def checkpoint_note(cfg: Any, n: int) -> None:
    """What section n saved (from its manifest), what to check by eye, what is safe to delete."""
    sec = Section(cfg, n)
    man = sec.manifest()
    if man is None:
        print(f"§{n}: no checkpoint yet ({sec.dir})")
        return
    arts = man["artifacts"]
    own = [a for a in arts if a.startswith(sec.name + "/")]
    tops = sorted({a.split("/")[1] if a.count("/") > 1 else a.split("/")[-1] for a in own})
    ext = [a for a in arts if not a.startswith(sec.name + "/")]
    print(f"saved in {sec.dir}: {', '.join(tops)}  ({len(own)} files)")
    if ext:
        print("also:", ", ".join(ext))
    print("counts:", man.get("counts", {}))
    check, delete = CHECKPOINT_NOTES[n]
    print("check by eye:", check)
    print("safe to delete:", delete)


def imbalance_table(r2: Result) -> pd.DataFrame:
    s = r2.info["imbalance"]
    rows = [("frames", s["n_frames"]), ("slices", s["n_slices"]),
            ("most common slice", f"{s['most_common_slice']} ({s['most_common_share']:.1%})"),
            (f"slices < {s['small_threshold']} frames", s["n_slices_below_small"]),
            ("rarest slices", "; ".join(f"{r['slice']} ({r['n_frames']})" for r in s["rarest_operational"])),
            ("embedder", f"{r2.info['embeddings']['embedder']} (dim {r2.info['embeddings']['dim']})")]
    return pd.DataFrame(rows, columns=["statistic", "value"])


def run_card_table(r4: Result) -> pd.DataFrame:
    c = r4.info["run_card"]
    keep = ("model", "device", "epochs", "wall_time_s", "commit", "data_hash", "finished")
    rows = [(k, Path(str(c[k])).name if k == "model" else c.get(k)) for k in keep if k in c]
    return pd.DataFrame(rows, columns=["key", "value"])


def worst_slice_table(r5: Result) -> pd.DataFrame:
    i = r5.info
    return pd.DataFrame([
        {"": "worst slice", "slice": i["worst_slice"], "n_eval": i["n_eval"], "mAP@0.5": i["AP50"], "95% CI": _ci(i["ci"])},
        {"": "best slice", "slice": i["best_slice"], "n_eval": None, "mAP@0.5": i["best_AP50"], "95% CI": _ci(i["best_ci"])},
        {"": "overall", "slice": "all eval frames", "n_eval": None, "mAP@0.5": i["overall_AP50"], "95% CI": ""},
    ])


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else "–"


# ----------------------------------------------------------------------------- §6
def s6_mine(cfg: Any) -> Result:
    """Mine the worst slice from the pool: failure prototype → FAISS → top-K; precision vs base rate.

    Also predicts once on the mining pool with iter0 (uncertainty signal, reported per slice).
    Artifacts (``06_mine/``): mined.csv, mining_precision.csv, mining_summary.json,
    uncertainty_by_slice.csv, pool_predictions.parquet; figure mined_frames_grid.png.
    """
    from bdd_engine import mine, train

    sec = Section(cfg, 6)
    if needs_run(sec):
        pools = Section(cfg, 3).read_df("pools.csv")
        ev5 = Section(cfg, 5)
        per_frame = ev5.read_df("per_frame.csv")
        worst = ev5.load_json("worst_slice.json")["worst_slice"]
        emb, names = artifacts.load_embeddings(cfg.out)
        pool = pools[pools["pool"] == "pool"]
        preds_pool = predict_frames(cfg, artifacts.iter0_weights(cfg.out), pool)
        res = mine.mine(cfg, per_frame, pools[pools["pool"] == "eval"], pool, emb, names,
                        preds_pool=preds_pool, worst_slice=worst)
        res.synthetic = bool(cfg.synthetic)
        with sec.writer() as w:
            mine.write_artifacts(res, w, dict(zip(pools["name"], pools["image_path"])))
            train.save_predictions(preds_pool, w.path("pool_predictions.json"), w.path("pool_predictions.parquet"))
            w.counts.update({"mined": len(res.mined), "failure_frames": len(res.failure_names), "pool": len(pool)})
        _close_figs()
    return Result(6, sec.dir, {"mined": sec.read_df("mined.csv"), "precision": sec.read_df("mining_precision.csv")},
                  sec.load_json("mining_summary.json"))


def mining_table(r6: Result) -> pd.DataFrame:
    i = r6.info
    return pd.DataFrame([{"worst slice": i["worst_slice"], "strategy": i["strategy"], "mined": i["k"],
                          "failure frames": i["n_failure_frames"], "precision": i["precision"],
                          "base rate in pool": i["base_rate"], "lift": i["lift"], "index": i["index"]}])


# ----------------------------------------------------------------------------- FiftyOne cells (§2, §6)
def explorer_demo(cfg: Any, n: int) -> pd.DataFrame:
    """The seed's FiftyOne idioms on our dataset, as a table of (idiom, call, result).

    §2: ``count_values`` of each slice attribute, ``match_tags`` for a rare condition,
    ``sort_by_similarity`` from one night frame. §6: ``sort_by_similarity`` on the failure
    prototype (checked against the FAISS mined top-10) and the saved ``mined`` view.
    The dataset is (re)built from the checkpoints when they changed (explorer.get_dataset).
    """
    import numpy as np

    from bdd_engine import explorer

    ds = explorer.get_dataset(cfg)
    rows: list[tuple[str, str, Any]] = [("dataset", f"fo.load_dataset({ds.name!r})", f"{len(ds)} samples")]
    if n == 2:
        for attr in ("weather", "timeofday", "scene"):
            counts = ds.count_values(attr)
            rows.append(("count_values", f"ds.count_values({attr!r})",
                         ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))))
        for tags in (["timeofday:night", "weather:rainy"], ["weather:foggy"]):
            rows.append(("match_tags", f"ds.match_tags({tags}, all=True).count()",
                         ds.match_tags(tags, all=True).count()))
        if "img_sim" in ds.list_brain_runs():
            night = ds.match_tags("timeofday:night").first()
            top = explorer.sort_by_similarity(ds, night.id, k=10)
            share = np.mean([t == "night" for t in top.values("timeofday")])
            rows.append(("sort_by_similarity", f"ds.sort_by_similarity(<night frame {night['name']}>, k=10)",
                         f"{share:.0%} of the 10 nearest frames are night too"))
    elif n == 6:
        s6 = Section(cfg, 6)
        info, mined = s6.load_json("mining_summary.json"), s6.read_df("mined.csv")
        emb, names = artifacts.load_embeddings(cfg.out)
        idx = {nm: i for i, nm in enumerate(names)}
        proto = np.asarray(emb)[[idx[f] for f in info["failure_frames"]]].mean(0)
        top = explorer.sort_by_similarity(ds.match_tags("pool"), proto, k=10).values("name")
        same = top == mined["name"].head(10).tolist()
        rows.append(("sort_by_similarity", "ds.match_tags('pool').sort_by_similarity(prototype, k=10)",
                     f"top-10 {'identical to' if same else 'DIFFERS from'} FAISS mining"
                     + ("" if info["strategy"] == "prototype" else f" (strategy {info['strategy']}: not comparable)")))
        view = ds.load_saved_view("mined")
        rows.append(("saved view", "ds.load_saved_view('mined').count_values('slice')",
                     ", ".join(f"{k}: {v}" for k, v in sorted(view.count_values("slice").items(), key=lambda kv: -kv[1])[:5])))
        rows.append(("match_tags", f"ds.match_tags('mined').match(F('slice') == {info['worst_slice']!r}).count()",
                     f"{int((mined['slice'] == info['worst_slice']).sum()) if 'slice' in mined else 'n/a'} of {len(mined)}"))
    rows.append(("saved views", "ds.list_saved_views()", ", ".join(ds.list_saved_views())))
    rows.append(("App", "python -m bdd_engine app --profile " + str(cfg.profile), "opens these views in a browser"))
    return pd.DataFrame(rows, columns=["idiom", "call", "result"])


# ----------------------------------------------------------------------------- §7
def retrain_runs(cfg: Any) -> list[tuple[str, str, int]]:
    """(run name, arm, seed) for every §7 training run; arm ``iter1`` first.

    One seed → runs are named by arm (``iter1``, ``random``, ...); several seeds →
    ``<arm>_s<seed>``. Warm-starting without the ``continue`` control is refused: extra
    epochs alone move the numbers, so Δ would be uninterpretable without it.
    """
    arms = ["iter1", *[a for a in cfg.retrain_controls if a != "iter1"]]
    unknown = set(arms) - {"iter1", "random", "oracle", "continue"}
    if unknown:
        raise ValueError(f"unknown retrain_controls {sorted(unknown)}; choose from random, oracle, continue")
    if cfg.retrain_warm_start and "continue" not in arms:
        raise ValueError("retrain_warm_start: true needs the `continue` control in retrain_controls "
                         "(extra epochs alone move mAP; without it the Δ cannot be attributed to the data)")
    seeds = [int(s) for s in cfg.retrain_seeds]
    return [(a if len(seeds) == 1 else f"{a}_s{s}", a, s) for a in arms for s in seeds]


def frames_hash(frames: list[dict[str, Any]]) -> str:
    """Content hash of a training set (names + labels): what makes two YOLO sets equal."""
    import hashlib

    payload = json.dumps([[f["name"], f.get("labels") or []] for f in sorted(frames, key=lambda f: f["name"])],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def random_pool_names(cfg: Any, pools: pd.DataFrame, k: int) -> list[str]:
    """The random control's frames: ``k`` pool frames drawn with the run's seed."""
    import numpy as np

    names = sorted(pools.loc[pools["pool"] == "pool", "name"])
    rng = np.random.default_rng(int(cfg.seed))
    return sorted(rng.choice(names, size=min(k, len(names)), replace=False).tolist())


def s7_autolabel_retrain(cfg: Any) -> Result:
    """Auto-label the mined frames (and the random control's), then retrain every arm.

    Arms (identical epochs, hyper-parameters and start point): ``iter1`` = train ∪
    mined frames with the profile's labeler (auto-accepted labels only); ``random`` =
    train ∪ as many random pool frames, same labeler; ``oracle`` = train ∪ mined frames
    with their GT; ``continue`` = train alone (the extra epochs without new data).
    Artifacts (``07_autolabel_retrain/``): labels_mined/ and labels_random/ (labels,
    quality, router, cost, exports — :func:`autolabel.write_outputs`), arms.csv,
    random_frames.csv, labeling.json. Runs in ``runs/<run>/``, YOLO sets in ``runs/data/<run>/``.
    """
    import shutil

    from bdd_engine import autolabel, train
    from bdd_engine.config import Config
    from bdd_engine.yolo import export_yolo

    sec = Section(cfg, 7)
    if needs_run(sec):
        pools = Section(cfg, 3).read_df("pools.csv")
        paths = dict(zip(pools["name"], pools["image_path"]))
        wh = artifacts.image_sizes(Section(cfg, 1).read_df("frames.csv"))
        mined = Section(cfg, 6).read_df("mined.csv")["name"].tolist()
        gt_pool = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "pool")}
        gt_train = artifacts.load_gt(cfg.out, 3, "train")
        w0 = artifacts.iter0_weights(cfg.out)
        runs = retrain_runs(cfg)
        accept, review = float(cfg.label_accept), float(cfg.label_review)
        labeler = autolabel.get_labeler(cfg, teacher_weights=w0, gt_frames=list(gt_pool.values()))
        sets = {"mined": mined}
        if any(a == "random" for _, a, _ in runs):
            sets["random"] = random_pool_names(cfg, pools, len(mined))
        with sec.writer() as w:
            extra, labeling = {}, {}
            for which, names in sets.items():
                frames = [gt_pool[n] for n in names]
                run = labeler.label(frames, [paths[n] for n in names])
                t = autolabel.write_outputs(w.path(f"labels_{which}"), run, frames, paths, accept=accept,
                                            review=review, spot_check=int(cfg.label_spot_check), seed=int(cfg.seed))
                extra[which] = frames if run.is_oracle else autolabel.accepted_frames(run, accept)
                q = t["quality"]
                labeling[which] = {"labeler": run.labeler, "frames": run.n_frames, "failed": run.n_failed,
                                   "labels": run.n_labels, "seconds": round(run.seconds, 2),
                                   "train_frames": len(extra[which]),
                                   "train_labels": sum(len(f["labels"]) for f in extra[which]),
                                   **(_overall_pr(q.all_frames) if q is not None else {})}
            extra["oracle"] = [gt_pool[n] for n in mined]
            extra["continue"] = []
            warm = bool(cfg.retrain_warm_start)
            rows = []
            for run_name, arm, seed in runs:
                add = extra["mined" if arm == "iter1" else arm]
                frames = gt_train + add
                dhash = frames_hash(frames)
                data_dir = cfg.out / "runs" / "data" / run_name
                shutil.rmtree(data_dir, ignore_errors=True)   # never train on a previous set's leftovers
                # Ultralytics needs a val split; the first train frames keep eval out of training
                data_yaml, _ = export_yolo({"train": frames, "val": gt_train[:32]}, paths, data_dir, wh)
                c = Config(cfg)
                c["seed"] = seed
                epochs = int(cfg.retrain_epochs) if warm else int(cfg.train_epochs)
                weights = train.train(c, data_yaml, cfg.out / "runs", init_weights=w0 if warm else None,
                                      epochs=epochs, name=run_name, data_hash=dhash)
                card = json.loads((weights.parent.parent / "run_card.json").read_text())
                rows.append({"run": run_name, "arm": arm, "seed": seed, "init": "iter0" if warm else "scratch/config",
                             "epochs": epochs, "train_frames": len(frames), "extra_frames": len(add),
                             "extra_labels": sum(len(f.get("labels") or []) for f in add), "data_hash": dhash,
                             "wall_time_s": card.get("wall_time_s"), "device": card.get("device"),
                             "commit": card.get("git_commit"),
                             "weights": str(Path(weights).resolve().relative_to(cfg.out.resolve()))})
                w.add_external(weights)
            w.write_df("arms.csv", pd.DataFrame(rows))
            w.write_df("random_frames.csv", pd.DataFrame({"name": sets.get("random", [])}))
            w.write_json("labeling.json", labeling)
            w.counts.update({"runs": len(rows), "mined_labelled": len(mined)})
    arms = sec.read_df("arms.csv")
    tables = {"runs": arms}
    for which in ("mined", "random"):
        d = sec.dir / f"labels_{which}"
        for key in ("quality_all", "router", "cost"):
            if (d / f"{key}.csv").exists():
                tables[f"{key}_{which}" if which != "mined" else key] = pd.read_csv(d / f"{key}.csv")
    tables["quality"] = tables.get("quality_all", pd.DataFrame())
    return Result(7, sec.dir, tables, {"labeling": sec.load_json("labeling.json")})


def _overall_pr(pr: pd.DataFrame) -> dict[str, float]:
    o = pr.set_index("class").loc["overall"]
    return {"precision": float(o["precision"]), "recall": float(o["recall"])}


# ----------------------------------------------------------------------------- §8
def _agg(d: pd.DataFrame) -> pd.Series:
    """Mean Δ over seeds (+ sd when several); the CI is the first seed's paired bootstrap."""
    first = d.sort_values("seed").iloc[0]
    return pd.Series({"delta": d["delta"].mean(), "sd": d["delta"].std(ddof=1) if len(d) > 1 else float("nan"),
                      "ci_lo": first["ci_lo"], "ci_hi": first["ci_hi"], "AP50_1": d["AP50_1"].mean(),
                      "p_le0": first["p_le0"]})


def report_slices(cfg: Any, slices_df: pd.DataFrame, worst: str) -> list[str | None]:
    """The headline table's rows: the worst slice, the top-N ranked slices by eval frames, overall (None)."""
    full = slices_df[(slices_df["level"] == "full") & (slices_df["n_frames"] >= int(cfg.eval_min_frames))]
    top = full[full["slice"] != worst].sort_values(["n_frames", "slice"], ascending=[False, True])
    return [worst, *top["slice"].head(int(cfg.report_top_slices)).tolist(), None]


def s8_delta(cfg: Any) -> Result:
    """Evaluate every §7 arm on the eval pool; paired Δ vs iter0 per slice; runs table,
    registry, golden QA, action plan and the case study.

    Artifacts (``08_delta/``): deltas.csv (every run × slice), headline.csv/.md/.json,
    <run>_eval.json / _slices.csv / _per_class.csv / _per_frame.csv / _predictions.*,
    failure_modes.csv, action_plan.md, golden_qa.json (this run's entry); outside it:
    runs/runs.csv/.md, runs/registry.json, golden_qa.json (history),
    case_study/case_study_v1.md/.pdf, figures slice_delta.png and architecture.png.
    """
    from bdd_engine import evaluate, report

    sec = Section(cfg, 8)
    if needs_run(sec):
        s5, s6, s7 = Section(cfg, 5), Section(cfg, 6), Section(cfg, 7)
        pools = Section(cfg, 3).read_df("pools.csv")
        ev = pools[pools["pool"] == "eval"]
        w5 = s5.load_json("worst_slice.json")
        worst = w5["worst_slice"]
        res0 = evaluate_on_eval_pool(cfg, bdd.load_frames(s5.dir / "predictions.json"))
        arms = s7.read_df("arms.csv")
        rows_sel = report_slices(cfg, res0.slices, worst)
        n_boot, seed = int(cfg.eval_n_boot), int(cfg.seed)
        with sec.writer() as w:
            results, deltas = {}, []
            for r in arms.itertuples(index=False):
                preds = predict_frames(cfg, cfg.out / r.weights, ev)
                res = evaluate_on_eval_pool(cfg, preds)
                results[r.run] = res
                write_eval(w, res, preds, prefix=f"{r.run}_")
                for s in rows_sel:
                    d = evaluate.paired_delta(res0, res, s, n_boot, seed)
                    deltas.append({"run": r.run, "arm": r.arm, "seed": r.seed, **{k: v for k, v in d.items() if k != "ci"},
                                   "ci_lo": d["ci"][0], "ci_hi": d["ci"][1]})
            deltas = pd.DataFrame(deltas)
            w.write_df("deltas.csv", deltas)
            agg = deltas.groupby(["arm", "slice"], sort=False).apply(_agg, include_groups=False).reset_index()
            head = headline_table(agg, deltas, rows_sel, warm=bool(cfg.retrain_warm_start))
            w.write_df("headline.csv", head)
            w.write_text("headline.md", _md(head) + "\n")
            it1 = agg[(agg["arm"] == "iter1")].set_index("slice")
            arm_d = {a: agg[(agg["arm"] == a) & (agg["slice"] == worst)]["delta"] for a in ("random", "oracle", "continue")}
            s6i = s6.load_json("mining_summary.json")
            labeling = s7.load_json("labeling.json")
            headline = {
                "worst_slice": worst, "n_eval": int(w5["n_eval"]),
                "iter0": float(res0.slices.set_index("slice").loc[worst, "AP50"]),
                "iter1": float(it1.loc[worst, "AP50_1"]), "delta": float(it1.loc[worst, "delta"]),
                "delta_ci": [float(it1.loc[worst, "ci_lo"]), float(it1.loc[worst, "ci_hi"])],
                "delta_sd": _num(it1.loc[worst, "sd"]), "p_delta_le0": float(it1.loc[worst, "p_le0"]),
                **{f"{a}_delta": (float(v.iloc[0]) if len(v) else None) for a, v in arm_d.items()},
                "overall_iter0": float(res0.AP50), "overall_iter1": float(it1.loc["__all__", "AP50_1"]),
                "mining_precision": s6i["precision"], "slice_base_rate": s6i["base_rate"],
                "labeler": labeling["mined"]["labeler"], "label_precision": labeling["mined"].get("precision"),
                "label_recall": labeling["mined"].get("recall"), "synthetic": bool(cfg.synthetic),
                "seeds": [int(s) for s in cfg.retrain_seeds], "warm_start": bool(cfg.retrain_warm_start),
                "retrain_epochs": int(cfg.retrain_epochs),
            }
            if not cfg.retrain_warm_start:
                headline["continue_delta"] = None
            headline["verdict"] = verdict(headline)
            w.write_json("headline.json", headline)
            w.save_fig("slice_delta.png", delta_figure(cfg, head))

            # runs table + registry (one row per training run, iter0 included)
            runs = runs_table(cfg, arms, res0, results, worst)
            runs_dir = cfg.out / "runs"
            for p, write in ((runs_dir / "runs.csv", lambda p: runs.to_csv(p, index=False)),
                             (runs_dir / "runs.md", lambda p: p.write_text(_md(runs) + "\n"))):
                from bdd_engine.checkpoint import atomic_path

                with atomic_path(p) as tmp:
                    write(tmp)
                w.add_external(p)
            from bdd_engine.checkpoint import atomic_write_json

            atomic_write_json(runs_dir / "registry.json", registry(runs, float(cfg.report_promote_tol)))
            w.add_external(runs_dir / "registry.json")

            # failure modes + action plan on the iter1 model (the candidate next model)
            gt_eval = artifacts.load_gt(cfg.out, 3, "eval")
            frame_slice = dict(zip(ev["name"], ev["slice"]))
            first_iter1 = arms[arms["arm"] == "iter1"].iloc[0]["run"]
            preds1 = bdd.load_frames(w.path(f"{first_iter1}_predictions.json"))
            modes = report.failure_modes(gt_eval, preds1, float(cfg.eval_vis_conf), frame_slice)
            w.write_df("failure_modes.csv", modes)
            plan, actions = report.action_plan(results[first_iter1].per_class.reset_index(), results[first_iter1].slices,
                                               modes, w5, first_iter1, float(cfg.report_safety_recall), bool(cfg.synthetic))
            w.write_text("action_plan.md", plan)
            w.write_json("actions.json", actions)

            # golden QA: GT vs each labeler on the fixed golden subset, history across runs
            entry = golden_run(cfg, pools, arms)
            w.write_json("golden_qa.json", entry)
            w.add_external(cfg.out / "golden_qa.json")

            from bdd_engine import casestudy

            w.save_fig("architecture.png", report.architecture_figure(casestudy.flowchart()))
            _close_figs()

            md_path, pdf_path = casestudy.write(cfg, w, headline=headline, head=head, runs=runs, actions=actions,
                                                golden=entry, modes=modes)
            w.add_external(md_path)
            w.add_external(pdf_path)
            w.counts.update({"runs_evaluated": len(results), "slices_reported": len(rows_sel)})
        _close_figs()
    head = sec.read_df("headline.csv")
    info = sec.load_json("headline.json")
    return Result(8, sec.dir, {"headline": head, "runs": pd.read_csv(cfg.out / "runs" / "runs.csv")},
                  {"verdict": info["verdict"], "headline": info,
                   "case_study": cfg.out / "case_study" / "case_study_v1.md"})


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
        for arm in ("random", "oracle", "continue"):
            if arm in a.index:
                row[f"{arm}_delta"] = a.loc[arm, "delta"]
        out.append(row)
    return pd.DataFrame(out)


def verdict(h: Mapping[str, Any]) -> str:
    """One sentence on what the headline Δ supports, from the numbers only.

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


def delta_figure(cfg: Any, head: pd.DataFrame) -> Any:
    from bdd_engine import viz

    labels = [f"{s}  (n={n})" for s, n in zip(head["slice"], head["n_eval"])]
    series = [(f"{arm} control", head[f"{arm}_delta"]) for arm in ("random", "oracle", "continue") if f"{arm}_delta" in head]
    return viz.ci_bars(labels, head["delta"], head["ci_lo"], head["ci_hi"],
                       "Δ mAP@0.5 iter1 − iter0 (bars, paired-bootstrap 95% CI) and controls (markers)"
                       + synthetic_note(cfg), "Δ mAP@0.5", highlight=labels[:1], zero_line=True, series=series)


def runs_table(cfg: Any, arms: pd.DataFrame, res0: Any, results: Mapping[str, Any], worst: str) -> pd.DataFrame:
    """One row per training run: arm, status, data hash, config hash, commit, device, duration, mAPs, weights."""
    card0 = Section(cfg, 4).load_json("run_card.json")
    w0 = Section(cfg, 4).load_json("weights.json")["weights"]
    sl = lambda r: float(r.slices.set_index("slice").loc[worst, "AP50"])  # noqa: E731
    rows = [{"run": "iter0", "arm": "iter0", "seed": int(cfg.seed), "status": "finished" if card0.get("finished") else "unknown",
             "data_hash": card0.get("data_hash"), "config_hash": cfg.section_hash(4), "commit": card0.get("git_commit"),
             "device": card0.get("device"), "duration_s": card0.get("wall_time_s"), "epochs": card0.get("epochs"),
             "overall_AP50": float(res0.AP50), "worst_slice_AP50": sl(res0), "weights": w0}]
    for r in arms.itertuples(index=False):
        res = results[r.run]
        rows.append({"run": r.run, "arm": r.arm, "seed": int(r.seed), "status": "finished", "data_hash": r.data_hash,
                     "config_hash": cfg.section_hash(7), "commit": r.commit, "device": r.device,
                     "duration_s": r.wall_time_s, "epochs": r.epochs, "overall_AP50": float(res.AP50),
                     "worst_slice_AP50": sl(res), "weights": r.weights})
    return pd.DataFrame(rows)


def registry(runs: pd.DataFrame, tol: float) -> dict[str, Any]:
    """The promoted model: best worst-slice mAP@0.5 among iter0 and the iter1 runs whose overall
    mAP@0.5 is no worse than iter0's minus ``tol``. Controls are experiments, never promoted."""
    base = runs[runs["arm"] == "iter0"].iloc[0]
    cand = runs[runs["arm"].isin(["iter0", "iter1"])]
    ok = cand[cand["overall_AP50"] >= base["overall_AP50"] - tol]
    best = ok.sort_values(["worst_slice_AP50", "run"], ascending=[False, True]).iloc[0]
    return {"promoted": best["run"], "weights": best["weights"],
            "rule": f"max worst-slice mAP@0.5 among iter0/iter1 with overall mAP@0.5 >= iter0 - {tol}",
            "candidates": cand[["run", "overall_AP50", "worst_slice_AP50"]].to_dict("records"),
            "rejected_for_overall_regression": sorted(set(cand["run"]) - set(ok["run"]))}


def golden_run(cfg: Any, pools: pd.DataFrame, arms: pd.DataFrame) -> dict[str, Any]:
    """Golden QA entry for this run: GT vs the labeler of this turn (and, for a model
    labeler, the next turn's: the iter1 model as teacher)."""
    from bdd_engine import autolabel, report

    gold = pools[pools["golden"]]
    gt_by = {f["name"]: f for f in artifacts.load_gt(cfg.out, 3, "eval")}
    gt = [gt_by[n] for n in gold["name"]]
    paths = list(gold["image_path"])
    labelled = {}
    name = str(cfg.label_labeler)
    if name == "teacher":
        for tag, wts in (("teacher_iter0", artifacts.iter0_weights(cfg.out)),
                         ("teacher_iter1", cfg.out / arms[arms["arm"] == "iter1"].iloc[0]["weights"])):
            labelled[tag] = autolabel.get_labeler(cfg, teacher_weights=wts).label(gt, paths, progress=False).frames
    elif name == "gsam2":
        labelled["gsam2"] = autolabel.get_labeler(cfg).label(gt, paths, progress=False).frames
    run_id = f"{cfg.profile}-{cfg.hash()}-{Section(cfg, 6).manifest_hash()}"  # config + mined set = one iteration
    return report.golden_qa(cfg.out / "golden_qa.json", run_id, gt, labelled, float(cfg.report_drift_tol),
                            bool(cfg.synthetic))
