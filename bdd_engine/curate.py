"""§2 Curate: slice analytics over the collected frames and a 2-D map of the embeddings.

A *slice* is one weather x timeofday x scene combination (``bdd.slice_key``). This
module counts them (the slice index), measures how imbalanced they are, and draws:
``slice_distribution.png`` (stacked weather x timeofday bars), ``slice_long_tail.png``
(every slice by count, log scale) and ``embedding_map.png`` (2-D projection of the
embeddings coloured by slice). Writing goes through a ``checkpoint.SectionWriter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bdd_engine.bdd import ATTRIBUTE_VALUES
from bdd_engine.slices import slice_index

MAP_METHODS = ("pca", "tsne", "umap")
TOD_COLORS = {"daytime": "#f2b705", "dawn/dusk": "#d9622b", "night": "#1f3a93", "undefined": "#9e9e9e"}


# ----------------------------------------------------------------------------- analytics
def imbalance_stats(index: pd.DataFrame, *, small: int, n_rarest: int = 5) -> dict[str, Any]:
    """Imbalance figures of a :func:`slice_index` table.

    ``small``: a slice with fewer frames than this counts as small.
    ``rarest_operational``: the ``n_rarest`` smallest slices with no "undefined"
    attribute (conditions an ODD would name). ``effective_slices`` = exp(entropy) of
    the slice shares (= number of equally common slices with the same entropy);
    ``imbalance_ratio`` = largest / smallest slice count.
    """
    n = index["n_frames"].to_numpy(float)
    total = n.sum()
    p = n / total if total else n
    op = index[~index["slice"].str.contains("undefined", regex=False)]
    rare = op.sort_values(["n_frames", "slice"]).head(n_rarest)
    top = index.iloc[0] if len(index) else None
    return {
        "n_frames": int(total),
        "n_slices": int(len(index)),
        "most_common_slice": None if top is None else str(top["slice"]),
        "most_common_share": None if top is None else float(top["share"]),
        "rarest_operational": [{"slice": str(r.slice), "n_frames": int(r.n_frames)} for r in rare.itertuples()],
        "small_threshold": int(small),
        "n_slices_below_small": int((n < small).sum()),
        "share_frames_in_small_slices": float(n[n < small].sum() / total) if total else 0.0,
        "imbalance_ratio": float(n.max() / n.min()) if len(n) else float("nan"),
        "effective_slices": float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())) if len(n) else 0.0,
    }


# ----------------------------------------------------------------------------- figures
def slice_distribution_figure(frames: pd.DataFrame, title_note: str = "") -> Any:
    """Stacked bars: frames per weather (x, most frequent first), stacked by time of day."""
    import matplotlib.pyplot as plt

    ct = pd.crosstab(frames["weather"].fillna("missing"), frames["timeofday"].fillna("missing"))
    ct = ct.loc[ct.sum(axis=1).sort_values(ascending=False).index]
    tods = [t for t in ATTRIBUTE_VALUES["timeofday"] if t in ct.columns] + [t for t in ct.columns if t not in TOD_COLORS]
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = np.zeros(len(ct))
    for t in tods:
        ax.bar(ct.index, ct[t].to_numpy(), bottom=bottom, label=t, color=TOD_COLORS.get(t, "#555555"))
        bottom += ct[t].to_numpy()
    for x, total in enumerate(bottom):
        ax.text(x, total, f"{int(total)}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("frames")
    ax.set_xlabel("weather")
    ax.set_title(f"Frames by weather x time of day{title_note}")
    ax.legend(title="time of day", fontsize=8)
    ax.tick_params(axis="x", rotation=20)
    ax.margins(y=0.1)
    fig.tight_layout()
    return fig


def long_tail_figure(index: pd.DataFrame, *, small: int, n_labels: int = 3, title_note: str = "") -> Any:
    """Every slice's frame count, sorted (log y); slices below ``small`` in red; a box
    names the ``n_labels`` largest and smallest slices."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = index["n_frames"].to_numpy()
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(np.arange(len(n)), n, width=0.9, color=np.where(n < small, "#c0392b", "#2c7fb8"))
    ax.axhline(small, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlim(-0.7, len(n) - 0.3)
    ax.set_xlabel(f"slice rank (weather | timeofday | scene), {len(n)} slices")
    ax.set_ylabel("frames (log)")
    below = int((n < small).sum())
    ax.set_title(f"Slice long tail: {below} of {len(n)} slices have < {small} frames{title_note}")
    ax.legend(handles=[Patch(color="#2c7fb8", label=f">= {small} frames"), Patch(color="#c0392b", label=f"< {small} frames")],
              loc="lower left", fontsize=8)
    head = [f"#{i + 1} {index['slice'].iloc[i]}: {n[i]}" for i in range(min(n_labels, len(n)))]
    tail = [f"#{i + 1} {index['slice'].iloc[i]}: {n[i]}" for i in range(max(n_labels, len(n) - n_labels), len(n))]
    ax.text(0.99, 0.97, "\n".join(["largest:", *head, "smallest:", *tail]), transform=ax.transAxes, ha="right",
            va="top", multialignment="left", fontsize=7, family="monospace", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#999999"})
    ax.set_ylim(0.8, max(n.max() if len(n) else 1, small) * 30)  # headroom for the text box
    fig.tight_layout()
    return fig


def project_2d(emb: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(N, D) → (N, 2) float64. ``method``: ``pca`` (deterministic), ``tsne`` (PCA init,
    random_state ``seed``) or ``umap`` (needs umap-learn; random_state ``seed``)."""
    x = np.asarray(emb, np.float32)
    if method == "pca" or len(x) < 5:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, svd_solver="full").fit_transform(x).astype(np.float64)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
                    learning_rate="auto").fit_transform(x).astype(np.float64)
    if method == "umap":
        try:
            import umap  # type: ignore
        except ImportError:
            raise ValueError("curate_map_method 'umap' needs the umap-learn package; use 'pca' or 'tsne'") from None
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x).astype(np.float64)
    raise ValueError(f"unknown map method {method!r}; choose one of {MAP_METHODS}")


def embedding_map(emb: np.ndarray, names: Sequence[str], frames: pd.DataFrame, method: str, *,
                  max_points: int, seed: int, top_slices: int = 9) -> pd.DataFrame:
    """2-D coordinates of (a seeded subsample of) the embedded frames with their slice.

    ``emb``: (N, D) rows for ``names``; ``frames``: frame table (name, slice);
    ``method``: :func:`project_2d`'s; above ``max_points`` frames a sample drawn with
    ``seed`` is projected. Returns columns name, x, y, slice, colour_group (the slice for the ``top_slices``
    most frequent slices among the plotted frames, else "other"). All-zero rows
    (unreadable images) and frames without a slice are left out.
    """
    row_of = {n: i for i, n in enumerate(names)}
    f = frames.dropna(subset=["slice"])
    f = f[f["name"].isin(row_of)].sort_values("name").reset_index(drop=True)
    rows = np.asarray([row_of[n] for n in f["name"]], np.int64)
    nz = np.asarray([np.any(emb[r]) for r in rows], bool) if len(rows) else np.zeros(0, bool)
    f, rows = f[nz].reset_index(drop=True), rows[nz]
    if len(f) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(f), size=max_points, replace=False))
        f, rows = f.iloc[pick].reset_index(drop=True), rows[pick]
    if len(f) < 3:
        raise ValueError(f"embedding map needs >= 3 embedded frames with a slice, got {len(f)}")
    xy = project_2d(np.asarray(emb[rows]), method, seed)
    top = f["slice"].value_counts().sort_index().sort_values(ascending=False, kind="stable").index[:top_slices]
    return pd.DataFrame({"name": f["name"], "x": xy[:, 0], "y": xy[:, 1], "slice": f["slice"],
                         "colour_group": np.where(f["slice"].isin(top), f["slice"], "other")})


def embedding_map_figure(coords: pd.DataFrame, embedder_name: str, method: str, title_note: str = "") -> Any:
    """Scatter of :func:`embedding_map` coordinates, one colour per top slice, grey = other."""
    import matplotlib.pyplot as plt

    groups = [g for g in coords["colour_group"].value_counts().index if g != "other"]
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 6))
    other = coords[coords["colour_group"] == "other"]
    if len(other):
        ax.scatter(other["x"], other["y"], s=4, c="#c8c8c8", label=f"other slices ({len(other)})", linewidths=0)
    for i, g in enumerate(groups):
        d = coords[coords["colour_group"] == g]
        ax.scatter(d["x"], d["y"], s=6, color=cmap(i % 10), label=f"{g} ({len(d)})", linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"Embedding map ({embedder_name}, {method.upper()}), {len(coords)} frames{title_note}")
    ax.legend(fontsize=6, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- §2 driver
@dataclass
class CurateResult:
    index: pd.DataFrame
    stats: dict[str, Any]
    coords: pd.DataFrame | None
    figures: dict[str, Any] = field(default_factory=dict)  # file name -> matplotlib Figure


def curate(frames: pd.DataFrame, emb: np.ndarray | None = None, emb_names: Sequence[str] | None = None, *,
           embedder_name: str, small_slice: int, map_method: str, map_points: int, seed: int,
           synthetic: bool) -> CurateResult:
    """Slice index + imbalance stats + the three §2 figures.

    ``frames``: frame table (name, weather, timeofday, scene, slice). ``emb`` (N, D) with
    ``emb_names`` (row i ↔ name i): the embedding map is drawn only when both are given;
    ``embedder_name`` titles it. ``small_slice``: a slice with fewer frames counts as small
    (stats and long-tail figure). ``map_method``: pca | tsne | umap (:func:`project_2d`);
    ``map_points``: frames drawn on the map (a ``seed``-ed sample above this).
    ``synthetic``: figure titles say SYNTHETIC data.
    """
    note = " — SYNTHETIC data" if synthetic else ""
    idx = slice_index(frames)  # slices.slice_index
    stats = imbalance_stats(idx, small=small_slice)
    stats["n_frames_without_slice"] = int(frames["slice"].isna().sum())
    figs = {"slice_distribution.png": slice_distribution_figure(frames, note),
            "slice_long_tail.png": long_tail_figure(idx, small=small_slice, title_note=note)}
    coords = None
    if emb is not None and emb_names is not None:
        coords = embedding_map(emb, emb_names, frames, map_method, max_points=map_points, seed=seed)
        figs["embedding_map.png"] = embedding_map_figure(coords, embedder_name or "embeddings", map_method, note)
    return CurateResult(idx, stats, coords, figs)


def write_artifacts(result: CurateResult, writer: Any) -> None:
    """slice_index.csv, imbalance.json, embedding_map.csv (if any) + figures/*.png via a
    ``checkpoint.SectionWriter``; figures are closed after saving."""
    import matplotlib.pyplot as plt

    writer.write_df("slice_index.csv", result.index)
    writer.write_json("imbalance.json", result.stats)
    if result.coords is not None:
        writer.write_df("embedding_map.csv", result.coords.round(6))
    for name, fig in result.figures.items():
        writer.save_fig(name, fig)
        plt.close(fig)
