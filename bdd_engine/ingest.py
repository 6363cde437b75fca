"""Take in new data: videos sampled to JPEG frames, and folders of images as they are.

``ingest(src, out, fps=1)`` walks ``src`` for videos (``.mov``, ``.mp4``, ``.avi``; BDD100K
ships 40 s .mov at 30 fps, 1280×720, H.264) and images (``.jpg``, ``.jpeg``, ``.png``):

* a video becomes frames ``<out>/frames/<video>-<7-digit frame index>.jpg`` — BDD's
  tracking-frame names, so :func:`bdd.video_of` / :func:`bdd.group_of` give the video and
  the drive group. The index is the 0-based frame number in the video (at 30 fps the
  frame at 10 s is ``-0000300``); sampled at ``fps`` frames per second of video time
  (the first frame at or after each ``k / fps`` s);
* an image is taken as it is (not copied or re-encoded): its row points at the file;
* ``<out>/frames.csv`` lists every frame: :data:`FRAME_COLUMNS`; ``<out>/skipped.csv`` every
  corrupt/truncated video or unreadable image with the reason (counted, never fatal);
* a video that decodes but with damage (e.g. flipped bits: FFmpeg conceals the broken
  macroblocks and goes on) is kept, and its frames carry ``decode_errors``: the error
  messages FFmpeg logged while decoding that video (PyAV decoder; the stretches ``seek``
  skips are not decoded, so not checked). The summary counts and names such videos.

Decoding streams one frame at a time (PyAV or OpenCV, both FFmpeg). ``method="seek"``
reads the keyframe index first (demux only, no decoding) and jumps to the keyframe
before a sample only when that skips more than :data:`SEEK_MIN_SKIP` frames; otherwise it
decodes on, so with rare keyframes it costs what ``"seq"`` (decode every frame) costs. Which is faster on which video is measured by
``benchmarks/bench_ingest.py``.

Safety and resume: ``out`` is created and marked (``INGEST.json``, see
:func:`checkpoint.claim_folder`); an existing folder without that marker, or ingested with
other settings or from another ``src`` (whose frames.csv it would rewrite, orphaning the
frames already there), is refused. A video is finished when its rows are written to
``<out>/done/<video>.csv`` (atomically, after its frames); a rerun skips finished
videos and redoes the one a kill interrupted, deleting that video's partial frames first.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from bdd_engine import executor as executors
from bdd_engine.bdd import group_of, video_of
from bdd_engine.checkpoint import (FolderRefused, acquire_lock, atomic_path, atomic_write_df, claim_folder,
                                   release_lock)
from bdd_engine.images import check_images

VIDEO_SUFFIXES = (".mov", ".mp4", ".avi")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MARKER = "INGEST.json"
GENERATOR = "bdd_engine.ingest"
DECODERS = ("pyav", "opencv")
METHODS = ("seek", "seq")
FRAME_COLUMNS = ["name", "video", "group", "frame_index", "timestamp_ms", "source_path", "image_path",
                 "width", "height", "decode_errors"]
SKIP_COLUMNS = ["source_path", "reason"]
THUMB_WH = (64, 36)  # scene-change thumbnail, px (16:9 like BDD)
# Seek only when that skips more than this many frames: a seek flushes the decoder, whose
# threads then refill from an I-frame (~10x a P/B frame at 720p); skipping the 9 frames
# before each keyframe of a GOP-250 clip cost more than decoding them (bench_ingest).
SEEK_MIN_SKIP = 10


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded to its end (corrupt, truncated, no video stream)."""


@dataclass
class Decoded:
    """One sampled frame: 0-based ``index`` in the video, ``time_s`` from the video start,
    ``rgb()`` → uint8 (H, W, 3), ``gray_thumb()`` → uint8 (36, 64) (converted only on demand)."""

    index: int
    time_s: float
    rgb: Callable[[], np.ndarray]
    gray_thumb: Callable[[], np.ndarray]


