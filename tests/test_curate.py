"""curate.py: slice index, imbalance stats, §2 figures; plus §2 → §6 on the tiny synthetic world."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bdd_engine import bdd
from bdd_engine import curate as C
from bdd_engine import embed as E
from bdd_engine import slices
from bdd_engine import mine as M
from bdd_engine.checkpoint import Section
from bdd_engine.config import load_config


def frames_df() -> pd.DataFrame:
    rows = ([("clear", "daytime", "city street")] * 60 + [("clear", "night", "city street")] * 30
            + [("foggy", "night", "highway")] * 4 + [("rainy", "dawn/dusk", "tunnel")] * 2
            + [("undefined", "daytime", "highway")] * 1 + [(None, "daytime", "highway")] * 3)
    df = pd.DataFrame(rows, columns=["weather", "timeofday", "scene"])
    df.insert(0, "name", [f"f{i:03d}.jpg" for i in range(len(df))])
    df["split"] = np.where(np.arange(len(df)) % 5 == 0, "val", "train")
    df["slice"] = [bdd.slice_key(r) for r in df[["weather", "timeofday", "scene"]].to_dict("records")]
    return df


def test_slice_index_and_imbalance_stats():
    idx = slices.slice_index(frames_df())
    assert list(idx["slice"][:2]) == ["clear | daytime | city street", "clear | night | city street"]
    assert idx["n_frames"].tolist() == [60, 30, 4, 2, 1] and idx["n_frames"].sum() == 97  # 3 frames have no slice
    assert idx["share"].sum() == pytest.approx(1.0)
    assert (idx["n_train"] + idx["n_val"]).tolist() == idx["n_frames"].tolist()
    s = C.imbalance_stats(idx, small=50, n_rarest=2)
    assert s["most_common_slice"] == "clear | daytime | city street" and s["most_common_share"] == pytest.approx(60 / 97)
    assert s["n_slices_below_small"] == 4 and s["imbalance_ratio"] == 60.0
    # "undefined" slices are not operational: the rarest operational ones are tunnel and fog
    assert [r["slice"] for r in s["rarest_operational"]] == ["rainy | dawn/dusk | tunnel", "foggy | night | highway"]
    p = np.array([60, 30, 4, 2, 1]) / 97
    assert s["effective_slices"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_map_deterministic(method):
    f = frames_df()
    rng = np.random.default_rng(0)
    emb = E.l2_normalize(rng.normal(size=(len(f), 8)))
    emb[5] = 0.0  # unreadable image: left out
    a = C.embedding_map(emb, list(f["name"]), f, method, max_points=50, seed=42, top_slices=2)
    b = C.embedding_map(emb, list(f["name"]), f, method, max_points=50, seed=42, top_slices=2)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 50 and "f005.jpg" not in set(a["name"]) and a["slice"].notna().all()
    assert set(a["colour_group"]) <= {"clear | daytime | city street", "clear | night | city street", "other"}
    with pytest.raises(ValueError, match="umap-learn|unknown"):
        C.project_2d(emb, "umap" if not _has_umap() else "nope", 42)


def _has_umap() -> bool:
    try:
        import umap  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from bdd_engine.synth import generate

    cfg = load_config("tiny", env=False)
    root = generate(cfg, tmp_path_factory.mktemp("world") / "synth_tiny", workers=2)
    index = bdd.index_images(root)
    frames = pd.concat([bdd.frames_table(bdd.load_frames(root / f"labels/det_20/det_{s}.json"), index, s)
                        for s in ("train", "val")], ignore_index=True)
    return cfg, frames[frames["image_path"] != ""].reset_index(drop=True)


def test_s2_and_s6_on_tiny_world(tmp_path, tiny_world):
    cfg, frames = tiny_world
    cfg = load_config("tiny", overrides={"outputs_dir": str(tmp_path / "out")}, env=False)
    embedder = E.get_embedder(cfg.embed_model, device=cfg.device, imgsz=cfg.embed_imgsz, clip_arch=cfg.embed_clip_arch,
                              clip_weights=cfg.embed_clip_weights, dinov2_dir=cfg.embed_dinov2_dir)
    emb, names = E.embed_frames(embedder, frames["image_path"], frames["name"], tmp_path / "emb",
                                batch_size=cfg.embed_batch, workers=cfg.workers, progress=False)
    assert emb.shape == (len(frames), 373)

    res = C.curate(frames, emb, names, embedder_name="gradhist", small_slice=cfg.curate_small_slice,
                   map_method=cfg.curate_map_method, map_points=cfg.curate_map_points, seed=cfg.seed,
                   synthetic=cfg.synthetic)
    with Section(cfg, 2).writer() as w:
        C.write_artifacts(res, w)
    figs = tmp_path / "out" / "figures"
    for f in ("slice_distribution.png", "slice_long_tail.png", "embedding_map.png"):
        assert (figs / f).stat().st_size > 10_000
    idx = pd.read_csv(tmp_path / "out" / "02_curate" / "slice_index.csv")
    assert idx["n_frames"].sum() == frames["slice"].notna().sum()
    assert res.stats["n_slices"] == frames["slice"].nunique()

    # §6 with a stand-in per-frame evaluation: the largest night slice of val fails
    val, pool = frames[frames["split"] == "val"], frames[frames["split"] == "train"]
    worst = val[val["timeofday"] == "night"]["slice"].value_counts().index[0]
    pf = pd.DataFrame({"name": val["name"], "ap50": np.where(val["slice"] == worst, 0.0, 0.7),
                       "recall50": np.where(val["slice"] == worst, 0.1, 0.8), "n_gt": 2, "n_pred": 2})
    r = M.mine(pf, val, pool, emb, names, k=cfg.mine_k, strategy=cfg.mine_strategy, by=cfg.eval_by,
               fail_ap=cfg.mine_fail_ap, fail_recall=cfg.mine_fail_recall, hybrid_targeted=cfg.mine_hybrid_targeted,
               ivf_above=cfg.mine_ivf_above, ivf_recall=cfg.mine_ivf_recall, min_frames=cfg.eval_min_frames,
               seed=cfg.seed, synthetic=cfg.synthetic, max_per_drive=cfg.mine_max_per_drive,
               min_distance=cfg.mine_min_distance, worst_slice=worst)
    h = r.headline()
    assert len(r.mined) == cfg.mine_k and h["base_rate"] == pytest.approx((pool["slice"] == worst).mean())
    tod = r.precision[(r.precision.level == "timeofday") & (r.precision.top == cfg.mine_k)].iloc[0]
    assert tod["precision"] > tod["base_rate"]  # mined frames are night frames more often than chance
    with Section(cfg, 6).writer() as w:
        M.write_artifacts(r, w, dict(zip(frames["name"], frames["image_path"])))
    assert (figs / "mined_frames_grid.png").exists()
