"""The dataset mirrors the checkpoint folders, incrementally per section manifest.

The checkpointed files stay the source of truth (resume never depends on database
state): :func:`sync_from_checkpoints` (re)applies every mirrored section whose manifest
changed since the last sync, and :func:`get_dataset` rebuilds a missing dataset from the
files alone. Section folders, upstream and freshness come from the one section table
(:mod:`bdd_engine.sections`, through :class:`bdd_engine.checkpoint.Section`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from bdd_engine import bdd
from bdd_engine.artifacts import load_embeddings
from bdd_engine.autolabel import bucket_of
from bdd_engine.checkpoint import Section
from bdd_engine.explorer.dataset import build_dataset, dataset_name, ids_by_name, pool_map
from bdd_engine.explorer.db import connect_for, db_location
from bdd_engine.explorer.enrich import (add_autolabels, add_embeddings, add_label_issues, add_predictions, save_views,
                                       set_predicted_attributes, tag_mined, tag_pools)
from bdd_engine.explorer.errors import ExplorerError
from bdd_engine.sections import SPECS, TURN_SECTIONS
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
# Later flywheel turns: only their models are mirrored (an eval run each); the mined tags and
# auto-labels a sample carries stay turn 1's (one field each, no per-turn copies).
TURN_MIRRORED: tuple[int, ...] = (5, 8)


def model_key(turn: int, run: str) -> str:
    """A model's name in the App: its eval run is ``eval_<key>``, its boxes ``predictions_<key>``.
    Turn 1 keeps the run's own name (``iter0``, ``iter1_s42``, ``random_s43``, ...); turn t > 1
    prefixes it (``t2_iter0`` = the model turn 1 promoted, ``t2_iter1_s42``, ...)."""
    return str(run) if int(turn) == 1 else f"t{int(turn)}_{run}"


def _apply_embeddings(cfg: Any, ds) -> None:
    """§2: similarity index, uniqueness and the 2-D map of the frames in the dataset.

    Skipped, with a warning and a note in ``ds.info["similarity_skipped"]``, above
    ``explorer_similarity_max`` frames: FiftyOne's brain runs hold every vector in RAM."""
    emb, names = load_embeddings(cfg.out)
    cap = int(cfg["explorer_similarity_max"])
    if len(names) > cap:
        msg = (f"§2 similarity index, uniqueness and 2-D map skipped: {len(names):,} frames > explorer_similarity_max "
               f"{cap:,} (FiftyOne would load all {len(names):,} vectors into RAM); mining searches the embedding "
               f"file on disk instead (mine_ivfpq_above)")
        log.warning("explorer: %s", msg)
        ds.info["similarity_skipped"] = msg
        return
    ds.info.pop("similarity_skipped", None)
    ids = ids_by_name(ds)
    keep = [i for i, nm in enumerate(names) if nm in ids]
    add_embeddings(ds, [names[i] for i in keep], np.asarray(emb)[keep], seed=int(cfg["seed"]))


def _apply_predictions(cfg: Any, ds, sec: Section, file: str, k: str, about: Mapping[str, Any]) -> None:
    """§5/§8: predictions at the operating threshold and the eval run ``eval_<k>``; what the
    model is (turn, run, arm, seed, file) goes to ``ds.info["models"][k]``.

    The App is for looking: boxes at the operating threshold (eval_vis_conf), whose
    TP/FP/FN per sample are what a user inspects. FiftyOne's COCO eval of *all*
    0.001-threshold boxes equals ours (tests/test_explorer.py) but takes minutes on the
    demo; the official numbers are in the section's eval.json.
    """
    f = sec.dir / file
    if f.exists():
        preds = filter_conf(bdd.load_frames(f), float(cfg["eval_vis_conf"]))
        add_predictions(ds, preds, f"predictions_{k}", f"eval_{k}", eval_on="eval")
        ds.info.setdefault("models", {})[k] = {**about, "eval_key": f"eval_{k}", "file": f.relative_to(sec.root).as_posix()}


def _apply_runs(cfg: Any, ds, sec: Section) -> None:
    """§8 of a turn: an eval run per training run of that turn's arms.csv (every arm, every
    seed), and which of them (or the turn's start model) its registry promoted."""
    arms = Section(cfg, 7, sec.turn).read_df("arms.csv")
    for r in arms.itertuples(index=False):
        _apply_predictions(cfg, ds, sec, f"{r.run}_predictions.json", model_key(sec.turn, r.run),
                           {"turn": sec.turn, "run": str(r.run), "arm": str(r.arm),
                            "seed": None if getattr(r, "seed", None) is None else int(r.seed)})
    reg = sec.base / "runs" / "registry.json"
    if reg.exists():
        promoted = json.loads(reg.read_text())["promoted"]
        ds.info.setdefault("promoted", {})[str(sec.turn)] = model_key(sec.turn, promoted)


def _apply_autolabels(cfg: Any, ds, sec: Section) -> None:
    """§7: auto-labels of the mined frames, routed with the profile's thresholds."""
    f = sec.dir / "labels_mined" / "labels.json"
    if f.exists():
        acc, rev = float(cfg["label_accept"]), float(cfg["label_review"])
        add_autolabels(ds, bdd.load_frames(f), route=lambda sc: bucket_of(sc, acc, rev))


