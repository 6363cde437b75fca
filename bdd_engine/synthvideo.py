"""Synthetic drives as short H.264 videos, so video ingest runs offline and in tests.

BDD100K ships one ``.mov`` per drive (≈40 s, 30 fps, 1280×720, H.264) whose labelled
100K image is one of its frames. Here each 100K keyframe of a synthetic world
(:func:`bdd_engine.synth.plan_world`) becomes ``<world>/videos/<split>/<video>.mov``:

* ``seconds`` seconds at ``fps`` frames/s, the frame size of the world;
* second ``key_second`` starts with the keyframe itself: frame ``key_second * fps`` is
  exactly :func:`synth.render_frame` of the frame's spec (before lossy coding), so the
  labelled image is among the video's frames;
* every other second is a new view of the same drive (same weather, time of day and scene,
  its own objects), rendered by the same :func:`synth.render_frame`;
* within a second the camera moves forward (a centre zoom of up to ``ZOOM_PER_SECOND``);
  in a *stopped* second (drawn per drive, never the first or the keyframe second) the car
  stands still: the previous view, unzoomed — what a scene-change filter should drop.

Frames are produced one at a time and encoded as they come (PyAV/libx264): a video is
never held in memory. Each file is written atomically (temp file + rename), and an
existing video is kept, so an interrupted ``synth --videos`` resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from bdd_engine import synth
from bdd_engine.checkpoint import atomic_path, atomic_write_json

ZOOM_PER_SECOND = 0.08  # centre zoom reached at the end of a moving second (forward motion)
P_STOPPED = 0.25        # chance that a second (not the first, not the keyframe's) is a stop
VIDEOS_MARKER = "VIDEOS.json"  # <world>/videos/VIDEOS.json: the params its videos were written with
CODECS = {".mov": ("mov", "libx264"), ".mp4": ("mp4", "libx264"), ".avi": ("avi", "libx264")}


def drive_plan(spec: synth.FrameSpec, seconds: int, key_second: int) -> list[dict[str, Any]]:
    """One entry per second: ``{"second", "seed", "stopped"}``. The keyframe second uses the
    spec's own seed; a stopped second repeats the previous second's seed. Drawn from the
    spec's seed, so a drive's video is deterministic."""
    if not 0 <= key_second < seconds:
        raise ValueError(f"key_second {key_second} must lie in [0, {seconds})")
    rng = np.random.default_rng([spec.seed, 7])
    plan: list[dict[str, Any]] = []
    for s in range(seconds):
        stopped = s not in (0, key_second) and rng.random() < P_STOPPED
        seed = spec.seed if s == key_second else int(rng.integers(0, 2**62))
        if stopped:
            seed = plan[-1]["seed"]
        plan.append({"second": s, "seed": seed, "stopped": bool(stopped)})
    return plan


def _zoom(im: Image.Image, z: float) -> np.ndarray:
    """Centre crop of size (W/z, H/z) resized back to (W, H): forward motion. z=1 → the image."""
    if z == 1.0:
        return np.asarray(im)
    W, H = im.size
    cw, ch = W / z, H / z
    box = ((W - cw) / 2, (H - ch) / 2, (W + cw) / 2, (H + ch) / 2)
    return np.asarray(im.resize((W, H), Image.BILINEAR, box=box))


def drive_frames(spec: synth.FrameSpec, seconds: int, fps: int, key_second: int) -> Iterator[np.ndarray]:
    """The drive's frames in order, one uint8 RGB array (H, W, 3) at a time (streaming)."""
    for sec in drive_plan(spec, seconds, key_second):
        img, _ = synth.render_frame(replace(spec, seed=sec["seed"]))
        im = Image.fromarray(img)
        for j in range(fps):
            yield _zoom(im, 1.0 if sec["stopped"] else 1.0 + ZOOM_PER_SECOND * j / fps)


