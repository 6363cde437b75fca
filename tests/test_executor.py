"""The per-frame stages on Ray Data (issue 25): local vs Ray give identical outputs, on a REAL
multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a worker node,
1 CPU each, 150 MB object stores), for every per-frame stage: ingest (video decode + JPEG),
embed (gradhist, CLIP, DINOv2), predict (YOLO), auto-label (teacher, gsam2), predicted
attributes. A worker node killed mid-job still gives the identical result (actor restart +
task retry); a corrupt frame is one counted failure, not a failed job.

One module-scoped cluster serves every Ray test; Ray is imported only by them. The models are
tiny and random, built offline (tests/_tiny_models.py, test_embed's builders): their outputs mean
nothing, only their identity across executors does.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from bdd_engine import attributes, embed, ingest, synth, synthvideo, train
from bdd_engine import executor as ex
from bdd_engine.autolabel import make_labeler
from bdd_engine.autolabel.base import Labeler
from bdd_engine.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_models import build_tiny_gdino, build_tiny_sam2, build_tiny_yolo  # noqa: E402

RAY = ex.Executor("ray", workers=2, max_restarts=3)
RAY1 = ex.Executor("ray", workers=1, max_restarts=3)  # the heavy-import stages: one actor (process start-up is most of a job here)
N_FRAMES = 10


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of 1 CPU on this machine; the driver joins; everything stops after the module."""
    import ray
    from ray.cluster_utils import Cluster

    store = 150 * 2**20
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
    c.add_node(num_cpus=1, object_store_memory=store)
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[str]:
    """N_FRAMES small synthetic JPEGs (rectangles on noise)."""
    d = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_FRAMES):
        im = Image.fromarray(rng.integers(0, 255, (72, 128, 3), dtype=np.uint8))
        ImageDraw.Draw(im).rectangle([10 + 8 * i, 20, 60 + 8 * i, 60], fill=(200, 30 + 20 * i, 30))
        p = d / f"synthetic-{i:04d}.jpg"
        im.save(p, quality=90)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def corrupt(frames, tmp_path_factory) -> list[str]:
    """The frames with a corrupt JPEG in third place."""
    bad = tmp_path_factory.mktemp("bad") / "synthetic-corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return [*frames[:2], str(bad), *frames[2:]]


@pytest.fixture(scope="module")
def yolo(tmp_path_factory) -> Path:
    return build_tiny_yolo(tmp_path_factory.mktemp("yolo") / "tiny-random-yolo.pt")


def _local_and_ray(fn, on=RAY):
    return fn(ex.LOCAL), fn(on)


# ----------------------------------------------------------------------------- the executor alone (no Ray)
class _Doubler:
    """A toy stage: fails on negative values (so the guard must isolate them)."""

    def __init__(self, factor: int = 2):
        self.factor = factor

    def __call__(self, batch):
        if (batch["x"] < 0).any():
            raise ValueError("negative frame")
        return {"y": batch["x"] * self.factor, "error": np.full(len(batch["x"]), "", dtype=object)}

    def failed(self, batch, message):
        return {"y": np.zeros(len(batch["x"]), int), "error": np.full(len(batch["x"]), message, dtype=object)}


def test_local_executor_keeps_order_and_isolates_a_failing_frame():
    x = np.array([1, 2, -3, 4, 5])
    spans = ex.chunks(len(x), 2)
    assert [list(r) for r in spans] == [[0, 1], [2, 3], [4]]
    out = ex.concat(ex.run(_Doubler, [ex.take({"x": x}, r) for r in spans], stage_kwargs={"factor": 3}))
    assert out["y"].tolist() == [3, 6, 0, 12, 15]  # frame 3 failed alone; its batch-mate 4 went through
    assert out["error"].tolist() == ["", "", "ValueError: negative frame", "", ""] and ex.n_errors(out) == 1


def test_a_stage_without_failed_lets_the_error_through_and_bad_settings_are_refused():
    def boom(batch):
        raise RuntimeError("model broke")

    with pytest.raises(RuntimeError, match="model broke"):
        list(ex.run(boom, [{"x": np.arange(2)}]))
    with pytest.raises(ValueError, match="not one of"):
        ex.Executor("spark")
    with pytest.raises(ValueError, match="ray_workers"):
        ex.Executor("ray", workers=0)