@dataclass
class IngestResult:
    """``frames``: :data:`FRAME_COLUMNS`, one row per frame; ``skipped``: :data:`SKIP_COLUMNS`;
    ``counts``: videos (found, done now, resumed, skipped), images (found, skipped), frames."""

    out: Path
    frames: pd.DataFrame
    skipped: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)

    def damaged(self) -> pd.DataFrame:
        """Videos kept although FFmpeg logged decoder errors: video, source_path, decode_errors."""
        f = self.frames[pd.to_numeric(self.frames["decode_errors"], errors="coerce").fillna(0) > 0]
        return f.drop_duplicates("video")[["video", "source_path", "decode_errors"]].reset_index(drop=True)

    def summary(self) -> str:
        c, bad = self.counts, self.damaged()
        damaged = (f"; {len(bad)} videos decoded with errors, their frames may show damage ("
                   + ", ".join(f"{r.video}: {int(r.decode_errors)}" for r in bad.head(5).itertuples())
                   + (" ..." if len(bad) > 5 else "") + " FFmpeg errors; column decode_errors of frames.csv)"
                   if len(bad) else "")
        return (f"ingest -> {self.out}: {c['frames']} frames; videos: {c['videos']} found, {c['videos_done']} "
                f"ingested now, {c['videos_resumed']} already done, {c['videos_skipped']} skipped{damaged}; "
                f"images: {c['images']} found, {c['images_skipped']} skipped")


def frame_name(video: str, index: int) -> str:
    """BDD tracking-frame name ``<video>-<7-digit index>.jpg``."""
    return f"{video}-{index:07d}.jpg"


def sample_times(duration_s: float, rate: float, fps: float) -> np.ndarray:
    """Sample times in s, ``k / fps`` for every k whose time is at or before the last frame
    (``duration_s - 1 / rate``, half a frame of tolerance): ``floor(duration × fps)`` ± 1 samples."""
    last = duration_s - 1.0 / rate + 0.5 / rate
    return np.arange(0, math.floor(last * fps + 1e-9) + 1) / fps


# ----------------------------------------------------------------------------- decoders
def _pyav_open(path: Path):
    import av

    try:
        c = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"cannot open: {e}") from None
    if not c.streams.video:
        c.close()
        raise VideoError("no video stream")
    return c


def _pyav_info(c) -> tuple[float, float, int]:
    """(duration s, frame rate /s, start pts) of the first video stream, from the header."""
    st = c.streams.video[0]
    rate = float(st.average_rate or st.guessed_rate or 0)
    if st.duration is not None:
        dur = float(st.duration * st.time_base)
    elif c.duration is not None:
        dur = c.duration / 1e6
    else:
        dur = st.frames / rate if st.frames and rate else 0.0
    if rate <= 0 or dur <= 0:
        raise VideoError(f"header has no frame rate/duration (rate {rate}, duration {dur})")
    return dur, rate, st.start_time or 0


def keyframe_pts(path: str | os.PathLike) -> list[int]:
    """Presentation timestamps (stream time base) of the keyframes, read by demuxing only."""
    import av

    c = _pyav_open(Path(path))
    try:
        st = c.streams.video[0]
        return sorted(p.pts for p in c.demux(st) if p.is_keyframe and p.pts is not None)
    except av.FFmpegError as e:
        raise VideoError(f"cannot read packets: {e}") from None
    finally:
        c.close()


def iter_pyav(path: str | os.PathLike, fps: float, method: str = "seek", threads: int = 0) -> Iterator[Decoded]:
    """Sampled frames of ``path`` through PyAV; see the module doc for ``method``. ``threads``:
    decoder threads (0 = FFmpeg's choice, frame + slice threading; 1 when videos run in parallel).
    Raises :class:`VideoError` on a decode error and when frames stop before the header's duration."""
    import av

    path = Path(path)
    c = _pyav_open(path)
    try:
        dur, rate, start = _pyav_info(c)
        # AVI stores no presentation times (FFmpeg guesses them, out of order with B-frames):
        # there frames are counted in output order, which needs sequential decoding
        counted = c.format.name == "avi"
        keys = keyframe_pts(path) if method == "seek" and not counted else []
        st = c.streams.video[0]
        st.thread_type = "AUTO"
        if threads:
            st.codec_context.thread_count = threads
        tb = float(st.time_base)
        key_s = np.array([(k - start) * tb for k in keys])
        eps = 0.5 / rate
        gen, pos, n_out = c.decode(st), -1.0, 0
        for t in sample_times(dur, rate, fps):
            i = int(np.searchsorted(key_s, t + eps, side="right")) - 1  # last keyframe at or before t
            if i >= 0 and (key_s[i] - pos) * rate > SEEK_MIN_SKIP:  # jumping there skips enough: seek
                c.seek(int(keys[i]), stream=st, backward=True, any_frame=False)
                gen = c.decode(st)
            for fr in gen:
                pos = n_out / rate if counted else (fr.pts - start) * tb
                n_out += 1
                if pos + eps >= t:
                    yield Decoded(int(round(pos * rate)), pos, lambda fr=fr: fr.to_ndarray(format="rgb24"),
                                  lambda fr=fr: fr.reformat(*THUMB_WH, format="gray").to_ndarray())
                    break
            else:
                raise VideoError(f"truncated: frames end at {max(pos, 0):.2f} s of {dur:.2f} s in the header")
    except av.FFmpegError as e:
        raise VideoError(f"decode error: {e}") from None
    finally:
        c.close()


