"""§1's steps on the raw inputs: label files, the images they name, what is wrong with them,
and the content hashes that make a changed input visible.

Explicit arguments only; the section runner (flywheel.s1_collect) reads the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from bdd_engine import bdd, images
from bdd_engine.checkpoint import atomic_path, input_row


def label_paths(data_dir: Path, label_files: Sequence[str]) -> list[tuple[str, Path]]:
    """(split, path) for each label file relative to ``data_dir``; split from ``det_<split>.json``."""
    out = []
    for rel in label_files:
        p = Path(data_dir) / rel
        stem = p.stem
        split = stem.split("_")[-1] if "_" in stem else stem
        split = {"images": "train"}.get(split, split)
        out.append((split, p))
    return out


def load_labels(paths: Sequence[tuple[str, Path]], index: Mapping[str, Path],
                fix_hint: str, allow_empty: bool = False) -> tuple[list[dict], pd.DataFrame, list[str]]:
    """Every label file: (frames, frame table, label files that hold no frame).

    Raises naming the files (and ``fix_hint``) when one is missing, or when all of them are
    empty unless ``allow_empty`` (the confirmation files: without them §5 says what is
    missing); an empty file is reported on stdout and returned."""
    frames, tables, empty = [], [], []
    for split, path in paths:
        if not Path(path).is_file():  # the fix depends on where the data came from (a world is regenerated)
            raise FileNotFoundError(f"label file not found: {path}. {fix_hint}")
        fr = bdd.load_frames(path)
        if not fr:
            empty.append(str(path))
            print(f"warning: {path} holds no frames (an empty list); continuing with the other label files")
        frames += fr
        tables.append(bdd.frames_table(fr, index, split=split))
    if not frames and not allow_empty:
        raise ValueError(f"every label file is empty ({', '.join(empty)}): there is nothing to collect. {fix_hint}")
    kept = [t for t in tables if len(t)]
    return frames, (pd.concat(kept, ignore_index=True) if kept else bdd.frames_table([])), empty


def check_frame_images(frames: Sequence[Mapping], index: Mapping[str, Path], cache_path: Path,
                       workers: int) -> pd.DataFrame:
    """images.check_images for every labelled frame's image (first occurrence of a name),
    cached in ``cache_path`` (parquet) by size + mtime. Adds a ``name`` column."""
    named: dict[str, Path] = {}
    for fr in frames:
        if fr["name"] in index and fr["name"] not in named:
            named[fr["name"]] = index[fr["name"]]
    old = images.load_cache(cache_path)
    checks = images.check_images(list(named.values()), old, workers=workers)
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


def validation_summary(report: bdd.ValidationReport, n_indexed: int, have: int, total: int, checks: pd.DataFrame,
                       empty: Sequence[str], label_sha: Mapping[str, str], *, synthetic: bool,
                       boxes_left_out: int = 0) -> dict:
    """validation.json: what §1 found (record issues by kind, image coverage and sizes,
    empty label files, the label files' sha256, ``boxes_left_out``: boxes of the 10 classes
    whose coordinates are missing, null, not numbers, not finite or inverted, left out of the
    GT that §1 writes) and whether the data is synthetic."""
    sizes_n = size_counts(checks)
    summary = report.summary() + (f"; {boxes_left_out} box(es) with missing or bad coordinates left out of the GT "
                                  "(validation_issues.csv lists them)" if boxes_left_out else "")
    return {
        "summary": summary, "boxes_left_out": int(boxes_left_out), "counts": report.counts, "n_frames": report.n_frames,
        "n_labels": report.n_labels, "images_indexed": n_indexed, "frames_with_image": have,
        "frames_labelled": total, "unreadable_images": int((~checks["ok"]).sum()),
        "image_sizes": {k: int(v) for k, v in sizes_n.items()},
        "image_wh": [int(x) for x in sizes_n.index[0].split("x")] if len(sizes_n) else None,
        "empty_label_files": list(empty), "label_files_sha256": dict(label_sha), "synthetic": bool(synthetic),
        "coverage": f"{have} of {total} labelled frames have a readable image on disk",
    }


def size_counts(checks: pd.DataFrame) -> pd.Series:
    """"WxH" → number of readable images of that size, most common first."""
    ok = checks[checks["ok"]]
    return (ok["width"].astype(str) + "x" + ok["height"].astype(str)).value_counts()


def input_table(root: Path, image_sets: Sequence[str], label_files: Sequence[Path], checks: pd.DataFrame) -> pd.DataFrame:
    """§1's inputs: label files and images by content hash, image folders by listing."""
    rows = [input_row(p) for p in label_files if Path(p).exists()]
    rows += [{"path": r.path, "kind": "file", "size": r.size, "mtime_ns": r.mtime_ns, "sha256": r.sha256}
             for r in checks.itertuples() if r.sha256]
    rows += [input_row(d, kind="dir") for s in image_sets for d in sorted((root / s).glob("*")) if d.is_dir()]
    return pd.DataFrame(rows)


def label_file_hashes(inputs: pd.DataFrame, root: Path, label_files: Sequence[Path]) -> dict[str, str]:
    """Label file (relative to ``root`` when inside it) → sha256: the case study's provenance."""
    wanted = {str(p) for p in label_files}
    return {str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p): h
            for p, h in zip(inputs["path"], inputs["sha256"]) if p in wanted}