def test_the_demo_stays_local_and_the_full_profile_runs_on_ray():
    for profile in ("demo", "tiny"):
        assert load_config(profile, env=False)["executor"] == "local"
    full = load_config("full", env=False)
    assert full["executor"] == "ray" and full["ray_gpus_per_actor"] == 1.0 and full["ray_address"] is None


# ----------------------------------------------------------------------------- every stage: local == Ray
# One Ray job per stage (each job starts its actors: seconds on this machine). CLIP and DINOv2 share
# EmbedBatch and _TorchEmbedder with each other: DINOv2 runs on Ray in the killed-node test below.
def test_ingest_on_ray_writes_identical_frames(cluster, tmp_path):
    specs = [s for s in synth.plan_world(load_config("tiny", env=False)) if s.image_set == "100k"]
    src = tmp_path / "videos"
    for name, spec in zip(("drive-a.mov", "drive-b.mp4"), specs):
        synthvideo.write_drive_video(spec, src / name, seconds=2, fps=10, key_second=1)
    (src / "corrupt.mov").write_bytes(np.random.default_rng(0).bytes(3000))
    a, b = _local_and_ray(lambda e: ingest.ingest(src, tmp_path / e.kind, fps=2, progress=False, executor=e))
    assert len(a.frames) == 8 and b.counts == a.counts and b.counts["videos_skipped"] == 1
    cols = ["name", "video", "frame_index", "timestamp_ms", "width", "height", "decode_errors"]
    pd.testing.assert_frame_equal(a.frames[cols], b.frames[cols])
    assert list(b.skipped["reason"]) == list(a.skipped["reason"])  # the corrupt video: counted on both
    for n in a.frames["name"]:  # the JPEG files, byte for byte
        assert (tmp_path / "local" / "frames" / n).read_bytes() == (tmp_path / "ray" / "frames" / n).read_bytes()


def test_embed_on_ray_is_byte_identical_and_counts_the_corrupt_frame(cluster, corrupt, tmp_path):
    emb = embed.get_embedder("gradhist", device="cpu", imgsz=64, clip_arch="ViT-B-32", clip_weights=None,
                             dinov2_dir=None)
    names = [Path(p).name for p in corrupt]
    (a, _), (b, _) = _local_and_ray(lambda e: embed.embed_frames(
        emb, corrupt, names, tmp_path / e.kind, batch_size=3, workers=0, progress=False, executor=e))
    assert a.shape == (N_FRAMES + 1, emb.dim) and np.abs(np.asarray(a)).sum() > 0
    assert open(a.filename, "rb").read() == open(b.filename, "rb").read()  # the .npy files themselves
    for arr in (a, b):  # the corrupt frame: a zero row, counted
        assert embed.load_meta(arr)["unreadable"] == ["synthetic-corrupt.jpg"] and not np.asarray(arr)[2].any()


def test_predict_on_ray_is_identical_and_a_corrupt_frame_is_one_counted_failure(cluster, corrupt, yolo):
    stage = {"weights": yolo, "conf": 0.0001, "device": "cpu", "imgsz": 64, "batch": 2, "max_det": 20}
    batches = [ex.take({"path": corrupt}, r) for r in ex.chunks(len(corrupt), 4)]  # 3 batches of 2 forwards
    local, out = _local_and_ray(lambda e: ex.concat(ex.run(train.PredictBatch, batches, executor=e,
                                                           stage_kwargs=stage)), RAY1)
    assert list(out["frame"]) == list(local["frame"]) and list(out["error"]) == list(local["error"])
    assert sum(len(f["labels"]) for f in local["frame"]) > 0
    # the Ultralytics exception on the corrupt frame failed its batch; redone frame by frame, it is one row
    assert ex.n_errors(out) == 1 and out["error"][2] and out["frame"][2]["labels"] == []
    # train.predict, the stage's caller, names the frame (its contract: every image is readable)
    with pytest.raises(RuntimeError, match="cannot read 1 image.*synthetic-corrupt.jpg"):
        train.predict(yolo, corrupt, conf=0.0001, device="cpu", imgsz=64, batch=2, progress=False)


def _bdd_frames(paths):
    return [{"name": Path(p).name, "attributes": {"weather": "clear"}, "labels": []} for p in paths]