def iter_opencv(path: str | os.PathLike, fps: float, method: str = "seek") -> Iterator[Decoded]:
    """Sampled frames through OpenCV's FFmpeg backend: ``seq`` = grab every frame and
    retrieve (convert) only the sampled ones; ``seek`` = ``CAP_PROP_POS_FRAMES`` per sample."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise VideoError("cannot open (OpenCV/FFmpeg)")
        rate, n = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if rate <= 0 or n <= 0:
            raise VideoError(f"header has no frame rate/frame count (rate {rate}, frames {n})")

        def decoded(i: int, img: np.ndarray) -> Decoded:
            return Decoded(i, i / rate, lambda: np.ascontiguousarray(img[..., ::-1]),
                           lambda: cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), THUMB_WH,
                                              interpolation=cv2.INTER_AREA))

        i = -1
        for t in sample_times(n / rate, rate, fps):
            want = int(math.ceil(t * rate - 0.5))  # first frame at or after t
            if method == "seek":
                cap.set(cv2.CAP_PROP_POS_FRAMES, want)
                i = want - 1
            while i < want:
                if not cap.grab():
                    raise VideoError(f"truncated: frames end at frame {i + 1} of {n} in the header")
                i += 1
            ok, img = cap.retrieve()
            if not ok or img is None:
                raise VideoError(f"cannot decode frame {i}")
            if method == "seek" and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != want + 1:
                # past the end of a truncated file OpenCV returns the last decodable frame again
                raise VideoError(f"truncated: asked for frame {want}, the decoder is at frame "
                                 f"{int(cap.get(cv2.CAP_PROP_POS_FRAMES)) - 1} of {n} in the header")
            yield decoded(i, img)
    finally:
        cap.release()


def iter_frames(path: str | os.PathLike, fps: float, decoder: str = "pyav", method: str = "seek",
                threads: int = 0) -> Iterator[Decoded]:
    """:func:`iter_pyav` or :func:`iter_opencv` (``threads``: PyAV only, see :func:`iter_pyav`)."""
    if decoder not in DECODERS or method not in METHODS:
        raise ValueError(f"decoder must be one of {DECODERS} and method one of {METHODS}, got {decoder!r}/{method!r}")
    return iter_pyav(path, fps, method, threads) if decoder == "pyav" else iter_opencv(path, fps, method)


@contextmanager
def ffmpeg_errors() -> Iterator[list[tuple[int, str, str]]]:
    """The (level, logger, message) of every error FFmpeg logs meanwhile, from any thread.

    PyAV silences FFmpeg's log by default, so concealed damage (a bit-flipped H.264
    slice decodes to a smeared frame, no exception) would pass unseen."""
    import av.logging

    old = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:
            yield logs
    finally:
        av.logging.set_level(old)


# ----------------------------------------------------------------------------- one video
def scene_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two gray thumbnails, in [0, 1] (0 = identical)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() / 255.0)


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=quality)


def ingest_video(path: str | os.PathLike, video: str, frames_dir: str | os.PathLike, *, fps: float,
                 scene_threshold: float | None = None, max_frames: int | None = None, decoder: str = "pyav",
                 method: str = "seek", threads: int = 0, jpeg_quality: int = 90, progress: bool = True) -> pd.DataFrame:
    """Sample one video into ``frames_dir``; return its :data:`FRAME_COLUMNS` rows.

    ``fps``: samples per second of video time. ``scene_threshold``: drop a sample whose
    :func:`scene_change` from the last kept one is below this (None = keep all).
    ``max_frames``: stop after this many kept frames. Raises :class:`VideoError`.
    """
    frames_dir = Path(frames_dir)
    bar = tqdm(desc=video[:40], unit="frame", disable=not progress, leave=False)
    try:
        with ffmpeg_errors() as logs:
            rows = _sample_video(path, video, frames_dir, bar, fps=fps, scene_threshold=scene_threshold,
                                 max_frames=max_frames, decoder=decoder, method=method, threads=threads,
                                 jpeg_quality=jpeg_quality)
    finally:
        bar.close()
    errors = sum(1 for level, *_ in logs if level <= 16) if decoder == "pyav" else pd.NA  # 16: AV_LOG_ERROR
    return pd.DataFrame(rows, columns=FRAME_COLUMNS).assign(decode_errors=errors)


def _sample_video(path: str | os.PathLike, video: str, frames_dir: Path, bar: Any, *, fps: float,
                  scene_threshold: float | None, max_frames: int | None, decoder: str, method: str, threads: int,
                  jpeg_quality: int) -> list[dict[str, Any]]:
    """:func:`ingest_video`'s loop: decode, filter, write the JPEGs; the frames' rows."""
    rows, last = [], None
    for d in iter_frames(path, fps, decoder, method, threads):
        bar.update()
        if scene_threshold is not None:
            thumb = d.gray_thumb()
            if last is not None and scene_change(thumb, last) < scene_threshold:
                continue
            last = thumb
        rgb = d.rgb()
        name = frame_name(video, d.index)
        _write_jpeg(frames_dir / name, rgb, jpeg_quality)
        rows.append({"name": name, "video": video, "group": group_of(video), "frame_index": d.index,
                     "timestamp_ms": int(round(d.time_s * 1000)), "source_path": str(path),
                     "image_path": str(frames_dir / name), "width": rgb.shape[1], "height": rgb.shape[0]})
        if max_frames is not None and len(rows) >= max_frames:
            break
    return rows


def _remove_partial(frames_dir: Path, video: str) -> None:
    """Delete frames of ``video`` left by an interrupted attempt (files this module wrote)."""
    pat = re.compile(rf"^\.?{re.escape(video)}-\d{{7}}\.jpg(\..*\.tmp\.jpg)?$")
    if frames_dir.is_dir():
        for p in frames_dir.iterdir():
            if pat.match(p.name):
                p.unlink()


# ----------------------------------------------------------------------------- a folder
def scan(src: str | os.PathLike, exclude: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(videos, images) under ``src`` (recursive, sorted; suffix case-insensitive), minus ``exclude``."""
    videos, images = [], []
    for p in sorted(Path(src).rglob("*")):
        if not p.is_file() or (exclude is not None and exclude in p.parents):
            continue
        s = p.suffix.lower()
        (videos if s in VIDEO_SUFFIXES else images if s in IMAGE_SUFFIXES else []).append(p)
    return videos, images