def _apply_label_issues(ds, sec: Section) -> None:
    """§7 ``label_issues/<set>.issues.csv`` (issue 29): flagged rows → the ``label_issues`` field and view."""
    files = sorted((sec.dir / "label_issues").glob("*.issues.csv"))
    if files:
        add_label_issues(ds, pd.concat([pd.read_csv(f, keep_default_na=False).assign(set=f.name.split(".")[0])
                                        for f in files], ignore_index=True))


def _sync_section(cfg: Any, ds, n: int, turn: int = 1) -> None:
    """Apply section ``n`` (of flywheel ``turn``)'s checkpoint to the dataset (idempotent: replaces what it set before)."""
    sec = Section(cfg, n, turn)
    if n == 2:
        _apply_embeddings(cfg, ds)
    elif n == 3:
        tag_pools(ds, pool_map(sec.read_df("pools.csv"), None), POOL_TAGS)
    elif n == 5:
        about = ({"turn": 1, "run": "iter0", "arm": "iter0"} if turn == 1 else
                 {"turn": turn, "run": "iter0", "arm": "iter0", "note": f"the model turn {turn - 1} promoted"})
        _apply_predictions(cfg, ds, sec, "predictions.json", model_key(turn, "iter0"), about)
    elif n == 8:
        _apply_runs(cfg, ds, sec)
    elif n == 6:
        tag_mined(ds, sec.read_df("mined.csv"))
        set_predicted_attributes(ds, sec.read_df("pool_attributes.csv"), list(cfg["eval_by"]))
    elif n == 7:
        _apply_autolabels(cfg, ds, sec)
        _apply_label_issues(ds, sec)


def _mirrored_sections(cfg: Any) -> list[Section]:
    """Every mirrored section after §1: turn 1's, then each later turn's §5 and §8."""
    secs = [Section(cfg, n) for n in SYNC_SECTIONS[1:]]
    return secs + [Section(cfg, n, t) for t in range(2, int(cfg["flywheel_turns"]) + 1)
                   for n in TURN_MIRRORED if n in TURN_SECTIONS]


def _first_iter1(cfg: Any) -> str | None:
    """Turn 1's first iter1 run (the one §8's failure report reads), or None without arms."""
    arms = Section(cfg, 7).read_df("arms.csv")
    runs = arms.loc[arms["arm"] == "iter1", "run"]
    return str(runs.iloc[0]) if len(runs) else None


def sync_from_checkpoints(cfg: Any, name: str | None = None, dataset: Any = None) -> Any:
    """Make the dataset mirror the checkpoint folders — the files stay the truth.

    §1 frames.csv + gt_collected.json build the samples (a changed §1 rebuilds
    everything); then each later section whose manifest hash differs from the one
    recorded in ``ds.info["synced_hashes"]`` is (re)applied: §2 embeddings → similarity
    index, uniqueness, 2-D map; §3 pool tags; §5/§8 predictions at the operating
    threshold + an eval run per model (:func:`model_key`: ``eval_iter0``, ``eval_<run>`` for
    every run of arms.csv, ``eval_t<t>_...`` for turn t's §5 start model and runs; each
    described in ``ds.info["models"]``, each turn's promotion in ``ds.info["promoted"]``); §6
    ``mined`` tag/rank; §7 ``autolabels`` with router buckets; then the saved views (with
    ``fixed_by_iter1`` / ``broken_by_iter1``: iter0 vs turn 1's first iter1 run on the worst
    slice). Stale or missing sections are skipped; ``ds.info["synced"]`` says which (folder
    → "ok" or the reason).
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
    for sec in _mirrored_sections(cfg):
        why = sec.staleness()
        synced[sec.key] = why or "ok"
        h = sec.manifest_hash() if why is None else None
        if done.get(sec.key) == h:
            continue
        if h is not None:
            log.info("explorer: syncing %s", sec.key)
            _sync_section(cfg, ds, sec.number, sec.turn)
        done[sec.key] = h
    s5 = Section(cfg, WORST_SLICE_SECTION)
    worst = s5.load_json("worst_slice.json").get("worst_slice") if synced[s5.name] == "ok" else None
    it1 = _first_iter1(cfg) if worst and synced[Section(cfg, 8).name] == "ok" else None
    save_views(ds, worst_slice=worst, eval_key="eval_iter0" if worst else None,
               compare_key=f"eval_{model_key(1, it1)}" if it1 else None)
    ds.info["synced"] = synced
    ds.info["synced_hashes"] = done
    ds.save()
    return ds


def get_dataset(cfg: Mapping[str, Any], rebuild: Callable[[], Any] | None = None, name: str | None = None):
    """Load the profile's dataset; if missing, call ``rebuild()`` (default: build it from
    the checkpoints) or raise ExplorerError naming what to run. A dataset built from the
    checkpoints follows them: sections whose manifest changed since are re-applied."""
    import fiftyone as fo  # heavy optional dependency (~3 s): imported on use

    connect_for(cfg)
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
                f"FiftyOne dataset {name!r} does not exist in {db_location(cfg)} and there is no usable §1 "
                f"checkpoint to rebuild it from ({why}); run the notebook with profile {cfg['profile']!r}"
            )
        rebuild = lambda: sync_from_checkpoints(cfg, name=name)  # noqa: E731
    log.info("explorer: dataset %s missing, rebuilding from checkpoints", name)
    return rebuild()
