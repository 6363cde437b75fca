"""The full profile's real path (issue 14): its missing-weights and missing-data messages as
the full profile resolves them, gsam2 with the stand-in Grounding DINO tiny + SAM 2.1
hiera-tiny at 1280x720 through §7's code, and `make smoke-full` in a fresh copy with a
planted data/bdd100k left byte for byte as it was."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bdd_engine import autolabel, config, standin, train, views, weights
from bdd_engine import flywheel as fw
from bdd_engine.autolabel import gsam2
from bdd_engine.bdd import CLASSES, load_frames
from bdd_engine.config import load_config
from tests.test_faults import project_copy, tree_bytes

FIX = "./setup.sh --weights"
W, H = 1280, 720


def full_cfg(tmp_path: Path, **overrides):
    return load_config("full", {"outputs_dir": str(tmp_path / "outputs"), **overrides}, env=False)


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    """weights/ and the project root point at empty tmp folders (a clone before setup.sh --weights)."""
    root = tmp_path / "proj"
    wdir = root / "weights"
    root.mkdir()
    monkeypatch.setattr(weights, "WEIGHTS_DIR", wdir)
    monkeypatch.setattr(train, "WEIGHTS_DIR", wdir)
    monkeypatch.setattr(train, "PROJECT_ROOT", root)
    monkeypatch.setattr(config, "PROJECT_ROOT", root)  # the profile's project-relative paths
    monkeypatch.setattr(gsam2, "GDINO_DIR", weights.path("grounding-dino"))
    monkeypatch.setattr(gsam2, "SAM2_DIR", weights.path("sam2"))
    return wdir


# ----------------------------------------------------------------------------- 4 messages
def test_full_missing_yolov8m_names_the_file_and_the_fix(tmp_path, no_weights):
    cfg = full_cfg(tmp_path)
    with pytest.raises(weights.MissingWeightsError) as e:
        train.resolve_model(cfg.train_model, cfg.train_init_weights)
    msg = str(e.value)
    assert "'weights/yolov8m.pt' not found" in msg and str(no_weights) in msg and FIX in msg


def test_full_missing_clip_names_the_file_and_the_fix(tmp_path, no_weights):
    cfg = full_cfg(tmp_path)
    with pytest.raises(weights.MissingWeightsError) as e:
        fw._embeddings(cfg, __import__("pandas").DataFrame({"image_path": [], "name": []}))
    msg = str(e.value)
    assert str(no_weights / "clip-vit-b-32" / "open_clip_pytorch_model.bin") in msg and FIX in msg


def test_full_missing_gsam2_names_both_folders_and_the_fix(tmp_path, no_weights):
    cfg = full_cfg(tmp_path)
    with pytest.raises(autolabel.WeightsMissingError) as e:
        autolabel.get_labeler(cfg)
    msg = str(e.value)
    assert str(no_weights / "grounding-dino-tiny") in msg and str(no_weights / "sam2.1-hiera-tiny") in msg
    assert FIX in msg and "label_labeler: teacher" in msg


def test_full_with_real_weights_is_not_called_stand_in(tmp_path, no_weights):
    for name in ("yolov8m", "clip", "grounding-dino", "sam2"):
        weights.path(name).parent.mkdir(parents=True, exist_ok=True)
        weights.path(name).write_bytes(b"real")
    assert views.stand_in_models(full_cfg(tmp_path)) == []
    (no_weights / weights.STAND_IN_MARKER).write_text(json.dumps({"files": {"yolov8m.pt": {"random": True}}}))
    assert views.stand_in_models(full_cfg(tmp_path)) == ["yolov8m"]  # stand-ins built into weights/ itself


def test_full_missing_data_names_the_folder_and_the_download(tmp_path):
    user = tmp_path / "bdd100k"
    cfg = full_cfg(tmp_path, data_root=str(user))
    with pytest.raises(FileNotFoundError) as e:  # nothing downloaded yet
        fw.s1_collect(cfg)
    msg = str(e.value)
    assert f"no image folder under {user}" in msg and "README.md, section 'Real BDD100K'" in msg
    assert not user.exists()  # the message is all; nothing was created in its place
    (user / "images" / "100k" / "val").mkdir(parents=True)  # images unpacked, labels not yet
    with pytest.raises(FileNotFoundError) as e:
        fw.s1_collect(cfg)
    msg = str(e.value)
    assert f"label file not found: {user / 'labels/det_20/det_train.json'}" in msg and "Detection 2020 Labels" in msg
    assert sorted(p.relative_to(user).as_posix() for p in user.rglob("*")) == ["images", "images/100k", "images/100k/val"]


# ----------------------------------------------------------------------------- 5 gsam2 at full size
@pytest.fixture(scope="module")
def stand_in_gsam2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stand-in")
    standin.build(out, ["grounding-dino", "sam2"], log=lambda *_: None)
    return out


def frames_1280(d: Path) -> tuple[list[dict], list[Path]]:
    """Two 1280x720 JPEG frames (boxes on noise) with one GT car each."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    frames, paths = [], []
    for i in range(2):
        im = Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        ImageDraw.Draw(im).rectangle([300 + 100 * i, 350, 700 + 100 * i, 600], fill=(200, 30, 30))
        p = d / f"full-size-{i}.jpg"
        im.save(p, quality=90)
        paths.append(p)
        frames.append({"name": p.name, "attributes": {"weather": "clear", "timeofday": "daytime", "scene": "highway"},
                       "labels": [{"id": "0", "category": "car", "attributes": {"crowd": False},
                                   "box2d": {"x1": 300.0 + 100 * i, "y1": 350.0, "x2": 700.0 + 100 * i, "y2": 600.0}}]})
    return frames, paths


