"""det_20 → YOLO detection dataset (what Ultralytics trains on).

Layout written under ``out_dir``::

    images/<split>/<name>.jpg   -> symlink to the original (copy if links are unsupported)
    labels/<split>/<name>.txt   one "class cx cy w h" line per box, normalised to [0, 1]
    data.yaml                   relative paths (no ``path:`` key: resolves from its folder)

Class ids follow the official BDD order (bdd.CLASSES). Ignore-mapped and ``crowd``
boxes are *not* training targets (they are ignore regions in eval). Boxes are clipped
to the image; boxes that are degenerate after clipping are dropped and counted.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from bdd_engine.bdd import CLASSES, boxes_table
from bdd_engine.checkpoint import atomic_write_text
from bdd_engine.geometry import image_size

MIN_BOX_PX = 1.0  # a box narrower or shorter than this (after clipping) is not a target


def yolo_lines(boxes, width: int, height: int, counts: Counter) -> list[str]:
    """Rows of a boxes_table for one frame → YOLO txt lines (normalised cxcywh)."""
    lines = []
    for r in boxes.itertuples(index=False):
        if not all(math.isfinite(v) for v in (r.x1, r.y1, r.x2, r.y2)):
            counts["non-finite box dropped"] += 1  # a 'nan' line makes Ultralytics drop the whole image
            continue
        if r.ignore or r.crowd:
            counts["ignore/crowd excluded"] += 1
            continue
        x1, y1 = min(max(r.x1, 0.0), width), min(max(r.y1, 0.0), height)
        x2, y2 = min(max(r.x2, 0.0), width), min(max(r.y2, 0.0), height)
        if (x1, y1, x2, y2) != (r.x1, r.y1, r.x2, r.y2):
            counts["clipped to image"] += 1
        if x2 - x1 < MIN_BOX_PX or y2 - y1 < MIN_BOX_PX:
            counts["degenerate dropped"] += 1
            continue
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        lines.append(f"{r.class_id} {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
        counts["boxes written"] += 1
    return lines


def _link(src: Path, dst: Path) -> str:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.symlink(os.path.abspath(src), dst)
        return "linked"
    except OSError:  # e.g. filesystems without symlinks: copy (never modify the source)
        shutil.copyfile(src, dst)
        return "copied"


def export_yolo(splits: Mapping[str, Sequence[Mapping[str, Any]]], image_paths: Mapping[str, str | os.PathLike],
                out_dir: str | os.PathLike, image_wh: tuple[int, int] | Mapping[str, tuple[int, int]] | None = None,
                val_split: str = "val") -> tuple[Path, Counter]:
    """Write a YOLO dataset for ``splits`` (split name → BDD frames with labels).

    ``image_wh``: (width, height) in pixels of every frame, or a mapping frame name →
    (width, height) (§1 measured each image), or None to read each image's header. Each
    frame is normalised by its own size, so mixed sizes are exported correctly. Frames
    without boxes get an empty label file (Ultralytics treats them as background).
    Returns (data.yaml path, counts of boxes written / clipped / dropped / excluded).
    """
    out = Path(out_dir)
    counts: Counter = Counter()

    def size_of(name: str) -> tuple[int, int]:
        if isinstance(image_wh, tuple):
            return image_wh
        if image_wh is not None and name in image_wh:
            return tuple(image_wh[name])
        return image_size(image_paths[name])
    for split, frames in splits.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        boxes = boxes_table(frames, counts)
        by_name = dict(tuple(boxes.groupby("name", sort=False))) if len(boxes) else {}
        for fr in frames:
            name = fr["name"]
            if name not in image_paths or not image_paths[name]:
                counts["frames without image skipped"] += 1
                continue
            counts[_link(Path(image_paths[name]), out / "images" / split / name)] += 1
            fb = by_name.get(name)
            lines = yolo_lines(fb, *size_of(name), counts) if fb is not None else []
            stem = name.rsplit(".", 1)[0]
            (out / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            counts["frames"] += 1
    data = {
        "train": "images/train",
        "val": f"images/{val_split}",
        "nc": len(CLASSES),
        "names": {i: c for i, c in enumerate(CLASSES)},
    }
    yaml_path = out / "data.yaml"
    atomic_write_text(yaml_path, yaml.safe_dump(data, sort_keys=False))
    return yaml_path, counts
