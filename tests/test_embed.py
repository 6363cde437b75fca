"""embed.py: the offline descriptor, the cached/resumable store, and the real clip/dinov2
code paths on tiny randomly initialised models built offline (never called pretrained)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bdd_engine import embed as E
from bdd_engine import weights
from bdd_engine.weights import MissingWeightsError

# get_embedder's options as the demo profile sets them (clip/dinov2 weights: the registry), on CPU
OPTS = {"device": "cpu", "imgsz": 224, "clip_arch": "ViT-B-32", "clip_weights": None, "dinov2_dir": None}


# ----------------------------------------------------------------------------- fixtures
def scene(seed: int, condition: str = "clear", wh: tuple[int, int] = (160, 90)) -> Image.Image:
    """A small road-like picture: sky, road, random boxes; condition fog/night/clear."""
    rng = np.random.default_rng(seed)
    w, h = wh
    img = np.zeros((h, w, 3), np.float32)
    img[: h // 2] = np.linspace(150, 230, h // 2)[:, None, None] * np.array([0.7, 0.85, 1.0])
    img[h // 2:] = 90 + rng.normal(0, 4, (h - h // 2, w, 1))
    for _ in range(6):
        x, y = rng.integers(0, w - 20), rng.integers(h // 3, h - 10)
        img[y: y + rng.integers(5, 20), x: x + rng.integers(8, 30)] = rng.integers(0, 255, 3)
    if condition == "fog":
        a = rng.uniform(0.5, 0.8)
        img = img * (1 - a) + 200 * a
    elif condition == "night":
        img = img * rng.uniform(0.15, 0.3) + rng.normal(0, 3, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture
def images(tmp_path: Path) -> tuple[list[str], list[str]]:
    paths, names = [], []
    for i in range(23):
        cond = ("clear", "fog", "night")[i % 3]
        p = tmp_path / "img" / f"f{i:03d}.jpg"
        p.parent.mkdir(exist_ok=True)
        scene(i, cond).save(p, quality=90)
        paths.append(str(p))
        names.append(p.name)
    return paths, names


class CountingEmbedder(E.GradHistEmbedder):
    """gradhist that counts forwarded rows and can fail after a number of batches."""

    def __init__(self, fail_after: int | None = None):
        super().__init__(imgsz=48)
        self.rows = 0
        self.batches = 0
        self.fail_after = fail_after

    def forward(self, batch: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.batches += 1
        self.rows += len(batch)
        return super().forward(batch)


# ----------------------------------------------------------------------------- gradhist
def test_gradhist_shape_norm_and_block_meaning():
    e = E.GradHistEmbedder(imgsz=64)
    x = e.embed_batch([scene(1), scene(1, "fog"), scene(1, "night")])
    assert x.shape == (3, e.dim) == (3, 373) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert (x >= 0).all()
    # a flat grey image puts all gradient mass into the "flat" bins, all hue into "achromatic"
    g = e.embed_batch([Image.new("RGB", (160, 90), (128, 128, 128))])[0]
    g2 = e.embed_batch([Image.new("RGB", (160, 90), (129, 128, 128))])[0]
    assert float(g @ g2) > 0.999  # near-identical images, near-identical descriptors
    assert g[12] == pytest.approx(1 / np.sqrt(3) / np.sqrt(3), abs=1e-4)  # achromatic bin of the hue block


def test_gradhist_retrieves_condition_not_scene():
    """Prototype of fog frames of scenes 0-4 ranks fog frames of unseen scenes 10-19 above
    their clear and night versions: the descriptor sees the condition."""
    e = E.GradHistEmbedder(imgsz=64)
    proto = E.l2_normalize(e.embed_batch([scene(s, "fog") for s in range(5)]).mean(0, keepdims=True))[0]
    conds = ["clear", "fog", "night"]
    pool = [(s, c) for s in range(10, 20) for c in conds]
    x = E.l2_normalize(e.embed_batch([scene(s, c) for s, c in pool]))
    top = np.argsort(-(x @ proto))[:10]
    assert sum(pool[i][1] == "fog" for i in top) >= 9


# ----------------------------------------------------------------------------- store
def test_embed_frames_cache_bit_identical_and_not_recomputed(tmp_path, images):
    paths, names = images
    e1 = CountingEmbedder()
    a, n1 = E.embed_frames(e1, paths, names, tmp_path / "c1", batch_size=5, workers=0, progress=False)
    assert isinstance(a, np.memmap) and a.shape == (23, e1.dim) and a.dtype == np.float32 and n1 == names
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert e1.rows == 23
    # same cache dir: served from disk, nothing forwarded
    e2 = CountingEmbedder()
    b, _ = E.embed_frames(e2, paths, names, tmp_path / "c1", batch_size=5, workers=0, progress=False)
    assert e2.rows == 0 and Path(b.filename) == Path(a.filename)
    # fresh cache dir: recomputed bit-identically, also with 2 DataLoader workers
    e3 = CountingEmbedder()
    c, _ = E.embed_frames(e3, paths, names, tmp_path / "c2", batch_size=5, workers=2, progress=False)
    assert e3.rows == 23 and np.array_equal(np.asarray(a), np.asarray(c))
    meta = E.load_meta(a)
    assert meta["n"] == 23 and meta["unreadable"] == [] and meta["embedder"] == "gradhist"


def test_cache_key_changes_with_frames_and_params(tmp_path, images):
    paths, names = images
    e = E.GradHistEmbedder(imgsz=48)
    h1 = E.frameset_hash(names, paths)
    assert h1 != E.frameset_hash(names[::-1], paths[::-1])
    scene(99).save(paths[0])  # re-generated frame under the same name
    assert E.frameset_hash(names, paths) != h1
    assert E.cache_key(e, h1) != E.cache_key(E.GradHistEmbedder(imgsz=64), h1)


def test_resume_after_interruption(tmp_path, images):
    paths, names = images
    ref, _ = E.embed_frames(CountingEmbedder(), paths, names, tmp_path / "ref", batch_size=4, workers=0, progress=False)
    broken = CountingEmbedder(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        E.embed_frames(broken, paths, names, tmp_path / "c", batch_size=4, workers=0, flush_every=100, progress=False)
    entry = next((tmp_path / "c").iterdir())
    assert not (entry / "embeddings.npy").exists()  # incomplete runs never look complete
    assert json.loads((entry / "progress.json").read_text())["rows_done"] == 12
    again = CountingEmbedder()
    out, _ = E.embed_frames(again, paths, names, tmp_path / "c", batch_size=8, workers=0, progress=False)
    assert again.rows == 23 - 12  # resumed (with the recorded batch size 4), not restarted
    assert np.array_equal(np.asarray(out), np.asarray(ref))
    assert not (entry / "progress.json").exists()


def test_float16_file_written_batch_by_batch_and_resumed(tmp_path, images):
    """embed_dtype float16: a half-size file (one row per name), its own cache entry (float32
    entries keep their names), rows written as computed (an interrupted run kept 12 rows on
    disk and resumes from there), cosines within 1e-3 of float32."""
    paths, names = images
    e = CountingEmbedder()
    a32, _ = E.embed_frames(e, paths, names, tmp_path / "c", batch_size=4, workers=0, progress=False)
    assert Path(a32.filename).parent.name == E.cache_key(e, E.frameset_hash(names, paths))  # unchanged key
    broken = CountingEmbedder(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        E.embed_frames(broken, paths, names, tmp_path / "c", batch_size=4, workers=0, flush_every=1,
                       progress=False, dtype="float16")
    entry = tmp_path / "c" / E.cache_key(e, E.frameset_hash(names, paths), "float16")
    part = np.load(entry / "embeddings.npy.partial", mmap_mode="r")
    assert part.dtype == np.float16 and part.shape == a32.shape
    assert json.loads((entry / "progress.json").read_text())["rows_done"] == 12
    np.testing.assert_allclose(part[:12], a32[:12], atol=1e-3)  # on disk before the run ended
    again = CountingEmbedder()
    a16, n16 = E.embed_frames(again, paths, names, tmp_path / "c", batch_size=4, workers=0, progress=False,
                              dtype="float16")
    assert again.rows == 23 - 12 and n16 == names and a16.dtype == np.float16
    assert Path(a16.filename).stat().st_size < 0.6 * Path(a32.filename).stat().st_size
    np.testing.assert_allclose(np.asarray(a16, np.float32), np.asarray(a32), atol=1e-3)
    assert E.load_meta(a16)["dtype"] == "float16" and E.load_meta(a32)["dtype"] == "float32"
    with pytest.raises(ValueError, match="embed_dtype 'float64'"):
        E.embed_frames(e, paths, names, tmp_path / "c", batch_size=4, workers=0, progress=False, dtype="float64")


def test_unreadable_images_are_zero_rows_and_reported(tmp_path, images):
    paths, names = images
    Path(paths[2]).write_bytes(b"not a jpeg")
    paths[5] = str(tmp_path / "missing.jpg")
    with pytest.warns(UserWarning, match="2 of 23 images missing or unreadable"):
        a, _ = E.embed_frames(CountingEmbedder(), paths, names, tmp_path / "c", batch_size=4, workers=0, progress=False)
    assert not a[2].any() and not a[5].any() and a[3].any()
    assert E.load_meta(a)["unreadable"] == [names[2], names[5]]


def test_bad_input_errors(tmp_path, images):
    paths, names = images
    with pytest.raises(ValueError, match="unique"):
        E.embed_frames(CountingEmbedder(), paths[:2], [names[0]] * 2, tmp_path, batch_size=4, workers=0, progress=False)
    with pytest.raises(ValueError, match="2 names but 1"):
        E.embed_frames(CountingEmbedder(), paths[:1], names[:2], tmp_path, batch_size=4, workers=0, progress=False)
    with pytest.raises(ValueError, match="unknown embed_model"):
        E.get_embedder("resnet", **OPTS)


# ----------------------------------------------------------------------------- clip / dinov2
def test_missing_weights_name_setup_script(tmp_path, monkeypatch):
    for kind, given in (("clip", {"clip_weights": str(tmp_path / "nope.bin")}),
                        ("dinov2", {"dinov2_dir": str(tmp_path / "nope")})):
        with pytest.raises(MissingWeightsError, match=r"\./setup\.sh --weights") as ei:
            E.get_embedder(kind, **{**OPTS, **given})
        assert str(tmp_path / "nope") in str(ei.value)
    # default location (weights/ registry), as the full profile uses it
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path / "weights")
    for kind in ("clip", "dinov2"):
        with pytest.raises(MissingWeightsError, match=r"\./setup\.sh --weights") as ei:
            E.get_embedder(kind, **OPTS)
        assert str(tmp_path / "weights") in str(ei.value)


def build_tiny_clip(tmp_path: Path) -> Path:
    """A randomly initialised open_clip model with a tiny, test-only architecture name."""
    import open_clip
    import torch

    cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    p = tmp_path / "tiny-random-clip-test.json"
    p.write_text(json.dumps(cfg))
    open_clip.add_model_config(p)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-random-clip-test", pretrained=None)
    w = tmp_path / "tiny_random_clip.pt"
    torch.save(model.state_dict(), w)
    return w


def build_tiny_dinov2(tmp_path: Path) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=56)
    d = tmp_path / "tiny-random-dinov2"
    Dinov2Model(cfg).save_pretrained(d)
    return d


@pytest.mark.parametrize("kind", ["clip", "dinov2"])
def test_model_embedders_end_to_end(tmp_path, images, kind):
    paths, names = images
    if kind == "clip":
        opts = {**OPTS, "clip_arch": "tiny-random-clip-test", "clip_weights": str(build_tiny_clip(tmp_path))}
        dim, name = 24, "clip-tiny-random-clip-test"
    else:
        opts = {**OPTS, "dinov2_dir": str(build_tiny_dinov2(tmp_path)), "imgsz": 56}
        dim, name = 32, "dinov2"
    emb = E.get_embedder(kind, **opts)
    assert emb.dim == dim and emb.name == name and len(emb.weights_hash) == 64
    direct = E.l2_normalize(emb.embed_batch([Image.open(p) for p in paths[:6]]))
    a, _ = E.embed_frames(emb, paths, names, tmp_path / "cache", batch_size=6, workers=2, progress=False)
    assert a.shape == (23, dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a[:6], direct, atol=1e-5)  # store == direct batch call
    assert np.abs(a[0] - a[1]).max() > 1e-3  # different images, different vectors
    # cached: a second embedder instance forwards nothing
    emb2 = E.get_embedder(kind, **opts)
    emb2.forward = lambda batch: (_ for _ in ()).throw(AssertionError("recomputed"))  # type: ignore[method-assign]
    b, _ = E.embed_frames(emb2, paths, names, tmp_path / "cache", batch_size=6, workers=0, progress=False)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    # re-run from scratch is bit-identical
    c, _ = E.embed_frames(E.get_embedder(kind, **opts), paths, names, tmp_path / "cache2", batch_size=6, workers=0,
                          progress=False)
    assert np.array_equal(np.asarray(a), np.asarray(c))
