"""§6 Mine: find unlabelled pool frames that look like the frames the model fails on.

Pipeline (:func:`mine`; its keyword arguments are the profile's ``mine_*`` keys, passed
by the §6 runner):

1. failure frames = eval frames of the worst slice whose frame AP@0.5 <= ``fail_ap``
   or recall@0.5 < ``fail_recall`` (frames without GT have NaN metrics and are
   never failures: there is nothing to miss);
2. the selection, by ``strategy``:
   ``prototype`` — top-K pool frames by inner product with the L2-normalised mean of
   the failure embeddings; ``hybrid`` — a ``hybrid_targeted`` share of K from the
   k-NN lists of every failure frame (round-robin union, de-duplicated) + the rest by
   greedy k-center coverage of the pool; ``uncertainty`` — top-K by the iter0 model's
   per-frame uncertainty (1 − max box score);
3. the search index: FAISS ``IndexFlatIP`` (exact) up to ``ivf_above`` pool frames,
   ``IndexIVFFlat`` above, with ``nprobe`` raised until recall@K against exact search
   on calibration queries reaches ``ivf_recall``; above ``ivfpq_above`` (pools too large
   for RAM) ``IndexIVFPQ`` trained on a sample and filled in chunks from the embedding file,
   its candidates re-ranked exactly from the file (:func:`build_ondisk_index`);
4. near-duplicate control (:func:`diversify`), walking the strategy's ranking: a frame is
   skipped when its drive group (``bdd.group_of``: first hex block of the video) already
   has ``max_per_drive`` mined frames (``capped``), or when its cosine distance to a frame
   already mined is below ``min_distance`` (``near_duplicates``); the ranking is fetched
   further until ``k`` frames are kept or the pool is exhausted. The unfiltered top-K is
   reported beside it (frames, distinct drives, slice precision: ``MineResult.dedup``);
5. mining precision: the share of mined frames whose slice attributes match the worst
   slice (all of them, and each one alone), next to that value's base rate in the pool.

Embeddings are cosine-ready: (N, D) rows with unit L2 norm (``embed.embed_frames``'s memmap,
float32 or float16; read as float32); all-zero rows (unreadable images) are excluded and counted.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from bdd_engine.bdd import SLICE_SEP, boxes_table, group_of, video_of
from bdd_engine.slices import key as slice_key

STRATEGIES = ("prototype", "hybrid", "uncertainty")
_ENTROPY_MIN_SCORE = 0.1  # boxes below this are the detector's noise floor, not hesitation


# ----------------------------------------------------------------------------- index
@dataclass
class SearchIndex:
    """A FAISS inner-product index over (N, D) unit vectors plus how it was built."""

    index: Any
    info: dict[str, Any]
    keep: Any = None  # the IVF's coarse quantizer must outlive the index (SWIG holds no reference)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) float32 → (scores (Q, k) float32 inner products, ids (Q, k) int64; −1 = none)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self.info["kind"] != "flat":
            return self.index.search(q, int(min(k, self.info["n"])))
        with _flat_blas_blocks(len(q)):
            return self.index.search(q, int(min(k, self.info["n"])))


@contextlib.contextmanager
def _flat_blas_blocks(nq: int, score_bytes: int = 64 << 20) -> Iterator[None]:
    """Make exact search with many queries a few large BLAS products.

    faiss 1.15 sends fewer than ``distance_compute_blas_threshold`` (default 128000)
    queries to its per-query SIMD scan, which streams the whole database once per query,
    and BLAS work comes in blocks of 1024 database rows, each with its own OpenMP top-k
    region. Measured here (100K x 512, top-100, 2 busy cores): 100 queries 2.62 s with
    the defaults, 0.39 s with BLAS from 8 queries on and ~64 MB score blocks (numpy
    matmul + argpartition: 1.43 s); a single query stays on the SIMD scan (0.048 s).
    Both settings are process-global, so they are restored afterwards.
    """
    import faiss

    cv = faiss.cvar
    old = (cv.distance_compute_blas_threshold, cv.distance_compute_blas_database_bs)
    cv.distance_compute_blas_threshold = 8
    cv.distance_compute_blas_database_bs = int(np.clip(score_bytes // 4 // max(1, min(nq, 4096)), 1024, 262144))
    try:
        yield
    finally:
        cv.distance_compute_blas_threshold, cv.distance_compute_blas_database_bs = old


def build_index(xb: np.ndarray, *, ivf_above: int, seed: int, k: int, target_recall: float,
                calib_queries: np.ndarray | None = None, nlist: int | None = None, train_per_list: int = 64,
                niter: int = 10) -> SearchIndex:
    """Exact ``IndexFlatIP`` when N <= ``ivf_above``, else ``IndexIVFFlat`` (inner product).

    ``xb``: (N, D) float32 unit rows. ``seed``: IVF sampling and k-means; ``k``: neighbours
    the calibration measures recall@k for; ``target_recall``: 0..1. IVF: ``nlist`` defaults to ~sqrt(N) (power of two, >= 39 rows per list); k-means (``niter`` iterations,
    seeded) trains on ``train_per_list``·nlist sampled rows; ``nprobe`` is the smallest
    power of two whose mean recall@k against exact search reaches ``target_recall`` on
    ``calib_queries`` plus 50 sampled database rows. ``info`` records kind, nlist,
    nprobe, calibration recall and build seconds.
    """
    import faiss

    xb = np.ascontiguousarray(xb, dtype=np.float32)
    n, d = xb.shape
    t0 = time.perf_counter()
    if n <= ivf_above:
        index = faiss.IndexFlatIP(d)
        index.add(xb)
        return SearchIndex(index, {"kind": "flat", "n": n, "dim": d, "build_s": time.perf_counter() - t0})
    rng = np.random.default_rng(seed)
    # ~sqrt(N) lists (power of two), and >= 39 points per list as FAISS's k-means wants
    nlist = int(nlist or min(2 ** round(math.log2(max(16.0, math.sqrt(n)))), 2 ** int(math.log2(max(16, n // 39)))))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    index.cp.niter = int(niter)
    index.cp.max_points_per_centroid = int(train_per_list)
    n_train = min(n, nlist * train_per_list)
    train_ids = np.sort(rng.choice(n, size=n_train, replace=False))
    index.train(xb[train_ids])
    index.add(xb)
    sample = xb[np.sort(rng.choice(n, size=min(50, n), replace=False))]
    calib = sample if calib_queries is None else np.vstack([np.asarray(calib_queries, np.float32), sample])
    kk = int(min(k, n))
    with _flat_blas_blocks(len(calib)):
        _, exact = faiss.knn(calib, xb, kk, faiss.METRIC_INNER_PRODUCT)
    nprobe, rec = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, ids = index.search(calib, kk)
        rec = recall_at_k(ids, exact)
        if rec >= target_recall or nprobe >= nlist:
            break
        nprobe = min(nlist, nprobe * 2)
    info = {"kind": "ivf", "n": n, "dim": d, "nlist": nlist, "nprobe": nprobe, "calib_recall": rec,
            "calib_queries": int(len(calib)), "target_recall": target_recall, "build_s": time.perf_counter() - t0}
    return SearchIndex(index, info, keep=quantizer)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / |exact| (ids, (Q, k) each; −1 ignored)."""
    tot = 0.0
    for f, e in zip(np.atleast_2d(found), np.atleast_2d(exact)):
        e = set(int(i) for i in e if i >= 0)
        tot += len(e & set(int(i) for i in f if i >= 0)) / max(1, len(e))
    return tot / max(1, len(np.atleast_2d(exact)))


