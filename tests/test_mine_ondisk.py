"""Mining from disk (issue 25 item 2): a 100K-row float16 embedding file written in chunks,
an IVF-PQ index trained on a sample and filled from the file in chunks, candidates re-ranked
exactly from the file; recall against exact chunked search on held-out queries."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from bdd_engine import mine as M
from test_mine import WORST, opts, world

N, D = 100_000, 128


def clustered(n: int, d: int, seed: int, n_centres: int = 200) -> np.ndarray:
    """Unit vectors around ``n_centres`` fixed centres (the same mixture for every seed)."""
    centres = np.random.default_rng(0).normal(size=(n_centres, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(n_centres, size=n)] + 0.9 * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_in_chunks(path, x_of_chunk, n: int, d: int, chunk: int = 10_000, dtype=np.float16) -> np.memmap:
    """An (n, d) .npy written chunk by chunk (as embed_frames writes it), reopened read-only."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, d))
    for a in range(0, n, chunk):
        out[a: a + chunk] = x_of_chunk(a, min(chunk, n - a))
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


@pytest.fixture(scope="module")
def emb_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ondisk") / "embeddings.npy"
    return write_in_chunks(path, lambda a, m: clustered(m, D, seed=a), N, D)


def _build(emb, chunk):
    """Build the index; (index, peak bytes numpy allocated meanwhile)."""
    tracemalloc.start()
    try:
        index = M.build_ondisk_index(emb, np.arange(N), seed=42, k=100, target_recall=0.95, pq_m=32, chunk=chunk)
        return index, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def built(emb_file):
    return {c: _build(emb_file, c) for c in (5_000, 50_000)}


def test_exact_topk_from_the_file_in_chunks_equals_faiss_flat(emb_file):
    import faiss

    q = clustered(20, D, seed=10**6)
    x = np.asarray(emb_file, np.float32)
    want_s, want_i = faiss.knn(q, x, 100, faiss.METRIC_INNER_PRODUCT)
    for chunk in (7_000, 65_536):
        s, i = M.exact_topk(M.RowView(emb_file, np.arange(N)), q, 100, chunk=chunk)
        assert M.recall_at_k(i, want_i) == 1.0
        np.testing.assert_allclose(s, want_s, atol=1e-5)


