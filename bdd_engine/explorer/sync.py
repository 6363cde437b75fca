"""The dataset mirrors the checkpoint folders, incrementally per section manifest.

The checkpointed files stay the source of truth (resume never depends on database
state): :func:`sync_from_checkpoints` (re)applies every mirrored section whose manifest
changed since the last sync, and :func:`get_dataset` rebuilds a missing dataset from the
files alone. Section folders, upstream and freshness come from the one section table
(:mod:`bdd_engine.sections`, through :class:`bdd_engine.checkpoint.Section`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import numpy as np

from bdd_engine import bdd
from bdd_engine.artifacts import load_embeddings
from bdd_engine.autolabel import bucket_of
from bdd_engine.checkpoint import Section
from bdd_engine.explorer.dataset import build_dataset, dataset_name, ids_by_name, pool_map
from bdd_engine.explorer.db import connect, db_dir_for
from bdd_engine.explorer.enrich import (add_autolabels, add_embeddings, add_predictions, save_views,
                                       set_predicted_attributes, tag_mined, tag_pools)
from bdd_engine.explorer.errors import ExplorerError
from bdd_engine.sections import SPECS
from bdd_engine.train import filter_conf

log = logging.getLogger(__name__)

# Which sections the explorer mirrors: every section with per-frame data to look at.
# §4 is left out on purpose: it holds a trained model, nothing per frame (its effect on
# frames arrives with §5's predictions). Kept here, not in sections.py, because it is a
# choice of this view, not a property of the section graph.
MIRRORED = frozenset({1, 2, 3, 5, 6, 7, 8})
# In the table's order, which lists upstream sections first (tests/test_explorer.py checks it).
SYNC_SECTIONS: tuple[int, ...] = tuple(n for n in SPECS if n in MIRRORED)
SAMPLES_SECTION = 1  # frames.csv + gt_collected.json: the samples; every other section is downstream of it

POOL_TAGS = ("train", "eval", "pool", "holdout", "golden")  # what §3's pools.csv can tag
WORST_SLICE_SECTION = 5  # worst_slice.json, read for the saved views


def _apply_embeddings(cfg: Any, ds) -> None:
    """§2: similarity index, uniqueness and the 2-D map of the frames in the dataset."""
    emb, names = load_embeddings(cfg.out)
    ids = ids_by_name(ds)
    keep = [i for i, nm in enumerate(names) if nm in ids]
    add_embeddings(ds, [names[i] for i in keep], np.asarray(emb)[keep], seed=int(cfg["seed"]))


def _apply_predictions(cfg: Any, ds, sec: Section, file: str, k: str) -> None:
    """§5/§8: predictions at the operating threshold and the eval run ``eval_<k>``.

    The App is for looking: boxes at the operating threshold (eval_vis_conf), whose
    TP/FP/FN per sample are what a user inspects. FiftyOne's COCO eval of *all*
    0.001-threshold boxes equals ours (tests/test_explorer.py) but takes minutes on the
    demo; the official numbers are in the section's eval.json.
    """
    f = sec.dir / file
    if f.exists():
        preds = filter_conf(bdd.load_frames(f), float(cfg["eval_vis_conf"]))
        add_predictions(ds, preds, f"predictions_{k}", f"eval_{k}", eval_on="eval")


def _apply_autolabels(cfg: Any, ds, sec: Section) -> None:
    """§7: auto-labels of the mined frames, routed with the profile's thresholds."""
    f = sec.dir / "labels_mined" / "labels.json"
    if f.exists():
        acc, rev = float(cfg["label_accept"]), float(cfg["label_review"])
        add_autolabels(ds, bdd.load_frames(f), route=lambda sc: bucket_of(sc, acc, rev))


