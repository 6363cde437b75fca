"""ODD slices, stratified collection, pools and the leakage check.

A *slice* is BDD's own frame attributes, verbatim: ``weather | timeofday | scene``
(two-attribute keys such as ``weather | timeofday`` are used for stratification).

Pools (§3) are disjoint by **drive group** (first hex block of the video name), because
frames of one drive are near-duplicates: an eval frame whose drive-mate is in train or
in the mining pool would flatter the model. Eval groups are reserved first; their
frames outside the eval quota become ``holdout`` (used nowhere), never train or pool.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from bdd_engine.bdd import SLICE_ATTRS, SLICE_SEP

STRATA = ("weather", "timeofday")


class LeakageError(AssertionError):
    """An eval drive group also appears in train or in the mining pool."""


def key(df: pd.DataFrame, attrs: Sequence[str] = SLICE_ATTRS) -> pd.Series:
    """Vectorised slice key for a frame table; NaN where any attribute is missing.

    Column-wise string concatenation (a row-wise ``agg`` took 32 s per 100K frames: hours
    for a 10M-frame mining pool); the keys are the same strings."""
    parts = df[list(attrs)]
    cols = [parts[a].fillna("").astype(str) for a in attrs]  # NaN rows are masked below
    out = cols[0]
    for c in cols[1:]:
        out = out + SLICE_SEP + c
    return out.where(parts.notna().all(axis=1))


def slice_index(df: pd.DataFrame, attrs: Sequence[str] = SLICE_ATTRS) -> pd.DataFrame:
    """One row per slice: ``slice``, the attribute values, ``n_frames``, ``share`` (of the
    frames that have a slice; frames with a missing attribute are left out — count them
    with ``key(df).isna()``) and ``n_<split>`` per split when ``df`` has a ``split``
    column. Most frequent first, ties by name, so the order is stable."""
    k = key(df, attrs)
    f = df.assign(slice=k)[k.notna()]
    counts = f["slice"].value_counts()
    out = counts.rename_axis("slice").reset_index(name="n_frames")
    for i, a in enumerate(attrs):
        out[a] = out["slice"].str.split(SLICE_SEP, regex=False).str[i]
    out["share"] = out["n_frames"] / max(int(out["n_frames"].sum()), 1)
    out = out.sort_values(["n_frames", "slice"], ascending=[False, True], kind="stable").reset_index(drop=True)
    out = out[["slice", *attrs, "n_frames", "share"]]
    if "split" in f.columns and f["split"].astype(str).str.len().gt(0).any():
        per = f.pivot_table(index="slice", columns="split", values="name" if "name" in f else "slice",
                            aggfunc="count", fill_value=0)
        per.columns = [f"n_{c}" for c in per.columns]
        out = out.merge(per.reset_index(), on="slice", how="left")
    return out


def _allocate(sizes: pd.Series, total: int, floor: int = 0) -> pd.Series:
    """Split ``total`` over strata ∝ size, each stratum >= min(floor, its size), never > its size.

    Largest-remainder rounding; deterministic (ties broken by stratum name).
    """
    sizes = sizes.sort_index()
    total = min(int(total), int(sizes.sum()))
    alloc = np.minimum(sizes.values, floor).astype(float)
    for _ in range(100):  # water-filling: give the rest ∝ size, capped by availability
        rest = total - alloc.sum()
        room = sizes.values - alloc
        if rest <= 1e-9 or room.sum() <= 0:
            break
        share = np.where(room > 0, sizes.values, 0).astype(float)
        add = np.minimum(room, rest * share / share.sum())
        alloc += add
        if add.sum() < 1e-9:
            break
    base = np.floor(alloc).astype(int)
    rem = total - base.sum()
    order = np.lexsort((sizes.index.astype(str), -(alloc - base)))
    for i in order:
        if rem <= 0:
            break
        if base[i] < sizes.values[i]:
            base[i] += 1
            rem -= 1
    return pd.Series(base, index=sizes.index)


def _shuffled(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Seeded permutation that does not depend on the input's row order."""
    df = df.sort_values("name", kind="stable")
    return df.iloc[np.random.default_rng(seed).permutation(len(df))]


