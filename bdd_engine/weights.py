"""Local model weights: where each lives under ``weights/`` and the one error when absent.

Nothing in bdd_engine downloads weights at run time. ``./setup.sh --weights`` (online)
fills ``weights/`` from these sources; offline, every consumer calls :func:`require`,
which raises one actionable message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bdd_engine.env import PROJECT_ROOT

WEIGHTS_DIR = Path(os.environ.get("BDD_WEIGHTS_DIR", PROJECT_ROOT / "weights"))
# Written by `python -m bdd_engine stand-in-weights` (bdd_engine.standin) beside RANDOM weights.
STAND_IN_MARKER = "STAND_IN.json"

# name -> (path under weights/, source used by setup.sh, what it is for)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "yolov8m": ("yolov8m.pt", "github.com/ultralytics/assets releases: yolov8m.pt", "§4 COCO-initialised detector (full)"),
    "clip": ("clip-vit-b-32/open_clip_pytorch_model.bin", "hf: laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "§2/§6 image embeddings (full)"),
    "dinov2": ("dinov2-small", "hf: facebook/dinov2-small", "§2/§6 image embeddings (optional toggle)"),
    "grounding-dino": ("grounding-dino-tiny", "hf: IDEA-Research/grounding-dino-tiny", "§7 open-vocabulary boxes (gsam2)"),
    "sam2": ("sam2.1-hiera-tiny", "hf: facebook/sam2.1-hiera-tiny", "§7 box → mask refinement (gsam2)"),
    "yolo26n": ("yolo26n.pt", "github.com/ultralytics/assets releases: yolo26n.pt",
                "Ultralytics' AMP self-check on GPU (without it AMP is off)"),
}


# The one fix every missing-weights message names.
HINT = ("run `./setup.sh --weights` on a machine with internet access to fetch them into weights/, or copy "
        "them there (the offline demo profile does not need them: `make demo`)")


class MissingWeightsError(FileNotFoundError):
    """Raised when a model's local weights are absent (we never fetch them at run time)."""


def path(name: str) -> Path:
    return WEIGHTS_DIR / REGISTRY[name][0]


def require(name: str) -> Path:
    """Path of ``name``'s weights, or MissingWeightsError naming ``./setup.sh --weights``."""
    p = path(name)
    if not p.exists():
        rel, source, purpose = REGISTRY[name]
        raise MissingWeightsError(
            f"{name} weights not found at {p} (needed for {purpose}). Run `./setup.sh --weights` on a machine "
            f"with internet access (source: {source}), or copy the file/folder to that path. "
            "The offline demo profile does not need them: `make demo`."
        )
    return p


def missing() -> list[str]:
    return [n for n in REGISTRY if not path(n).exists()]


def stand_in_entry(p: str | os.PathLike) -> dict | None:
    """The ``STAND_IN.json`` entry of weights file/folder ``p`` (the nearest marker above it
    lists it: built by ``stand-in-weights``, RANDOM values), or None (real weights, or absent)."""
    p = Path(p).resolve()
    for folder in p.parents:
        marker = folder / STAND_IN_MARKER
        if marker.is_file():
            return json.loads(marker.read_text()).get("files", {}).get(p.relative_to(folder).as_posix())
    return None
