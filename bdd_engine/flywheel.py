"""One function per notebook section. Each is checkpointed and resumable.

``sN_*(cfg)`` returns the section's results, computing them only when the section's
checkpoint is stale (config or upstream changed, artifact missing) or forced
(``BDD_FROM=N`` in the environment forces N onward — what ``run --from N`` sets).
Each section reads earlier sections only from their checkpoint folders, so any
section can run first in a fresh kernel.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from bdd_engine import bdd, slices
from bdd_engine.checkpoint import Section


def forced(n: int) -> bool:
    """True when the caller asked to recompute section ``n`` (``BDD_FROM=k`` with k <= n)."""
    f = os.environ.get("BDD_FROM")
    return bool(f) and int(f) <= n


def needs_run(sec: Section) -> bool:
    reason = "forced (BDD_FROM)" if forced(sec.number) else sec.staleness()
    if reason:
        print(f"§{sec.number} {sec.name}: computing — {reason}")
        return True
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


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) in pixels, reading only the header."""
    with Image.open(path) as im:
        return im.size


def load_gt(cfg: Any, section: int, which: str) -> list[dict[str, Any]]:
    """Ground-truth BDD frames written by a section (e.g. ``load_gt(cfg, 3, "eval")``)."""
    return bdd.load_frames(Section(cfg, section).dir / f"gt_{which}.json")


# ----------------------------------------------------------------------------- §1
def s1_collect(cfg: Any) -> Result:
    """Load BDD labels (or the synthetic world), validate, index images, collect stratified.

    Artifacts (``01_collect/``): frames.csv (collected frame table), gt_collected.json,
    strata.csv, slice_index.csv, validation_issues.csv, validation.json.
    """
    sec = Section(cfg, 1)
    if needs_run(sec):
        t0 = time.time()
        if cfg.synthetic:
            from bdd_engine import synth

            synth.generate(cfg)
        index = bdd.index_images(cfg.data_dir, cfg.image_sets)
        frames, tables = [], []
        for split, path in label_paths(cfg):
            fr = bdd.load_frames(path)
            frames += fr
            tables.append(bdd.frames_table(fr, index, split=split))
        have, total = bdd.image_coverage(frames, index)
        first = next(iter(index.values()))
        wh = image_size(first)
        report = bdd.validate(frames, index, image_wh=wh)
        table = pd.concat(tables, ignore_index=True)
        # duplicates: keep the first occurrence (reported in validation), never two rows per name
        table = table.drop_duplicates("name", keep="first")
        collected, strata = slices.collect(table, cfg.collect_total, cfg.collect_min_floor, cfg.seed)
        keep = set(collected["name"])
        seen: set[str] = set()
        gt = []
        for f in frames:
            if f["name"] in keep and f["name"] not in seen:
                seen.add(f["name"])
                gt.append(f)
        with sec.writer() as w:
            w.write_df("frames.csv", collected)
            bdd.write_bdd_json(gt, w.path("gt_collected.json"))
            w.write_df("strata.csv", strata)
            w.write_df("slice_index.csv", slices.slice_index(collected))
            w.write_df("validation_issues.csv", report.issues)
            w.write_json("validation.json", {
                "summary": report.summary(), "counts": report.counts, "n_frames": report.n_frames,
                "n_labels": report.n_labels, "images_indexed": len(index), "frames_with_image": have,
                "frames_labelled": total, "image_wh": list(wh), "synthetic": bool(cfg.synthetic),
                "coverage": f"{have} of {total} labelled frames have an image on disk",
            })
            w.counts.update({"labelled": total, "with_image": have, "collected": len(collected),
                             "validation_issues": len(report.issues)})
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
        wh = tuple(c.load_json("validation.json")["image_wh"])
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
