"""Label or predict any folder: the ``label`` and ``predict`` commands' work.

* :func:`label_folder` — images (taken as they are) and videos (sampled by
  :func:`ingest.ingest` into ``<out>/ingest/``) of any folder, labelled by a
  :class:`autolabel.Labeler` and written by :func:`autolabel.write_outputs` exactly as §7
  does: ``labels.json`` (BDD, every label with its ``score``), ``router.csv`` and
  ``cost.csv`` (the confidence router), ``coco.json`` (pycocotools), the Label Studio
  review queue (+ its labelling config), ``yolo/`` (accepted labels) and ``summary.md``.
  Without ground truth there is no quality table: the summary says so.
* :func:`predict_folder` — a detector's predictions on a folder of images as BDD JSON
  (``score`` per label, ``box2d`` xyxy pixels), usable with ``python -m bdd_engine evaluate``.

Both write only where they may: ``label``'s ``--out`` is a folder it creates and marks
(``LABEL.json``); ``predict`` never writes inside ``--src`` and never overwrites an existing
file unless told to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bdd_engine import autolabel, ingest, train
from bdd_engine.checkpoint import FolderRefused, claim_folder

LABEL_MARKER = "LABEL.json"


def label_folder(src: str | os.PathLike, out: str | os.PathLike, labeler: autolabel.Labeler, *, accept: float,
                 review: float, seed: int = 42, fps: float = 1.0, labeler_info: dict[str, Any] | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Label every image (and sampled video frame) under ``src`` into ``out``.

    ``accept``/``review``: router thresholds, scores in [0, 1] (:func:`autolabel.route`);
    ``fps``: video sampling rate, frames per s. ``labeler_info`` goes into ``LABEL.json``
    (a rerun into ``out`` must use the same labeler settings). Unreadable images and
    corrupt videos are skipped and counted (``ingest/skipped.csv``). An ``out`` inside ``src`` is
    refused (:func:`refuse_inside`). Returns :func:`autolabel.write_outputs`' tables plus ``ingest``
    (:class:`ingest.IngestResult`).
    """
    refuse_inside(src, out, "label", "_labels")
    out = claim_folder(out, LABEL_MARKER, "bdd_engine.label",
                       {"src": str(Path(src).resolve()), "labeler": labeler.name, "accept": accept,
                        "review": review, "fps": fps, **(labeler_info or {})})
    res = ingest.ingest(src, out / "ingest", fps=fps, progress=progress)
    if not len(res.frames):
        raise ValueError(f"nothing to label under {src}: every file was skipped (see {out / 'ingest' / 'skipped.csv'})")
    names = res.frames["name"].tolist()
    paths = dict(zip(names, res.frames["image_path"]))
    frames = [{"name": n, "attributes": {}, "labels": []} for n in names]
    run = labeler.label(frames, [paths[n] for n in names], progress=progress)
    tables = autolabel.write_outputs(out, run, None, paths, accept=accept, review=review, seed=seed)
    return {**tables, "ingest": res}


def predict_folder(weights: str | os.PathLike, src: str | os.PathLike, out_json: str | os.PathLike, *, conf: float,
                   device: str = "auto", imgsz: int | None = None, batch: int = 16, overwrite: bool = False,
                   progress: bool = True, backend: str = "torch",
                   precision: str = "fp32") -> tuple[Path, list[dict[str, Any]], list[dict[str, str]]]:
    """Predictions of Ultralytics ``weights`` on every image under ``src``, written as BDD JSON.

    ``conf``: score threshold in [0, 1] (keep it low, e.g. 0.001, for mAP). ``imgsz`` None =
    the weights' training size. ``backend`` / ``precision``: :func:`train.predict`. Unreadable images are skipped and returned as
    ``[{"source_path", "reason"}]``. Raises FileExistsError for an existing ``out_json``
    unless ``overwrite``, :class:`checkpoint.FolderRefused` for an ``out_json`` inside ``src`` or
    that is a folder (:func:`refuse_out`), and ValueError if ``src`` holds videos (ingest them first).
    Returns (path written, prediction frames, skipped).
    """
    out_json = Path(out_json)
    refuse_out(src, out_json)
    if out_json.exists() and not overwrite:
        raise FileExistsError(f"{out_json} exists; pass --force to overwrite it, or choose another --out")
    videos, images = ingest.scan(src)
    if videos:
        raise ValueError(f"{src} holds {len(videos)} video(s) (e.g. {videos[0].name}); predict reads images: "
                         f"sample them first with `python -m bdd_engine ingest --src {src} --out FRAMES`, "
                         f"then predict on FRAMES/frames")
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(ingest.IMAGE_SUFFIXES)}) under {src}")
    skipped: list[dict[str, str]] = []
    rows = ingest.image_rows(ingest.unique(images, lambda p: p.name, skipped), skipped, progress)
    frames = train.predict(weights, rows["image_path"].tolist(), conf=conf, device=device, imgsz=imgsz,
                           batch=batch, progress=progress, backend=backend, precision=precision)
    path, _ = train.save_predictions(frames, out_json)
    return path, frames, skipped


def refuse_inside(src: str | os.PathLike, out: str | os.PathLike, command: str, example: str,
                  src_flag: str = "--src") -> None:
    """Raise :class:`checkpoint.FolderRefused` when ``out`` is ``src`` or lies inside it: the command
    would write among its inputs (an input overwritten, or its outputs read as inputs next time),
    ``--force`` or not. ``example``: a name for the suggested path beside ``src``; ``src_flag``: the
    command's flag for ``src``."""
    s, o = Path(src).resolve(), Path(out).resolve()
    if o == s or s in o.parents:
        raise FolderRefused(f"--out {out} is inside {src_flag} {src}: {command} never writes among its inputs "
                            f"(--force or not); pass a path outside it, e.g. {s.parent / (s.name + example)}")


def refuse_out(src: str | os.PathLike, out_json: Path) -> None:
    """``predict``'s ``--out``: not inside ``src`` (:func:`refuse_inside`) and not a folder."""
    refuse_inside(src, out_json, "predict", "_predictions.json")
    if out_json.is_dir():
        raise FolderRefused(f"--out {out_json} is a folder; predict writes one JSON file: pass a file path, "
                            f"e.g. {out_json / 'predictions.json'}")
