"""Video ingest (bdd_engine.ingest) on synthetic drives (bdd_engine.synthvideo): frame counts,
names and timestamps, decoders agreeing, scene-change filter, resume after a real kill -9,
corrupt/truncated videos counted, image folders as they are, and the folder-safety rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bdd_engine import bdd, ingest, synth, synthvideo
from bdd_engine.__main__ import main
from bdd_engine.checkpoint import FolderRefused
from bdd_engine.config import load_config

REPO = Path(__file__).resolve().parent.parent
SECONDS = {"drive-a.mov": 4, "drive-b.mp4": 3, "drive-c.avi": 5}


def _specs():
    return [s for s in synth.plan_world(load_config("tiny", env=False)) if s.image_set == "100k"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three synthetic drives (.mov 4 s, .mp4 3 s, .avi 5 s; 320x180, 30 fps) + a corrupt and a truncated video."""
    src = tmp_path_factory.mktemp("videos")
    specs = _specs()
    infos = {}
    for (name, sec), spec in zip(SECONDS.items(), specs):
        infos[name] = synthvideo.write_drive_video(spec, src / name, seconds=sec, fps=30, key_second=1)
        infos[name]["spec"] = spec
    (src / "sub").mkdir()
    (src / "sub" / "corrupt.mov").write_bytes(np.random.default_rng(0).bytes(5000))
    data = (src / "drive-a.mov").read_bytes()
    (src / "sub" / "truncated.mov").write_bytes(data[: len(data) // 2])  # moov atom at the end: cut off
    return src, infos


def test_frame_counts_names_timestamps(clips, tmp_path):
    src, infos = clips
    res = ingest.ingest(src, tmp_path / "out", fps=1, progress=False)
    f = res.frames
    for name, sec in SECONDS.items():
        video = Path(name).stem
        rows = f[f["video"] == video].sort_values("frame_index")
        assert len(rows) == sec  # duration x fps: samples at 0, 1, ..., sec-1 s
        assert rows["frame_index"].tolist() == [30 * k for k in range(sec)]
        assert rows["timestamp_ms"].tolist() == [1000 * k for k in range(sec)]
        assert rows["name"].tolist() == [f"{video}-{30 * k:07d}.jpg" for k in range(sec)]
        assert set(rows["source_path"]) == {str(src / name)}
        assert all(bdd.video_of(n) == video for n in rows["name"])
        assert set(rows["group"]) == {"drive"}
        for p in rows["image_path"]:
            with Image.open(p) as im:
                assert im.size == (320, 180) and im.format == "JPEG"
    assert (f["width"] == 320).all() and (f["height"] == 180).all()
    # corrupt and truncated videos: counted, reported with a reason, no frames left behind
    assert res.counts["videos"] == 5 and res.counts["videos_skipped"] == 2 and res.counts["videos_done"] == 3
    reasons = dict(zip(res.skipped["source_path"], res.skipped["reason"]))
    assert set(reasons) == {str(src / "sub" / "corrupt.mov"), str(src / "sub" / "truncated.mov")}
    assert all("cannot open" in r for r in reasons.values())
    assert not list((tmp_path / "out" / "frames").glob("corrupt*")) + list((tmp_path / "out" / "frames").glob("truncated*"))
    # the tables on disk say the same
    disk = pd.read_csv(tmp_path / "out" / "frames.csv")
    assert len(disk) == len(f) == 12 and len(pd.read_csv(tmp_path / "out" / "skipped.csv")) == 2


def test_truncated_video_with_index_up_front_is_caught_by_every_decoder(clips, tmp_path):
    """moov atom first (faststart), media data cut at 60 %: the header promises frames that are gone."""
    import av

    src, _ = clips
    whole, cut = tmp_path / "whole.mp4", tmp_path / "src" / "cut.mp4"
    with av.open(str(src / "drive-c.avi")) as i, av.open(str(whole), "w", format="mp4",
                                                          options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    for dec in ingest.DECODERS:
        for m in ingest.METHODS:
            assert len(list(ingest.iter_frames(whole, 1, dec, m))) == 5, (dec, m)
            with pytest.raises(ingest.VideoError, match="truncated|decode error"):
                list(ingest.iter_frames(cut, 1, dec, m))
    res = ingest.ingest(cut.parent, tmp_path / "out", progress=False)
    assert res.counts["videos_skipped"] == 1 and len(res.frames) == 0
    assert not any((tmp_path / "out" / "frames").iterdir())  # the frames before the cut are removed too


def test_two_fps_and_max_frames(clips, tmp_path):
    src, _ = clips
    res = ingest.ingest(src, tmp_path / "o2", fps=2, progress=False)
    a = res.frames[res.frames["video"] == "drive-a"]
    assert a["frame_index"].tolist() == list(range(0, 120, 15))  # 4 s x 2 fps
    assert a["timestamp_ms"].tolist() == list(range(0, 4000, 500))
    res = ingest.ingest(src, tmp_path / "o3", fps=1, max_frames_per_video=2, progress=False)
    assert res.frames.groupby("video").size().to_dict() == {"drive-a": 2, "drive-b": 2, "drive-c": 2}


def test_parallel_workers_give_the_same_frames(clips, tmp_path):
    src, _ = clips
    one = ingest.ingest(src, tmp_path / "w1", fps=1, progress=False)
    two = ingest.ingest(src, tmp_path / "w2", fps=1, workers=2, progress=False)
    cols = ["name", "frame_index", "timestamp_ms", "width", "height"]
    pd.testing.assert_frame_equal(one.frames[cols], two.frames[cols])
    assert two.counts["videos_done"] == 3 and two.counts["videos_skipped"] == 2
    for n in one.frames["name"]:  # same pixels: the decoder thread count changes nothing
        a, b = (np.asarray(Image.open(d / "frames" / n), int) for d in (tmp_path / "w1", tmp_path / "w2"))
        assert np.array_equal(a, b), n


def test_decoders_and_methods_agree(clips):
    src, _ = clips
    got = {}
    for dec in ingest.DECODERS:
        for m in ingest.METHODS:
            got[dec, m] = [(d.index, round(d.time_s, 3), d.rgb()) for d in ingest.iter_frames(src / "drive-c.avi", 1, dec, m)]
    ref = got["pyav", "seq"]
    assert [(i, t) for i, t, _ in ref] == [(30 * k, float(k)) for k in range(5)]
    for key, frames in got.items():
        assert [(i, t) for i, t, _ in frames] == [(i, t) for i, t, _ in ref], key
        for (_, _, a), (_, _, b) in zip(frames, ref):
            assert a.shape == (180, 320, 3) and np.abs(a.astype(int) - b).mean() < 1.0, key


def test_keyframe_is_among_the_video_frames(clips, tmp_path):
    """Frame key_second x fps of a synthetic drive is the keyframe's own rendering (up to H.264 + JPEG loss)."""
    src, infos = clips
    info = infos["drive-a.mov"]
    img, _ = synth.render_frame(info["spec"])
    frames = {d.index: d.rgb() for d in ingest.iter_frames(src / "drive-a.mov", 1)}
    err = {i: np.abs(f.astype(int) - img).mean() for i, f in frames.items()}
    assert err[info["key_index"]] < 8.0  # H.264 (yuv420) + sensor noise the encoder smooths away
    # every other sampled second is another view of the drive, much further from the keyframe
    assert all(e > 2.5 * err[info["key_index"]] for i, e in err.items() if i != info["key_index"]), err


def test_scene_threshold_drops_the_stopped_seconds(tmp_path):
    spec = next(s for s in _specs() if synthvideo.drive_plan(s, 6, 1).__repr__().count("'stopped': True") >= 1)
    stopped = [p["second"] for p in synthvideo.drive_plan(spec, 6, 1) if p["stopped"]]
    src = tmp_path / "src"
    synthvideo.write_drive_video(spec, src / "stop-and-go.mov", seconds=6, fps=30, key_second=1)
    every = ingest.ingest(src, tmp_path / "all", fps=1, progress=False).frames
    kept = ingest.ingest(src, tmp_path / "thr", fps=1, scene_threshold=0.02, progress=False).frames
    assert len(every) == 6
    assert sorted(kept["frame_index"] // 30) == [s for s in range(6) if s not in stopped]


def test_images_are_taken_as_they_are_and_bad_ones_counted(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((90, 160, 3), 40 * i, np.uint8)).save(src / f"cafe{i}-0000001.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    res = ingest.ingest(src, tmp_path / "out", progress=False)
    assert sorted(res.frames["name"]) == [f"cafe{i}-0000001.jpg" for i in range(3)]
    assert (res.frames["image_path"] == res.frames["source_path"]).all()  # not copied
    assert set(res.frames["video"]) == {"cafe0", "cafe1", "cafe2"} and (res.frames["width"] == 160).all()
    assert res.counts["images_skipped"] == 1 and "unreadable image" in res.skipped["reason"].iloc[0]
    assert not (tmp_path / "out" / "frames").exists() or not any((tmp_path / "out" / "frames").iterdir())


def test_refuses_folders_it_did_not_create(clips, tmp_path):
    src, _ = clips
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FolderRefused, match="not created by bdd_engine.ingest"):
        ingest.ingest(src, foreign, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    ingest.ingest(src, tmp_path / "out", fps=1, max_frames_per_video=1, progress=False)
    with pytest.raises(FolderRefused, match="other settings"):
        ingest.ingest(src, tmp_path / "out", fps=2, progress=False)
    with pytest.raises(ValueError, match="must not contain"):
        ingest.ingest(src, src.parent, progress=False)
    # the CLI: one line, exit code 2
    assert main(["ingest", "--src", str(src), "--out", str(foreign)]) == 2


def test_resume_after_kill_9(tmp_path):
    """A real ``kill -9`` mid-ingest; the rerun keeps finished videos untouched and completes the rest."""
    src, out = tmp_path / "src", tmp_path / "out"
    for spec, k in zip(_specs(), range(4)):
        synthvideo.write_drive_video(spec, src / f"kill{k}.mov", seconds=6, fps=30, key_second=1)
    cmd = [sys.executable, "-m", "bdd_engine", "ingest", "--src", str(src), "--out", str(out), "--fps", "30"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = out / "done"
    t0 = time.time()
    while not (done_dir.is_dir() and any(done_dir.glob("kill*.csv"))):
        assert proc.poll() is None and time.time() - t0 < 120, "ingest ended before the first video was done"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in done_dir.glob("kill*.csv")}
    assert 1 <= len(done) < 4, "the kill must land mid-run"
    assert not (out / "frames.csv").exists()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(done)} already done" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in done_dir.glob("kill*.csv") if p.name in done} == done
    assert sorted(p.name for p in done_dir.iterdir()) == [f"kill{k}.csv" for k in range(4)]  # no temp file left
    frames = pd.read_csv(out / "frames.csv")
    assert frames.groupby("video").size().to_dict() == {f"kill{k}": 180 for k in range(4)}
    on_disk = sorted(p.name for p in (out / "frames").iterdir())
    assert on_disk == sorted(frames["name"])  # no partial or temp file of the killed attempt left


def test_synth_videos_cli_writes_drives_whose_keyframe_is_the_world_image(tiny_world, tmp_path, capsys):
    """``synth --videos``: one .mov per 100K keyframe under <world>/videos/<split>/, the keyframe among its frames."""
    args = ["synth", "--profile", "tiny", "--set", f"data_root={tiny_world}", "--videos", "--video-limit", "2",
            "--video-seconds", "3"]
    assert main(args) == 0
    specs = _specs()[:2]
    vids = [tiny_world / "videos" / s.split / (Path(s.name).stem + ".mov") for s in specs]
    assert all(v.is_file() for v in vids) and "2 under" in capsys.readouterr().out
    mtimes = [v.stat().st_mtime_ns for v in vids]
    assert main(args) == 0 and [v.stat().st_mtime_ns for v in vids] == mtimes  # existing videos are kept
    res = ingest.ingest(vids[0].parent, tmp_path / "out", fps=1, progress=False)
    rows = res.frames[res.frames["video"] == vids[0].stem]
    assert rows["frame_index"].tolist() == [0, 30, 60]
    key = np.asarray(Image.open(rows["image_path"].iloc[1]), int)  # keyframe = middle second
    world = np.asarray(Image.open(tiny_world / "images/100k" / specs[0].split / specs[0].name), int)
    others = [np.abs(np.asarray(Image.open(p), int) - world).mean() for p in rows["image_path"].iloc[[0, 2]]]
    assert np.abs(key - world).mean() < 8.0 and min(others) > 2.5 * np.abs(key - world).mean()
    # a folder that is not a synthetic world is refused, and nothing is written into it
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(synth.WorldRefused):
        synthvideo.write_world_videos(foreign, specs, limit=1)
    assert not any(foreign.iterdir())


def _bit_flipped(clean: Path, out: Path) -> Path:
    """``clean`` with 5 single bits flipped inside its H.264 data: it still decodes to its
    end, FFmpeg concealing the broken macroblocks (seed 0: 4 error messages)."""
    data = bytearray(clean.read_bytes())
    rng = np.random.default_rng(0)
    for k in rng.integers(2000, 60000, 5):
        data[k] ^= 1 << int(rng.integers(0, 8))
    out.write_bytes(bytes(data))
    return out


def test_damaged_video_is_kept_and_its_decoder_errors_counted(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    clean = src / "clean.mov"
    synthvideo.write_drive_video(_specs()[0], clean, seconds=4, fps=30, key_second=1)
    _bit_flipped(clean, src / "flipped.mov")
    assert main(["ingest", "--src", str(src), "--out", str(tmp_path / "out"), "--method", "seq"]) == 0
    frames = pd.read_csv(tmp_path / "out" / "frames.csv")
    errors = frames.groupby("video")["decode_errors"].agg(["min", "max", "size"])
    assert errors.loc["clean"].tolist() == [0, 0, 4]
    assert errors.loc["flipped", "size"] == 4, "a damaged video that decodes is kept"
    assert errors.loc["flipped", "min"] == errors.loc["flipped", "max"] > 0
    n = int(errors.loc["flipped", "max"])
    assert f"1 videos decoded with errors, their frames may show damage (flipped: {n} FFmpeg errors" \
        in capsys.readouterr().out
    # a resumed run reads the count back from done/<video>.csv
    res = ingest.ingest(src, tmp_path / "out", fps=1, progress=False)
    assert res.counts["videos_resumed"] == 2 and res.damaged()["decode_errors"].tolist() == [n]


def test_refuses_an_out_folder_of_another_src(clips, tmp_path, capsys):
    src, _ = clips
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (64, 36)).save(other / "x.jpg")
    out = tmp_path / "out"
    ingest.ingest(src, out, fps=1, max_frames_per_video=1, progress=False)
    before = (out / "frames.csv").read_bytes()
    assert main(["ingest", "--src", str(other), "--out", str(out), "--max-frames-per-video", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"holds the frames of --src {src}" in err and "Pass a new --out" in err
    assert (out / "frames.csv").read_bytes() == before


def test_a_folder_ingested_before_src_was_recorded_resumes_and_is_still_guarded(clips, tmp_path):
    src, _ = clips
    out = tmp_path / "out"
    ingest.ingest(src, out, fps=1, max_frames_per_video=1, progress=False)
    marker = json.loads((out / ingest.MARKER).read_text())
    del marker["params"]["src"]  # as an older version wrote it
    (out / ingest.MARKER).write_text(json.dumps(marker))
    res = ingest.ingest(src, out, fps=1, max_frames_per_video=1, progress=False)
    assert res.counts["videos_resumed"] == 3
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (64, 36)).save(other / "x.jpg")
    with pytest.raises(FolderRefused, match="holds the frames of --src"):
        ingest.ingest(other, out, fps=1, max_frames_per_video=1, progress=False)
