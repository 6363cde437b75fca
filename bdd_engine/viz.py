"""Shared drawing helpers: boxes on images and captioned thumbnail grids.

Generic on purpose (no BDD knowledge): callers pass paths, captions and boxes. Boxes are
xyxy **pixels** of the image they are drawn on. Figures are matplotlib ``Figure``
objects; saving is the caller's job (``checkpoint.atomic_save_fig``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

PLACEHOLDER_RGB = (90, 90, 90)


def draw_boxes(
    image: Image.Image | np.ndarray | str | os.PathLike,
    boxes: Any,
    labels: Sequence[str] | None = None,
    colors: Sequence[Any] | Any = (255, 64, 64),
    width: int = 2,
) -> Image.Image:
    """Return an RGB copy of ``image`` with ``boxes`` drawn on it.

    ``boxes``: (N, 4) array-like of xyxy pixels; ``labels``: N strings drawn at each
    box's top-left corner (optional); ``colors``: one RGB tuple / colour name, or N of them.
    """
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            img = im.convert("RGB")
    elif isinstance(image, np.ndarray):
        img = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    else:
        img = image.convert("RGB").copy()
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    per_box = isinstance(colors, (list, np.ndarray)) and len(colors) == len(b) and not _is_color(colors)
    d = ImageDraw.Draw(img)
    for i, (x1, y1, x2, y2) in enumerate(b):
        c = colors[i] if per_box else colors
        c = tuple(c) if isinstance(c, (list, np.ndarray)) else c
        d.rectangle((x1, y1, x2, y2), outline=c, width=width)
        if labels is not None and labels[i]:
            tw = d.textlength(str(labels[i]))
            ty = max(0.0, y1 - 11)
            d.rectangle((x1, ty, x1 + tw + 2, ty + 11), fill=c)
            d.text((x1 + 1, ty), str(labels[i]), fill=(0, 0, 0))
    return img


def _is_color(c: Any) -> bool:
    return len(c) in (3, 4) and all(isinstance(v, (int, np.integer)) for v in c)


def thumb_grid(
    image_paths: Sequence[str | os.PathLike | Image.Image],
    captions: Sequence[str] | None = None,
    ncols: int = 10,
    thumb_wh: tuple[int, int] = (160, 90),
    caption_colors: Sequence[str] | None = None,
    title: str | None = None,
    fontsize: float = 5.5,
    caption_lines: int = 2,
    dpi: int = 110,
) -> Any:
    """Mosaic of thumbnails with a caption under each; returns a matplotlib Figure.

    Images are resized to exactly ``thumb_wh`` (w, h) px. A missing or unreadable image
    becomes a grey tile captioned "[unreadable]" (never raises mid-grid). Rendering is
    one ``imshow`` + one text per tile, so 100 tiles take well under a second.
    """
    import matplotlib.pyplot as plt

    n = len(image_paths)
    if n == 0:
        raise ValueError("thumb_grid: no images")
    captions = list(captions) if captions is not None else [""] * n
    if len(captions) != n:
        raise ValueError(f"thumb_grid: {n} images but {len(captions)} captions")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    tw, th = thumb_wh
    cap_h = int(round(fontsize * dpi / 72 * 1.25 * caption_lines)) + 4  # px for the caption lines
    pad = 4
    cw, ch = tw + pad, th + cap_h + pad
    canvas = np.full((nrows * ch, ncols * cw, 3), 255, np.uint8)
    for i, src in enumerate(image_paths):
        r, c = divmod(i, ncols)
        tile = _load_thumb(src, (tw, th))
        if tile is None:
            tile = np.full((th, tw, 3), PLACEHOLDER_RGB, np.uint8)
            captions[i] = f"[unreadable] {captions[i]}"
        canvas[r * ch: r * ch + th, c * cw: c * cw + tw] = tile
    fig = plt.figure(figsize=(canvas.shape[1] / dpi, canvas.shape[0] / dpi + (0.3 if title else 0)), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1 if not title else canvas.shape[0] / (canvas.shape[0] + 0.3 * dpi)))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for i, cap in enumerate(captions):
        r, c = divmod(i, ncols)
        color = caption_colors[i] if caption_colors is not None else "black"
        ax.text(c * cw + 1, r * ch + th + 1, cap, fontsize=fontsize, va="top", ha="left", color=color,
                wrap=False, clip_on=True)
    if title:
        fig.suptitle(title, fontsize=9, y=0.998, va="top")
    return fig


def _load_thumb(src: Any, wh: tuple[int, int]) -> np.ndarray | None:
    try:
        if isinstance(src, Image.Image):
            im = src.convert("RGB")
        else:
            with Image.open(src) as f:
                im = f.convert("RGB")
        return np.asarray(im.resize(wh, Image.BILINEAR))
    except (OSError, ValueError, SyntaxError):
        return None


def ci_bars(labels: Sequence[str], values: Sequence[float], lo: Sequence[float], hi: Sequence[float],
            title: str, xlabel: str, highlight: Sequence[str] = (), zero_line: bool = False,
            series: Sequence[tuple[str, Sequence[float]]] = ()) -> Any:
    """Horizontal bars with 95% CI whiskers, one row per label (top row = first label).

    ``highlight``: labels drawn in red (e.g. the worst slice). ``series``: extra
    (name, values) drawn as markers on the same rows (e.g. control arms). NaN values
    are drawn as empty rows, never as zero.
    """
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(9, 0.32 * n + 1.4))
    y = np.arange(n)[::-1]
    v = np.asarray(values, float)
    colors = ["#d62728" if lab in set(highlight) else "#4c72b0" for lab in labels]
    ax.barh(y, np.nan_to_num(v), color=colors, alpha=0.85)
    err = np.vstack([np.clip(v - np.asarray(lo, float), 0, None), np.clip(np.asarray(hi, float) - v, 0, None)])
    ok = ~np.isnan(v) & ~np.isnan(err).any(axis=0)
    ax.errorbar(v[ok], y[ok], xerr=err[:, ok], fmt="none", ecolor="black", elinewidth=1, capsize=2)
    for (name, vals), marker in zip(series, ("o", "s", "^", "D")):
        ax.scatter(np.asarray(vals, float), y, marker=marker, s=22, zorder=3, label=name)
    if series:
        ax.legend(loc="lower right", fontsize=8)
    if zero_line:
        ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [str(s) for s in labels], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def heatmaps(panels: Sequence[tuple[str, Any]], xlabel: str, ylabel: str, title: str = "", ncols: int | None = None,
             panel_size: tuple[float, float] = (5.2, 4.6)):
    """Row-normalised count matrices side by side (colour = share of the row, counts written in).

    ``panels``: (panel title, pandas DataFrame of counts) pairs; rows/columns label the axes.
    """
    import matplotlib.pyplot as plt

    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (head, cm) in zip(axes.flat, panels):
        counts = cm.to_numpy(float)
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                if counts[i, j] or cm.shape[0] <= 8:  # large matrices: zeros left blank so the errors stand out
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(cm.shape[1]), cm.columns, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(cm.shape[0]), cm.index, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(head, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
