"""Synthetic world, §1 collect, §3 pools, YOLO export, checkpoints: validity, determinism, leakage, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from bdd_engine import bdd, flywheel as fw, slices, synth
from bdd_engine.checkpoint import Section, sha256_file
from bdd_engine.config import load_config
from tests.conftest import make_cfg


def test_world_layout_and_zero_validation_errors(tiny_world):
    assert (tiny_world / "SYNTHETIC.md").exists()
    assert (tiny_world / "labels/det_20/det_train.json").exists() and (tiny_world / "labels/det_20/det_val.json").exists()
    index = bdd.index_images(tiny_world)
    frames = bdd.load_frames(tiny_world / "labels/det_20/det_train.json") + bdd.load_frames(tiny_world / "labels/det_20/det_val.json")
    assert len(frames) == len(index) > 200
    rep = bdd.validate(frames, index, image_wh=(320, 180))
    assert rep.ok, rep.summary()
    # a share lives only under images/10k, like the real bundles
    assert any("/10k/" in str(p) for p in index.values()) and any("/100k/" in str(p) for p in index.values())
    cats = {lb["category"] for f in frames for lb in f["labels"]}
    assert {"car", "traffic sign", "traffic light", "pedestrian", "truck"} <= cats
    assert any(lb["attributes"]["crowd"] for f in frames for lb in f["labels"])
    assert cats & set(bdd.IGNORE_MAPPING)  # ignore-region categories are exercised


def test_world_is_deterministic(tmp_path):
    cfg = load_config("tiny", {"synth_n_train": 12, "synth_n_val": 4}, env=False)
    a = synth.generate(cfg, tmp_path / "a", workers=2)
    b = synth.generate(cfg, tmp_path / "b", workers=1)  # worker count must not matter
    for rel in ("labels/det_20/det_train.json", "labels/det_20/det_val.json"):
        assert sha256_file(a / rel) == sha256_file(b / rel)
    ia, ib = bdd.index_images(a), bdd.index_images(b)
    assert ia.keys() == ib.keys()
    assert all(sha256_file(ia[k]) == sha256_file(ib[k]) for k in ia)


def test_attribute_marginals_follow_bdd():
    cfg = load_config("demo", env=False)
    specs = synth.plan_world(cfg)
    w = pd.Series([s.weather for s in specs]).value_counts(normalize=True)
    t = pd.Series([s.timeofday for s in specs]).value_counts(normalize=True)
    assert 0.40 < w["clear"] < 0.56 and 0.30 < t["night"] < 0.42  # BDD: 0.48 clear, 0.36 night
    assert {"foggy", "snowy", "rainy"} <= set(w.index)
    names = [s.name for s in specs]
    assert len(set(names)) == len(names)
    groups = pd.Series([n.split("-")[0] for n in names]).value_counts()
    assert groups.max() > 1  # drives share a prefix: near-duplicates exist


def test_collect_keeps_floor_and_total(tiny_cfg):
    r = fw.s1_collect(tiny_cfg)
    strata = r["strata"]
    assert strata["collected"].sum() == min(tiny_cfg.collect_total, strata["source"].sum())
    floor = tiny_cfg.collect_min_floor
    assert ((strata["collected"] >= strata["source"].clip(upper=floor))).all()
    assert r.info["coverage"].endswith("have a readable image on disk")
    assert set(r["slice_index"].columns) >= {"slice", "weather", "timeofday", "scene", "n_frames"}


def test_pools_disjoint_by_group_and_deterministic(tiny_world, tmp_path):
    outs = []
    for k in ("a", "b"):
        cfg = make_cfg(tiny_world, tmp_path / k)
        fw.s1_collect(cfg)
        fw.s3_pools(cfg)
        outs.append(Section(cfg, 3))
    pools = outs[0].read_df("pools.csv")
    slices.check_leakage(pools)
    for p in ("train", "eval", "pool"):
        assert (pools["pool"] == p).sum() > 0
    ev = pools[pools["pool"] == "eval"]
    assert ev["slice"].nunique() <= 4
    assert pools.loc[pools["golden"], "pool"].eq("eval").all()
    for f in ("pools.csv", "gt_train.json", "gt_eval.json", "gt_pool.json", "yolo/data.yaml"):
        assert sha256_file(outs[0].dir / f) == sha256_file(outs[1].dir / f), f
    assert outs[0].manifest_path.read_bytes() == outs[1].manifest_path.read_bytes()


def test_leakage_check_catches_planted_leak(tiny_cfg):
    fw.s1_collect(tiny_cfg)
    pools = fw.s3_pools(tiny_cfg)["pools"].copy()
    g = pools.loc[pools["pool"] == "eval", "group"].iloc[0]
    i = pools.index[pools["pool"] == "train"][0]
    pools.loc[i, "group"] = g  # plant: a train frame from an eval drive
    with pytest.raises(slices.LeakageError, match="eval drive group"):
        slices.check_leakage(pools)


def test_yolo_export_counts_and_loads(tiny_cfg, tmp_path):
    from ultralytics.data.utils import check_det_dataset

    from bdd_engine.yolo import export_yolo
    W, H = 100, 80
    frames = [
        {"name": "a.jpg", "labels": [
            {"category": "car", "box2d": {"x1": -5, "y1": 10, "x2": 40, "y2": 50}},           # clipped
            {"category": "other vehicle", "box2d": {"x1": 1, "y1": 1, "x2": 9, "y2": 9}},     # ignore: excluded
            {"category": "pedestrian", "attributes": {"crowd": True}, "box2d": {"x1": 1, "y1": 1, "x2": 9, "y2": 9}},
            {"category": "traffic sign", "box2d": {"x1": 99.5, "y1": 10, "x2": 130, "y2": 20}},  # degenerate after clip
            {"category": "traffic light", "box2d": {"x1": 10, "y1": 10, "x2": 20, "y2": 40}}]},
        {"name": "b.jpg", "labels": []},
    ]
    from PIL import Image
    paths = {}
    for n in ("a.jpg", "b.jpg"):
        paths[n] = tmp_path / n
        Image.new("RGB", (W, H)).save(paths[n])
    yaml_path, counts = export_yolo({"train": frames, "val": frames}, paths, tmp_path / "yolo", (W, H))
    assert counts["ignore/crowd excluded"] == 4 and counts["degenerate dropped"] == 2 and counts["boxes written"] == 4
    lines = (tmp_path / "yolo/labels/train/a.txt").read_text().split("\n")
    assert lines[0].startswith("2 ") and lines[1].startswith("8 ")
    cx, cy, w, h = map(float, lines[0].split()[1:])
    assert abs(cx - 20 / W) < 1e-6 and abs(w - 40 / W) < 1e-6
    assert (tmp_path / "yolo/labels/train/b.txt").read_text() == ""
    assert (tmp_path / "yolo/images/train/a.jpg").is_symlink()
    data = check_det_dataset(str(yaml_path))
    assert data["nc"] == 10 and data["names"][9] == "traffic sign"


def test_kill_during_pools_then_resume_gives_identical_manifest(tiny_world, tmp_path):
    ref = make_cfg(tiny_world, tmp_path / "ref")
    fw.s1_collect(ref)
    fw.s3_pools(ref)
    cfg = make_cfg(tiny_world, tmp_path / "killed")
    fw.s1_collect(cfg)
    staging = cfg.out / ".03_pools.staging"
    code = ("import sys; sys.path.insert(0, %r); from tests.conftest import make_cfg; from bdd_engine import flywheel as fw; "
            "from pathlib import Path; fw.s3_pools(make_cfg(Path(%r), Path(%r)))") % (os.getcwd(), str(tiny_world), str(cfg.out))
    killed_mid_write = False
    for delay in (0.0, 0.05, 0.2):  # kill as soon as the staging folder exists (mid-section)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while not staging.exists() and proc.poll() is None and time.time() - t0 < 60:
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_write = True
        proc.wait()
        assert not Section(cfg, 3).is_fresh() or not staging.exists()
        if killed_mid_write:
            break
    assert killed_mid_write, "section finished before it could be killed"
    fw.s3_pools(cfg)  # resume
    assert Section(cfg, 3).manifest_path.read_bytes() == Section(ref, 3).manifest_path.read_bytes()
    assert not staging.exists()


def test_config_overrides_and_section_hashes(monkeypatch):
    base = load_config("tiny", env=False)
    monkeypatch.setenv("BDD_MINE_K", "7")
    cfg = load_config("tiny")
    assert cfg.mine_k == 7
    assert cfg.section_hash(4) == base.section_hash(4) and cfg.section_hash(6) != base.section_hash(6)
    with pytest.raises(ValueError, match="unknown config key"):
        load_config("tiny", {"mine_kk": 1}, env=False)
    with pytest.raises(ValueError, match="unknown profile"):
        load_config("nope", env=False)
    for p in ("tiny", "demo", "full"):
        assert set(load_config(p, env=False)) == set(base)  # every profile defines every key


@pytest.mark.slow
def test_demo_world_holds_a_full_dose_of_every_eligible_slice_and_keeps_the_tail_in_reach():
    """Counts only (no image, no model): the demo world's plan, §1's collect and §3's pools."""
    cfg = load_config("demo", env=False)
    df = pd.DataFrame([{"name": s.name, "split": s.split, "weather": s.weather, "timeofday": s.timeofday,
                        "scene": s.scene} for s in synth.plan_world(cfg)])
    df["group"], df["image_path"] = [bdd.group_of(n) for n in df["name"]], "x"
    tr, va = df[df["split"] == "train"].reset_index(drop=True), df[df["split"] == "val"]
    confirm_n = slices.key(va[~va["group"].isin(tr["group"])]).value_counts().to_dict()
    coll, _ = slices.collect(tr, cfg.collect_total, cfg.collect_min_floor, cfg.seed)
    pools = slices.make_pools(coll.assign(origin="labels"), cfg.pool_train_size, cfg.pool_eval_size,
                              cfg.pool_eval_max_slices, cfg.pool_golden_size, cfg.seed, confirm_n=confirm_n,
                              min_confirm=cfg.confirm_min_frames, min_pool=cfg.eval_min_pool_frames)
    el = slices.eligibility_table(pools, confirm_n, cfg.confirm_min_frames, cfg.eval_min_pool_frames)
    el = el[el["eligible"]]
    assert len(el) == 15 and el["n_pool"].min() >= int(cfg.mine_k)
    assert {"snowy | night | city street", "rainy | night | city street"} <= set(el["slice"])
