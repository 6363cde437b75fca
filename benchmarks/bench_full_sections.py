"""Wall time and peak resident memory of notebook sections, each recomputed in its own process.

After a complete run of the profile (``make smoke-full``), the section folders (and, for the
sections that read them, the iter0 run) are copied to a fresh scratch outputs folder that this
script creates under the profile's outputs; then each requested section is recomputed there in
a fresh ``python`` process (``flywheel.recompute_from(N)`` + its runner, as the notebook's
section cell calls it) under ``/usr/bin/time``: wall seconds and the process's peak RSS
(GNU time's ``%M``, the maximum resident set of the process and the children it waited for).
No cache is copied (embeddings, image checks, training runs), so every section really computes.
Sections run in order, each reading its upstream from the scratch folder. The FiftyOne cells of
the notebook are not sections and are not measured.

Run: ``.venv/bin/python benchmarks/bench_full_sections.py [--profile smoke-full] [--sections 1 2 3 5]``
(all 8 take about as long as the run itself). The scratch folder is deleted at the end
(``--keep`` keeps it). Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bdd_engine.config import load_config  # noqa: E402
from bdd_engine.sections import SECTIONS  # noqa: E402

RUNNERS = {1: "s1_collect", 2: "s2_curate", 3: "s3_pools", 4: "s4_train", 5: "s5_eval", 6: "s6_mine",
           7: "s7_autolabel_retrain", 8: "s8_delta"}
CALL = ("from bdd_engine.env import setup_env; setup_env()\n"
        "from bdd_engine.config import load_config\nfrom bdd_engine import flywheel as fw\n"
        "cfg = load_config({profile!r}, {{'outputs_dir': {out!r}}}, env=False)\n"
        "fw.recompute_from({n}); fw.{fn}(cfg)\n")


def scratch_copy(src: Path, sections: list[int]) -> Path:
    """A new folder beside ``src`` holding its section folders; the iter0 run only when §4 is
    not itself recomputed (§5-§8 read its weights)."""
    dst = Path(tempfile.mkdtemp(prefix=src.name + "-bench-", dir=src.parent))
    for d in sorted(src.glob("0[1-8]_*")):
        shutil.copytree(d, dst / d.name)
    if 4 not in sections and (src / "runs" / "iter0").is_dir():
        shutil.copytree(src / "runs" / "iter0", dst / "runs" / "iter0")
    return dst


def measure(profile: str, out: Path, n: int) -> dict:
    code = CALL.format(profile=profile, out=str(out), n=n, fn=RUNNERS[n])
    t0 = time.time()
    r = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", sys.executable, "-c", code], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("TIME ")]
    if r.returncode or not line:
        raise SystemExit(f"§{n} failed (rc {r.returncode}):\n{r.stderr[-2000:]}")
    wall, kb = line[-1].split()[1:]
    return {"section": SECTIONS[n], "wall_s": float(wall), "peak_rss_mb": round(int(kb) / 1024),
            "started": time.strftime("%H:%M:%S", time.localtime(t0)), "loadavg_after": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke-full")
    ap.add_argument("--sections", type=int, nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    ap.add_argument("--keep", action="store_true", help="keep the scratch outputs folder")
    a = ap.parse_args()
    src = load_config(a.profile, env=False).out
    missing = [k for k in range(1, max(a.sections)) if k not in a.sections
               and not any((d / "manifest.json").is_file() for d in src.glob(f"0{k}_*"))]
    if missing:
        raise SystemExit(f"{src} lacks sections {missing} upstream of {a.sections}: run `make smoke-full` first")
    out = scratch_copy(src, sorted(a.sections))
    rows = {}
    try:
        for n in sorted(a.sections):
            rows[n] = measure(a.profile, out, n)
            print(f"§{n} {json.dumps(rows[n])}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)  # the scratch folder this script created
    print("RESULT " + json.dumps({"profile": a.profile, "cpus": os.cpu_count(), "sections": rows}))


if __name__ == "__main__":
    main()