# 34 s on 2 cores at load ~6 (1-frame Grounding DINO batches, as smoke-full runs them): within `make test`'s budget
def test_gsam2_stand_in_at_1280x720_through_section_7(stand_in_gsam2, tmp_path):
    """smoke-full's labeler (get_labeler on the profile, as §7 builds it) with the stand-in
    Grounding DINO tiny + SAM 2.1 hiera-tiny on 2 full-size frames, then §7's writer. RANDOM
    weights: only behaviour is checked (shapes, box format, valid files), never accuracy."""
    cfg = load_config("smoke-full", {"label_gsam2_gdino_dir": str(stand_in_gsam2 / "grounding-dino-tiny"),
                                     "label_gsam2_sam_dir": str(stand_in_gsam2 / "sam2.1-hiera-tiny"),
                                     "device": "cpu"}, env=False)
    assert views.stand_in_models(cfg)[-2:] == ["grounding-dino", "sam2"]  # the banner and case study say so
    labeler = autolabel.get_labeler(cfg)
    assert isinstance(labeler, autolabel.GroundedSam2Labeler) and labeler.refine
    assert labeler.gd_model.config.num_queries == 900 and labeler.sam_model.config.vision_config.backbone_config
    frames, paths = frames_1280(tmp_path)
    run = labeler.label(frames, paths, progress=False)
    assert run.n_failed == 0 and [f["name"] for f in run.frames] == [p.name for p in paths]
    labels = [lb for f in run.frames for lb in f["labels"]]
    assert 0 < len(labels) <= 2 * cfg.label_gsam2_max_dets  # random weights: boxes, but never past max_dets
    for f in run.frames:
        assert len(f["labels"]) <= cfg.label_gsam2_max_dets
    for lb in labels:
        b = lb["box2d"]
        assert lb["category"] in CLASSES and cfg.label_gsam2_box_threshold <= lb["score"] <= 1.0
        assert 0 <= b["x1"] < b["x2"] <= W and 0 <= b["y1"] < b["y2"] <= H  # pixels of the 1280x720 frame
    assert run.stats["boxes tightened to mask"] + run.stats["empty masks (box kept)"] == run.n_labels
    t = autolabel.write_outputs(tmp_path / "labels_mined", run, frames, {str(p.name): str(p) for p in paths},
                                accept=cfg.label_accept, review=cfg.label_review, spot_check=cfg.label_spot_check,
                                seed=cfg.seed)
    out = tmp_path / "labels_mined"
    assert [f["name"] for f in load_frames(out / "labels.json")] == [p.name for p in paths]
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["annotations"]) == len(labels) and {im["width"] for im in coco["images"]} == {W}
    assert int(t["router"]["n_labels"].sum()) == len(labels)  # every label routed to exactly one bucket


# ----------------------------------------------------------------------------- 2 make smoke-full, data safety
@pytest.mark.slow
def test_make_smoke_full_in_a_fresh_copy_leaves_a_planted_download_byte_for_byte(tmp_path):
    """`make smoke-full` from the tracked files alone (it builds the stand-in weights itself) is
    green, marks its case study SYNTHETIC + STAND-IN, and never touches data/bdd100k (~15-20 min)."""
    proj = project_copy(tmp_path)
    user = proj / "data" / "bdd100k"
    (user / "labels" / "det_20").mkdir(parents=True)
    (user / "images" / "100k" / "val").mkdir(parents=True)
    (user / "MY_DOWNLOAD.txt").write_text("keep\n")
    (user / "labels" / "det_20" / "det_val.json").write_text("[]")
    (user / "images" / "100k" / "val" / "b1c66a42-6f7d68ca.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = tree_bytes(user)
    r = subprocess.run(["make", "-o", "venv", "smoke-full"], cwd=proj, capture_output=True, text=True,
                       env={**os.environ, "CI": "1"}, timeout=40 * 60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert tree_bytes(user) == before
    assert "[run] §8 08_delta: done" in r.stdout and "warning: STAND-IN WEIGHTS" in r.stdout
    case = (proj / "outputs" / "smoke-full" / "case_study" / "case_study_v1.md").read_text()
    assert "SYNTHETIC DATA" in case and "STAND-IN WEIGHTS" in case
    assert json.loads((proj / "weights" / "stand-in" / "STAND_IN.json").read_text())["random"] is True
