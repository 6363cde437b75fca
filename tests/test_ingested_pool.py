"""Unlabelled (ingested) frames in the mining pool: pool_sources, §1's join rules, §3's pool-only
rule, predicted attributes for frames without any (SYNTHETIC tables and embeddings)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bdd_engine import attributes, collect, slices
from bdd_engine.checkpoint import atomic_write_df, atomic_write_json


def test_pool_sources_must_keep_labels_and_name_the_folder():
    assert collect.check_pool_sources(["labels"], None) is False
    assert collect.check_pool_sources(["labels", "ingested"], "x") is True
    with pytest.raises(ValueError, match="must list 'labels'"):
        collect.check_pool_sources(["ingested"], "x")
    with pytest.raises(ValueError, match="must list 'labels'"):
        collect.check_pool_sources(["labels", "videos"], "x")
    with pytest.raises(ValueError, match="ingest_dir is null"):
        collect.check_pool_sources(["labels", "ingested"], None)


def _ingest_folder(tmp_path, names):
    d = tmp_path / "ing"
    (d / "frames").mkdir(parents=True)
    atomic_write_json(d / "INGEST.json", {"generator": "bdd_engine.ingest", "params": {}})
    rows = [{"name": n, "video": n[:-12], "group": n.split("-")[0], "frame_index": 30 * i, "timestamp_ms": 1000 * i,
             "source_path": "v.mp4", "image_path": str(d / "frames" / n), "width": 320, "height": 180}
            for i, n in enumerate(names)]
    atomic_write_df(d / "frames.csv", pd.DataFrame(rows))
    return d


def test_ingested_frames_are_read_only_rows_without_labels(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished ingest folder"):
        collect.ingested_frames(tmp_path)
    d = _ingest_folder(tmp_path, ["aaaa0001-00000001-0000000.jpg", "aaaa0001-00000001-0000030.jpg"])
    before = sorted(p.name for p in d.rglob("*"))
    rows, inputs = collect.ingested_frames(d)
    assert rows["origin"].eq("ingested").all() and rows["split"].eq("ingested").all()
    assert rows[["weather", "timeofday", "scene", "slice"]].isna().all().all() and rows["n_boxes"].eq(0).all()
    assert rows["group"].tolist() == ["aaaa0001"] * 2 and rows["width"].tolist() == [320, 320]
    assert set(inputs["path"]) == {str(d / "frames.csv"), str(d / "frames")} and inputs["sha256"].str.len().eq(64).all()
    assert sorted(p.name for p in d.rglob("*")) == before, "reading an ingest folder never writes into it"


def test_join_leaves_out_name_clashes_and_confirmation_drives():
    collected = pd.DataFrame({"name": ["a1-x.jpg"], "group": ["a1"]})
    labelled = pd.DataFrame({"name": ["a1-x.jpg", "b2-y.jpg"], "group": ["a1", "b2"]})
    confirm = pd.DataFrame({"name": ["c3-z.jpg"], "group": ["c3"]})
    ing = pd.DataFrame({"name": ["b2-y.jpg", "c3-q-0000000.jpg", "c3-q-0000030.jpg", "a1-x-0000000.jpg", "d4-w-0000000.jpg"],
                        "group": ["b2", "c3", "c3", "a1", "d4"], "origin": "ingested"})
    out, counts = collect.join_ingested(collected, ing, labelled, confirm)
    assert counts == {"ingested": 5, "ingested_joined": 2, "ingested_dropped_name_clash": 1,
                      "ingested_dropped_confirm_drive": 2}
    assert out["name"].tolist() == ["a1-x.jpg", "a1-x-0000000.jpg", "d4-w-0000000.jpg"]
    assert out["origin"].tolist() == ["labels", "ingested", "ingested"]


def _frames(n_groups=60, per=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        w, t, s = rng.choice(["clear", "rainy"]), rng.choice(["daytime", "night"]), "city street"
        rows += [{"name": f"{g:08x}-{i:08x}.jpg", "weather": w, "timeofday": t, "scene": s, "group": f"{g:08x}",
                  "image_path": "x.jpg", "origin": "labels"} for i in range(per)]
    return pd.DataFrame(rows)


def test_make_pools_keeps_ingested_frames_in_the_pool_or_holdout():
    lab = _frames()
    ref = slices.make_pools(lab.drop(columns="origin"), 60, 40, 4, 8, seed=3)
    eval_g = sorted(set(ref.loc[ref["pool"] == "eval", "group"]))
    train_g = sorted(set(ref.loc[ref["pool"] == "train", "group"]))
    ing = pd.DataFrame({"name": [f"{g}-ffffffff-000000{i}.jpg" for g in (eval_g[0], train_g[0], "fe000000") for i in range(2)],
                        "weather": None, "timeofday": None, "scene": None, "image_path": "y.jpg", "origin": "ingested"})
    ing["group"] = ing["name"].str.split("-").str[0]
    pools = slices.make_pools(pd.concat([lab, ing], ignore_index=True), 60, 40, 4, 8, seed=3)
    # the labelled frames are split exactly as without the ingested ones
    same = pools[pools["origin"] == "labels"].set_index("name")["pool"]
    assert same.to_dict() == ref.set_index("name")["pool"].to_dict()
    got = pools[pools["origin"] == "ingested"].set_index("group")["pool"]
    assert got.loc[eval_g[0]].tolist() == ["holdout"] * 2          # drive-mates of eval frames never reach the pool
    assert got.loc[train_g[0]].tolist() == ["pool"] * 2 and got.loc["fe000000"].tolist() == ["pool"] * 2
    assert not pools.loc[pools["origin"] == "ingested", "golden"].any() and pools["name"].is_unique
    summary = slices.pool_summary(pools).set_index("pool")
    assert summary.loc["pool", "ingested"] == 4 and summary.loc["holdout", "ingested"] == 2
    assert summary.loc["train", "ingested"] == 0 and summary.loc["eval", "ingested"] == 0


def test_pool_attributes_predicts_only_missing_and_scores_on_labelled():
    rng = np.random.default_rng(1)
    vals = {"weather": ["clear", "rainy"], "timeofday": ["daytime", "night"], "scene": ["city street", "highway"]}
    def frames(n, prefix):
        y = {a: rng.integers(0, 2, n) for a in vals}
        X = np.stack([y[a] * 2.0 - 1 for a in vals], 1) + 0.3 * rng.normal(size=(n, 3))
        df = pd.DataFrame({"name": [f"{prefix}{i}" for i in range(n)],
                           **{a: np.asarray(vals[a], object)[y[a]] for a in vals}})
        return df, X.astype(np.float32)
    fit, Xf = frames(200, "f")
    pool, Xp = frames(50, "p")
    truth = pool.copy()
    pool.loc[40:, list(vals)] = None                      # 10 ingested frames: no attributes
    out, table, conf = attributes.pool_attributes(pool, Xp, fit, Xf, method="probe", seed=42)
    assert out["attr_source"].tolist() == ["labels"] * 40 + ["predicted"] * 10
    pd.testing.assert_frame_equal(out.loc[:39, list(vals)], truth.loc[:39, list(vals)], check_dtype=False)
    for a in vals:   # separable toy data: the probe recovers the hidden values of the ingested frames
        assert (out.loc[40:, a] == truth.loc[40:, a]).mean() >= 0.9 and out.loc[40:, f"{a}_conf"].between(0.5, 1).all()
        assert out.loc[:39, f"{a}_conf"].isna().all()
    assert out.loc[45, "slice"] == " | ".join(out.loc[45, list(vals)])
    t = table.set_index("attribute")
    assert (t["n_test"] == 40).all() and (t["n_train"] == 200).all() and (t["method"] == "probe").all()
    assert (t["accuracy"] >= 0.9).all() and all(int(conf[a].to_numpy().sum()) == 40 for a in vals)
    # zero-shot: the text embedding nearest to each image wins, nothing is fitted
    text = {a: (vals[a], np.eye(3, dtype=np.float32)[[i, i]] * np.array([[-1], [1]], np.float32))
            for i, a in enumerate(vals)}
    Xn = Xp / np.linalg.norm(Xp, axis=1, keepdims=True)
    z, zt, _ = attributes.pool_attributes(pool, Xn, fit, Xf, method="zero_shot", text_emb=text)
    assert (zt["n_train"] == 0).all() and (zt["accuracy"] >= 0.9).all()
    with pytest.raises(ValueError, match="unknown mine_attr_predictor"):
        attributes.pool_attributes(pool, Xp, fit, Xf, method="clip")


def test_clip_zero_shot_texts_from_the_embedder(tmp_path):
    """The full profile's path: prompts through a (tiny, random: SYNTHETIC) open_clip text tower."""
    import json

    import open_clip
    import torch

    from bdd_engine import embed

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-zs-clip-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "tiny-zs-clip-test.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-zs-clip-test", pretrained=None).state_dict(), tmp_path / "w.pt")
    emb = embed.get_embedder("clip", device="cpu", imgsz=32, clip_arch="tiny-zs-clip-test",
                             clip_weights=str(tmp_path / "w.pt"), dinov2_dir=None)
    texts = attributes.clip_embedder_texts(emb, "tiny-zs-clip-test")
    assert {a: v for a, (v, _) in texts.items()} == {a: list(t) for a, t in attributes.PROMPTS.items()}
    for a, (v, T) in texts.items():
        assert T.shape == (len(v), 16) and np.allclose(np.linalg.norm(T, axis=1), 1, atol=1e-5)
    # an image embedding equal to a prompt's text embedding is predicted as that prompt's value
    night = texts["timeofday"][1][texts["timeofday"][0].index("night")]
    X = np.stack([night, night])
    pool = pd.DataFrame({"name": ["a", "b"], "weather": [None, "clear"], "timeofday": [None, "night"],
                         "scene": [None, "highway"]})
    out, table, _ = attributes.pool_attributes(pool, X, pool.iloc[:0], X[:0], method="zero_shot", text_emb=texts)
    assert out.loc[0, "timeofday"] == "night" and out.loc[0, "attr_source"] == "predicted"
    assert out.loc[1, "timeofday"] == "night" and out.loc[1, "attr_source"] == "labels"
    with pytest.raises(ValueError, match="needs embed_model: clip"):
        attributes.clip_embedder_texts(embed.get_embedder("gradhist", device="cpu", imgsz=32, clip_arch="x",
                                                          clip_weights=None, dinov2_dir=None), "x")