def unique(paths: Sequence[Path], key: Callable[[Path], str], skipped: list[dict]) -> list[Path]:
    """First path per key; later ones are skipped with a reason (names are keys downstream)."""
    seen: dict[str, Path] = {}
    for p in paths:
        k = key(p)
        if k in seen:
            skipped.append({"source_path": str(p), "reason": f"duplicate name {k!r} (also {seen[k]})"})
        else:
            seen[k] = p
    return list(seen.values())


def ingest(src: str | os.PathLike, out: str | os.PathLike, *, fps: float = 1.0, scene_threshold: float | None = None,
           max_frames_per_video: int | None = None, decoder: str = "pyav", method: str = "seek", workers: int = 1,
           jpeg_quality: int = 90, progress: bool = True,
           executor: executors.Executor = executors.LOCAL) -> IngestResult:
    """Ingest every video and image under ``src`` into ``out`` (see the module doc). ``workers``:
    videos decoded in parallel processes (the frames do not depend on it); ``executor`` ``ray``:
    the videos are decoded by a Ray actor pool instead (:func:`ingest_batch`; every node must
    see ``src`` and ``out`` at the same paths, e.g. a shared file system). Resumable;
    refuses (:class:`checkpoint.FolderRefused`) an ``out`` it did not create, made from another
    ``src`` or with other ``fps``/``scene_threshold``/``max_frames_per_video``/``jpeg_quality``."""
    src, out = Path(src).resolve(), Path(out).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a folder")
    if out == src or out in src.parents:
        raise ValueError(f"--out {out} must not contain --src {src} (ingest would read its own frames)")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    skipped: list[dict] = []
    videos, images = scan(src, exclude=out)
    if not videos and not images:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) or images ({', '.join(IMAGE_SUFFIXES)}) "
                                f"under {src}")
    n_videos = len(videos)
    videos = unique(videos, lambda p: p.stem, skipped)
    params = {"src": str(src), "fps": fps, "scene_threshold": scene_threshold,
              "max_frames_per_video": max_frames_per_video, "jpeg_quality": jpeg_quality}
    if _refuse_other_src(out, src) == "legacy":  # made before the marker recorded src: its params lack it
        params.pop("src")
    claim_folder(out, MARKER, GENERATOR, params)
    acquire_lock(out)  # one ingest per folder at a time
    try:
        parts, counts = _ingest_videos(videos, out, skipped, fps=fps, scene_threshold=scene_threshold,
                                       max_frames=max_frames_per_video, decoder=decoder, method=method,
                                       jpeg_quality=jpeg_quality, workers=workers, progress=progress,
                                       executor=executor)
        parts.append(image_rows(unique(images, lambda p: p.name, skipped), skipped, progress))
        frames = pd.concat([p for p in parts if len(p)] or [pd.DataFrame(columns=FRAME_COLUMNS)], ignore_index=True)
        frames = frames[FRAME_COLUMNS].astype({"frame_index": "Int64", "timestamp_ms": "Int64"})
        dup = frames["name"].duplicated()
        skipped += [{"source_path": s, "reason": f"duplicate frame name {n!r}"}
                    for n, s in zip(frames.loc[dup, "name"], frames.loc[dup, "source_path"])]
        frames = frames[~dup].reset_index(drop=True)
        skipped_df = pd.DataFrame(skipped, columns=SKIP_COLUMNS)
        atomic_write_df(out / "frames.csv", frames)
        atomic_write_df(out / "skipped.csv", skipped_df)
    finally:
        release_lock(out)
    vid_skip = sum(1 for s in skipped if Path(s["source_path"]).suffix.lower() in VIDEO_SUFFIXES)
    counts.update(videos=n_videos, videos_skipped=vid_skip, images=len(images), images_skipped=len(skipped) - vid_skip,
                  frames=len(frames))
    return IngestResult(out, frames, skipped_df, counts)