def frame_table(table: pd.DataFrame, checks: pd.DataFrame) -> pd.DataFrame:
    """The labelled frames, one row per name (first occurrence; duplicates are reported by
    validation), unreadable images blanked like missing ones, width/height per frame."""
    sizes = dict(zip(checks["name"], zip(checks["width"], checks["height"])))
    unreadable = set(checks.loc[~checks["ok"], "name"])
    table = table.drop_duplicates("name", keep="first")
    table.loc[table["name"].isin(unreadable), "image_path"] = ""  # left out like a missing image
    table["width"] = [int(sizes.get(n, (0, 0))[0]) for n in table["name"]]
    table["height"] = [int(sizes.get(n, (0, 0))[1]) for n in table["name"]]
    return table


def first_frames(frames: Sequence[Mapping], keep: set[str]) -> list[Mapping]:
    """The first frame of each kept name, in file order (the GT that §1 writes)."""
    seen: set[str] = set()
    out = []
    for f in frames:
        if f["name"] in keep and f["name"] not in seen:
            seen.add(f["name"])
            out.append(f)
    return out


def confirm_candidates(confirm: pd.DataFrame, collect_source: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The confirmation candidates: labelled frames of the confirm label files (BDD val) with a
    readable image that share no frame and no drive group with any frame of the collect label
    files (so none can be in train, eval, the mining pool, mined or random frames).

    ``confirm``/``collect_source``: :func:`frame_table` tables. Returns (candidates with
    ``slice``, counts of frames dropped per reason)."""
    c = confirm.drop_duplicates("name", keep="first")
    no_image = ~c["image_path"].astype(bool)
    shared = c["name"].isin(collect_source["name"]) | c["group"].isin(collect_source["group"])
    keep = c[~no_image & ~shared].reset_index(drop=True)
    return keep, {"no_readable_image": int(no_image.sum()), "shares_frame_or_drive": int((shared & ~no_image).sum())}


# ----------------------------------------------------------------------------- ingested frames
POOL_SOURCES = ("labels", "ingested")


def check_pool_sources(sources: Sequence[str], ingest_dir: str | None) -> bool:
    """Validate ``pool_sources`` (+ ``ingest_dir``); True when ingested frames join. ``labels`` is
    required: train and eval frames only ever come from labels."""
    bad = [s for s in sources if s not in POOL_SOURCES]
    if bad or "labels" not in sources:
        raise ValueError(f"pool_sources must list 'labels' and optionally 'ingested' (of {list(POOL_SOURCES)}), "
                         f"got {list(sources)}")
    if "ingested" in sources and not ingest_dir:
        raise ValueError("pool_sources has 'ingested' but ingest_dir is null: set ingest_dir to a folder made by "
                         "`python -m bdd_engine ingest --out DIR`")
    return "ingested" in sources


def ingested_frames(ingest_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frames of an ingest folder as frame-table rows without labels, read only.

    ``ingest_dir``: a folder ``ingest`` made (``INGEST.json`` + ``frames.csv``; anything else
    raises with the fix). Returns (rows: name, split ``"ingested"``, weather/timeofday/scene/slice
    empty (no attributes), video, group, absolute image_path, n_boxes 0, width/height in pixels,
    origin ``"ingested"``; the inputs rows that make a changed ingest folder visible: frames.csv
    by content, the frames/ folder by listing)."""
    from bdd_engine.ingest import MARKER

    d = Path(ingest_dir)
    if not (d / MARKER).is_file() or not (d / "frames.csv").is_file():
        raise FileNotFoundError(f"ingest_dir {d} is not a finished ingest folder ({MARKER} and frames.csv); "
                                f"make it with `python -m bdd_engine ingest --src VIDEOS --out {d}`")
    t = pd.read_csv(d / "frames.csv", keep_default_na=False, na_values=[""], dtype={"name": str, "video": str,
                                                                                     "group": str})
    rows = pd.DataFrame({"name": t["name"], "split": "ingested"})
    for a in (*bdd.SLICE_ATTRS, "slice"):
        rows[a] = pd.Series([None] * len(t), dtype=object)
    rows["video"], rows["group"] = t["video"], t["group"]
    rows["image_path"] = [str(p if Path(p).is_absolute() else d / p) for p in t["image_path"]]
    rows["n_boxes"] = 0
    rows["width"], rows["height"] = t["width"].astype(int), t["height"].astype(int)
    rows["origin"] = "ingested"
    inputs = [input_row(d / "frames.csv")] + ([input_row(d / "frames", kind="dir")] if (d / "frames").is_dir() else [])
    return rows, pd.DataFrame(inputs)


def join_ingested(collected: pd.DataFrame, ingested: pd.DataFrame, labelled: pd.DataFrame,
                  confirm: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Collected labelled frames + the ingested ones that may join the mining pool.

    An ingested frame is left out (and counted) when its name is a labelled frame's
    (``labelled``: every frame of the label files) or when its drive group is a confirmation
    candidate's (``confirm``): the confirmation set must share no drive with any pool frame.
    Drives shared with eval frames are §3's to hold out. Returns (frames with an ``origin``
    column: labels | ingested, counts)."""
    same_name = ingested["name"].isin(labelled["name"])
    confirm_drive = ingested["group"].isin(confirm["group"]) & ~same_name
    keep = ingested[~same_name & ~confirm_drive]
    out = pd.concat([collected.assign(origin="labels"), keep], ignore_index=True)
    return out, {"ingested": int(len(ingested)), "ingested_joined": int(len(keep)),
                 "ingested_dropped_name_clash": int(same_name.sum()),
                 "ingested_dropped_confirm_drive": int(confirm_drive.sum())}