def write_drive_video(spec: synth.FrameSpec, path: str | os.PathLike, *, seconds: int = 4, fps: int = 30,
                      key_second: int = 2, gop: int | None = None, crf: int = 23) -> dict[str, Any]:
    """Encode one drive as H.264 at ``path`` (.mov, .mp4 or .avi), atomically.

    ``gop``: frames between keyframes (None = ``fps``, one per second); ``crf``: x264 quality
    (lower = better). Returns ``{"video", "frames", "seconds", "fps", "key_index",
    "stopped_seconds"}`` where ``key_index`` is the 0-based frame index of the keyframe.
    """
    path = Path(path)
    if path.suffix not in CODECS:
        raise ValueError(f"{path}: video suffix must be one of {sorted(CODECS)}")
    import av  # PyAV: FFmpeg's encoders (libx264) without a binary on PATH

    fmt, codec = CODECS[path.suffix]
    n = 0
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format=fmt) as out:
            st = out.add_stream(codec, rate=Fraction(fps))
            st.width, st.height, st.pix_fmt = spec.width, spec.height, "yuv420p"
            st.options = {"crf": str(crf), "preset": "veryfast", "g": str(gop or fps), "keyint_min": str(gop or fps),
                          "sc_threshold": "0"}  # fixed GOP: keyframes where we say, not at scene cuts
            for img in drive_frames(spec, seconds, fps, key_second):
                for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(pkt)
                n += 1
            for pkt in st.encode():  # flush the encoder
                out.mux(pkt)
    plan = drive_plan(spec, seconds, key_second)
    return {"video": path.stem, "frames": n, "seconds": seconds, "fps": fps, "key_index": key_second * fps,
            "stopped_seconds": [p["second"] for p in plan if p["stopped"]]}


def write_world_videos(root: str | os.PathLike, specs: Sequence[synth.FrameSpec], *, seconds: int = 4,
                       fps: int = 30, key_second: int | None = None, limit: int | None = None,
                       suffix: str = ".mov", progress: bool = True) -> list[dict[str, Any]]:
    """A video per 100K keyframe of the world at ``root``: ``<root>/videos/<split>/<video><suffix>``.

    ``specs``: ``synth.plan_world(cfg)`` of the world's own config (the caller generated
    ``root`` from it). ``key_second`` None = the middle second. ``limit``: first N keyframes
    only (None = all). Existing videos are kept (resume). Refuses a ``root`` that is not a
    synthetic world (:class:`synth.WorldRefused`). Returns one info dict per video.
    """
    root = Path(root)
    if synth.world_marker(root) is None:
        raise synth.WorldRefused(f"{root} is not a synthetic world made by bdd_engine (no {synth.MARKER}); "
                                 "synth --videos writes videos only into its own worlds")
    key_second = seconds // 2 if key_second is None else key_second
    vdir = root / "videos"
    params = {"seconds": seconds, "fps": fps, "key_second": key_second, "suffix": suffix}
    if vdir.exists() and _read_json(vdir / VIDEOS_MARKER).get("params") != params:
        shutil.rmtree(vdir)  # videos of other params, inside a world synth made: ours to replace
    atomic_write_json(vdir / VIDEOS_MARKER, {"generator": "bdd_engine.synthvideo", "params": params})
    todo = [s for s in specs if s.image_set == "100k"][:limit]
    infos = []
    for spec in tqdm(todo, desc="synth videos", unit="video", disable=not progress):
        path = vdir / spec.split / (Path(spec.name).stem + suffix)
        if path.exists():  # written whole by an earlier call with the same params (atomic rename)
            plan = drive_plan(spec, seconds, key_second)
            infos.append({"video": path.stem, "frames": seconds * fps, "seconds": seconds, "fps": fps,
                          "key_index": key_second * fps, "stopped_seconds": [p["second"] for p in plan if p["stopped"]]})
            continue
        infos.append(write_drive_video(spec, path, seconds=seconds, fps=fps, key_second=key_second))
    return infos


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
