"""Train a detector on any labelled folder: the ``train`` command's work.

``python -m bdd_engine train --data FOLDER_OR_JSON --out DIR`` reads labels in one of three
layouts (:func:`read_labels`):

* **BDD JSON** (det_20 / 2018 Scalabel frames: a JSON list), given as the file or as the one
  ``*.json`` in FOLDER; images are found by file name under the JSON's folder (or ``--images``);
* **COCO** detection JSON (``images`` / ``annotations`` / ``categories``; ``bbox`` = x, y, w, h
  pixels, ``iscrowd`` = an ignore region), found the same way; category names must be BDD's
  (classes or their official aliases, e.g. ``person``);
* **YOLO**: FOLDER/``labels/**/*.txt`` beside FOLDER/``images/**`` (same relative path and
  stem); class ids are indices into ``data.yaml``'s ``names`` when FOLDER has one, else into
  BDD's official class order (what ``yolo.export_yolo`` writes).

Then, like §4 (the same offline-safe :func:`train.train` with the profile's ``train_*``
keys): a train/val split by drive (the first hex block of a BDD video name) or, for other
names, by file stem, so no drive is on both sides (``split.csv``, recorded with its rule);
``yolo/`` (:func:`yolo.export_yolo`), ``runs/detector/`` (Ultralytics), ``run_card.json`` (the
training card + data source, format, counts and split), and an ``evaluate``-ready pair:
``val_gt.json`` + ``val_predictions.json`` (the trained model on the val frames, BDD JSON).

Bad input — labels naming images that are not there, a class that is not BDD's, no box at
all — raises :class:`TrainDataError` with one line naming the file and the fix, before
anything is written. ``--out`` is a folder this command creates and marks (``TRAIN.json``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from bdd_engine import bdd, ingest, train
from bdd_engine.checkpoint import atomic_path, atomic_write_json, claim_folder
from bdd_engine.experiment import frames_hash
from bdd_engine.geometry import image_size
from bdd_engine.yolo import export_yolo

TRAIN_MARKER = "TRAIN.json"
BDD_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{8}")  # BDD100K video names: drive group = the first block


class TrainDataError(ValueError):
    """Labelled input that cannot be trained on; the message is one line naming the file and the fix."""


# ----------------------------------------------------------------------------- readers
def read_labels(data: str | os.PathLike, images: str | os.PathLike | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    """(BDD frames, frame name -> image path, format ``bdd`` | ``coco`` | ``yolo``) of ``data``:
    a BDD/COCO JSON file, or a folder holding one such JSON or a YOLO ``labels/`` + ``images/``
    layout. ``images``: where to look for the images (default: the JSON's folder / FOLDER)."""
    data = Path(data)
    if data.is_dir() and (data / "labels").is_dir() and any((data / "labels").rglob("*.txt")):
        frames, paths = _read_yolo(data)
        return frames, paths, "yolo"
    if data.is_dir():
        found = sorted(p for p in data.glob("*.json") if p.name != TRAIN_MARKER)
        if len(found) != 1:
            raise TrainDataError(f"{data}: expected one label JSON (BDD or COCO) or a YOLO labels/ folder, found "
                                 f"{len(found)} JSON file(s){' ' + str([p.name for p in found]) if found else ''}; "
                                 "pass the label file itself with --data FILE.json")
        data = found[0]
    if not data.is_file():
        raise TrainDataError(f"--data {data} does not exist; pass a labelled folder or a BDD/COCO JSON file")
    frames, fmt = _read_json(data)
    return frames, _image_index(Path(images) if images else data.parent), fmt


def _read_json(path: Path) -> tuple[list[dict[str, Any]], str]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainDataError(f"{path} is not readable JSON ({e}); pass a BDD (list of frames) or COCO label file") from e
    if isinstance(obj, list):
        return bdd.load_frames(path), "bdd"
    if isinstance(obj, dict) and {"images", "annotations", "categories"} <= set(obj):
        return coco_frames(obj), "coco"
    raise TrainDataError(f"{path} is neither BDD JSON (a list of frames) nor COCO (images/annotations/categories)")


def coco_frames(coco: Mapping[str, Any]) -> list[dict[str, Any]]:
    """COCO detection dict -> BDD frames (box2d xyxy = x, y, x + w, y + h; iscrowd -> ``crowd``);
    frames are named by the image file's name. An unknown category id keeps a name that says so."""
    cats = {c["id"]: str(c["name"]) for c in coco["categories"]}
    by_img: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for a in coco["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        by_img[a["image_id"]].append({"id": str(a.get("id", len(by_img[a["image_id"]]))),
                                      "category": cats.get(a["category_id"], f"category_id {a['category_id']}"),
                                      "attributes": {"crowd": bool(a.get("iscrowd", 0))},
                                      "box2d": {"x1": x, "y1": y, "x2": x + w, "y2": y + h}})
    return [{"name": Path(im["file_name"]).name, "attributes": {}, "labels": by_img.get(im["id"], [])}
            for im in coco["images"]]


