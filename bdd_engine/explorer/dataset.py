"""The persistent FiftyOne dataset of a profile, built from §1's tables.

One sample per frame, keyed by its unique ``name`` (an index); the ground truth in
``ground_truth`` as relative [x, y, w, h] Detections (see :mod:`.boxes`). What later
sections add (embeddings, predictions, tags, views) lives in :mod:`.enrich`; keeping the
dataset in step with the checkpoint folders is :mod:`.sync`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from bdd_engine.bdd import SLICE_ATTRS
from bdd_engine.env import PROJECT_ROOT
from bdd_engine.explorer.boxes import boxes_by_name, detections
from bdd_engine.explorer.db import connect_for, db_location
from bdd_engine.explorer.errors import ExplorerError
from bdd_engine.geometry import image_size

log = logging.getLogger(__name__)

GT_FIELD = "ground_truth"
FRAME_FIELDS = ("name", "split", "weather", "timeofday", "scene", "slice", "video", "group", "origin")


def dataset_name(cfg: Mapping[str, Any]) -> str:
    """Persistent dataset name: the profile's ``fiftyone_dataset``, plus a short hash of the
    outputs folder when it is not the project's ``outputs/``. Runs into different outputs
    folders share one database but never one dataset, so they cannot rebuild each other's."""
    name = str(cfg["fiftyone_dataset"])
    out = Path(os.path.expanduser(str(cfg["outputs_dir"])))
    out = (out if out.is_absolute() else PROJECT_ROOT / out).resolve()
    if out == (PROJECT_ROOT / "outputs").resolve():
        return name
    return f"{name}-{hashlib.sha256(str(out).encode()).hexdigest()[:8]}"


def ids_by_name(ds) -> dict[str, str]:
    """Frame name → sample id."""
    names, ids = ds.values(["name", "id"])
    return dict(zip(names, ids))


def aligned_view(ds, names: Sequence[str]):
    """View of ``names`` in exactly that order (ValueError for unknown names)."""
    ids = ids_by_name(ds)
    missing = [n for n in names if n not in ids]
    if missing:
        raise ValueError(f"{len(missing)} name(s) not in dataset {ds.name!r}, e.g. {missing[:3]}")
    return ds.select([ids[n] for n in names], ordered=True)


def pool_map(frames_df: pd.DataFrame, pools: Mapping[str, Iterable[str]] | None) -> dict[str, list[str]]:
    """name → pool tags, from optional ``pool``/``golden`` columns and/or a ``pools`` mapping."""
    out: dict[str, list[str]] = {}
    if "pool" in frames_df.columns:
        for name, pool in zip(frames_df["name"], frames_df["pool"]):
            if isinstance(pool, str) and pool:
                out.setdefault(str(name), []).append(pool)
    if "golden" in frames_df.columns:  # slices.make_pools: bool column (CSV: "True"/"False")
        for name, g in zip(frames_df["name"], frames_df["golden"]):
            if g is True or str(g).lower() in ("true", "1"):
                out.setdefault(str(name), []).append("golden")
    for tag, names in (pools or {}).items():
        for name in names:
            tags = out.setdefault(str(name), [])
            if tag not in tags:
                tags.append(tag)
    return out


def _data_dir(cfg: Mapping[str, Any]) -> Path:
    p = Path(str(cfg["data_root"]))
    return p if p.is_absolute() else PROJECT_ROOT / p


def _resolve_image(path: str, cfg: Mapping[str, Any]) -> Path:
    """An image path of frames.csv: absolute, else under the project root or data_root."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    for base in (PROJECT_ROOT, _data_dir(cfg)):
        if (base / p).exists():
            return base / p
    return PROJECT_ROOT / p


def _readable_size(path: Path) -> tuple[int, int] | None:
    """(width, height) in pixels from the header only; None when missing or unreadable."""
    try:
        return image_size(path)
    except (OSError, ValueError):
        return None


def _plain(v: Any) -> Any:
    """numpy/pandas scalars → Python; NaN → None (FiftyOne stores plain BSON)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def _check_tables(frames_df: pd.DataFrame, gt_frames: Sequence[Mapping[str, Any]]) -> None:
    """ValueError for missing columns, duplicate names or frames without ground truth (except
    ingested frames, ``origin`` ingested, which have none by design)."""
    need = {"name", "weather", "timeofday", "scene", "slice", "image_path"}
    if missing := need - set(frames_df.columns):
        raise ValueError(f"frames_df lacks columns {sorted(missing)}")
    if frames_df["name"].duplicated().any():
        dup = frames_df.loc[frames_df["name"].duplicated(), "name"].head(3).tolist()
        raise ValueError(f"frames_df has duplicate names, e.g. {dup}")
    gt_names = {str(f["name"]) for f in gt_frames}
    sources = frames_df["origin"] if "origin" in frames_df.columns else [""] * len(frames_df)
    no_gt = [n for n, src in zip(frames_df["name"], sources) if str(n) not in gt_names and src != "ingested"]
    if no_gt:
        raise ValueError(f"{len(no_gt)} frame(s) have no ground-truth frame, e.g. {no_gt[:3]}")