# ----------------------------------------------------------------------------- on-disk index (large pools)
class RowView:
    """Rows ``rows`` of an (N, D) embedding matrix, read on demand as float32 C arrays.

    ``emb``: an in-RAM array or a ``np.memmap`` (``embed.embed_frames``'s file, float32 or
    float16). Rows of a memmap are read from its file with ``pread`` (runs of consecutive rows
    in one call), not through the mapping: a page fault maps the kernel's read-around window
    into the process, and those pages count in its RSS (the first 10M-row run, reading through
    a mapping, peaked at 9.5 GB), whereas a read fills only the buffer asked for. A 10M-row
    file is thus scanned chunk by chunk, never held whole. ``view[i]`` (one row, (D,)),
    ``view[a:b]`` and ``view[ids]`` ((m, D)); ids are positions in ``rows``.
    """

    def __init__(self, emb: np.ndarray, rows: np.ndarray):
        self.emb, self.rows = emb, np.asarray(rows, np.int64)
        self.shape = (len(self.rows), int(emb.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: Any) -> np.ndarray:
        if isinstance(i, (int, np.integer)):
            return self._read(self.rows[[int(i)]])[0]
        return self._read(self.rows[i])

    def _read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows, np.int64))
        if not isinstance(self.emb, np.memmap) or not getattr(self.emb, "filename", None):
            return np.ascontiguousarray(self.emb[rows], dtype=np.float32)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.emb)):
            raise IndexError(f"rows outside 0..{len(self.emb) - 1} of {self.emb.filename}")
        order = np.argsort(rows, kind="stable")  # ascending reads, then back to the asked order
        srt = rows[order]
        buf = np.empty((len(rows), self.shape[1]), self.emb.dtype)
        row_bytes = buf.itemsize * self.shape[1]
        starts = np.flatnonzero(np.diff(srt, prepend=-2) != 1)  # first position of each run
        ends = np.append(starts[1:], len(srt))
        with open(self.emb.filename, "rb", buffering=0) as fh:
            for a, b in zip(starts.tolist(), ends.tolist()):
                _read_exact(fh, memoryview(buf[a:b]).cast("B"), int(self.emb.offset) + int(srt[a]) * row_bytes)
        out = np.empty((len(rows), self.shape[1]), np.float32)
        out[order] = buf
        return out


def _read_exact(fh: Any, view: memoryview, offset: int) -> None:
    """Fill ``view`` from the file at ``offset`` (pread may return fewer bytes than asked)."""
    done = 0
    while done < len(view):
        got = os.preadv(fh.fileno(), [view[done:]], offset + done)
        if got <= 0:
            raise EOFError(f"{fh.name}: file ended at byte {offset + done} (truncated embedding file?)")
        done += got


