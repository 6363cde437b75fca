"""Top-k search for mining: FAISS exact vs FAISS IVF vs sklearn (the seed's method) vs numpy.

For each database size (default 100K and 1M x 512 float32 unit vectors) and query count
(1 and 100), top-100 by inner product (= cosine) with:

* ``faiss_flat``  — ``IndexFlatIP`` (what ``mine.build_index`` uses up to ``mine_ivf_above``);
* ``faiss_ivf``   — ``mine.build_index`` above the threshold: ``IndexIVFFlat``, ~sqrt(N)
  lists, ``nprobe`` calibrated to recall@100 >= 0.95 on held-out calibration queries;
* ``sklearn``     — ``cosine_similarity`` + ``argpartition`` (the seed notebook's method);
* ``numpy``       — ``q @ xb.T`` + ``argpartition``.

Data are *clustered* (a two-level mixture: 100 super-clusters x 10 sub-clusters, Dirichlet
cluster sizes, per-cluster spread), so IVF is tested on structure like real embeddings
rather than on uniform noise, where no index can beat brute force. Queries are fresh
draws from the same mixture. Ground truth is a float64 brute-force top-100.

Each method runs in its own subprocess so peak memory can be read from the kernel
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``; FAISS allocates outside
Python, so tracemalloc would not see it). Reported per method: build seconds, median
query seconds, peak extra RSS (MB) over the data already in RAM — for the build, for
querying, and overall (``peak_mb`` = max(build peak, what the index keeps + query
peak); FAISS indexes keep their own copy of the vectors, sklearn copies them per call
to normalise) — speed ratios vs exact FAISS and vs sklearn, and recall@100 vs ground
truth. The last line is ``RESULT {json}``. Other processes on the same cores slow every
method (FAISS's OpenMP regions most), so the load average is printed and recorded.

On-disk path (``--n N [N ...]``, the pools mining cannot hold in RAM): N x D unit vectors
from the same mixture are written in chunks to a float16 ``.npy`` (as ``embed.embed_frames``
writes with ``embed_dtype: float16``); a worker process opens it as a memmap and runs
``mine.build_ondisk_index`` (IVF-PQ trained on a sample, filled in chunks from the file,
PQ candidates re-ranked exactly from the file). Reported: train / add / build seconds, query
seconds (1 and 100 queries), the worker's whole peak RSS (``VmHWM``, MB, not an increment),
bytes on disk (the vectors file) and in RAM (PQ codes), and recall@100 against exact
search done in chunks from the same file (``mine.exact_topk``) on held-out queries. An exact
flat index at 10M x 512 float32 would need 20.5 GB of RAM (the RESULT says so next to this
machine's memory).

FAISS threads follow ``OMP_NUM_THREADS`` (default: all cores).

Run: ``.venv/bin/python benchmarks/bench_mine.py`` (about 5 min, ~9 GB RAM peak, 2 GB
temporary disk at 1M) or ``--sizes 20000`` for a quick look; the scale run of docs/SCALE.md:
``OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_mine.py --sizes 1000000
--methods faiss_flat faiss_ivf --n 1000000 10000000`` (10.2 GB temporary disk at 10M).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("faiss_flat", "faiss_ivf", "sklearn", "numpy")
ONDISK_DTYPE = np.float16  # the large-pool embedding file (embed_dtype: float16)


# ----------------------------------------------------------------------------- data
def _mixture(d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sup = rng.normal(size=(100, d))
    sup /= np.linalg.norm(sup, axis=1, keepdims=True)
    sub = np.repeat(sup, 10, axis=0) + 0.8 * rng.normal(size=(1000, d)) / np.sqrt(d)
    sub /= np.linalg.norm(sub, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(1000, 2.0))
    spread = rng.uniform(0.5, 1.1, 1000)
    return sub.astype(np.float32), weights, spread.astype(np.float32)


def draw(n: int, d: int, seed: int, mix_seed: int = 0, chunk: int = 100_000, out: np.ndarray | None = None) -> np.ndarray:
    """n unit vectors from the clustered mixture (deterministic by seed); writes into ``out``."""
    centres, weights, spread = _mixture(d, mix_seed)
    out = np.empty((n, d), np.float32) if out is None else out
    for a in range(0, n, chunk):
        rng = np.random.default_rng([seed, a])
        m = min(chunk, n - a)
        c = rng.choice(len(centres), size=m, p=weights)
        x = centres[c] + spread[c, None] * rng.standard_normal((m, d), dtype=np.float32) / np.float32(np.sqrt(d))
        out[a: a + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def ground_truth(xb: np.ndarray, q: np.ndarray, k: int, chunk: int = 100_000) -> np.ndarray:
    """float64 brute-force top-k ids (Q, k), best first."""
    q64 = q.astype(np.float64)
    best_s = np.full((len(q), 0), -np.inf)
    best_i = np.zeros((len(q), 0), np.int64)
    for a in range(0, len(xb), chunk):
        s = q64 @ np.asarray(xb[a: a + chunk], np.float64).T
        s = np.concatenate([best_s, s], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(a, a + s.shape[1] - best_s.shape[1]), (len(q), s.shape[1] - best_s.shape[1]))], axis=1)
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


# ----------------------------------------------------------------------------- memory
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset VmHWM to the current RSS (Linux >= 4.0); return the current RSS in kB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then VmHWM keeps the load peak, which equals the data size (np.load reads in place)
    return _rss_kb("VmRSS")


def _peak_mb(base_kb: int) -> float:
    return max(0, _rss_kb("VmHWM") - base_kb) / 1024


# ----------------------------------------------------------------------------- methods
def _topk_from_scores(s: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
    return np.take_along_axis(part, order, 1)


def run_method(method: str, xb: np.ndarray, q: np.ndarray, calib: np.ndarray, k: int, repeats: int, seed: int) -> dict:
    # imports first: their time and memory are not the method's
    from sklearn.metrics.pairwise import cosine_similarity

    from bdd_engine.mine import build_index

    base = _reset_peak()
    t0 = time.perf_counter()
    info: dict = {}
    if method == "faiss_flat":
        index = build_index(xb, ivf_above=len(xb) + 1, seed=seed, k=k, target_recall=0.95)  # exact: seed, recall unused
        search = lambda: index.search(q, k)[1]  # noqa: E731
    elif method == "faiss_ivf":
        index = build_index(xb, ivf_above=0, seed=seed, k=k, target_recall=0.95, calib_queries=calib)
        info = {kk: v for kk, v in index.info.items() if kk in ("nlist", "nprobe", "calib_recall")}
        search = lambda: index.search(q, k)[1]  # noqa: E731
    elif method == "sklearn":
        search = lambda: _topk_from_scores(cosine_similarity(q, xb), k)  # noqa: E731
    elif method == "numpy":
        search = lambda: _topk_from_scores(q @ xb.T, k)  # noqa: E731
    else:
        raise ValueError(method)
    build_s = time.perf_counter() - t0
    build_mb = _peak_mb(base)
    resident_mb = max(0, _rss_kb("VmRSS") - base) / 1024  # what the index keeps (FAISS: its copy of xb)
    qbase = _reset_peak()
    times, ids = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        ids = search()
        times.append(time.perf_counter() - t)
    query_mb = _peak_mb(qbase)
    return {"build_s": build_s, "query_s": float(np.median(times)), "build_peak_mb": build_mb,
            "query_peak_mb": query_mb, "peak_mb": max(build_mb, resident_mb + query_mb),
            "ids": np.asarray(ids).tolist(), **info}


def _worker(args: argparse.Namespace) -> None:
    import faiss

    faiss.omp_set_num_threads(_threads())
    if args.method == "ivfpq_ondisk":
        Path(args.out).write_text(json.dumps(run_ondisk(args)))
        return
    xb = np.load(args.data)  # fully in RAM, as a pipeline holding its embeddings would
    q = np.load(args.queries)[: args.nq]
    calib = np.load(args.calib)
    res = run_method(args.method, xb, q, calib, args.k, args.repeats, args.seed)
    Path(args.out).write_text(json.dumps(res))


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def run_ondisk(args: argparse.Namespace) -> dict:
    """Worker: build the on-disk index from the memmapped file, query it; whole-process peak RSS."""
    from bdd_engine import mine as M

    x = np.load(args.data, mmap_mode="r")
    q, calib = np.load(args.queries), np.load(args.calib)
    t0 = time.perf_counter()
    index = M.build_ondisk_index(x, np.arange(len(x)), seed=args.seed, k=args.k, target_recall=0.95,
                                 calib_queries=calib)
    build_s = time.perf_counter() - t0
    res = {"build_s": build_s, **{k: index.info[k] for k in ("train_s", "add_s", "nlist", "nprobe", "pq_m", "rerank",
                                                              "calib_recall", "code_bytes", "add_chunk", "add_chunks")}}
    for nq in (1, len(q)):
        times, ids = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            ids = index.search(q[:nq], args.k)[1]
            times.append(time.perf_counter() - t)
        res[f"query_s_q{nq}"] = float(np.median(times))
    res["ids"] = np.asarray(ids).tolist()
    res["peak_rss_mb"] = _rss_kb("VmHWM") / 1024  # the whole process: Python, FAISS, index, reads
    return res


def ondisk_case(n: int, args: argparse.Namespace, tmp: Path) -> dict:
    """Write n vectors to disk in chunks, exact top-k from the file in chunks, then the worker."""
    from bdd_engine import mine as M

    t0 = time.perf_counter()
    data = tmp / f"xb_ondisk_{n}.npy"
    xb = np.lib.format.open_memmap(data, mode="w+", dtype=ONDISK_DTYPE, shape=(n, args.dim))
    draw(n, args.dim, seed=args.seed, out=xb)  # 100K rows at a time
    xb.flush()
    del xb
    nq = max(args.queries)
    qfile, cfile = tmp / "q_ondisk.npy", tmp / "calib_ondisk.npy"
    np.save(qfile, draw(nq, args.dim, seed=args.seed + 1))  # held out: not in the file
    np.save(cfile, draw(100, args.dim, seed=args.seed + 2))
    write_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    x = np.load(data, mmap_mode="r")
    _, truth = M.exact_topk(M.RowView(x, np.arange(n)), np.load(qfile), args.k)
    exact_s = time.perf_counter() - t1
    del x
    print(f"\n== on disk N={n:,} x {args.dim} {np.dtype(ONDISK_DTYPE).name}: written in {write_s:.1f} s, "
          f"exact top-{args.k} of {nq} queries from the file in chunks {exact_s:.1f} s")
    out = tmp / "res_ondisk.json"
    subprocess.run([sys.executable, __file__, "--worker", "--method", "ivfpq_ondisk", "--data", str(data),
                    "--queries_file", str(qfile), "--calib", str(cfile), "--out", str(out), "--k", str(args.k),
                    "--repeats", "3", "--seed", str(args.seed)], check=True, cwd=ROOT)
    r = json.loads(out.read_text())
    r["recall_at_k"] = recall(r.pop("ids"), truth)
    r.update({"bytes_on_disk": data.stat().st_size, "write_s": write_s, "exact_chunked_s_q" + str(nq): exact_s,
              "flat_float32_ram_bytes": n * args.dim * 4, "queries": nq})
    data.unlink()
    print(f"   ivfpq_ondisk: train {r['train_s']:.1f} s + add {r['add_s']:.1f} s = build {r['build_s']:.1f} s "
          f"(nlist {r['nlist']}, PQ{r['pq_m']}, nprobe {r['nprobe']}, re-rank {r['rerank']}); query 1: "
          f"{r['query_s_q1']:.3f} s, {nq}: {r['query_s_q' + str(nq)]:.3f} s; peak RSS {r['peak_rss_mb']:.0f} MB; "
          f"disk {r['bytes_on_disk'] / 1e9:.2f} GB, PQ codes {r['code_bytes'] / 1e9:.3f} GB; recall@{args.k} "
          f"{r['recall_at_k']:.4f} (exact flat float32 would need {r['flat_float32_ram_bytes'] / 1e9:.1f} GB RAM)")
    return {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in r.items()}


def _mem_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


# ----------------------------------------------------------------------------- driver
def recall(found: list, truth: np.ndarray) -> float:
    f = np.asarray(found)
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(f.tolist(), truth.tolist())]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--n", type=int, nargs="*", default=[], dest="ondisk",
                    help="on-disk IVF-PQ case at these sizes (float16 file, chunked), e.g. --n 10000000")
    ap.add_argument("--queries", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", default=None, help="temporary data folder (default: a fresh tmp dir)")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for a in ("method", "data", "queries_file", "calib", "out"):
        ap.add_argument(f"--{a}", help=argparse.SUPPRESS)
    ap.add_argument("--nq", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.queries = args.queries_file
        _worker(args)
        return 0

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_mine_"))
    tmp.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    print(f"bench_mine: k={args.k}, dim={args.dim}, {os.cpu_count()} CPU cores, clustered unit vectors; data in {tmp}; "
          f"load average {os.getloadavg()[0]:.1f} (other processes on these cores slow every method, FAISS's OpenMP most)")
    results["_meta"] = {"cpu_cores": os.cpu_count(), "load_avg_start": round(os.getloadavg()[0], 2), "k": args.k,
                        "dim": args.dim, "omp_threads": _threads(), "mem_total_bytes": _mem_total_bytes()}
    for n in args.sizes:
        t0 = time.perf_counter()
        data = tmp / f"xb_{n}.npy"
        xb = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32, shape=(n, args.dim))
        draw(n, args.dim, seed=args.seed, out=xb)
        xb.flush()
        qfile, cfile = tmp / "q.npy", tmp / "calib.npy"
        q_all = draw(max(args.queries), args.dim, seed=args.seed + 1)
        np.save(qfile, q_all)
        np.save(cfile, draw(100, args.dim, seed=args.seed + 2))
        truth = ground_truth(xb, q_all, args.k)
        del xb
        print(f"\n== N={n:,} x {args.dim}: data + float64 ground truth in {time.perf_counter() - t0:.1f} s")
        for nq in args.queries:
            key = f"{n}x{args.dim}_q{nq}"
            rows: dict = {}
            for m in args.methods:
                out = tmp / f"res_{m}.json"
                reps = 5 if n <= 200_000 else 3
                cmd = [sys.executable, __file__, "--worker", "--method", m, "--data", str(data), "--queries_file", str(qfile),
                       "--calib", str(cfile), "--out", str(out), "--nq", str(nq), "--k", str(args.k),
                       "--repeats", str(reps), "--seed", str(args.seed)]
                subprocess.run(cmd, check=True, cwd=ROOT)
                r = json.loads(out.read_text())
                r["recall_at_k"] = recall(r.pop("ids"), truth[:nq])
                rows[m] = r
            for m, r in rows.items():
                if "faiss_flat" in rows:
                    r["speedup_vs_faiss_flat"] = rows["faiss_flat"]["query_s"] / r["query_s"]
                if "sklearn" in rows:
                    r["speedup_vs_sklearn"] = rows["sklearn"]["query_s"] / r["query_s"]
            results[key] = {m: {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in r.items()} for m, r in rows.items()}
            print(f"-- {nq} quer{'y' if nq == 1 else 'ies'}, top-{args.k}")
            print(f"   {'method':<11}{'build s':>9}{'query s':>10}{'build MB':>10}{'query MB':>10}{'peak MB':>9}{'x flat':>8}{'x sklearn':>10}{'recall':>8}  notes")
            for m, r in rows.items():
                note = f"nlist {r['nlist']}, nprobe {r['nprobe']}" if "nprobe" in r else ""
                print(f"   {m:<11}{r['build_s']:>9.3f}{r['query_s']:>10.4f}{r['build_peak_mb']:>10.0f}{r['query_peak_mb']:>10.0f}{r['peak_mb']:>9.0f}"
                      f"{r.get('speedup_vs_faiss_flat', float('nan')):>8.2f}{r.get('speedup_vs_sklearn', float('nan')):>10.2f}"
                      f"{r['recall_at_k']:>8.4f}  {note}")
        data.unlink()
    for n in args.ondisk:
        results[f"ondisk_{n}x{args.dim}"] = ondisk_case(n, args, tmp)
    if args.ondisk:
        big = max(args.ondisk)
        flat, mem = big * args.dim * 4, _mem_total_bytes()
        results["_meta"]["note"] = (
            f"an exact flat index at {big:,} x {args.dim} float32 is {flat / 1e9:.1f} GB, built from the same vectors "
            f"in RAM ({2 * flat / 1e9:.1f} GB together); this machine has {mem / 1e9:.1f} GB"
            + (": more than it has" if 2 * flat > mem else ""))
    results["_meta"]["load_avg_end"] = round(os.getloadavg()[0], 2)
    print("RESULT " + json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
