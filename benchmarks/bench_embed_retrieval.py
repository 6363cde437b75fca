"""How well does an embedder retrieve a slice? (the question §6 mining depends on)

For every val slice with >= ``--min-val`` frames: prototype = normalised mean embedding of
up to 15 of its val frames (seeded), retrieve the top-100 train frames by cosine, and
report precision (slice match) next to the slice's base rate among train frames, plus
weather-only / timeofday-only / scene-only matches. Compares ``gradhist`` (embed.py)
with a naive baseline, the raw 32x18 RGB thumbnail, to show the world is not trivially
easy and what the descriptor adds.

Run: ``.venv/bin/python benchmarks/bench_embed_retrieval.py [--profile demo] [--data ROOT]``
(default root: the profile's world, generated if missing; ~1 min for 3.3K frames).
Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bdd_engine.env import setup_env  # noqa: E402

setup_env()  # offline-safe env before open_clip/transformers are imported
from bdd_engine import bdd  # noqa: E402
from bdd_engine import embed as E  # noqa: E402
from bdd_engine import synth  # noqa: E402
from bdd_engine.config import load_config  # noqa: E402


def load_frames(root: Path) -> pd.DataFrame:
    index = bdd.index_images(root)
    parts = [bdd.frames_table(bdd.load_frames(root / f"labels/det_20/det_{s}.json"), index, s) for s in ("train", "val")]
    f = pd.concat(parts, ignore_index=True)
    return f[(f["image_path"] != "") & f["slice"].notna()].reset_index(drop=True)


def thumbnails(paths: list[str]) -> np.ndarray:
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 18), Image.BILINEAR), np.float32).ravel() for p in paths])
    return E.l2_normalize(x)


def retrieval(emb: np.ndarray, f: pd.DataFrame, min_val: int, seed: int, top: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    val, train = (f["split"] == "val").to_numpy(), np.flatnonzero((f["split"] == "train").to_numpy())
    rows = []
    for sl, n in f[val]["slice"].value_counts().sort_index().items():
        if n < min_val:
            continue
        q = rng.choice(np.flatnonzero(val & (f["slice"] == sl).to_numpy()), size=min(15, n), replace=False)
        p = emb[q].mean(0)
        p /= np.linalg.norm(p)
        hit = train[np.argsort(-(emb[train] @ p), kind="stable")[:top]]
        row = {"slice": sl, "n_val": int(n), "precision": float((f["slice"].to_numpy()[hit] == sl).mean()),
               "base_rate": float((f["slice"].to_numpy()[train] == sl).mean())}
        for a, v in zip(bdd.SLICE_ATTRS, sl.split(bdd.SLICE_SEP)):
            row[a] = float((f[a].to_numpy()[hit] == v).mean())
        rows.append(row)
    out = pd.DataFrame(rows)
    out["lift"] = out["precision"] / out["base_rate"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="demo", help="whose data root to use when --data is not given")
    ap.add_argument("--data", default=None, help="BDD-layout root (default: the profile's; synthetic → generated if missing)")
    ap.add_argument("--imgsz", type=int, default=None, help="gradhist's shorter side in px (default: the profile's embed_imgsz)")
    ap.add_argument("--min-val", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the profile's workers)")
    args = ap.parse_args(argv)
    cfg = load_config(args.profile)
    f = load_frames(Path(args.data) if args.data else synth.ensure_world(cfg))
    imgsz = args.imgsz if args.imgsz is not None else int(cfg.embed_imgsz)
    workers = args.workers if args.workers is not None else int(cfg.workers)
    with tempfile.TemporaryDirectory() as tmp:
        gh, _ = E.embed_frames(E.GradHistEmbedder(imgsz), f["image_path"], f["name"], tmp,
                               batch_size=int(cfg.embed_batch), workers=workers)
        embs = {"gradhist": np.asarray(gh), "thumb32x18": thumbnails(list(f["image_path"]))}
    result = {}
    for name, emb in embs.items():
        r = retrieval(emb, f, args.min_val, args.seed)
        print(f"\n== {name}: top-100 retrieval per val slice (prototype of <= 15 val frames; pool = train frames)")
        print(r.round(3).to_string(index=False))
        result[name] = {"mean_precision": round(float(r["precision"].mean()), 4), "min_lift": round(float(r["lift"].min()), 3),
                        "median_lift": round(float(r["lift"].median()), 3), "slices": int(len(r)),
                        "slices_lift_ge_3": int((r["lift"] >= 3).sum()),
                        "mean_match": {a: round(float(r[a].mean()), 4) for a in bdd.SLICE_ATTRS}}
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