def _refuse_other_src(out: Path, src: Path) -> str | None:
    """Refuse an ``out`` ingested from another ``src``: frames.csv would be rewritten from the
    new source alone, orphaning the frames already there. (Other mismatches: claim_folder.)

    A marker written before ``src`` was recorded ("legacy") is judged by the sources its
    frames.csv lists (all under ``src``: the same source)."""
    try:
        params = json.loads((out / MARKER).read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(params, dict):
        return None
    before = params.get("src")
    if before is None:
        listed = pd.read_csv(out / "frames.csv")["source_path"] if (out / "frames.csv").is_file() else []
        before = next((str(Path(p).parent) for p in listed if src not in Path(p).parents), None)
    if before is not None and before != str(src):
        raise FolderRefused(f"--out {out} holds the frames of --src {before}; ingesting {src} into it would rewrite "
                            f"its frames.csv and orphan them. Pass a new --out for {src}.")
    return "legacy" if "src" not in params else None


def _ingest_videos(videos: Sequence[Path], out: Path, skipped: list[dict], *, workers: int, progress: bool,
                   executor: executors.Executor = executors.LOCAL, **kw: Any) -> tuple[list[pd.DataFrame], dict]:
    """Each video once: a finished one (``done/<video>.csv``) is read back, the others sampled
    (``workers`` > 1: that many processes, one video each at a time, one decoder thread each;
    ``executor`` ray: Ray actors, one video per batch)."""
    frames_dir, done_dir = out / "frames", out / "done"
    frames_dir.mkdir(exist_ok=True)
    for tmp in done_dir.glob(".*.tmp.csv"):  # a done marker a kill caught mid-write: its video is redone
        tmp.unlink()
    counts = {"videos_done": 0, "videos_resumed": 0}
    parts: dict[Path, pd.DataFrame] = {}
    todo = []
    for p in videos:
        done = done_dir / f"{p.stem}.csv"
        if done.exists():
            parts[p] = pd.read_csv(done, dtype={"name": str, "video": str, "group": str})
            counts["videos_resumed"] += 1
        else:
            todo.append((p, frames_dir, done, {**kw, "progress": progress and workers <= 1,
                                               "threads": 1 if workers > 1 else kw.get("threads", 0)}))
    ex = None
    if not executor.is_local and todo:
        todo = [(*j[:3], {**j[3], "progress": False, "threads": 1}) for j in todo]
        outs = executors.run(ingest_batch, [executors.take({"job": todo}, [k]) for k in range(len(todo))],
                             executor=executor, name="ingest")
        results = ((o["rows"][0], o["error"][0] or None) for o in outs)
    elif workers > 1 and len(todo) > 1:
        # spawn, not fork: a forked child would inherit the run lock's file and hold it after a kill
        ex = ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"))
        results = ex.map(_video_job, todo)
    else:
        results = map(_video_job, todo)
    try:
        for (p, *_), (rows, err) in zip(todo, tqdm(results, total=len(todo), desc="ingest videos", unit="video",
                                                  disable=not progress or not todo)):
            if err is not None:
                skipped.append({"source_path": str(p), "reason": err})
            else:
                parts[p] = rows
                counts["videos_done"] += 1
    finally:
        if ex is not None:
            ex.shutdown(cancel_futures=True)
    return [parts[p] for p in videos if p in parts], counts


def _video_job(job: tuple[Path, Path, Path, dict]) -> tuple[pd.DataFrame | None, str | None]:
    """One video: clear a killed attempt's frames, sample, then write the done marker (last).
    Returns (rows, None) or (None, reason) for a corrupt/truncated video (its frames removed)."""
    path, frames_dir, done, kw = job
    _remove_partial(frames_dir, path.stem)
    try:
        rows = ingest_video(path, path.stem, frames_dir, **kw)
    except VideoError as e:
        _remove_partial(frames_dir, path.stem)
        return None, str(e)
    atomic_write_df(done, rows)  # the done marker, last: the video's frames are all on disk
    return rows, None


def ingest_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ingest stage as a batch function (Ray): ``{"job": video jobs}`` in (see
    :func:`_video_job`, which the local path maps directly), ``{"rows": each video's frame rows or
    None, "error": why a video was skipped, or ""}`` out."""
    done = [_video_job(j) for j in batch["job"]]
    rows = np.empty(len(done), dtype=object)
    for k, (r, _) in enumerate(done):  # one by one: a DataFrame must not be broadcast into the array
        rows[k] = r
    return {"rows": rows, "error": np.array([e or "" for _, e in done], dtype=object)}


def image_rows(images: Sequence[Path], skipped: list[dict], progress: bool) -> pd.DataFrame:
    """Rows for images taken as they are (checked by :func:`images.check_images`; bad ones skipped)."""
    if not images:
        return pd.DataFrame(columns=FRAME_COLUMNS)
    checks = check_images(images, progress=progress)
    rows = []
    for p, ok, w, h, err in zip(images, checks["ok"], checks["width"], checks["height"], checks["error"]):
        if not ok:
            skipped.append({"source_path": str(p), "reason": f"unreadable image: {err}"})
            continue
        video = video_of(p.name)
        rows.append({"name": p.name, "video": video, "group": group_of(video), "frame_index": pd.NA,
                     "timestamp_ms": pd.NA, "source_path": str(p), "image_path": str(p), "width": int(w),
                     "height": int(h)})
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)
