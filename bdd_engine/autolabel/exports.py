"""Exports of one label run: COCO JSON, a Label Studio review import, the YOLO training set,
and :func:`write_outputs`, which writes every artefact of a run (what §7 calls).

Boxes come in as BDD ``xyxy`` pixels; each format's own unit is stated where it is written.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bdd_engine.autolabel.base import LabelRun
from bdd_engine.autolabel.quality import QualityReport, label_quality
from bdd_engine.autolabel.router import accepted_frames, cost_table, frames_for_humans, quality_at_accept, router_table
from bdd_engine.autolabel.thresholds import Accept, accept_of
from bdd_engine.bdd import CLASS_ID, CLASSES, map_category, write_bdd_json
from bdd_engine.checkpoint import (atomic_write_df, atomic_write_json, atomic_write_text, committed_path,
                                   df_to_markdown)
from bdd_engine.env import PROJECT_ROOT
from bdd_engine.geometry import image_size, xyxy_to_xywh_pct
from bdd_engine.yolo import export_yolo

LABEL_STUDIO_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <RectangleLabels name="label" toName="image">
{labels}
  </RectangleLabels>
</View>
"""


def export_coco(frames: Sequence[Mapping[str, Any]], image_paths: Mapping[str, str | os.PathLike],
                path: str | os.PathLike, description: str = "auto-labels") -> Path:
    """COCO detection JSON (loads with pycocotools): bbox = [x, y, w, h] pixels with w = x2 - x1
    (no +1 pixel shift), area = w * h, category_id 1..10 in BDD's official order, ``score``
    kept, BDD ignore-mapped categories written with ``iscrowd=1`` (COCO's ignore semantics)."""
    images, anns = [], []
    for img_id, fr in enumerate(frames, start=1):
        w, h = image_size(image_paths[fr["name"]])
        images.append({"id": img_id, "file_name": fr["name"], "width": int(w), "height": int(h)})
        for lb in fr.get("labels") or []:
            cls, ignore = map_category(lb.get("category", ""))
            b = lb.get("box2d")
            if cls is None or not b:
                continue
            bw, bh = float(b["x2"]) - float(b["x1"]), float(b["y2"]) - float(b["y1"])
            crowd = ignore or bool((lb.get("attributes") or {}).get("crowd", False))
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": CLASS_ID[cls] + 1,
                   "bbox": [float(b["x1"]), float(b["y1"]), bw, bh], "area": bw * bh, "iscrowd": int(crowd)}
            if "score" in lb:
                ann["score"] = float(lb["score"])
            anns.append(ann)
    coco = {"info": {"description": description}, "images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    return atomic_write_json(path, coco, indent=None)


def queue_id(names: Sequence[str]) -> str:
    """A review queue's identity: the first 12 hex of sha256 over its sorted frame names.
    Every task carries it (``data.queue``), so an export of another queue is recognised."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:12]


def document_root(image_paths: Sequence[str | os.PathLike]) -> Path:
    """The one Label Studio document root under which every image of a queue has a URL.

    The project root when every image is inside it (so successive queues share one server
    setting), else the deepest folder holding the project root and every image; moved up
    while an image folder *is* that root (Label Studio refuses a local-files storage equal
    to its document root)."""
    folders = {Path(p).resolve().parent for p in image_paths}
    root = PROJECT_ROOT.resolve()
    if not all(root in f.parents or f == root for f in folders):
        root = Path(os.path.commonpath([str(root), *map(str, folders)]))
    while root in folders and root != root.parent:
        root = root.parent
    return root


def storage_folders(image_paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The fewest image folders whose local-files storages cover every image (a folder
    inside another listed one is left out): Label Studio serves a file only under one."""
    folders = sorted({Path(p).resolve().parent for p in image_paths})
    return [f for f in folders if not any(g in f.parents for g in folders)]


def export_label_studio(frames: Sequence[Mapping[str, Any]], image_paths: Mapping[str, str | os.PathLike],
                        path: str | os.PathLike, model_version: str = "auto-labeler",
                        url_prefix: str = "/data/local-files/?d=", root: str | os.PathLike | None = None) -> Path:
    """Label Studio import JSON: one task per frame, labels as ``predictions`` (pre-annotations).

    Boxes become ``rectanglelabels`` in **percent** of the image (Label Studio's unit,
    ``geometry.xyxy_to_xywh_pct``). Task data: image URL, frame ``name``, BDD frame
    ``attributes`` (+ ``timestamp``), the queue's ``queue`` id (:func:`queue_id`) and
    ``queue_file`` (this file, relative to the project root when inside it);
    :mod:`bdd_engine.autolabel.review_import` is the inverse and checks an export against
    this file. Image URLs are ``url_prefix + path relative to root`` (local-files storage),
    every one relative to the same ``root`` (default :func:`document_root`). Also writes
    the matching labelling config (``<stem>.label_config.xml``) and the server setup that
    serves these URLs (``<stem>.setup.md``: document root, storages, steps).
    """
    path = Path(path)
    shown = [Path(image_paths[fr["name"]]) for fr in frames]
    root = Path(root).resolve() if root is not None else document_root(shown)
    qid, qfile = queue_id([fr["name"] for fr in frames]), _project_relative(path)
    tasks = []
    for fr, p in zip(frames, shown):
        w, h = image_size(p)
        try:
            rel = p.resolve().relative_to(root)
        except ValueError:
            raise ValueError(f"export_label_studio: image {p} is not under the document root {root}") from None
        labels = fr.get("labels") or []
        pct = xyxy_to_xywh_pct([[float(lb["box2d"][c]) for c in ("x1", "y1", "x2", "y2")] for lb in labels], w, h)
        results, scores = [], []
        for k, (lb, (x, y, bw, bh)) in enumerate(zip(labels, pct)):
            results.append({
                "id": f"{Path(fr['name']).stem}_{k}", "type": "rectanglelabels", "from_name": "label",
                "to_name": "image", "original_width": int(w), "original_height": int(h), "image_rotation": 0,
                "value": {"x": float(x), "y": float(y), "width": float(bw), "height": float(bh), "rotation": 0,
                          "rectanglelabels": [lb["category"]]},
                "score": float(lb.get("score", 1.0))})
            scores.append(float(lb.get("score", 1.0)))
        # the frame's attributes ride along in the task data (Label Studio exports data back
        # verbatim), so review_import can rebuild a complete BDD frame from the export alone
        data = {"image": f"{url_prefix}{rel.as_posix()}", "name": fr["name"], "attributes": fr.get("attributes") or {},
                **({"timestamp": fr["timestamp"]} if "timestamp" in fr else {}), "queue": qid, "queue_file": qfile}
        tasks.append({"data": data,
                      "predictions": [{"model_version": model_version,
                                       "score": float(np.mean(scores)) if scores else 0.0, "result": results}]})
    labels = "\n".join(f'    <Label value="{c}"/>' for c in CLASSES)
    config = atomic_write_text(path.with_name(path.stem + ".label_config.xml"), LABEL_STUDIO_CONFIG.format(labels=labels))
    atomic_write_text(path.with_name(path.stem + ".setup.md"),  # names the files where the user will find them
                      label_studio_setup(committed_path(path.resolve()), committed_path(config.resolve()), root,
                                         storage_folders(shown), len(tasks), qid))
    return atomic_write_json(path, tasks, indent=None)


def _project_relative(path: Path) -> str:
    """Where ``path`` lives once its section commits (§7 writes it into a staging folder),
    relative to the project root when inside it (the project may move), else absolute."""
    p = committed_path(path.resolve())
    return p.relative_to(PROJECT_ROOT.resolve()).as_posix() if PROJECT_ROOT.resolve() in p.parents else str(p)


def label_studio_setup(queue: Path, config: Path, root: Path, storages: Sequence[Path], n_tasks: int, qid: str) -> str:
    """The exact Label Studio steps that show this queue's images (what README's section says, filled in)."""
    folders = "\n".join(f"       {f}" for f in storages) or "       (no image)"
    return f"""# Label Studio setup for {queue.name} ({n_tasks} tasks, queue {qid})

Every image URL in {queue.name} is `/data/local-files/?d=<path relative to {root}>`: Label Studio
must serve local files from exactly that document root.

1. Start Label Studio with local files served from the document root:

       LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \\
       LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root} \\
       label-studio start

2. Create a project. Labeling Setup -> Custom template -> Code: paste the whole of
   {config} and Save.
3. Project Settings -> Cloud Storage -> Add Source Storage -> storage type "Local files",
   "Absolute local path" one of the folders below (add one storage per folder). Check the
   connection and Add; do **not** Sync it (it only allows Label Studio to serve those files):

{folders}

4. Import -> upload {queue} (the labeler's boxes arrive as predictions, i.e. pre-annotations).
5. Review every task (Submit, or Skip a frame you cannot label), then Export -> "JSON" and:

       python -m bdd_engine import-labels --label-studio EXPORT.json --out DIR

   import-labels checks the export against this queue (tasks from another queue are refused)
   and counts the tasks never reviewed.
"""


def export_yolo_set(frames: Sequence[Mapping[str, Any]], image_paths: Mapping[str, str | os.PathLike],
                    out_dir: str | os.PathLike, val_frames: Sequence[Mapping[str, Any]] | None = None) -> tuple[Path, Counter]:
    """The auto-labelled set as a YOLO dataset through the one converter, ``bdd_engine.yolo.export_yolo``.

    ``frames`` become the ``train`` split; ``val_frames`` (optional) the ``val`` split,
    else data.yaml's val points at the train images so the folder is a complete,
    checkable dataset on its own (iter1's real evaluation is §5's, not Ultralytics' val).
    Each image is normalised by its own size (read from its header).
    Returns (data.yaml path, counts).
    """
    if not any(fr["name"] in image_paths for fr in list(frames) + list(val_frames or [])):
        raise ValueError("export_yolo_set: none of the frames has an image path")
    splits = {"train": frames, **({"val": val_frames} if val_frames is not None else {})}
    return export_yolo(splits, image_paths, out_dir, image_wh=None,
                       val_split="val" if val_frames is not None else "train")


def write_outputs(out_dir: str | os.PathLike, run: LabelRun, gt_frames: Sequence[Mapping[str, Any]] | None,
                  image_paths: Mapping[str, str | os.PathLike], *, accept: float, review: float,
                  spot_check: int = 20, seed: int = 42, usd_per_frame: tuple[float, float] = (0.5, 10.0),
                  yolo: bool = True, train_accept: Accept | None = None) -> dict[str, Any]:
    """Write every labelling artefact of one run under ``out_dir`` (atomic writes) and return the tables.

    Files: ``labels.json`` (all labels, BDD + score), ``quality_all.csv``,
    ``quality_spot.csv``, ``missed.csv``, ``confusions.csv``, ``router.csv``,
    ``cost.csv``, ``coco.json`` (all labels), ``label_studio_review.json`` (+ its
    ``.label_config.xml`` and ``.setup.md``: review-queue frames with their labels >= ``review`` as
    pre-annotations), ``yolo/`` (accepted labels of non-failed frames, for iter1) and
    ``summary.md``. An oracle run gets its quality tables but no auto-label exports.

    ``train_accept``: the threshold that feeds training (one float or ``{class: threshold}``;
    None = ``accept``); the router's buckets keep ``accept``. With GT, ``quality_accept.csv``
    holds precision/recall per class of exactly the labels that feed training.
    """
    train_accept = accept if train_accept is None else train_accept
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, Any] = {"run": run}
    write_bdd_json(run.frames, out / "labels.json")
    quality = label_quality(run, gt_frames, spot_check=spot_check, seed=seed) if gt_frames is not None else None
    tables["quality"] = quality
    if quality is not None:
        for key, df in (("quality_all", quality.all_frames), ("quality_spot", quality.spot_check),
                        ("missed", quality.missed), ("confusions", quality.confusions)):
            atomic_write_df(out / f"{key}.csv", df)
    tables["quality_accept"] = None
    if quality is not None and not run.is_oracle:
        tables["quality_accept"] = quality_at_accept(run, gt_frames, train_accept)
        atomic_write_df(out / "quality_accept.csv", tables["quality_accept"])
    tables["router"] = router_table(quality, run, accept, review)
    tables["cost"] = cost_table(run, accept, review, usd_per_frame)
    atomic_write_df(out / "router.csv", tables["router"])
    atomic_write_df(out / "cost.csv", tables["cost"])
    lines = _summary_lines(run, quality, tables["router"], tables["cost"], seed)
    if tables["quality_accept"] is not None:
        lines += ["## Precision / recall of the labels that feed training (score >= the accept threshold)", "",
                  df_to_markdown(tables["quality_accept"]), ""]
    if not run.is_oracle:
        lines += _write_autolabel_exports(out, run, image_paths, accept, review, yolo, tables, train_accept)
    atomic_write_text(out / "summary.md", "\n".join(lines))
    return tables