def collect(frames: pd.DataFrame, total: int, floor: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """§1: stratified sample by weather x timeofday → (collected frames, per-stratum table).

    Each stratum gets a share ∝ its size in the source, at least ``floor`` frames (or all
    it has): rare conditions (fog, dawn/dusk) survive the cut. Frames without an image
    on disk are not eligible (the caller reports how many).
    """
    src = frames[frames["image_path"].astype(bool)].copy()
    src["stratum"] = key(src, STRATA).fillna("(missing)")
    alloc = _allocate(src.groupby("stratum").size(), total, floor)
    picked = []
    for i, (stratum, n) in enumerate(alloc.items()):
        picked.append(_shuffled(src[src["stratum"] == stratum], seed + i).head(int(n)))
    out = pd.concat(picked).sort_values("name", kind="stable").reset_index(drop=True)
    table = pd.DataFrame({"source": src.groupby("stratum").size(), "collected": alloc}).rename_axis("stratum").reset_index()
    table["share_source"] = table["source"] / table["source"].sum()
    table["share_collected"] = table["collected"] / max(table["collected"].sum(), 1)
    return out.drop(columns="stratum"), table.sort_values("source", ascending=False, kind="stable").reset_index(drop=True)


def eligible(confirm_n: Mapping[str, int], pool_n: Mapping[str, int], min_confirm: int,
             min_pool: int) -> list[str]:
    """The slices whose Δ can be both *confirmed* and *moved* (issue 24): >= ``min_confirm``
    confirmation frames (held-out drives, ``confirm_n``: slice -> count) AND >= ``min_pool``
    frames in the mining pool (``pool_n``), a real dose to mine. Counts only, never a model
    result; both thresholds inclusive. Sorted by name."""
    return sorted(s for s, n in confirm_n.items()
                  if int(n) >= int(min_confirm) and int(pool_n.get(s, 0)) >= int(min_pool))


def make_pools(frames: pd.DataFrame, train_size: int, eval_size: int, max_slices: int,
               golden_size: int, seed: int, confirm_n: Mapping[str, int] | None = None,
               min_confirm: int = 0, min_pool: int = 0) -> pd.DataFrame:
    """§3: assign every collected frame to ``eval``, ``train``, ``pool`` (mining) or ``holdout``.

    - eval: balanced over the *eligible* slices (:func:`eligible`: >= ``min_confirm``
      confirmation frames in ``confirm_n`` and >= ``min_pool`` frames left in the mining
      pool), at most ``max_slices`` of them, most frequent first (0 = no cap). The pool count
      depends on the eval reservation, so the set is a fixed point: assign, drop the slice
      left with the fewest pool frames if it has < ``min_pool``, re-assign; the set only
      shrinks, so it ends.
      ``confirm_n`` None: every slice counts as confirmable (the ``max_slices`` most frequent,
      the rule before issue 24). Equal quota each, rarest slice first so it is not starved,
      whole drive groups reserved;
    - train: stratified by weather x timeofday over the remaining groups, whole groups;
    - pool: everything else (unlabelled to us: its labels are read only to score
      auto-labels and for the oracle control);
    - frames whose ``origin`` is ``ingested`` (no labels, no attributes) are pool-only: they
      join the mining pool, or ``holdout`` when their drive group holds an eval frame;
    - golden: a fixed, slice-balanced subset of eval for label QA.
    Returns the frame table with columns ``pool`` and ``golden`` added.
    """
    unlabelled = frames["origin"].eq("ingested") if "origin" in frames.columns else pd.Series(False, frames.index)
    lab = frames[~unlabelled].copy()
    lab["slice"] = key(lab)
    order = list(slice_index(lab)["slice"])  # most frequent first
    cand = order if confirm_n is None else [s for s in order if int(confirm_n.get(s, 0)) >= int(min_confirm)]
    dropped: set[str] = set()
    while True:
        top = [s for s in cand if s not in dropped][: int(max_slices) or None]
        if not top:
            raise ValueError(f"no slice is eligible for the eval pool (>= {min_confirm} confirmation frames and "
                             f">= {min_pool} mining-pool frames); lower confirm_min_frames / eval_min_pool_frames, "
                             "or enlarge the world (synth_n_val / synth_n_train)")
        df, eval_groups = _assign(lab, top, train_size, eval_size, seed)
        pool_n = df.loc[df["pool"] == "pool", "slice"].value_counts()
        short = [s for s in top if int(pool_n.get(s, 0)) < int(min_pool)]
        if not short:
            break
        # one at a time, the thinnest first: dropping every short slice at once hands their eval quota to
        # the others, which then fall short in turn (on the demo world that cascade left 2 slices of 19)
        dropped.add(min(short, key=lambda s: (int(pool_n.get(s, 0)), s)))
    return _finish(df, eval_groups, frames[unlabelled], golden_size, seed)


def _assign(df: pd.DataFrame, top: list[str], train_size: int, eval_size: int,
            seed: int) -> tuple[pd.DataFrame, set[str]]:
    """eval (balanced over ``top``) / holdout / train / pool for the labelled frames ``df``;
    (the table with ``pool``, the eval drive groups)."""
    df = df.copy()
    df["pool"] = ""
    idx = slice_index(df)
    quota = {s: eval_size // max(len(top), 1) for s in top}
    for s in top[: eval_size - sum(quota.values())]:
        quota[s] += 1
    eval_groups: set[str] = set()
    order = _shuffled(df, seed)
    for s in sorted(top, key=lambda s: (int(idx.set_index("slice").loc[s, "n_frames"]), s)):
        taken = int(((df["pool"] == "eval") & (df["slice"] == s)).sum())
        for g in order.loc[(order["slice"] == s), "group"]:
            if taken >= quota[s]:
                break
            if g in eval_groups:
                continue
            eval_groups.add(g)
            members = df.index[(df["group"] == g) & (df["pool"] == "")]
            for i in members:  # drive-mates fill their own slice's quota, else are held out
                si = df.at[i, "slice"]
                n_si = int(((df["pool"] == "eval") & (df["slice"] == si)).sum())
                df.at[i, "pool"] = "eval" if si in quota and n_si < quota[si] else "holdout"
            taken = int(((df["pool"] == "eval") & (df["slice"] == s)).sum())

    rest = df[df["pool"] == ""].copy()
    rest["stratum"] = key(rest, STRATA).fillna("(missing)")
    gstrat = rest.groupby("group")["stratum"].agg(lambda x: x.value_counts().index[0])  # dominant stratum
    alloc = _allocate(rest.groupby("stratum").size(), train_size)
    groups = _shuffled(pd.DataFrame({"name": gstrat.index, "stratum": gstrat.values}), seed + 1)
    gsize = rest.groupby("group").size()
    got = {s: 0 for s in alloc.index}
    train_groups = []
    for g, s in zip(groups["name"], groups["stratum"]):
        # take a whole group only if that lands closer to the quota than stopping short
        if got.get(s, 0) + gsize[g] / 2 <= alloc.get(s, 0):
            train_groups.append(g)
            got[s] += int(gsize[g])
    df.loc[df["group"].isin(train_groups) & (df["pool"] == ""), "pool"] = "train"
    df.loc[df["pool"] == "", "pool"] = "pool"
    return df, eval_groups


def _finish(df: pd.DataFrame, eval_groups: set[str], unlabelled: pd.DataFrame, golden_size: int,
            seed: int) -> pd.DataFrame:
    """Ingested frames (pool, or holdout beside an eval drive), the golden subset, the leakage check."""
    if len(unlabelled):
        extra = unlabelled.copy()
        extra["slice"] = key(extra)
        extra["pool"] = np.where(extra["group"].isin(eval_groups), "holdout", "pool")
        df = pd.concat([df, extra], ignore_index=True)

    ev = _shuffled(df[df["pool"] == "eval"], seed + 2)
    ev["_r"] = ev.groupby("slice").cumcount()  # round-robin over slices → balanced golden set
    golden = set(ev.sort_values(["_r", "slice", "name"], kind="stable")["name"].head(golden_size))
    df["golden"] = df["name"].isin(golden)
    check_leakage(df)
    return df.sort_values("name", kind="stable").reset_index(drop=True)


def eligibility_table(pools: pd.DataFrame, confirm_n: Mapping[str, int], min_confirm: int,
                      min_pool: int) -> pd.DataFrame:
    """§3's eligible_slices.csv: every full slice with its collected, confirmation, mining-pool
    and eval frame counts, and whether it is eligible (:func:`eligible`) and in the eval pool."""
    lab = pools[pools["slice"].notna()]
    n = lambda p: lab[lab["pool"] == p]["slice"].value_counts() if p else lab["slice"].value_counts()  # noqa: E731
    names = sorted(set(lab["slice"]) | set(confirm_n))
    pool_n = n("pool").to_dict()
    ok = set(eligible({s: confirm_n.get(s, 0) for s in names}, pool_n, min_confirm, min_pool))
    out = pd.DataFrame({"slice": names, "n_collected": [int(n(None).get(s, 0)) for s in names],
                        "n_confirm": [int(confirm_n.get(s, 0)) for s in names],
                        "n_pool": [int(pool_n.get(s, 0)) for s in names],
                        "n_eval": [int(n("eval").get(s, 0)) for s in names]})
    out["eligible"] = out["slice"].isin(ok) & (out["n_eval"] > 0)  # eligible while holding its eval reservation
    return out.sort_values(["eligible", "n_collected", "slice"], ascending=[False, False, True]).reset_index(drop=True)


def check_leakage(pools: pd.DataFrame) -> None:
    """Fail loudly if any eval drive group also appears in train or in the mining pool."""
    ev = set(pools.loc[pools["pool"] == "eval", "group"])
    for other in ("train", "pool"):
        shared = sorted(ev & set(pools.loc[pools["pool"] == other, "group"]))
        if shared:
            names = pools.loc[pools["group"].isin(shared[:3]) & (pools["pool"] == other), "name"].tolist()[:5]
            raise LeakageError(
                f"{len(shared)} eval drive group(s) also in {other!r} (e.g. {shared[:3]}, frames {names}): "
                "near-duplicate frames of one drive would leak into the evaluation. Re-run §3 pools."
            )


def pool_summary(pools: pd.DataFrame) -> pd.DataFrame:
    """Frames and drive groups per pool (for the §3 checkpoint); ``ingested``: how many of the
    frames came without labels (``origin`` ingested), when the table says."""
    g = pools.groupby("pool").agg(frames=("name", "size"), groups=("group", "nunique"), slices=("slice", "nunique"))
    if "origin" in pools.columns:
        g["ingested"] = pools[pools["origin"] == "ingested"].groupby("pool").size().reindex(g.index).fillna(0).astype(int)
    return g.reindex([p for p in ("train", "eval", "pool", "holdout") if p in g.index]).reset_index()

