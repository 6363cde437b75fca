"""The demo's pretrained init: a detector trained once on a disjoint synthetic world.

The full profile fine-tunes COCO YOLOv8m: a model that knows every class in ordinary
conditions and is weak in adverse ones. The demo gets the same shape from
``python -m bdd_engine pretrain`` (profile ``pretrain``: another seed, a COCO-like
condition mix, see profiles/pretrain.yaml for the mix and why). The product is shipped in
the repo (``bdd_engine/models/<name>.pt``, a few MB) next to its run card
(``<name>.json``: command, world hash and mix, learning curve, wall time, commit, sha256);
tests/test_pretrain.py checks the committed file against the recorded hash.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

from bdd_engine import bdd, collect, synth, train
from bdd_engine.checkpoint import atomic_path, atomic_write_json, sha256_file
from bdd_engine.yolo import export_yolo

MODELS_DIR = train.MODELS_DIR
MAX_SHIPPED_BYTES = 8 * 1024 * 1024  # the repo ships a model only up to this size (the YOLOv8n-scale teacher is ~6 MB)


# What each offline-built model stands in for (the run card's "what"), by profile.
WHAT = {
    "pretrain": "SYNTHETIC pretrained init for the demo (a stand-in for COCO weights; not a BDD100K model)",
    "teacher": "SYNTHETIC teacher labeler for the demo (a stand-in for Grounded-SAM-2; not a BDD100K model)",
}


def command_for(profile: str, name: str, default_name: str) -> str:
    """The command that rebuilds a shipped model (its run card's ``command``)."""
    cmd = "python -m bdd_engine pretrain"
    if profile != "pretrain":
        cmd += f" --profile {profile}"
    return cmd + (f" --name {name}" if name != default_name else "")


def learning_curve(results_csv: Path) -> list[dict[str, float]]:
    """Ultralytics' per-epoch ``results.csv`` → [{epoch, mAP50, mAP50_95}] on the val split."""
    rows = []
    with open(results_csv, newline="") as fh:
        for r in csv.DictReader(fh):
            r = {k.strip(): v for k, v in r.items()}
            rows.append({"epoch": int(float(r["epoch"])), "mAP50": round(float(r["metrics/mAP50(B)"]), 4),
                         "mAP50_95": round(float(r["metrics/mAP50-95(B)"]), 4)})
    return rows


def world_frames(root: Path, label_files: list[str], image_sets: list[str]) -> tuple[dict[str, list], dict[str, str]]:
    """(split → BDD frames, name → image path) of a synthetic world; ``det_<split>.json`` per split."""
    index = bdd.index_images(root, image_sets)
    splits = {split: [f for f in bdd.load_frames(path) if f["name"] in index]
              for split, path in collect.label_paths(root, label_files)}
    return splits, {n: str(p) for n, p in index.items()}


def build(spec: train.TrainSpec, world: Path, world_info: dict[str, Any], out_dir: Path, name: str,
          label_files: list[str], image_sets: list[str], image_wh: tuple[int, int], install: bool,
          what: str = WHAT["pretrain"], command: str = "python -m bdd_engine pretrain") -> dict[str, Any]:
    """Train ``spec`` on every frame of ``world`` (val split = learning curve) and, when
    ``install``, copy the weights to ``bdd_engine/models/<name>.pt`` with the run card
    ``<name>.json``. ``image_wh``: the world's (width, height) in pixels. Returns the card."""
    t0 = time.time()
    splits, paths = world_frames(world, label_files, image_sets)
    data_yaml, counts = export_yolo({"train": splits["train"], "val": splits["val"]}, paths, out_dir / "yolo", image_wh)
    weights = train.train(spec, data_yaml, out_dir / "runs", name=name, data_hash=world_info["world_hash"])
    run_dir = weights.parent.parent
    run_card = json.loads((run_dir / "run_card.json").read_text())
    card = {
        "name": name, "what": what, "command": command, "profile": spec.profile,
        "world": {**world_info, "frames": {k: len(v) for k, v in splits.items()}},
        "model": spec.model, "imgsz": spec.imgsz, "epochs": spec.epochs, "precision": run_card.get("precision"),
        "learning_curve": learning_curve(run_dir / "results.csv"),
        "boxes_exported": dict(counts), "wall_time_s": round(time.time() - t0, 1),
        "train_wall_time_s": run_card.get("wall_time_s"), "git_commit": run_card.get("git_commit"),
        "torch": run_card.get("torch"), "ultralytics": run_card.get("ultralytics"),
        "bytes": weights.stat().st_size, "sha256": sha256_file(weights),
    }
    if install:
        if card["bytes"] > MAX_SHIPPED_BYTES:
            raise ValueError(f"{weights} is {card['bytes'] / 2**20:.1f} MB, over the {MAX_SHIPPED_BYTES / 2**20:.0f} MB "
                             "the repo ships; keep it under weights/ instead")
        with atomic_path(MODELS_DIR / f"{name}.pt") as tmp:
            shutil.copyfile(weights, tmp)
        atomic_write_json(MODELS_DIR / f"{name}.json", card)
    return card