def _summary_lines(run: LabelRun, quality: QualityReport | None, router: pd.DataFrame, cost: pd.DataFrame,
                   seed: int) -> list[str]:
    """summary.md's tables part: the run, quality (if GT was given), router and cost."""
    lines = [f"# Labelling: {run.summary()}", ""]
    if quality is not None:
        lines += [quality.summary(), "", "## Precision / recall at IoU 0.5, all frames", "",
                  df_to_markdown(quality.all_frames), "", f"## Spot check ({len(quality.spot_names)} frames, seed {seed})",
                  "", df_to_markdown(quality.spot_check), "", "## Most missed classes", "",
                  df_to_markdown(quality.missed), "", "## Most common confusions", "",
                  df_to_markdown(quality.confusions.head(10)), ""]
    return lines + ["## Router", "", df_to_markdown(router), "", "## Cost", "", df_to_markdown(cost), ""]


def _write_autolabel_exports(out: Path, run: LabelRun, image_paths: Mapping[str, str | os.PathLike], accept: float,
                             review: float, yolo: bool, tables: dict[str, Any], train_accept: Accept) -> list[str]:
    """COCO (all labels of non-failed frames), the Label Studio review queue (by ``accept``) and
    the YOLO training set (labels >= ``train_accept``) of a non-oracle run; adds
    ``train_frames``/``yolo`` to ``tables`` and returns summary.md's lines about them."""
    lines: list[str] = []
    ok = run.ok_frames()
    export_coco(ok, image_paths, out / "coco.json", description=f"{run.labeler} auto-labels")
    need = set(frames_for_humans(run, accept, review))
    # review queue = every frame a human must touch that Label Studio can show (failed,
    # unreadable frames are listed in summary.md instead); empty-output frames are in it
    # with no pre-annotations, to be labelled from scratch
    queue = [{**fr, "labels": [lb for lb in fr["labels"] if float(lb.get("score", 1.0)) >= review]}
             for fr in ok if fr["name"] in need]
    export_label_studio(queue, image_paths, out / "label_studio_review.json", model_version=run.labeler)
    tables["train_frames"] = accepted_frames(run, train_accept)
    tables["yolo"] = None
    if yolo and tables["train_frames"]:
        tables["yolo"] = export_yolo_set(tables["train_frames"], image_paths, out / "yolo")
    elif yolo:
        lines += ["**No frame has an accepted label: no YOLO set written** (lower label_accept or "
                  "check the labeler).", ""]
    n_empty = sum(1 for fr in queue if not fr["labels"])
    lines += [f"Review queue: {len(queue)} frames in label_studio_review.json (Label Studio set-up: "
              f"label_studio_review.setup.md; {n_empty} with no usable "
              f"label, to label from scratch) + {len(need) - len(queue)} frames the labeler failed on "
              f"({', '.join(sorted(run.failures)[:5])}{' ...' if run.n_failed > 5 else ''}); "
              f"training set: {len(tables['train_frames'])} frames with >= 1 accepted label "
              f"({len(ok) - len(tables['train_frames'])} labelled frames without one left out), "
              f"{sum(len(f['labels']) for f in tables['train_frames'])} accepted labels.", ""]
    return lines


