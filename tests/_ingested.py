"""An ingest folder for the tiny world: short synthetic drive videos (SYNTHETIC), ingested at 1 fps.

Most videos are drives the world does not have (renamed keyframe specs: same rendering, new drive
group), so they can only join the mining pool; a few reuse the world's own drives, so §3's rule
(an ingested frame of an eval drive is held out) and §1's (one of a confirmation drive is left out)
have something to act on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bdd_engine import ingest, synth, synthvideo
from bdd_engine.config import load_config


def make_ingest_dir(tmp: Path, n_new: int = 16, n_own: int = 6, seconds: int = 3) -> Path:
    """Videos under ``tmp/videos``, ingested into ``tmp/ingested`` (returned)."""
    specs = [s for s in synth.plan_world(load_config("tiny", env=False)) if s.image_set == "100k"]
    own = [s for s in specs if s.split == "train"][:n_own // 2] + [s for s in specs if s.split == "val"][:n_own - n_own // 2]
    new = [dataclasses.replace(s, name=f"fe{i:06x}-{s.name.split('-', 1)[1]}") for i, s in enumerate(specs[-n_new:])]
    for s in own + new:
        synthvideo.write_drive_video(s, tmp / "videos" / (Path(s.name).stem + ".mp4"), seconds=seconds, fps=30,
                                     key_second=seconds // 2)
    ingest.ingest(tmp / "videos", tmp / "ingested", fps=1.0, progress=False)
    return tmp / "ingested"
