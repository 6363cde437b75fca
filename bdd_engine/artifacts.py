"""Readers of the section checkpoints: what one section hands to the next.

Every function takes the outputs folder (``cfg.out``), never the whole config, so the
explorer, the case study and the section runners read the same files the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bdd_engine import bdd
from bdd_engine.sections import SECTIONS, turn_folder


def turn_dir(out: Path, turn: int = 1) -> Path:
    """A flywheel turn's outputs: ``out`` for turn 1, ``out/turn<t>`` after (its §5–§8, runs/, figures/)."""
    return Path(out) / turn_folder(turn)


def section_dir(out: Path, n: int, turn: int = 1) -> Path:
    return turn_dir(out, turn) / SECTIONS[n]


def load_json(out: Path, n: int, rel: str, turn: int = 1) -> Any:
    return json.loads((section_dir(out, n, turn) / rel).read_text())


def read_df(out: Path, n: int, rel: str, turn: int = 1) -> pd.DataFrame:
    """A section's table; CSV keeps BDD values like ``undefined`` and names as strings."""
    p = section_dir(out, n, turn) / rel
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    return pd.read_csv(p, keep_default_na=False, na_values=[""])


def load_gt(out: Path, n: int, which: str) -> list[dict[str, Any]]:
    """Ground-truth BDD frames a section wrote (e.g. ``load_gt(out, 3, "eval")``)."""
    return bdd.load_frames(section_dir(out, n) / f"gt_{which}.json")


def load_embeddings(out: Path) -> tuple[np.ndarray, list[str]]:
    """§2's embeddings: an (N, D) float32 memmap, L2-normalised rows, and the N frame names."""
    meta = load_json(out, 2, "embeddings.json")
    path = Path(out) / meta["path"]
    names = json.loads((path.parent / "names.json").read_text())
    return np.load(path, mmap_mode="r"), names


def iter0_weights(out: Path) -> Path:
    """§4's trained weights (a .pt under ``runs/iter0``)."""
    return Path(out) / load_json(out, 4, "weights.json")["weights"]


def registry(out: Path, turn: int = 1) -> dict[str, Any]:
    """A turn's model registry (§8's ``runs/registry.json``: promoted run, its weights, gates)."""
    return json.loads((turn_dir(out, turn) / "runs" / "registry.json").read_text())


def start_weights(out: Path, turn: int = 1) -> Path:
    """The model a turn starts from (its iter0 and teacher): §4's iter0 for turn 1, else the
    weights turn t-1's registry promoted (paths in registries are relative to ``out``)."""
    return iter0_weights(out) if int(turn) == 1 else Path(out) / registry(out, int(turn) - 1)["weights"]


def run_card(weights: Path) -> dict[str, Any]:
    """The run card beside a training run's weights (``runs/<run>/weights/best.pt`` → ``runs/<run>/run_card.json``)."""
    p = Path(weights).parent.parent / "run_card.json"
    return json.loads(p.read_text()) if p.exists() else {}


def image_sizes(frames: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """name → (width, height) in pixels, as §1 measured them (frames.csv / pools.csv columns)."""
    return {n: (int(w), int(h)) for n, w, h in zip(frames["name"], frames["width"], frames["height"])}
