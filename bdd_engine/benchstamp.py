"""Where a design benchmark's result lives, its provenance stamp, and whether it belongs to a run.

The benchmarks that measure the design before any arm is scored (``benchmarks/bench_recipe.py``,
``bench_assay.py``, ``bench_slice_gain.py``) write their RESULT twice: beside the run
(``<outputs>/benchmarks/<name>.json``) and to a committed folder (``benchmarks/results/<profile>/``,
JSON + PNG), stamped with the world it was measured on, the commit, the date and SYNTHETIC. The case
study shows the run's own result when it has one, else the committed one, and says when the stamp's
world or chosen slice is not the run's (then the table is a reference, not this run's measurement).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Mapping

from bdd_engine.checkpoint import atomic_write_bytes, atomic_write_json

COMMITTED = Path(__file__).resolve().parent.parent / "benchmarks" / "results"  # benchmarks/results/<profile>/


def stamp(profile: str, world_hash: str | None, synthetic: bool, commit: str, slice_: str | None,
          now: _dt.datetime | None = None) -> dict[str, Any]:
    """The provenance of one benchmark result (``world_hash`` None: real data, not checkable by hash)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return {"profile": profile, "world_hash": world_hash, "synthetic": bool(synthetic), "commit": commit,
            "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "slice": slice_}


def mismatch(st: Mapping[str, Any] | None, world_hash: str | None, slice_: str | None) -> list[str]:
    """Why a stamped result is not this run's measurement ([] = it is): another world, another
    chosen slice, or no stamp at all. A slice of None on either side is not compared."""
    if not st:
        return ["no provenance stamp"]
    why = []
    if st.get("world_hash") != world_hash:
        why.append(f"measured on world `{st.get('world_hash')}`, this run's is `{world_hash}`")
    if st.get("slice") and slice_ and st["slice"] != slice_:
        why.append(f"measured on slice {st['slice']}, this run chose {slice_}")
    return why


def save(out: Path, profile: str, name: str, result: Mapping[str, Any], png: Path | None = None,
         committed: Path = COMMITTED) -> list[Path]:
    """Write ``result`` (with its ``stamp``) to ``<out>/benchmarks/<name>.json`` and to
    ``<committed>/<profile>/<name>.json``; ``png`` (already under ``<out>/benchmarks/``) is copied beside it."""
    written = [atomic_write_json(out / "benchmarks" / f"{name}.json", result)]
    dest = committed / profile
    written.append(atomic_write_json(dest / f"{name}.json", result))
    if png is not None:
        written.append(atomic_write_bytes(dest / f"{name}.png", Path(png).read_bytes()))
    return written


def load(out: Path, profile: str, name: str, committed: Path = COMMITTED) -> tuple[dict[str, Any] | None, str]:
    """(result, where) — the run's own ``<out>/benchmarks/<name>.json`` first, else the committed one;
    (None, "") when neither exists."""
    for where, p in (("this outputs folder", out / "benchmarks" / f"{name}.json"),
                     ("committed", committed / profile / f"{name}.json")):
        if p.is_file():
            return json.loads(p.read_text()), where
    return None, ""


def png_of(out: Path, profile: str, name: str, where: str, committed: Path = COMMITTED) -> Path | None:
    """The figure that belongs to the result :func:`load` returned from ``where``."""
    p = (out / "benchmarks" if where == "this outputs folder" else committed / profile) / f"{name}.png"
    return p if p.is_file() else None