def exact_topk(x: Any, queries: np.ndarray, k: int, *, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` (Q, D) against ``x`` (array or :class:`RowView`),
    read ``chunk`` rows at a time: (scores (Q, k) float32, ids (Q, k) int64), best first, ties →
    lower id; at most ``chunk`` rows of ``x`` are in RAM at once."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    n = len(x)
    k = int(min(k, n))
    best_s = np.zeros((len(q), 0), np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for a in range(0, n, chunk):
        xc = np.asarray(x[a: a + chunk], np.float32)
        s = np.concatenate([best_s, q @ xc.T], axis=1)
        ids = np.concatenate([best_i, np.broadcast_to(np.arange(a, a + len(xc)), (len(q), len(xc)))], axis=1)
        best_s, best_i = _top_sorted(s, ids, k)
    return best_s, best_i


def _top_sorted(s: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the ``k`` best scores, best first; equal scores → lower id (deterministic)."""
    if s.shape[1] > k:  # cut to k first (cheap), then order those k
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        s, ids = np.take_along_axis(s, part, 1), np.take_along_axis(ids, part, 1)
    order = np.lexsort((ids, -s), axis=-1)
    return np.take_along_axis(s, order, 1), np.take_along_axis(ids, order, 1)


@dataclass
class OnDiskIndex(SearchIndex):
    """IVF-PQ candidates, re-ranked exactly from the embedding file.

    ``index``: a FAISS ``IndexIVFPQ`` over the rows of ``view`` (ids = positions in the
    view); a search fetches ``info["rerank"]`` candidates per query from the compressed
    codes, reads those rows from ``view`` and returns the exact top-k among them.
    """

    view: Any = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = self.info["n"]
        k = int(min(k, n))
        _, cand = self.index.search(q, int(min(n, max(k, self.info["rerank"]))))
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        for j in range(len(q)):
            c = np.unique(cand[j][cand[j] >= 0])  # ascending rows: sequential reads
            s, i = _top_sorted((self.view[c] @ q[j])[None, :], c[None, :], k)
            out_s[j, : s.shape[1]], out_i[j, : i.shape[1]] = s[0], i[0]
        return out_s, out_i


def build_ondisk_index(emb: np.ndarray, rows: np.ndarray, *, seed: int, k: int, target_recall: float,
                       calib_queries: np.ndarray | None = None, nlist: int | None = None, pq_m: int | None = None,
                       rerank: int | None = None, train_per_list: int = 64, niter: int = 10,
                       chunk: int = 65536, max_rerank_per_k: int = 64, calib_margin: float = 0.03) -> OnDiskIndex:
    """FAISS ``IndexIVFPQ`` (inner product) over ``emb[rows]``, never holding those rows in RAM.

    ``emb``: (N, D) unit rows, usually ``embed.embed_frames``'s memmap (float32 or float16);
    ``rows``: the rows to index (sorted ascending; search ids are positions in ``rows``).
    Trained (coarse k-means with ``niter`` iterations, then PQ, both seeded by ``seed``) on
    max(``train_per_list``·nlist, 10,000) sampled rows; then filled ``chunk`` rows at a time
    from the file. ``nlist`` defaults to a power of two near sqrt(N)/4 (>= 16; fewer lists
    than :func:`build_index`'s IVF: assigning every row to a list is the costly part);
    ``pq_m`` sub-quantizers of 8 bits (``pq_m`` bytes per row; default D/4, i.e. 4 dimensions
    per sub-quantizer: 128 bytes for D 512, 1.3 GB at 10M rows; D must be divisible by it). A search
    takes ``rerank`` (default max(10·k, 1000)) PQ candidates and re-ranks them exactly from
    the file (:class:`OnDiskIndex`). Calibration against exact chunked search
    (:func:`exact_topk`) on ``calib_queries`` (made up to 20 with sampled indexed rows):
    ``nprobe`` doubles while recall@k after re-ranking is below ``target_recall`` +
    ``calib_margin`` (the spread between query samples: at 10M rows, 0.962 on 100 calibration
    queries gave 0.938 on 100 held-out ones, bench_mine) and still rising; once more
    lists no longer help (the PQ codes' error is the limit), ``rerank`` doubles instead, up to
    ``max_rerank_per_k``·k; ``info`` records both and the recall reached.
    """
    import faiss

    view = RowView(emb, rows)
    n, d = view.shape
    pq_m = int(pq_m or max(1, d // 4))
    if d % pq_m:
        raise ValueError(f"build_ondisk_index: dimension {d} is not divisible by pq_m {pq_m}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    nlist = int(nlist or max(16, 2 ** round(math.log2(max(16.0, math.sqrt(n) / 4)))))
    rerank = int(rerank or max(10 * int(k), 1000))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quantizer, d, nlist, int(pq_m), 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter, index.cp.max_points_per_centroid = int(seed), int(niter), int(train_per_list)
    index.pq.cp.seed, index.pq.cp.niter = int(seed), int(niter)
    n_train = min(n, max(nlist * int(train_per_list), 10_000))
    index.train(view[np.sort(rng.choice(n, size=n_train, replace=False))])
    t_train = time.perf_counter() - t0
    n_chunks = 0
    for a in range(0, n, int(chunk)):
        index.add(view[a: a + int(chunk)])  # ids: positions a, a+1, ... in rows
        n_chunks += 1
    t_add = time.perf_counter() - t0 - t_train
    out = OnDiskIndex(index, {"kind": "ivfpq", "n": n, "dim": d, "nlist": nlist, "pq_m": int(pq_m),
                              "rerank": rerank, "train_rows": n_train, "add_chunk": int(chunk),
                              "add_chunks": n_chunks, "code_bytes": int(n * index.code_size)},
                      keep=quantizer, view=view)
    # calibration queries: the given ones (not in the index, like real queries); indexed rows
    # only to make up 20 (they find themselves at rank 1, which flatters recall)
    given = np.zeros((0, d), np.float32) if calib_queries is None else np.asarray(calib_queries, np.float32)
    n_rows = min(n, max(0, 20 - len(given)))
    calib = np.vstack([given, view[np.sort(rng.choice(n, size=n_rows, replace=False))]])
    kk = int(min(k, n))
    _, exact = exact_topk(view, calib, kk, chunk=int(chunk))
    aim = min(0.999, float(target_recall) + float(calib_margin))
    nprobe, rec = _calibrate_ondisk(out, calib, exact, kk, aim, max_rerank=int(max_rerank_per_k) * kk)
    out.info.update({"nprobe": nprobe, "calib_recall": rec, "calib_queries": int(len(calib)), "calib_aim": aim,
                     "target_recall": target_recall, "train_s": t_train, "add_s": t_add,
                     "build_s": time.perf_counter() - t0})
    return out


# ----------------------------------------------------------------------------- selection
def greedy_k_center(x: np.ndarray, n_pick: int, *, seed: int, init: Sequence[int] = (),
                    chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-point selection on unit vectors (distance 1 − cosine).

    Starts from ``init`` (already selected rows; a seeded random row if empty) and
    repeatedly adds the row farthest from everything selected. Returns (picked ids
    (n_pick,), their distance to the selection at pick time). Ties → lowest row id.
    """
    n = len(x)
    n_pick = int(min(n_pick, n - len(set(init))))
    if n_pick <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    min_d = np.full(n, np.inf, np.float32)
    selected = list(dict.fromkeys(int(i) for i in init))
    if not selected:
        selected = [int(np.random.default_rng(seed).integers(n))]
        seeds_are_picks = True
    else:
        seeds_are_picks = False
    for s in selected:
        _update_min_dist(min_d, x, x[s], chunk)
    picks, dists = ([selected[0]], [np.float32(np.inf)]) if seeds_are_picks else ([], [])
    while len(picks) < n_pick:
        j = int(np.argmax(min_d))  # argmax returns the first maximum → deterministic
        picks.append(j)
        dists.append(min_d[j])
        _update_min_dist(min_d, x, x[j], chunk)
    return np.asarray(picks, np.int64), np.asarray(dists, np.float32)


def _update_min_dist(min_d: np.ndarray, x: np.ndarray, c: np.ndarray, chunk: int) -> None:
    for a in range(0, len(x), chunk):
        dist = 1.0 - np.asarray(x[a: a + chunk], np.float32) @ np.asarray(c, np.float32)
        np.minimum(min_d[a: a + chunk], dist, out=min_d[a: a + chunk])


def round_robin_union(ids: np.ndarray, scores: np.ndarray, n: int) -> tuple[list[int], list[float]]:
    """Union of per-query k-NN lists taken rank by rank (rank 1 of every query, then rank
    2, ...), de-duplicated, until ``n`` ids: every failure frame gets neighbours, none
    dominates. ``ids``/``scores``: (Q, k) from :meth:`SearchIndex.search`."""
    out: list[int] = []
    sc: list[float] = []
    seen: set[int] = set()
    for r in range(ids.shape[1]):
        for q in range(ids.shape[0]):
            i = int(ids[q, r])
            if i >= 0 and i not in seen:
                seen.add(i)
                out.append(i)
                sc.append(float(scores[q, r]))
                if len(out) >= n:
                    return out, sc
    return out, sc


def diversify(candidates: Sequence[int], x: np.ndarray, groups: Sequence[str], *, k: int, max_per_drive: int,
              min_distance: float, kept: Sequence[int] = ()) -> tuple[list[int], dict[str, int]]:
    """Walk ``candidates`` (row ids of ``x``, best first) and keep up to ``k`` of them (on top
    of the already ``kept`` rows, which count for both rules).

    ``x``: (N, D) float32 unit rows; ``groups``: drive group of each row (N,). A candidate is
    skipped when its drive already holds ``max_per_drive`` kept frames (0 = no cap; counted
    in ``capped``), else when its cosine distance (1 − x·y) to any kept frame is below
    ``min_distance`` (0 = off; counted in ``near_duplicates``). Returns (the newly kept row
    ids in candidate order, counts {capped, near_duplicates, examined}); a repeated id is ignored.
    """
    keep = list(dict.fromkeys(int(i) for i in kept))
    per: dict[str, int] = {}
    for i in keep:
        per[groups[i]] = per.get(groups[i], 0) + 1
    kx = np.zeros((len(keep) + max(int(k), 0), x.shape[1]), np.float32)  # kept rows, filled in order
    kx[: len(keep)] = np.asarray(x[keep], np.float32) if keep else 0
    n_kx = len(keep)
    seen = set(keep)
    new: list[int] = []
    counts = {"capped": 0, "near_duplicates": 0, "examined": 0}
    for c in candidates:
        c = int(c)
        if len(new) >= k:
            break
        if c < 0 or c in seen:
            continue
        seen.add(c)
        counts["examined"] += 1
        g = groups[c]
        if max_per_drive > 0 and per.get(g, 0) >= max_per_drive:
            counts["capped"] += 1
            continue
        v = np.asarray(x[c], np.float32)
        if min_distance > 0 and n_kx and float(1.0 - np.max(kx[:n_kx] @ v)) < min_distance:
            counts["near_duplicates"] += 1
            continue
        new.append(c)
        kx[n_kx] = v
        n_kx += 1
        per[g] = per.get(g, 0) + 1
    return new, counts


# ----------------------------------------------------------------------------- uncertainty
def uncertainty_scores(preds: Any, names: Iterable[str]) -> pd.DataFrame:
    """Per-frame uncertainty of a detector's predictions.

    ``preds``: a box table (``bdd.boxes_table`` of prediction frames: columns name,
    score) or a list of BDD prediction frames. Returns one row per name in ``names``:
    ``n_pred``, ``max_score``, ``uncertainty`` = 1 − max score (1.0 when the model
    found nothing: it is blind there), ``entropy`` = mean binary entropy (bits) of the
    scores >= 0.1 (NaN when there are none).
    """
    boxes = preds if isinstance(preds, pd.DataFrame) else boxes_table(preds)
    if not {"name", "score"} <= set(boxes.columns):
        raise ValueError("uncertainty_scores: predictions need columns 'name' and 'score'")
    b = boxes[["name", "score"]].dropna()
    p = b["score"].clip(1e-6, 1 - 1e-6).to_numpy()
    ent = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    b = b.assign(entropy=np.where(b["score"].to_numpy() >= _ENTROPY_MIN_SCORE, ent, np.nan))
    g = b.groupby("name").agg(n_pred=("score", "size"), max_score=("score", "max"), entropy=("entropy", "mean"))
    out = pd.DataFrame({"name": list(names)}).merge(g, left_on="name", right_index=True, how="left")
    out["n_pred"] = out["n_pred"].fillna(0).astype(int)
    out["max_score"] = out["max_score"].fillna(0.0)
    out["uncertainty"] = 1.0 - out["max_score"]
    return out[["name", "n_pred", "max_score", "uncertainty", "entropy"]].reset_index(drop=True)


def uncertainty_by_slice(unc: pd.DataFrame, frames: pd.DataFrame) -> pd.DataFrame:
    """Mean uncertainty / entropy per slice (columns slice, n_frames, mean_uncertainty,
    mean_entropy), most uncertain first."""
    m = unc.merge(frames[["name", "slice"]], on="name", how="left")
    g = m.groupby("slice", dropna=False).agg(n_frames=("name", "size"), mean_uncertainty=("uncertainty", "mean"),
                                              mean_entropy=("entropy", "mean")).reset_index()
    return g.sort_values(["mean_uncertainty", "slice"], ascending=[False, True]).reset_index(drop=True)


# ----------------------------------------------------------------------------- failures
def failure_frames(per_frame: pd.DataFrame, eval_frames: pd.DataFrame, worst_slice: str, *,
                   fail_ap: float, fail_recall: float) -> tuple[list[str], str]:
    """Names of the worst slice's failure frames (sorted) and the rule that chose them.

    Rule: ``ap50 <= fail_ap or recall50 < fail_recall`` among the slice's eval frames
    with GT. If none qualifies (a slice that is merely *worse*, not failing), fall back
    to the slice's frames with below-median AP@0.5 and say so in the rule.
    """
    need = {"name", "ap50", "recall50"}
    if not need <= set(per_frame.columns):
        raise ValueError(f"per-frame eval needs columns {sorted(need)}, got {sorted(per_frame.columns)}")
    names = set(eval_frames.loc[eval_frames["slice"] == worst_slice, "name"])
    if not names:
        raise ValueError(f"worst slice {worst_slice!r} has no frames in the eval frame table")
    pf = per_frame[per_frame["name"].isin(names)].dropna(subset=["ap50"])
    if pf.empty:
        raise ValueError(f"worst slice {worst_slice!r}: no eval frame with ground truth in the per-frame results")
    rule = f"ap50 <= {fail_ap} or recall50 < {fail_recall}"
    fail = pf[(pf["ap50"] <= fail_ap) | (pf["recall50"] < fail_recall)]
    if fail.empty:
        med = float(pf["ap50"].median())
        fail = pf[pf["ap50"] <= med]
        rule = f"fallback: no frame met '{rule}'; used ap50 <= slice median {med:.3f}"
    return sorted(fail["name"].astype(str)), rule


def worst_slice_by_frames(per_frame: pd.DataFrame, eval_frames: pd.DataFrame, *, min_frames: int) -> str:
    """Fallback when no slice-level evaluation is given: the slice with the lowest mean
    frame AP@0.5 among slices with >= ``min_frames`` eval frames with GT (ties → name)."""
    m = per_frame.dropna(subset=["ap50"]).merge(eval_frames[["name", "slice"]], on="name").dropna(subset=["slice"])
    g = m.groupby("slice")["ap50"].agg(["mean", "size"])
    g = g[g["size"] >= min_frames]
    if g.empty:
        raise ValueError(f"no slice has >= {min_frames} evaluated frames with ground truth")
    return str(g.reset_index().sort_values(["mean", "slice"]).iloc[0]["slice"])


# ----------------------------------------------------------------------------- precision
def mining_precision(mined: pd.DataFrame, pool: pd.DataFrame, target: Mapping[str, str],
                     cutoffs: Sequence[int] = (10, 50)) -> pd.DataFrame:
    """Share of mined frames matching the target slice, overall and per attribute.

    Rows: ``level`` ∈ {"slice", <each attribute>}, ``top`` (first N mined by rank; the
    full list is always included), ``target`` value, ``n_mined``, ``precision``,
    ``base_rate`` (share of the pool with that value = the expected precision of a
    random pick), ``lift`` = precision / base rate.
    """
    attrs = list(target)
    def match(df: pd.DataFrame, level: str) -> np.ndarray:
        cols = attrs if level == "slice" else [level]
        return np.logical_and.reduce([df[a].astype(str).to_numpy() == target[a] for a in cols])

    mined = mined.sort_values("rank")
    tops = sorted({int(c) for c in cutoffs if 0 < c < len(mined)} | {len(mined)})
    rows = []
    for level in ["slice", *attrs]:
        base = float(match(pool, level).mean()) if len(pool) else float("nan")
        tgt = SLICE_SEP.join(target[a] for a in attrs) if level == "slice" else target[level]
        for top in tops:
            prec = float(match(mined.head(top), level).mean()) if top else float("nan")
            rows.append({"level": level, "top": top, "target": tgt, "n_mined": top, "precision": prec,
                         "base_rate": base, "lift": prec / base if base > 0 else float("nan")})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- mine
@dataclass
class MineResult:
    """What §6 found. ``mined`` columns: rank (1 = best), name, score (meaning by
    ``source``: cosine to the prototype / best failure-frame cosine for targeted, distance
    to the selection for coverage, uncertainty), source, the slice attributes, slice,
    match_slice, uncertainty (NaN without predictions)."""

    worst_slice: str
    target: dict[str, str]
    strategy: str
    failure_names: list[str]
    failure_rule: str
    mined: pd.DataFrame
    precision: pd.DataFrame
    index_info: dict[str, Any]
    uncertainty: pd.DataFrame | None = None
    uncertainty_by_slice: pd.DataFrame | None = None
    counts: dict[str, int] = field(default_factory=dict)
    synthetic: bool = False  # figures then say so
    dedup: dict[str, Any] = field(default_factory=dict)  # near-duplicate control: settings, before/after, drops

    def headline(self) -> dict[str, Any]:
        """Mining precision for the worst slice over the whole mined list."""
        r = self.precision[(self.precision["level"] == "slice") & (self.precision["top"] == len(self.mined))].iloc[0]
        return {"worst_slice": self.worst_slice, "strategy": self.strategy, "k": int(len(self.mined)),
                "precision": float(r["precision"]), "base_rate": float(r["base_rate"]), "lift": float(r["lift"]),
                "n_failure_frames": len(self.failure_names), "index": self.index_info.get("kind")}


def mine(per_frame_eval_df: pd.DataFrame, eval_frames_df: pd.DataFrame, pool_frames_df: pd.DataFrame,
         emb: np.ndarray, emb_names: Sequence[str], *, k: int, strategy: str, by: Sequence[str], fail_ap: float,
         fail_recall: float, hybrid_targeted: float, ivf_above: int, ivf_recall: float, min_frames: int, seed: int,
         synthetic: bool, max_per_drive: int, min_distance: float, preds_pool: Any = None,
         worst_slice: str | None = None, ivfpq_above: int | None = None) -> MineResult:
    """Mine ``k`` pool frames for the worst slice (see module docstring).

    Inputs: ``per_frame_eval_df`` (name, ap50, recall50, …; the evaluation contract),
    ``eval_frames_df`` / ``pool_frames_df`` (frame tables: name + slice attributes +
    slice), ``emb`` (N, D) float32 unit rows with ``emb_names`` (row i ↔ name i; must cover
    the failure and pool frames), ``preds_pool`` (iter0 predictions on the pool: box table
    or BDD frames; needed for ``uncertainty``), ``worst_slice`` (``"v1 | v2 | v3"``, one value
    per ``by`` attribute, from the slice-level evaluation; None = :func:`worst_slice_by_frames`
    over slices with >= ``min_frames`` eval frames).

    Options: ``strategy`` (:data:`STRATEGIES`); failure frame = AP@0.5 <= ``fail_ap`` or
    recall@0.5 < ``fail_recall`` (:func:`failure_frames`); ``hybrid_targeted``: share of
    ``k`` (0..1) taken from the failure frames' k-NN by ``hybrid``; the index is exact up to
    ``ivf_above`` pool frames, IVF above with recall@k >= ``ivf_recall`` (:func:`build_index`);
    above ``ivfpq_above`` pool frames (None = never) the pool rows stay in ``emb``'s file (pass
    the ``embed.embed_frames`` memmap) and the index is IVF-PQ filled from it in chunks, its
    candidates re-ranked exactly from the file (:func:`build_ondisk_index`, same ``ivf_recall``);
    near-duplicate control (:func:`diversify`): at most ``max_per_drive`` frames per drive
    group (0 = no cap; the group is the pool table's ``group`` column, else derived from the
    name) and no two mined frames closer than cosine distance ``min_distance`` (0 = off);
    ``seed`` makes it deterministic; ``synthetic`` marks the figures.
    """
    strategy = str(strategy)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mine_strategy {strategy!r}; choose one of {STRATEGIES}")
    seed, attrs = int(seed), list(by)
    if worst_slice is None:
        worst_slice = worst_slice_by_frames(per_frame_eval_df, eval_frames_df, min_frames=int(min_frames))
    target = _target(worst_slice, attrs)
    fail_names, rule = failure_frames(per_frame_eval_df, eval_frames_df, worst_slice,
                                      fail_ap=float(fail_ap), fail_recall=float(fail_recall))
    counts: dict[str, int] = {}
    on_disk = ivfpq_above is not None and pool_frames_df["name"].nunique() > int(ivfpq_above)
    pool, xb, xf = (_embedded_ondisk if on_disk else _embedded)(fail_names, pool_frames_df, emb, emb_names, counts)
    k = min(int(k), len(pool))

    unc = uncertainty_scores(preds_pool, pool["name"]) if preds_pool is not None else None
    if on_disk:
        index = build_ondisk_index(emb, xb.rows, seed=seed, k=k, target_recall=float(ivf_recall),
                                   calib_queries=xf[:50])
    else:
        index = build_index(xb, ivf_above=int(ivf_above), seed=seed, k=k, target_recall=float(ivf_recall),
                            calib_queries=xf[:50])
    opts = {"k": k, "hybrid_targeted": float(hybrid_targeted), "seed": seed}
    base_ids, _, _ = _select(strategy, index, xb, xf, unc, **opts)
    groups = _groups(pool)
    cap, min_d = int(max_per_drive), float(min_distance)
    if cap > 0 or min_d > 0:
        ids, scores, source, drops = _select_diverse(strategy, index, xb, xf, unc, groups, max_per_drive=cap,
                                                     min_distance=min_d, **opts)
    else:
        ids, scores, source = _select(strategy, index, xb, xf, unc, **opts)
        drops = {"capped": 0, "near_duplicates": 0}
    mined = _mined_table(pool, ids, scores, source, attrs, worst_slice, unc)
    mined["group"] = [groups[i] for i in ids]
    precision = mining_precision(mined, pool, target, cutoffs=(10, 50))
    in_slice = (slice_key(pool, attrs) == worst_slice).to_numpy()
    def side(rows: np.ndarray) -> dict[str, Any]:
        rows = np.asarray(rows, np.int64)
        return {"frames": int(len(rows)), "drives": int(len({groups[i] for i in rows})),
                "precision": float(in_slice[rows].mean()) if len(rows) else float("nan")}
    dedup = {"max_per_drive": cap, "min_distance": min_d, "before": side(base_ids), "after": side(ids),
             "capped": int(drops["capped"]), "near_duplicates": int(drops["near_duplicates"])}
    counts.update({"pool": int(len(pool)), "failure_frames": len(fail_names), "mined": int(len(mined))})
    return MineResult(
        worst_slice=worst_slice, target=target, strategy=strategy, failure_names=fail_names, failure_rule=rule,
        mined=mined, precision=precision, index_info=index.info, uncertainty=unc,
        uncertainty_by_slice=uncertainty_by_slice(unc, pool) if unc is not None else None, counts=counts,
        synthetic=bool(synthetic), dedup=dedup,
    )


def _groups(pool: pd.DataFrame) -> list[str]:
    """Drive group of each pool row: the ``group`` column (§1's rule), else from the name."""
    if "group" in pool.columns:
        return [str(g) for g in pool["group"]]
    return [group_of(video_of(str(n))) for n in pool["name"]]


def _select_diverse(strategy: str, index: SearchIndex, xb: np.ndarray, xf: np.ndarray, unc: pd.DataFrame | None,
                    groups: Sequence[str], *, k: int, hybrid_targeted: float, seed: int, max_per_drive: int,
                    min_distance: float) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, int]]:
    """:func:`_select` with the near-duplicate control: each ranking is fetched in growing
    prefixes (2k, 4k, ... up to the pool) until :func:`diversify` keeps enough of it.
    ``hybrid`` applies it to the targeted share first, then to the k-center coverage (seeded
    with the kept targeted frames). Returns (ids, scores, sources, drop counts)."""
    n = len(xb)
    drops = {"capped": 0, "near_duplicates": 0}

    def walk(fetch, want: int, kept: list[int]) -> tuple[list[int], dict[int, tuple[float, str]]]:
        m = min(n, max(2 * want, 16))
        while True:
            ids, sc, src = fetch(m)
            new, c = diversify(ids, xb, groups, k=want, max_per_drive=max_per_drive, min_distance=min_distance,
                               kept=kept)
            if len(new) >= want or m >= n:
                drops["capped"] += c["capped"]
                drops["near_duplicates"] += c["near_duplicates"]
                info = {int(i): (float(s), str(o)) for i, s, o in zip(ids, sc, src)}
                return new, info
            m = min(n, 2 * m)

    if strategy == "hybrid":
        n_t = int(round(k * hybrid_targeted))

        def targeted(m: int):
            s, i = index.search(xf, m)
            t_ids, t_sc = round_robin_union(i, s, m)
            return t_ids, t_sc, ["targeted"] * len(t_ids)

        def coverage(m: int):
            c_ids, c_d = greedy_k_center(xb, m, init=kept_t, seed=seed)
            return list(c_ids), list(c_d), ["coverage"] * len(c_ids)

        kept_t, info_t = walk(targeted, n_t, []) if n_t > 0 else ([], {})
        kept_c, info_c = walk(coverage, k - len(kept_t), list(kept_t))
        ids, info = kept_t + kept_c, {**info_c, **info_t}
    else:
        ids, info = walk(lambda m: _select(strategy, index, xb, xf, unc, k=m, hybrid_targeted=hybrid_targeted,
                                           seed=seed), k, [])
    return (np.asarray(ids, np.int64), np.asarray([info[i][0] for i in ids], np.float32), [info[i][1] for i in ids],
            drops)


def _target(worst_slice: str, attrs: Sequence[str]) -> dict[str, str]:
    """``"rainy | night | city street"`` → {attribute: value}, one value per attribute."""
    parts = str(worst_slice).split(SLICE_SEP)
    if len(parts) != len(attrs):
        raise ValueError(f"worst slice {worst_slice!r} does not have one value per attribute {list(attrs)}")
    return dict(zip(attrs, parts))


def _embedded(fail_names: Sequence[str], pool_frames_df: pd.DataFrame, emb: np.ndarray, emb_names: Sequence[str],
              counts: dict[str, int]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(pool frames with a non-zero embedding, their rows xb (P, D), the failure rows xf
    (F, D)), both float32 C-contiguous; skipped frames are counted in ``counts``."""
    row_of = {n: i for i, n in enumerate(emb_names)}
    fail_rows = _rows(fail_names, row_of, emb, counts, "failure")
    if not len(fail_rows):
        raise ValueError(f"none of the {len(fail_names)} failure frames has a (non-zero) embedding")
    pool = pool_frames_df.drop_duplicates("name").reset_index(drop=True)
    pool_rows = _rows(list(pool["name"]), row_of, emb, counts, "pool")
    keep = np.asarray([n in row_of and np.any(emb[row_of[n]]) for n in pool["name"]], bool)
    pool = pool[keep].reset_index(drop=True)
    if len(pool) == 0:
        raise ValueError("mining pool is empty (or has no embedded frames)")
    xb = np.ascontiguousarray(emb[pool_rows], dtype=np.float32)
    xf = np.ascontiguousarray(emb[fail_rows], dtype=np.float32)
    return pool, xb, xf


def _embedded_ondisk(fail_names: Sequence[str], pool_frames_df: pd.DataFrame, emb: np.ndarray,
                     emb_names: Sequence[str], counts: dict[str, int], chunk: int = 65536
                     ) -> tuple[pd.DataFrame, RowView, np.ndarray]:
    """:func:`_embedded` for pools above ``ivfpq_above``: the pool rows stay in the file (a
    :class:`RowView`, row i ↔ pool row i); all-zero rows are found reading ``chunk`` rows at a time."""
    row_of = {n: i for i, n in enumerate(emb_names)}
    fail_rows = _rows(fail_names, row_of, emb, counts, "failure")
    if not len(fail_rows):
        raise ValueError(f"none of the {len(fail_names)} failure frames has a (non-zero) embedding")
    pool = pool_frames_df.drop_duplicates("name").reset_index(drop=True)
    rows = pool["name"].map(row_of)
    has = rows.notna().to_numpy()
    cand = RowView(emb, rows[has].to_numpy(np.int64))
    nonzero = np.zeros(len(cand), bool)
    for a in range(0, len(cand), chunk):
        nonzero[a: a + chunk] = np.any(cand[a: a + chunk] != 0, axis=1)
    if (~has).any():
        counts["pool_without_embedding"] = int((~has).sum())
    if (~nonzero).any():
        counts["pool_unreadable_image"] = int((~nonzero).sum())
    keep = has.copy()
    keep[np.flatnonzero(has)] = nonzero
    pool = pool[keep].reset_index(drop=True)
    if len(pool) == 0:
        raise ValueError("mining pool is empty (or has no embedded frames)")
    return pool, RowView(emb, cand.rows[nonzero]), np.ascontiguousarray(emb[fail_rows], dtype=np.float32)


def _calibrate_ondisk(index: OnDiskIndex, calib: np.ndarray, exact: np.ndarray, k: int, target: float, *,
                      max_rerank: int, min_gain: float = 0.005) -> tuple[int, float]:
    """Raise ``nprobe`` (x2) while it helps, then ``info["rerank"]`` (x2), until recall@k >= ``target``."""
    nlist = index.info["nlist"]

    def recall_now() -> float:
        return recall_at_k(index.search(calib, k)[1], exact)

    nprobe, prev = 1, -1.0
    index.index.nprobe = nprobe
    rec = recall_now()
    while rec < target:
        if nprobe < nlist and rec - prev >= min_gain:
            nprobe = min(nlist, nprobe * 2)
            index.index.nprobe = nprobe
        elif index.info["rerank"] < min(max_rerank, index.info["n"]):
            index.info["rerank"] = min(max_rerank, 2 * index.info["rerank"])
        else:
            break
        prev, rec = rec, recall_now()
    return nprobe, rec


def _select(strategy: str, index: SearchIndex, xb: np.ndarray, xf: np.ndarray, unc: pd.DataFrame | None, *,
            k: int, hybrid_targeted: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pool row ids (ranked), their scores and sources for one strategy (module docstring, step 2)."""
    if strategy == "prototype":
        prototype = xf.mean(axis=0)
        prototype = (prototype / max(float(np.linalg.norm(prototype)), 1e-12)).astype(np.float32)
        s, i = index.search(prototype, k)
        return i[0][i[0] >= 0], s[0][i[0] >= 0], ["prototype"] * k
    if strategy == "hybrid":
        n_t = int(round(k * hybrid_targeted))
        s, i = index.search(xf, max(n_t, 1))
        t_ids, t_sc = round_robin_union(i, s, n_t)
        c_ids, c_d = greedy_k_center(xb, k - len(t_ids), init=t_ids, seed=seed)
        ids = np.asarray(t_ids + list(c_ids), np.int64)
        scores = np.asarray(t_sc + list(c_d), np.float32)
        return ids, scores, ["targeted"] * len(t_ids) + ["coverage"] * len(c_ids)
    if unc is None:
        raise ValueError("mine_strategy 'uncertainty' needs preds_pool (the iter0 model's predictions on the pool)")
    order = unc.sort_values(["uncertainty", "name"], ascending=[False, True]).index[:k]
    return order.to_numpy(), unc.loc[order, "uncertainty"].to_numpy(), ["uncertainty"] * k


def _mined_table(pool: pd.DataFrame, ids: np.ndarray, scores: np.ndarray, source: list[str], attrs: Sequence[str],
                 worst_slice: str, unc: pd.DataFrame | None) -> pd.DataFrame:
    """The ``mined`` table of :class:`MineResult` (rank order = ``ids`` order)."""
    mined = pool.iloc[ids][["name", *attrs]].reset_index(drop=True)
    mined.insert(0, "rank", np.arange(1, len(mined) + 1))
    mined.insert(2, "score", np.round(np.asarray(scores, np.float64), 6))
    mined.insert(3, "source", source[: len(mined)])
    mined["slice"] = [SLICE_SEP.join(str(r[a]) for a in attrs) for _, r in mined.iterrows()]
    mined["match_slice"] = mined["slice"] == worst_slice
    if unc is not None:
        mined = mined.merge(unc[["name", "uncertainty"]], on="name", how="left")
    else:
        mined["uncertainty"] = np.nan
    return mined


def _rows(names: Sequence[str], row_of: Mapping[str, int], emb: np.ndarray, counts: dict[str, int], what: str) -> np.ndarray:
    """Embedding rows of ``names``; frames without a row or with an all-zero row
    (unreadable image) are skipped and counted in ``counts``."""
    rows, missing, zero = [], 0, 0
    for n in names:
        r = row_of.get(n)
        if r is None:
            missing += 1
        elif not np.any(emb[r]):
            zero += 1
        else:
            rows.append(r)
    if missing:
        counts[f"{what}_without_embedding"] = missing
    if zero:
        counts[f"{what}_unreadable_image"] = zero
    return np.asarray(rows, np.int64)


# ----------------------------------------------------------------------------- artefacts
def mined_grid_figure(result: MineResult, image_paths: Mapping[str, Any], n: int = 100, ncols: int = 10) -> Any:
    """10x10 thumbnails of the top-``n`` mined frames, captioned ``#rank weather/timeofday``
    + scene (``pred`` before the rank when the attributes are predicted, ``attr_source``);
    captions of frames in the worst slice are green, others red."""
    from bdd_engine.viz import thumb_grid

    top = result.mined.sort_values("rank").head(n)
    caps, colors = [], []
    for _, r in top.iterrows():
        vals = [str(r[a]) for a in result.target]
        pred = "pred " if r.get("attr_source") == "predicted" else ""
        caps.append(f"{pred}#{r['rank']} {' / '.join(vals[:2])}\n{' / '.join(vals[2:])}")
        colors.append("#1a7f1a" if r["match_slice"] else "#b00020")
    h = result.headline()
    title = (f"Mined frames ({result.strategy}) for worst slice '{result.worst_slice}': precision {h['precision']:.2f} "
             f"vs base rate {h['base_rate']:.3f} (green = in slice){' — SYNTHETIC data' if result.synthetic else ''}")
    return thumb_grid([image_paths.get(nm, "") for nm in top["name"]], caps, ncols=ncols, caption_colors=colors, title=title)


def write_artifacts(result: MineResult, writer: Any, image_paths: Mapping[str, Any]) -> None:
    """Write §6 artefacts through a ``checkpoint.SectionWriter``: mined.csv,
    mining_precision.csv, mining_summary.json (+ uncertainty_by_slice.csv when
    predictions were given) and figures/mined_frames_grid.png."""
    import matplotlib.pyplot as plt

    writer.write_df("mined.csv", result.mined)
    writer.write_df("mining_precision.csv", result.precision)
    if result.uncertainty_by_slice is not None:
        writer.write_df("uncertainty_by_slice.csv", result.uncertainty_by_slice)
    info = {k: v for k, v in result.index_info.items() if not k.endswith("_s")}  # timings are not deterministic
    writer.write_json("mining_summary.json", {**result.headline(), "failure_rule": result.failure_rule,
                                               "failure_frames": result.failure_names, "index": info,
                                               "counts": result.counts, "dedup": result.dedup})
    fig = mined_grid_figure(result, image_paths)
    writer.save_fig("mined_frames_grid.png", fig)
    plt.close(fig)