def _make_samples(cfg: Mapping[str, Any], frames_df: pd.DataFrame, boxes: Mapping[str, pd.DataFrame],
                  pool_tags: Mapping[str, list[str]], synthetic: bool) -> tuple[list, list[str]]:
    """One ``fo.Sample`` per frame whose image is readable; returns (samples, skipped names).

    ``boxes``: name → box-table rows (xyxy pixels), stored as relative [x, y, w, h].
    """
    import fiftyone as fo  # heavy optional dependency (~3 s): imported on use

    samples, skipped = [], []
    for row in tqdm(frames_df.to_dict("records"), desc="explorer: samples", leave=False):
        fname = str(row["name"])
        image = row.get("image_path")
        path = _resolve_image(image, cfg) if isinstance(image, str) and image else None
        size = _readable_size(path) if path is not None else None
        if size is None:
            skipped.append(fname)
            continue
        w, h = size
        tags = [f"{a}:{row[a]}" for a in SLICE_ATTRS if isinstance(row.get(a), str)]
        tags += pool_tags.get(fname, []) + (["synthetic"] if synthetic else [])
        fields = {k: _plain(row.get(k)) for k in FRAME_FIELDS}
        fields["pool"] = ",".join(pool_tags.get(fname, [])) or None
        samples.append(fo.Sample(
            filepath=str(path), tags=tags, metadata=fo.ImageMetadata(width=w, height=h),
            **fields, **{GT_FIELD: detections(boxes.get(fname), w, h, with_score=False)},
        ))
    return samples, skipped


def build_dataset(
    cfg: Mapping[str, Any],
    frames_df: pd.DataFrame,
    gt_frames: Sequence[Mapping[str, Any]],
    pools: Mapping[str, Iterable[str]] | None = None,
    name: str | None = None,
    overwrite: bool = False,
):
    """Build the persistent dataset for a profile from §1's tables.

    Args:
        frames_df: frame table (bdd.frames_table): name, split, weather, timeofday, scene,
            slice, video, group, image_path[, n_boxes, pool, golden] (§3's pools.csv fits).
        gt_frames: BDD frames (det_20 schema, box2d in xyxy pixels) holding the ground
            truth of those names.
        pools: optional {tag: names} (train / eval / pool / golden) → sample tags.
        name: dataset name (default :func:`dataset_name`); overwrite replaces it.

    Samples: ``ground_truth`` Detections (relative [x, y, w, h] in [0, 1], attributes
    crowd/ignore/iscrowd), fields name/split/weather/timeofday/scene/slice/video/group/pool,
    ``metadata`` width/height in pixels, tags ``weather:<v>``, ``timeofday:<v>``,
    ``scene:<v>``, pool tags and ``synthetic`` when the profile is synthetic. Frames whose
    image is missing/unreadable are skipped and counted in ``ds.info["skipped"]``; names
    without ground truth raise ValueError.
    """
    import fiftyone as fo  # heavy optional dependency (~3 s): imported on use

    connect_for(cfg)
    name = name or dataset_name(cfg)
    if fo.dataset_exists(name):
        if not overwrite:
            raise ExplorerError(f"dataset {name!r} exists; pass overwrite=True or use get_dataset()")
        fo.delete_dataset(name)
    _check_tables(frames_df, gt_frames)
    wanted = set(frames_df["name"].astype(str))
    boxes, bad_boxes = boxes_by_name([f for f in gt_frames if str(f["name"]) in wanted])
    synthetic = bool(cfg["synthetic"])
    samples, skipped = _make_samples(cfg, frames_df, boxes, pool_map(frames_df, pools), synthetic)
    if skipped:
        log.warning("explorer: skipped %d frame(s) whose image is missing/unreadable, e.g. %s", len(skipped), skipped[:3])

    ds = fo.Dataset(name)
    ds.add_samples(samples, progress=False)
    ds.persistent = True
    ds.info = {"profile": cfg["profile"], "synthetic": synthetic,
               "skipped": {"missing_image": len(skipped), "examples": skipped[:10], "degenerate_gt_boxes": bad_boxes},
               "n_frames_table": int(len(frames_df))}
    ds.description = ("SYNTHETIC BDD-format world (bdd_engine.synth) — not BDD100K. " if synthetic else "BDD100K. ") + \
        f"bdd_engine profile {cfg['profile']!r}; mirrors outputs/ checkpoints."
    ds.save()
    ds.create_index("name", unique=True)
    return ds