def _yolo_names(root: Path) -> list[str]:
    """Class names by id: data.yaml's ``names`` (list or {id: name}), else BDD's official order."""
    y = root / "data.yaml"
    if not y.exists():
        return list(bdd.CLASSES)
    names = (yaml.safe_load(y.read_text()) or {}).get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise TrainDataError(f"{y} has no `names` list or mapping; add one (class id -> name) or remove the file")


def _read_yolo(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """YOLO txt files (``cls cx cy w h``, normalised) -> BDD frames in pixels of each image."""
    names = _yolo_names(root)
    imgs = {p.relative_to(root / "images").with_suffix("").as_posix(): p
            for p in ingest.scan(root / "images")[1]} if (root / "images").is_dir() else {}
    frames, paths = [], {}
    for txt in sorted((root / "labels").rglob("*.txt")):
        key = txt.relative_to(root / "labels").with_suffix("").as_posix()
        img = imgs.get(key)
        name = img.name if img is not None else f"{txt.stem}.jpg"
        labels = []
        if img is not None:
            paths[name] = str(img)
            W, H = image_size(img)
            for i, line in enumerate(txt.read_text().split("\n")):
                if not line.strip():
                    continue
                c, cx, cy, w, h = line.split()[:5]
                k = int(float(c))
                cat = names[k] if 0 <= k < len(names) else f"class id {k} (names has {len(names)})"
                cx, cy, w, h = float(cx) * W, float(cy) * H, float(w) * W, float(h) * H
                labels.append({"id": str(i), "category": cat, "attributes": {},
                               "box2d": {"x1": cx - w / 2, "y1": cy - h / 2, "x2": cx + w / 2, "y2": cy + h / 2}})
        frames.append({"name": name, "attributes": {}, "labels": labels})
    return frames, paths


def _image_index(folder: Path) -> dict[str, str]:
    """file name -> path of every image under ``folder`` (first one per name, sorted)."""
    skipped: list[dict] = []
    return {p.name: str(p) for p in ingest.unique(ingest.scan(folder)[1], lambda p: p.name, skipped)}


# ----------------------------------------------------------------------------- checks and split
def check_labels(frames: Sequence[Mapping[str, Any]], paths: Mapping[str, str], src: Path) -> Counter:
    """Refuse what cannot be trained on (one line each): frames without an image, categories
    that are not BDD's, no box of the 10 classes. Returns counts (frames, boxes, non-box labels)."""
    missing = [f["name"] for f in frames if f["name"] not in paths]
    if missing:
        raise TrainDataError(f"{len(missing)} of {len(frames)} labelled frames in {src} have no image (e.g. "
                             f"{missing[0]!r}); put the images beside the labels or pass --images DIR")
    unknown: Counter = Counter()
    counts: Counter = Counter(frames=len(frames))
    for f in frames:
        for lb in f.get("labels") or []:
            cat = str(lb.get("category", ""))
            if not lb.get("box2d") or cat in bdd.NON_BOX_CATEGORIES:
                counts["non-box labels skipped"] += 1
            elif bdd.map_category(cat)[0] is None:
                unknown[cat] += 1
            else:
                counts["boxes"] += 1
    if unknown:
        top = ", ".join(f"{c!r} ({n})" for c, n in unknown.most_common(5))
        raise TrainDataError(f"{src}: {sum(unknown.values())} boxes of unknown classes {top}; rename them to BDD's "
                             f"classes ({', '.join(bdd.CLASSES)}) or their aliases ({', '.join(bdd.NAME_MAPPING)})")
    if not counts["boxes"]:
        raise TrainDataError(f"{src}: {len(frames)} frames but no box of BDD's 10 classes: nothing to train on")
    return counts


def group_split(names: Sequence[str], val_fraction: float, seed: int) -> tuple[pd.DataFrame, str]:
    """(table name, group, split, rule): whole groups go to ``val`` (a seeded draw of
    ``round(val_fraction × groups)``, at least 1) or ``train``. Groups are BDD drives (first hex
    block of the video name) when every name is a BDD video name, else file stems (tracking
    ``-0000001`` suffix removed). Fewer than 2 groups cannot be split: TrainDataError."""
    drives = all(BDD_NAME.match(n) for n in names)
    groups = [bdd.group_of(bdd.video_of(n)) if drives else bdd.video_of(n) for n in names]
    uniq = sorted(set(groups))
    if len(uniq) < 2:
        raise TrainDataError(f"all {len(names)} frames belong to one {'drive' if drives else 'name'} group "
                             f"({uniq[0]!r}): a held-out val split needs at least 2")
    n_val = min(len(uniq) - 1, max(1, int(round(val_fraction * len(uniq)))))
    val = set(np.random.default_rng(int(seed)).choice(uniq, size=n_val, replace=False).tolist())
    rule = (f"{'drive (first hex block of the BDD video name)' if drives else 'file stem'} groups, {n_val} of "
            f"{len(uniq)} drawn for val with seed {seed}")
    table = pd.DataFrame({"name": list(names), "group": groups, "split": ["val" if g in val else "train" for g in groups]})
    return table, rule


# ----------------------------------------------------------------------------- the command
def train_folder(data: str | os.PathLike, out: str | os.PathLike, spec: train.TrainSpec, *,
                 images: str | os.PathLike | None = None, val_fraction: float = 0.2, seed: int = 42,
                 conf: float = 0.001, progress: bool = True) -> dict[str, Any]:
    """Read, check and split ``data``; train ``spec`` on the train split into ``out``; predict
    the val split. ``conf``: the prediction file's score threshold (low, for mAP). Returns the
    run card (also ``out/run_card.json``) with ``weights`` and the written files."""
    frames, paths, fmt = read_labels(data, images)
    src = Path(data)
    counts = check_labels(frames, paths, src)
    split, rule = group_split([f["name"] for f in frames], val_fraction, seed)
    out = claim_folder(out, TRAIN_MARKER, "bdd_engine.train",
                       {"data": str(src.resolve()), "images": str(Path(images).resolve()) if images else None,
                        "val_fraction": val_fraction, "seed": int(seed)})
    side = dict(zip(split["name"], split["split"]))
    sets = {s: [f for f in frames if side[f["name"]] == s] for s in ("train", "val")}
    with atomic_path(out / "split.csv") as tmp:
        split.to_csv(tmp, index=False)
    data_yaml, exported = export_yolo(sets, paths, out / "yolo")
    dhash = frames_hash(sets["train"]) + frames_hash(sets["val"])
    weights = train.train(spec, data_yaml, out / "runs", name="detector", data_hash=dhash)
    preds = train.predict(weights, [paths[f["name"]] for f in sets["val"]], conf=conf, device=spec.device,
                          imgsz=spec.imgsz, progress=progress)
    bdd.write_bdd_json(sets["val"], out / "val_gt.json")
    train.save_predictions(preds, out / "val_predictions.json")
    card = {**json.loads((weights.parent.parent / "run_card.json").read_text()),
            "command": "python -m bdd_engine train", "data": {"source": str(src.resolve()), "format": fmt,
                                                              **{k: int(v) for k, v in counts.items()}},
            "split": {"rule": rule, "file": "split.csv", **{k: int(v) for k, v in split["split"].value_counts().items()}},
            "exported": {k: int(v) for k, v in exported.items()},
            "weights": str(Path(weights).resolve()), "val_gt": "val_gt.json", "val_predictions": "val_predictions.json",
            "prediction_conf": conf}
    atomic_write_json(out / "run_card.json", card)
    return card