@pytest.mark.parametrize("name", ["teacher", "gsam2"])
def test_auto_label_on_ray_is_identical(cluster, corrupt, yolo, tmp_path, monkeypatch, name):
    monkeypatch.setattr(Labeler, "CHUNK_BATCHES", 2)  # a Ray task per 2 batches of 2 frames
    if name == "teacher":
        lab = make_labeler("teacher", device="cpu", teacher_weights=yolo, teacher_conf=0.0001, teacher_imgsz=64,
                           teacher_batch_size=2)
    else:
        lab = make_labeler("gsam2", device="cpu", gdino_dir=build_tiny_gdino(tmp_path / "tiny-random-gdino"),
                           sam_dir=build_tiny_sam2(tmp_path / "tiny-random-sam2"), prompt="car . person . bike",
                           box_threshold=0.0, text_threshold=0.0, max_dets=5, gsam2_batch_size=2)
    a, b = _local_and_ray(lambda e: lab.label(_bdd_frames(corrupt), corrupt, progress=False, executor=e), RAY1)
    assert a.n_labels > 0
    assert a.frames == b.frames and a.failures == b.failures and a.stats == b.stats
    assert list(b.failures) == ["synthetic-corrupt.jpg"]  # counted per frame on Ray too


def test_predicted_attributes_on_ray_are_identical(cluster):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 16)).astype(np.float32)
    labels = pd.DataFrame({"weather": np.where(X[:, 0] > 0, "clear", "rainy"),
                           "timeofday": np.where(X[:, 1] > 0, "daytime", "night")})
    probes = attributes.fit_probes(X[:30], labels[:30], attrs=["weather", "timeofday"])
    whole = attributes.predict_rows(X, probes=probes)  # one batch: what the demo's pools are
    on_ray = attributes.predict_rows(X, probes=probes, executor=RAY1, batch=7)
    pd.testing.assert_frame_equal(whole, on_ray)
    assert set(whole.columns) == {"weather", "weather_conf", "timeofday", "timeofday_conf", "attr_source"}
    with pytest.raises(ValueError, match="ray_gpus_per_actor is 1 but the Ray cluster has 0 GPUs"):
        attributes.predict_rows(X, probes=probes, executor=ex.Executor("ray", gpus_per_actor=1.0))  # not a hang
    text = {"weather": (["clear", "rainy"], rng.normal(size=(2, 16)).astype(np.float32))}  # zero-shot, in chunks
    pd.testing.assert_frame_equal(attributes.predict_rows(X, text_emb=text),
                                  attributes.predict_rows(X, text_emb=text, batch=7))


# ----------------------------------------------------------------------------- a node dies mid-job
class _SlowEmbed(embed.EmbedBatch):
    """EmbedBatch that takes 0.3 s a batch (so the job is still running when the node dies) and
    says which node ran it."""

    def __call__(self, batch):
        import ray

        time.sleep(0.3)
        out = super().__call__(batch)
        return {**out, "node": np.full(len(out["error"]), ray.get_runtime_context().get_node_id(), dtype=object)}


def test_a_worker_node_killed_mid_job_still_gives_the_identical_result(cluster, frames):
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    gradhist = {"name": "gradhist", "device": "cpu", "imgsz": 64, "clip_arch": "ViT-B-32", "clip_weights": None,
                "dinov2_dir": None}
    paths = frames * 2  # 20 frames in 10 batches of 2, 0.3 s each, over 2 actors (one per node: SPREAD)
    batches = [ex.take({"path": paths}, r) for r in ex.chunks(len(paths), 2)]
    want = ex.concat(ex.run(embed.EmbedBatch, batches, stage_kwargs=gradhist))
    worker = next(n for n in cluster.list_all_nodes() if n is not cluster.head_node)
    half = ex.Executor("ray", workers=2, cpus_per_actor=0.5, max_restarts=3)  # the head can host the restarted actor
    it = ex.run(_SlowEmbed, batches, executor=half, stage_kwargs=gradhist)
    got = [next(it)]
    cluster.remove_node(worker)  # its raylet, its actor and the blocks in its object store are gone
    got += list(it)  # the actor is restarted on the head, its batches retried (the module's last Ray test)
    out = ex.concat(got)
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert worker.unique_id not in alive and set(out["node"]) - {worker.unique_id}  # it died; others carried on
    assert ex.n_errors(out) == 0 and out["emb"].tobytes() == want["emb"].tobytes()
