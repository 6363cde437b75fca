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
from bdd_engine.sections import SECTIONS


def section_dir(out: Path, n: int) -> Path:
    return Path(out) / SECTIONS[n]


def load_json(out: Path, n: int, rel: str) -> Any:
    return json.loads((section_dir(out, n) / rel).read_text())


def read_df(out: Path, n: int, rel: str) -> pd.DataFrame:
    """A section's table; CSV keeps BDD values like ``undefined`` and names as strings."""
    p = section_dir(out, n) / rel
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


def image_sizes(frames: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """name → (width, height) in pixels, as §1 measured them (frames.csv / pools.csv columns)."""
    return {n: (int(w), int(h)) for n, w, h in zip(frames["name"], frames["width"], frames["height"])}
