"""Image files on disk: size, content hash and decodability, checked once and cached.

Why: a truncated or zero-byte JPEG must be caught in §1 and named, not crash §5 inside a
data loader with a message that names no file (``image file is truncated``, or a
misleading ``No module named 'pi_heif'`` from Ultralytics' format fallback).

The check reads each file once: sha256 of its bytes (the section's input provenance)
and a cheap full decode — for JPEG, libjpeg's DCT scaling (``Image.draft``) decodes at
1/8 size, which still walks every entropy-coded byte, so truncation is caught at a
fraction of a full decode. Results are cached by ``(path, size, mtime_ns)``: a second
§1 on unchanged images decodes nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError
from tqdm.auto import tqdm


CHECK_COLUMNS = ["path", "size", "mtime_ns", "sha256", "ok", "width", "height", "error"]


def check_image(path: str | os.PathLike) -> dict:
    """One row of :data:`CHECK_COLUMNS` for one file; never raises for a bad image.

    ``width``/``height`` are pixels from the header (0 when unreadable); ``error`` says
    why a file is not ``ok`` (empty, not an image, truncated, ...)."""
    p = Path(path)
    row = {"path": str(p), "size": 0, "mtime_ns": 0, "sha256": "", "ok": False, "width": 0, "height": 0, "error": ""}
    try:
        st = p.stat()
        row.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        data = p.read_bytes()
    except OSError as e:
        row["error"] = f"cannot read: {e.strerror or e}"
        return row
    row["sha256"] = hashlib.sha256(data).hexdigest()
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # some library switched PIL to silently grey-fill
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images would pass the check")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if im.format == "JPEG":
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
        row.update(ok=True, width=int(w), height=int(h))
    except UnidentifiedImageError:
        row["error"] = "not an image PIL can identify"
    except (OSError, ValueError, SyntaxError) as e:  # truncated data, broken headers
        row["error"] = f"cannot decode: {e}"
    return row


def check_images(paths: Sequence[str | os.PathLike], cache: pd.DataFrame | None = None, workers: int = 2,
                 progress: bool = True) -> pd.DataFrame:
    """:func:`check_image` for every path (threads: PIL and hashlib release the GIL).

    ``cache``: a previous result; rows whose path, size and mtime_ns are unchanged are
    reused without reading the file. Returns one row per path, in input order."""
    known: dict[tuple[str, int, int], dict] = {}
    if cache is not None and len(cache):
        known = {(r["path"], int(r["size"]), int(r["mtime_ns"])): r for r in cache.to_dict("records")}
    rows: list[dict | None] = []
    todo: list[int] = []
    for i, p in enumerate(map(str, paths)):
        try:
            st = os.stat(p)
            hit = known.get((p, st.st_size, st.st_mtime_ns))
        except OSError:
            hit = None
        rows.append(hit)
        if hit is None:
            todo.append(i)
    if todo:
        with ThreadPoolExecutor(max(1, workers)) as ex:
            it = ex.map(check_image, [str(paths[i]) for i in todo])
            for i, row in zip(todo, tqdm(it, total=len(todo), desc="check images", mininterval=2, disable=not progress)):
                rows[i] = row
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)


def load_cache(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError):
        return None


def merge_cache(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """Cache rows of ``new`` plus ``old`` rows for other paths (other image sets stay cached)."""
    if old is None or not len(old):
        return new.reset_index(drop=True)
    keep = old[~old["path"].isin(set(new["path"]))]
    return pd.concat([keep, new], ignore_index=True)


def sizes_of(checks: pd.DataFrame, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """name → (width, height) for the readable rows of ``checks`` (row order = ``names``)."""
    return {n: (int(w), int(h)) for n, w, h, ok in zip(names, checks["width"], checks["height"], checks["ok"]) if ok}
