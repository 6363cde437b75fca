"""Wall time and peak resident memory per notebook section of one headless run.

Runs ``python -m bdd_engine run --profile P --from 1`` (every section recomputed; the world and
the weights must exist: ``make smoke-full`` once first), samples the resident set size of the
run's whole process tree every ``--every`` seconds (psutil: the CLI, the notebook kernel, its
DataLoader workers and FiftyOne's mongod) and splits the samples by the section lines the
runner prints (``§N ...: computing`` ... ``[run] §N ...: done in S s``). Wall time per section
is the runner's own figure. Peaks are sampled, so a spike shorter than ``--every`` can be
missed; ``kernel_peak_mb`` is the largest single process (the notebook kernel in practice).

Run: ``.venv/bin/python benchmarks/bench_full_sections.py [--profile smoke-full]``
(as long as the run itself: ~15 min for smoke-full on 2 cores). Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
START = re.compile(r"^§(\d) \S+: (computing|fresh)")
DONE = re.compile(r"^\[run\] §(\d) \S+: done in ([\d.]+) s \((.*)\)")


def tree_rss(proc: psutil.Process) -> tuple[float, float]:
    """(sum, max) resident MB over ``proc`` and its descendants."""
    sizes = []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:  # a worker that just ended
            pass
    return sum(sizes) / 2**20, max(sizes, default=0) / 2**20


class Sampler(threading.Thread):
    """Keeps the running peak (sum and single-process max) since the last :meth:`take`."""

    def __init__(self, pid: int, every: float):
        super().__init__(daemon=True)
        self.proc, self.every, self.stop = psutil.Process(pid), every, threading.Event()
        self.lock, self.peak = threading.Lock(), (0.0, 0.0)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                s, m = tree_rss(self.proc)
            except psutil.Error:
                return
            with self.lock:
                self.peak = (max(self.peak[0], s), max(self.peak[1], m))
            time.sleep(self.every)

    def take(self) -> tuple[float, float]:
        with self.lock:
            peak, self.peak = self.peak, (0.0, 0.0)
        return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke-full")
    ap.add_argument("--every", type=float, default=0.5, help="sampling period, s")
    ap.add_argument("--set", action="append", default=[], help="config override passed to run (key=value)")
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "bdd_engine", "run", "--profile", a.profile, "--from", "1",
           *[x for s in a.set for x in ("--set", s)]]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1)
    sampler = Sampler(proc.pid, a.every)
    sampler.start()
    sections, overall = {}, [0.0, 0.0]
    for line in proc.stdout:
        print(line, end="", flush=True)
        if START.match(line):
            s, m = sampler.take()  # what ran between sections (views, FiftyOne cells) is not a section's
            overall[:] = [max(overall[0], s), max(overall[1], m)]
        elif m := DONE.match(line):
            s, mx = sampler.take()
            overall[:] = [max(overall[0], s), max(overall[1], mx)]
            sections[int(m.group(1))] = {"wall_s": float(m.group(2)), "how": m.group(3),
                                         "tree_peak_mb": round(s), "kernel_peak_mb": round(mx)}
    rc = proc.wait()
    sampler.stop.set()
    s, m = sampler.take()
    result = {"profile": a.profile, "rc": rc, "total_wall_s": round(time.time() - t0, 1),
              "run_tree_peak_mb": round(max(overall[0], s)), "run_kernel_peak_mb": round(max(overall[1], m)),
              "sections": sections, "cpus": psutil.cpu_count(), "loadavg_end": [round(x, 2) for x in psutil.getloadavg()]}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