GREY = 114  # Ultralytics' letterbox fill: the value the detector already reads as "no image here"


def grey_uncertain(frames: Sequence[Mapping[str, Any]], image_paths: Mapping[str, str | os.PathLike],
                   out_dir: str | os.PathLike, *, accept: Accept, review: float) -> dict[str, str]:
    """Stop objects the labeler was unsure of from becoming background: on a copy of each frame,
    fill every label box scored ``review <= score < accept`` (``accept`` per class allowed) with
    grey, except where it overlaps a box that is accepted (those pixels are training signal).

    ``frames``: the labeller's frames with every label and its score (``LabelRun.ok_frames()``).
    Writes ``out_dir/<name>`` (JPEG quality 95, 4:4:4) only for frames that have such a box;
    returns {name: path of the copy}, so a training set uses the copy instead of the original.
    """
    from PIL import Image

    from bdd_engine.checkpoint import atomic_path

    out, done = Path(out_dir), {}
    for fr in frames:
        labels = fr.get("labels") or []
        score = lambda lb: float(lb.get("score", 1.0))  # noqa: E731
        unsure = [lb for lb in labels if review <= score(lb) < accept_of(accept, lb["category"])]
        if not unsure:
            continue
        with Image.open(image_paths[fr["name"]]) as im:
            arr = np.asarray(im.convert("RGB")).copy()
        h, w = arr.shape[:2]
        keep = np.zeros((h, w), bool)

        def region(lb):
            b = lb["box2d"]
            x1, y1 = max(int(np.floor(b["x1"])), 0), max(int(np.floor(b["y1"])), 0)
            y2, x2 = min(int(np.ceil(b["y2"])) + 1, h), min(int(np.ceil(b["x2"])) + 1, w)  # BDD boxes are inclusive
            return slice(y1, max(y2, y1)), slice(x1, max(x2, x1))

        for lb in labels:
            if score(lb) >= accept_of(accept, lb["category"]):
                keep[region(lb)] = True
        fill = np.zeros((h, w), bool)
        for lb in unsure:
            fill[region(lb)] = True
        arr[fill & ~keep] = GREY
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / fr["name"]) as tmp:
            Image.fromarray(arr).save(tmp, format="JPEG", quality=95, subsampling=0)
        done[fr["name"]] = str(out / fr["name"])
    return done