def test_ivfpq_from_disk_recall_on_held_out_queries(emb_file, built):
    index, _ = built[5_000]
    info = index.info
    assert info["kind"] == "ivfpq" and info["n"] == N and info["code_bytes"] == N * 32
    assert info["calib_recall"] >= 0.95 and info["train_rows"] < N
    q = clustered(100, D, seed=10**7)  # held out: never written to the file
    _, exact = M.exact_topk(M.RowView(emb_file, np.arange(N)), q, 100, chunk=10_000)
    scores, ids = index.search(q, 100)
    rec = M.recall_at_k(ids, exact)
    assert rec >= 0.95, rec
    # re-ranked exactly: the scores are the true inner products of the returned rows, best first
    x = np.asarray(emb_file[np.sort(ids[0])], np.float32)
    np.testing.assert_allclose(np.sort(scores[0])[::-1], np.sort(x @ q[0])[::-1], atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_index_is_filled_in_chunks_with_little_ram(built):
    """The chunk argument sets how many rows are read at once: 20 reads of 5K rows vs 2 of 50K
    give the same index, and the small chunk keeps the peak far below the float32 matrix."""
    (small, peak_small), (large, peak_large) = built[5_000], built[50_000]
    assert small.info["add_chunks"] == 20 and large.info["add_chunks"] == 2
    full = N * D * 4  # the pool as one float32 matrix: 51 MB
    assert peak_small < full / 3, (peak_small, full)
    assert peak_large > 2 * peak_small  # the chunk size is what bounds the peak
    q = clustered(10, D, seed=10**8)
    assert np.array_equal(small.search(q, 50)[1], large.search(q, 50)[1])


def test_mine_above_ivfpq_above_reads_the_pool_from_disk(tmp_path):
    """A 100K-frame pool above ``ivfpq_above``: the mined frames are (nearly) those of the exact
    in-RAM index, from a float16 file; below the threshold nothing changes (byte-identical)."""
    pool, ev, pf, x, names = world(n_pool=N, n_eval=200, d=32)
    x16 = write_in_chunks(tmp_path / "emb.npy", lambda a, m: x[a: a + m], len(x), 32)
    base = opts(k=100, max_per_drive=3, min_distance=0.005)
    exact = M.mine(pf, ev, pool, np.asarray(x16, np.float32), names, worst_slice=WORST, **base)
    disk = M.mine(pf, ev, pool, x16, names, worst_slice=WORST, ivfpq_above=50_000, **base)
    assert exact.index_info["kind"] == "flat" and disk.index_info["kind"] == "ivfpq"
    assert disk.index_info["n"] == N and disk.index_info["calib_recall"] >= 0.95
    overlap = len(set(exact.mined["name"]) & set(disk.mined["name"])) / len(exact.mined)
    assert overlap >= 0.9, overlap
    assert disk.headline()["precision"] >= exact.headline()["precision"] - 0.05
    same = M.mine(pf, ev, pool, np.asarray(x16, np.float32), names, worst_slice=WORST, ivfpq_above=N, **base)
    pd.testing.assert_frame_equal(same.mined, exact.mined)
    assert same.index_info["kind"] == "flat"


def test_mine_from_disk_counts_unembedded_and_zero_rows(tmp_path):
    pool, ev, pf, x, names = world(n_pool=3_000, n_eval=100, d=32)
    x = x.copy()
    zero = [names.index(n) for n in pool["name"][:7]]
    x[zero] = 0  # unreadable images
    x16 = write_in_chunks(tmp_path / "emb.npy", lambda a, m: x[a: a + m], len(x), 32, chunk=1_000)
    extra = pd.concat([pool, pool.head(3).assign(name=["gone1.jpg", "gone2.jpg", "gone3.jpg"])], ignore_index=True)
    res = M.mine(pf, ev, extra, x16, names, worst_slice=WORST, ivfpq_above=1_000, strategy="hybrid",
                 **{k: v for k, v in opts(k=30).items() if k != "strategy"})
    assert res.index_info["kind"] == "ivfpq"
    assert res.counts["pool_unreadable_image"] == 7 and res.counts["pool_without_embedding"] == 3
    assert res.counts["pool"] == 3_000 - 7 and len(res.mined) == 30
    assert not set(res.mined["name"]) & {pool["name"][i] for i in range(7)}


def _peak_rss_kb() -> int:
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")).split()[1])


def test_rowview_reads_rows_in_any_order_from_the_file_not_a_mapping(emb_file):
    """Rows come back as float32 in the asked order (duplicates, runs, scattered), read with
    pread: the file's pages do not become resident in this process (page faults on a mapping
    map the kernel's read-around windows, counted in RSS: the first 10M run peaked at 9.5 GB)."""
    v = M.RowView(emb_file, np.arange(N))
    ids = np.array([5, 3, 4, 4, N - 1, 0, 77_777, 6])
    assert np.array_equal(v[ids], np.asarray(emb_file[ids], np.float32)) and v[ids].dtype == np.float32
    assert np.array_equal(v[7], np.asarray(emb_file[7], np.float32))
    sub = M.RowView(emb_file, np.arange(N)[::-3])  # a pool: every third row, descending
    assert np.array_equal(sub[10:20], np.asarray(emb_file[np.arange(N)[::-3][10:20]], np.float32))
    try:
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (Linux >= 4.0)
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    base = _peak_rss_kb()
    rng = np.random.default_rng(0)
    for _ in range(20):  # 20 gathers of 2,000 scattered rows of the 25.6 MB file
        v[rng.choice(N, 2_000, replace=False)]
    # buffers ~1.5 MB; through a mapping, each gather's page faults mapped most of the file
    assert _peak_rss_kb() - base < 8 * 1024, _peak_rss_kb() - base
    with pytest.raises(IndexError, match="rows outside"):
        M.RowView(emb_file, np.array([0, N]))[:]