def _sync_section(cfg: Any, ds, n: int) -> None:
    """Apply section ``n``'s checkpoint to the dataset (idempotent: replaces what it set before)."""
    sec = Section(cfg, n)
    if n == 2:
        _apply_embeddings(cfg, ds)
    elif n == 3:
        tag_pools(ds, pool_map(sec.read_df("pools.csv"), None), POOL_TAGS)
    elif n == 5:
        _apply_predictions(cfg, ds, sec, "predictions.json", "iter0")
    elif n == 8:
        _apply_predictions(cfg, ds, sec, "iter1_predictions.json", "iter1")
    elif n == 6:
        tag_mined(ds, sec.read_df("mined.csv"))
        set_predicted_attributes(ds, sec.read_df("pool_attributes.csv"), list(cfg["eval_by"]))
    elif n == 7:
        _apply_autolabels(cfg, ds, sec)


def sync_from_checkpoints(cfg: Any, name: str | None = None, dataset: Any = None) -> Any:
    """Make the dataset mirror the checkpoint folders — the files stay the truth.

    §1 frames.csv + gt_collected.json build the samples (a changed §1 rebuilds
    everything); then each later section whose manifest hash differs from the one
    recorded in ``ds.info["synced_hashes"]`` is (re)applied: §2 embeddings → similarity
    index, uniqueness, 2-D map; §3 pool tags; §5/§8 predictions at the operating
    threshold + eval runs ``eval_iter0``/``eval_iter1``; §6 ``mined`` tag/rank; §7
    ``autolabels`` with router buckets; then the saved views. Stale or missing sections
    are skipped; ``ds.info["synced"]`` says which (folder → "ok" or the reason).
    """
    s1 = Section(cfg, SAMPLES_SECTION)
    if (why := s1.staleness()) is not None:
        raise ExplorerError(f"cannot build the explorer dataset: §1 checkpoint {s1.dir} is not usable ({why})")
    ds = dataset
    done: dict[str, str | None] = dict(ds.info.get("synced_hashes", {})) if ds is not None else {}
    if ds is None or done.get(s1.name) != s1.manifest_hash():
        gt = bdd.load_frames(s1.dir / "gt_collected.json")
        ds = build_dataset(cfg, s1.read_df("frames.csv"), gt, name=name, overwrite=True)
        done = {s1.name: s1.manifest_hash()}
    synced: dict[str, str] = {s1.name: "ok"}
    for n in SYNC_SECTIONS[1:]:
        sec = Section(cfg, n)
        why = sec.staleness()
        synced[sec.name] = why or "ok"
        h = sec.manifest_hash() if why is None else None
        if done.get(sec.name) == h:
            continue
        if h is not None:
            log.info("explorer: syncing %s", sec.name)
            _sync_section(cfg, ds, n)
        done[sec.name] = h
    s5 = Section(cfg, WORST_SLICE_SECTION)
    worst = s5.load_json("worst_slice.json").get("worst_slice") if synced[s5.name] == "ok" else None
    save_views(ds, worst_slice=worst, eval_key="eval_iter0" if worst else None)
    ds.info["synced"] = synced
    ds.info["synced_hashes"] = done
    ds.save()
    return ds


def get_dataset(cfg: Mapping[str, Any], rebuild: Callable[[], Any] | None = None, name: str | None = None):
    """Load the profile's dataset; if missing, call ``rebuild()`` (default: build it from
    the checkpoints) or raise ExplorerError naming what to run. A dataset built from the
    checkpoints follows them: sections whose manifest changed since are re-applied."""
    import fiftyone as fo  # heavy optional dependency (~3 s): imported on use

    connect(db_dir_for(cfg))
    name = name or dataset_name(cfg)
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        if rebuild is None and hasattr(cfg, "out") and Section(cfg, SAMPLES_SECTION).staleness() is None:
            return sync_from_checkpoints(cfg, name=name, dataset=ds)
        return ds
    if rebuild is None:
        why = Section(cfg, SAMPLES_SECTION).staleness() if hasattr(cfg, "out") else "no outputs folder in the config"
        if why is not None:
            raise ExplorerError(
                f"FiftyOne dataset {name!r} does not exist in {db_dir_for(cfg)} and there is no usable §1 "
                f"checkpoint to rebuild it from ({why}); run the notebook with profile {cfg['profile']!r}"
            )
        rebuild = lambda: sync_from_checkpoints(cfg, name=name)  # noqa: E731
    log.info("explorer: dataset %s missing, rebuilding from checkpoints", name)
    return rebuild()
