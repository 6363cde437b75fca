"""Auto-labelling: the real gsam2 path on tiny random models, teacher/oracle, quality, router, exports.

The tiny Grounding DINO / SAM2 are random (tests/_tiny_models.py): assertions are about
plumbing (shapes, mapping, thresholds, tightening, failure accounting), never accuracy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bdd_engine import autolabel as al
from bdd_engine import train
from bdd_engine.bdd import CLASSES
from bdd_engine.config import load_config
from bdd_engine.geometry import box_iou

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import build_tiny_gdino, build_tiny_sam2, build_tiny_sam2_hub_layout, build_tiny_yolo  # noqa: E402

W, H = 320, 180
PROMPT = "car . person . bike . traffic light"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    return build_tiny_gdino(d / "tiny-random-gdino"), build_tiny_sam2(d / "tiny-random-sam2")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """4 synthetic frames (rectangles on noise, JPEG) + 1 corrupt file. Returns (frames, paths)."""
    from PIL import Image, ImageDraw

    d = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        im = Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        ImageDraw.Draw(im).rectangle([40 + 20 * i, 50, 140 + 20 * i, 120], fill=(200, 30, 30))
        p = d / f"synthetic-{i:04d}.jpg"
        im.save(p, quality=90)
        paths.append(p)
    bad = d / "synthetic-corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    paths.append(bad)
    frames = [{"name": p.name, "attributes": {"weather": "foggy", "timeofday": "night", "scene": "highway"},
               "labels": [{"id": "0", "category": "car", "box2d": {"x1": 1, "y1": 1, "x2": 9, "y2": 9}}]}
              for p in paths]
    return frames, paths


@pytest.fixture(scope="module")
def labeler(tiny_weights):
    g, s = tiny_weights
    return al.GroundedSam2Labeler(g, s, prompt=PROMPT, negative_prompts=["billboard"], box_threshold=0.3,
                                  text_threshold=0.2, nms_iou=0.7, batch_size=2)


def _frame(name, labels):
    return {"name": name, "attributes": {}, "labels": labels}


def _lb(cat, box, score=None, **attrs):
    lb = {"id": "x", "category": cat, "attributes": attrs,
          "box2d": dict(zip(("x1", "y1", "x2", "y2"), map(float, box)))}
    if score is not None:
        lb["score"] = score
    return lb


# ----------------------------------------------------------------------------- prompt + mapping
def test_default_prompt_maps_to_all_ten_classes():
    m = al.build_phrase_map(al.DEFAULT_PROMPT)
    assert set(m.values()) == set(CLASSES)
    assert all(m[c] == c for c in CLASSES)


def test_phrase_mapping_is_explicit():
    m = al.build_phrase_map("person . bike . van . stop sign", class_prompts={"train": ["tram"]},
                            negative_prompts=["billboard"])
    assert m == {"tram": "train", "person": "pedestrian", "bike": "bicycle", "van": "car",
                 "stop sign": "traffic sign", "billboard": None}
    with pytest.raises(ValueError, match="has no BDD class"):
        al.build_phrase_map("car . lamppost")
    with pytest.raises(ValueError, match="not a BDD class"):
        al.build_phrase_map("car", class_prompts={"vehicle": ["auto"]})
    with pytest.raises(ValueError, match="negative prompt"):
        al.build_phrase_map("car", negative_prompts=["car"])
    # an explicit class prompt overrides the built-in mapping of the same phrase
    assert al.build_phrase_map("person", class_prompts={"rider": ["person"]}) == {"person": "rider"}


def test_prompt_groups_and_spans(tiny_weights):
    from transformers import AutoProcessor

    m = al.build_phrase_map(PROMPT, negative_prompts=["billboard"])
    assert al.prompt_groups(m, "joint") == [["car", "person", "bike", "traffic light", "billboard"]]
    per = al.prompt_groups(m, "per_class")
    assert per == [["car", "billboard"], ["person", "billboard"], ["bike", "billboard"],
                   ["traffic light", "billboard"]]
    with pytest.raises(ValueError):
        al.prompt_groups(m, "both")
    tok = AutoProcessor.from_pretrained(tiny_weights[0]).tokenizer
    ids = tok(al.prompt_text(["car", "traffic light", "bike"]))["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102
    assert al.phrase_spans(ids, 3) == [[1], [3, 4], [6]]  # "traffic light" spans two tokens
    with pytest.raises(ValueError, match="expected 2"):
        al.phrase_spans(ids, 2)


def test_assign_phrases_thresholds():
    import torch

    spans = [[1], [3, 4]]  # "car", "traffic light"
    probs = torch.zeros(4, 8)
    probs[0, 1] = 0.9                      # car, clear
    probs[1, 3], probs[1, 4] = 0.8, 0.6    # traffic light, both tokens fire: mean 0.7
    probs[2, 4] = 0.9                      # only "light" fires: mean 0.45 < text threshold 0.5
    probs[3, 1] = 0.2                      # below box threshold
    keep, pidx, score = al.assign_phrases(probs, spans, box_threshold=0.3, text_threshold=0.5)
    assert keep.tolist() == [0, 1]
    assert pidx.tolist() == [0, 1]
    assert score.tolist() == pytest.approx([0.9, 0.8])


# ----------------------------------------------------------------------------- box geometry
def test_tighten_to_mask_shrinks_to_mask_inside_box():
    mask = np.zeros((H, W), bool)
    mask[60:90, 50:100] = True     # object: rows 60..89, cols 50..99
    mask[0:10, 0:300] = True       # leak far outside the box must not grow it
    box, ok = al.tighten_to_mask([40.5, 55.2, 120.0, 110.0], mask)
    assert ok
    assert box.tolist() == [50.0, 60.0, 100.0, 90.0]
    # mask extends past the box: clipped to the box (never grows)
    box, ok = al.tighten_to_mask([60.0, 70.0, 80.0, 80.0], mask)
    assert ok and box.tolist() == [60.0, 70.0, 80.0, 80.0]
    # (almost) empty mask: box unchanged, flagged
    box, ok = al.tighten_to_mask([200, 100, 250, 150], mask, min_pixels=4)
    assert not ok and box.tolist() == [200, 100, 250, 150]


def test_rider_rule():
    boxes = np.array([[100, 40, 130, 110],    # person on the bike below
                      [95, 80, 140, 130],     # bicycle
                      [10, 10, 40, 90],       # person alone
                      [200, 50, 230, 120],    # person barely touching the motorcycle
                      [228, 100, 300, 140]])  # motorcycle
    cats = ["pedestrian", "bicycle", "pedestrian", "pedestrian", "motorcycle"]
    out, n = al.apply_rider_rule(cats, boxes, overlap=0.3)
    assert out == ["rider", "bicycle", "pedestrian", "pedestrian", "motorcycle"] and n == 1
    out, n = al.apply_rider_rule(cats, boxes, overlap=0.01)
    assert out[3] == "rider" and n == 2
    assert al.apply_rider_rule(["pedestrian"], boxes[:1], 0.3) == (["pedestrian"], 0)


# ----------------------------------------------------------------------------- gsam2 end to end
def test_missing_weights_one_clear_message(tmp_path):
    with pytest.raises(al.WeightsMissingError) as e:
        al.GroundedSam2Labeler(tmp_path / "grounding-dino-tiny", tmp_path / "sam2.1-hiera-tiny")
    msg = str(e.value)
    assert "./setup.sh --weights" in msg and "grounding-dino-tiny" in msg and "sam2.1-hiera-tiny" in msg


def test_gsam2_loads_the_hub_sam2_video_layout(tiny_weights, images, tmp_path):
    """facebook/sam2.1-hiera-tiny ships a sam2_video checkpoint + Sam2VideoProcessor: the image
    path must load every weight it needs from it (equal tensors) and run."""
    import torch
    from transformers import Sam2VideoModel

    hub = build_tiny_sam2_hub_layout(tmp_path / "tiny-random-sam2-video")
    lab = al.GroundedSam2Labeler(tiny_weights[0], hub, prompt="car . person", batch_size=2)
    video = Sam2VideoModel.from_pretrained(hub).state_dict()
    mine = lab.sam_model.state_dict()
    assert mine and all(torch.equal(v, video[k]) for k, v in mine.items())
    frames, paths = images
    run = lab.label(frames[:1], paths[:1], progress=False)
    assert run.n_failed == 0 and run.stats["boxes tightened to mask"] + run.stats["empty masks (box kept)"] == run.n_labels


def test_gsam2_end_to_end(labeler, images):
    frames, paths = images
    run = labeler.label(frames, paths, progress=False)
    # every input frame is present, in order; the corrupt one is a counted failure
    assert [f["name"] for f in run.frames] == [f["name"] for f in frames]
    assert list(run.failures) == ["synthetic-corrupt.jpg"] and "unreadable image" in run.failures["synthetic-corrupt.jpg"]
    assert run.frames[-1]["labels"] == [] and run.n_failed == 1 and not run.is_oracle
    # the labeler never sees (or copies) GT labels; attributes are carried over
    assert run.frames[0]["attributes"]["weather"] == "foggy"
    labels = [lb for f in run.frames for lb in f["labels"]]
    assert run.n_labels == len(labels) > 0
    # classes only through the explicit mapping: person -> pedestrian (or rider), bike -> bicycle
    assert {lb["category"] for lb in labels} <= {"car", "pedestrian", "rider", "bicycle", "traffic light"}
    for lb in labels:
        b = lb["box2d"]
        assert 0 <= b["x1"] < b["x2"] <= W and 0 <= b["y1"] < b["y2"] <= H
        assert 0.3 <= lb["score"] <= 1.0
    assert run.stats["boxes tightened to mask"] + run.stats["empty masks (box kept)"] == run.n_labels


def test_gsam2_boxes_are_nms_then_mask_tightened(labeler, images):
    """The final boxes are the detect() boxes (negatives dropped) shrunk to the real SAM masks."""
    from bdd_engine.autolabel import load_rgb

    frames, paths = images
    ims = [load_rgb(p) for p in paths[:2]]
    dets = labeler.detect(ims)
    run = labeler.label(frames[:2], paths[:2], progress=False)
    for (bx, cls, sc), fr in zip(dets, run.frames):
        pos = [k for k, c in enumerate(cls) if c is not None]
        assert len(fr["labels"]) == len(pos)
        for k, lb in zip(pos, fr["labels"]):
            b = lb["box2d"]
            assert b["x1"] >= bx[k][0] - 1e-4 and b["y1"] >= bx[k][1] - 1e-4
            assert b["x2"] <= bx[k][2] + 1e-4 and b["y2"] <= bx[k][3] + 1e-4
            assert lb["score"] == pytest.approx(sc[k], abs=1e-6)
        # class-agnostic NMS: no two kept detections overlap above nms_iou
        iou = box_iou(bx, bx, pixel_shift=0.0)  # torchvision's NMS IoU: continuous coordinates, no +1
        np.fill_diagonal(iou, 0)
        assert (iou <= 0.7 + 1e-6).all()
    # SAM really produced masks at image size for the kept boxes
    masks = labeler.masks(ims, [d[0] for d in dets])
    for m, (bx, _, _) in zip(masks, dets):
        assert m is not None and m.shape == (len(bx), H, W) and m.dtype == bool


def test_gsam2_sam_box_chunks_change_no_mask(labeler, images, monkeypatch):
    """SAM 2.1 decodes an image's boxes in chunks (memory, issue 14): one box per call gives
    the very masks of one call for all, in box order."""
    from bdd_engine.autolabel import gsam2, load_rgb

    frames, paths = images
    ims = [load_rgb(p) for p in paths[:2]]
    boxes = [np.array([[10, 10, 120, 90], [50, 20, 300, 170], [0, 0, 320, 180]], float)] * 2
    monkeypatch.setattr(gsam2, "SAM_BOX_CHUNK", 100)
    whole = labeler.masks(ims, boxes)
    monkeypatch.setattr(gsam2, "SAM_BOX_CHUNK", 1)
    chunked = labeler.masks(ims, boxes)
    for a, b in zip(whole, chunked):
        assert a.shape == b.shape == (3, H, W) and a.dtype == b.dtype == bool
        assert (a != b).mean() <= 1e-4  # batched matmuls may round a boundary pixel, nothing more


def test_gsam2_box_scaling_matches_official_postprocess(labeler, images):
    """Our pixel boxes use the same conversion as post_process_grounded_object_detection."""
    import torch
    from transformers.image_transforms import center_to_corners_format

    from bdd_engine.autolabel import load_rgb

    ims = [load_rgb(p) for p in images[1][:2]]
    inputs = labeler.gd_proc(images=ims, text=[al.prompt_text(labeler.groups[0])] * 2, return_tensors="pt")
    with torch.no_grad():
        out = labeler.gd_model(**inputs)
    official = labeler.gd_proc.post_process_grounded_object_detection(
        out, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(H, W)] * 2)
    ours = center_to_corners_format(out.pred_boxes) * torch.tensor([W, H, W, H])
    assert torch.allclose(official[0]["boxes"], ours[0], atol=1e-3)


def test_gsam2_mask_tightening_and_rider_rule_with_known_masks(labeler, images, monkeypatch):
    """Mock only the detector/SAM outputs to known values; the rest of the pipeline is real."""
    frames, paths = images
    det = (np.array([[100, 40, 130, 110], [95, 80, 140, 130], [10, 10, 60, 90], [200, 20, 260, 60]], float),
           ["pedestrian", "bicycle", "pedestrian", None], np.array([0.9, 0.8, 0.7, 0.95]))
    monkeypatch.setattr(labeler, "detect", lambda ims: [det for _ in ims])

    def known_masks(ims, boxes):  # each box's mask = the box shrunk by (3, 2, 4, 5) px, plus a leak
        out = []
        for bx in boxes:
            m = np.zeros((len(bx), H, W), bool)
            for k, (x1, y1, x2, y2) in enumerate(bx.astype(int)):
                m[k, y1 + 2:y2 - 5, x1 + 3:x2 - 4] = True
                m[k, 0:5, :] = True  # leak outside every box: must be ignored
            out.append(m)
        return out

    monkeypatch.setattr(labeler, "masks", known_masks)
    run = labeler.label(frames[:1], paths[:1], progress=False)
    got = [(lb["category"], [lb["box2d"][k] for k in ("x1", "y1", "x2", "y2")], lb["score"])
           for lb in run.frames[0]["labels"]]
    assert got == [("rider", [103, 42, 126, 105], 0.9), ("bicycle", [98, 82, 136, 125], 0.8),
                   ("pedestrian", [13, 12, 56, 85], 0.7)]
    assert run.stats["negative-prompt boxes dropped"] == 1 and run.stats["pedestrian -> rider"] == 1


def test_gsam2_failing_frame_is_isolated_and_counted(labeler, images, monkeypatch):
    frames, paths = images
    real = labeler._predict

    def flaky(ims, ps, stats):
        if any(p.name == "synthetic-0001.jpg" for p in ps):
            if len(ps) == 1:
                raise RuntimeError("model blew up")
            raise RuntimeError("batch failed")
        return real(ims, ps, stats)

    monkeypatch.setattr(labeler, "_predict", flaky)
    keep = [0, 1, 4]  # batch 1: a good frame + the failing one; batch 2: the corrupt file
    run = labeler.label([frames[i] for i in keep], [paths[i] for i in keep], progress=False)
    assert set(run.failures) == {"synthetic-0001.jpg", "synthetic-corrupt.jpg"}
    assert "model blew up" in run.failures["synthetic-0001.jpg"]
    assert run.n_frames == 3 and run.frames[0]["labels"]  # its batch-mate was still labelled
    assert run.frames[1]["labels"] == [] and run.frames[1]["name"] == "synthetic-0001.jpg"


def _profile(**overrides):
    """The full demo config (demo overrides nothing: default.yaml's values) plus ``overrides``."""
    return load_config("demo", overrides=overrides, env=False)


def test_get_labeler_reads_config(tiny_weights):
    g, s = tiny_weights
    cfg = _profile(label_labeler="gsam2", label_gsam2_gdino_dir=str(g), label_gsam2_sam_dir=str(s),
                   label_gsam2_prompt="car . person", label_gsam2_prompt_mode="per_class",
                   label_gsam2_box_threshold=0.5, device="cpu")
    lab = al.get_labeler(cfg)
    assert isinstance(lab, al.GroundedSam2Labeler) and lab.groups == [["car"], ["person"]]
    assert lab.box_threshold == 0.5 and lab.device == "cpu"
    with pytest.raises(ValueError, match="unknown labeler"):
        al.get_labeler(cfg, "magic")


def test_make_labeler_defaults_are_the_profile_defaults():
    """make_labeler reads no config, so its keyword defaults must equal what default.yaml
    declares (through the adapter's mapping), and the classes' defaults must equal make_labeler's."""
    import inspect

    opts = al.labeler_options(_profile())
    params = inspect.signature(al.make_labeler).parameters
    assert set(opts) <= set(params)
    assert {k: params[k].default for k in opts} == opts
    for cls, rename in ((al.GroundedSam2Labeler, {"batch_size": "gsam2_batch_size"}),
                        (al.TeacherLabeler, {"conf": "teacher_conf", "tta": "teacher_tta", "imgsz": "teacher_imgsz",
                                             "batch_size": "teacher_batch_size"})):
        for k, p in inspect.signature(cls.__init__).parameters.items():
            if p.default is not inspect.Parameter.empty and p.default is not None:
                assert params[rename.get(k, k)].default == p.default, (cls.__name__, k)


def test_get_labeler_holds_no_defaults():
    """Every key the adapter reads must be in the config: a missing one is a KeyError naming it, never a default."""
    cfg = _profile(label_teacher_imgsz=None)  # null: train_imgsz is read too
    read = [*al.PROFILE_KEYS.values(), "label_teacher_imgsz", "train_imgsz"]
    for key in read:
        with pytest.raises(KeyError, match=key):
            al.get_labeler({k: v for k, v in cfg.items() if k != key}, "oracle", gt_frames=[])
    with pytest.raises(KeyError, match="label_labeler"):
        al.get_labeler({k: v for k, v in cfg.items() if k != "label_labeler"}, gt_frames=[])
    assert isinstance(al.get_labeler(_profile(label_labeler="oracle"), gt_frames=[]), al.OracleLabeler)
    # the profile's null teacher size means train_imgsz; a set one wins
    assert al.labeler_options(_profile(train_imgsz=256, label_teacher_imgsz=None))["teacher_imgsz"] == 256
    assert al.labeler_options(_profile(train_imgsz=256, label_teacher_imgsz=480))["teacher_imgsz"] == 480


def test_make_labeler_requires_its_inputs():
    with pytest.raises(ValueError, match="teacher_weights"):
        al.make_labeler("teacher")
    with pytest.raises(ValueError, match="gt_frames"):
        al.make_labeler("oracle")
    with pytest.raises(ValueError, match="unknown labeler"):
        al.make_labeler("magic")


def test_package_modules_stay_below_the_front_and_the_upper_floors():
    """autolabel/*.py import neither the package front (bdd_engine.autolabel) nor a higher layer."""
    import ast

    higher = {"flywheel", "casestudy", "report", "explorer", "views", "experiment", "figures"}
    for path in sorted((Path(al.__file__).parent).glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for m in mods:
                assert m != "bdd_engine.autolabel", f"{path.name} imports the package front"
                parts = m.split(".")
                assert not (parts[0] == "bdd_engine" and len(parts) > 1 and parts[1] in higher), f"{path.name}: {m}"
                if isinstance(node, ast.ImportFrom) and m == "bdd_engine":
                    assert not {a.name for a in node.names} & higher, f"{path.name}: from bdd_engine import ..."


# ----------------------------------------------------------------------------- teacher / oracle
def test_teacher_uses_train_predict(images, tmp_path, monkeypatch):
    frames, paths = images
    calls = []

    def fake_predict(weights, image_paths, conf, imgsz, batch, device, progress):
        calls.append((Path(weights).name, len(image_paths), conf, imgsz, batch))
        return [{"name": Path(p).name, "labels": [_lb("car", [10, 10, 50, 40], 0.9),
                                                  _lb("bus", [60, 10, 90, 40], 0.2)]} for p in image_paths]

    monkeypatch.setattr(train, "predict", fake_predict)
    w = tmp_path / "best.pt"
    w.write_bytes(b"x")
    lab = al.get_labeler(_profile(label_labeler="teacher", label_teacher_conf=0.5, train_imgsz=320, train_batch=4,
                                  label_teacher_imgsz=None),
                         teacher_weights=w)
    run = lab.label(frames, paths, progress=False)
    assert calls == [("best.pt", 4, 0.5, 320, 4)]  # one predict call: the model loads once
    assert list(run.failures) == ["synthetic-corrupt.jpg"]
    assert [[lb["category"] for lb in f["labels"]] for f in run.frames] == [["car"]] * 4 + [[]]
    assert run.stats["teacher labels below conf / not a class"] == 4
    with pytest.raises(ValueError, match="augment"):
        al.TeacherLabeler(w, tta=True)
    with pytest.raises(FileNotFoundError, match="iter0"):
        al.TeacherLabeler(tmp_path / "missing.pt")


def test_label_teacher_weights_picks_the_teacher_and_null_keeps_the_start_model(images, tmp_path, monkeypatch):
    """The profile's label_teacher_weights is the teacher the factory builds (the §7 call passes the
    turn's start model as start_weights); null keeps today's behaviour: the start model labels.
    An explicit teacher_weights= (the CLI's --weights) still wins."""
    frames, paths = images
    used = []
    monkeypatch.setattr(train, "predict", lambda weights, image_paths, **kw: used.append(Path(weights).name) or
                        [{"name": Path(p).name, "labels": []} for p in image_paths])
    for n in ("teacher.pt", "iter0.pt", "explicit.pt"):
        (tmp_path / n).write_bytes(b"x")
    start = tmp_path / "iter0.pt"
    fixed = _profile(label_labeler="teacher", label_teacher_weights=str(tmp_path / "teacher.pt"))
    al.get_labeler(fixed, start_weights=start).label(frames[:1], paths[:1], progress=False)
    al.get_labeler(_profile(label_labeler="teacher", label_teacher_weights=None),
                   start_weights=start).label(frames[:1], paths[:1], progress=False)
    al.get_labeler(fixed, start_weights=start, teacher_weights=tmp_path / "explicit.pt").label(
        frames[:1], paths[:1], progress=False)
    assert used == ["teacher.pt", "iter0.pt", "explicit.pt"]
    # the file is a recorded input of §7 only when the profile names it and the labeler is the teacher
    assert al.labeler_input_files(fixed) == [tmp_path / "teacher.pt"]
    assert al.labeler_input_files(_profile(label_labeler="teacher", label_teacher_weights=None)) == []
    assert al.labeler_input_files({**fixed, "label_labeler": "gsam2"}) == []
    with pytest.raises(KeyError, match="label_teacher_weights"):
        al.get_labeler({k: v for k, v in fixed.items() if k != "label_teacher_weights"}, start_weights=start)


def test_the_demo_teacher_is_the_shipped_one_and_other_profiles_keep_the_start_model():
    demo = load_config("demo", env=False)
    assert demo.label_labeler == "teacher" and demo.label_teacher_weights == "bdd_engine/models/synthteacher-w025.pt"
    for prof in ("tiny", "full", "smoke-full"):
        assert load_config(prof, env=False).label_teacher_weights is None, prof


def test_teacher_real_ultralytics_model(images, tmp_path):
    """The real train.predict path with a random tiny YOLO (labels are noise; plumbing is real)."""
    frames, paths = images
    w = build_tiny_yolo(tmp_path / "tiny-random-yolo.pt")
    lab = al.TeacherLabeler(w, conf=0.0005, imgsz=128, batch_size=4, device="cpu")
    run = lab.label(frames, paths, progress=False)
    assert [f["name"] for f in run.frames] == [f["name"] for f in frames]
    assert list(run.failures) == ["synthetic-corrupt.jpg"]
    labels = [lb for f in run.frames for lb in f["labels"]]
    assert labels and all(lb["score"] >= 0.0005 and lb["category"] in CLASSES for lb in labels)
    assert all(0 <= lb["box2d"]["x1"] <= lb["box2d"]["x2"] <= W for lb in labels)


def test_oracle_is_flagged_and_never_exported_as_autolabels():
    gt = [_frame("a.jpg", [_lb("car", [0, 0, 10, 10]), _lb("other person", [20, 20, 30, 40])])]
    run = al.make_labeler("oracle", gt_frames=gt).label([{"name": "a.jpg"}, {"name": "b.jpg"}], None)
    assert run.is_oracle and run.labeler == "oracle" and "ORACLE" in run.summary()
    assert [lb["category"] for lb in run.frames[0]["labels"]] == ["car", "other person"]
    assert all(lb["score"] == 1.0 for lb in run.frames[0]["labels"])
    assert run.failures == {"b.jpg": "no held-back ground truth for this frame"}
    with pytest.raises(ValueError, match="oracle"):
        al.accepted_frames(run, 0.6)
    q = al.label_quality(run, gt)
    assert q.is_oracle and q.all_frames.set_index("class").loc["overall", "recall"] == 1.0


# ----------------------------------------------------------------------------- quality + router
def _quality_case():
    gt = [
        _frame("f1.jpg", [_lb("car", [0, 0, 100, 100]), _lb("truck", [200, 0, 300, 100]),
                          _lb("rider", [0, 200, 50, 300]), _lb("other person", [400, 0, 450, 100])]),
        _frame("f2.jpg", [_lb("pedestrian", [0, 0, 40, 100]), _lb("car", [100, 100, 200, 200])]),
        _frame("f3.jpg", [_lb("car", [0, 0, 50, 50])]),  # labeler failed on this frame
        _frame("f4.jpg", []),                             # no GT: not evaluated
    ]
    pred = [
        _frame("f1.jpg", [_lb("car", [2, 2, 100, 100], 0.9),      # TP (accept)
                          _lb("car", [200, 0, 300, 100], 0.5),    # FP, confused with truck (review)
                          _lb("pedestrian", [400, 0, 450, 100], 0.7),  # on an ignore region: neither
                          _lb("pedestrian", [0, 200, 50, 300], 0.4)]),  # FP, rider confused (review)
        _frame("f2.jpg", [_lb("pedestrian", [0, 0, 40, 98], 0.2),  # TP (discard bucket)
                          _lb("car", [500, 500, 600, 600], 0.8)]),  # FP, nothing there (accept)
        _frame("f3.jpg", []),
        _frame("f4.jpg", [_lb("car", [0, 0, 10, 10], 0.95)]),       # not evaluable (no GT)
    ]
    run = al.LabelRun(labeler="test", frames=pred, failures={"f3.jpg": "unreadable image"}, seconds=12.0)
    return run, gt


def test_label_quality_numbers():
    run, gt = _quality_case()
    q = al.label_quality(run, gt, spot_check=20, seed=42)
    assert q.n_frames == 3 and q.n_failed == 1
    t = q.all_frames.set_index("class")
    assert t.loc["overall", ["n_gt", "tp", "fp", "fn"]].tolist() == [6, 2, 3, 4]
    assert t.loc["overall", "precision"] == pytest.approx(2 / 5)
    assert t.loc["overall", "recall"] == pytest.approx(2 / 6)
    assert t.loc["car", ["n_gt", "tp", "fp"]].tolist() == [3, 1, 2]      # f3's car counts as missed
    assert t.loc["pedestrian", ["n_gt", "tp", "fp"]].tolist() == [1, 1, 1]
    assert np.isnan(t.loc["train", "precision"]) and np.isnan(t.loc["train", "recall"])
    assert q.missed.iloc[0].tolist() == ["car", 2, pytest.approx(2 / 3)]
    # every class with GT is listed, most missed first; classes without GT are not
    assert q.missed["class"].tolist() == ["car", "rider", "truck", "pedestrian"]
    assert q.missed["n_missed"].tolist() == [2, 1, 1, 0]
    assert sorted(map(tuple, q.confusions[["labelled_as", "gt_class", "n"]].values.tolist())) == [
        ("car", "truck", 1), ("pedestrian", "rider", 1)]
    # spot check larger than the pool = all frames; a smaller one is seeded and reproducible
    assert q.spot_check.equals(q.all_frames)
    s1 = al.label_quality(run, gt, spot_check=2, seed=7).spot_names
    assert len(s1) == 2 and s1 == al.label_quality(run, gt, spot_check=2, seed=7).spot_names


def test_router_buckets_and_precision():
    run, gt = _quality_case()
    q = al.label_quality(run, gt)
    r = al.router_table(q, run, accept=0.6, review=0.35).set_index("bucket")
    assert r["n_labels"].tolist() == [4, 2, 1]  # accept 0.9 0.7 0.8 0.95 | review 0.5 0.4 | discard 0.2
    # f4's 0.95 has no GT frame and the 0.7 sits on an ignore region: neither is scored
    assert r.loc["accept", ["tp", "fp"]].tolist() == [1, 1]
    assert r.loc["review", ["tp", "fp"]].tolist() == [0, 2]
    assert r.loc["discard", ["tp", "fp"]].tolist() == [1, 0]
    assert r.loc["accept", "precision"] == 0.5 and r.loc["review", "precision"] == 0.0
    # f1: review labels; f2: has an accepted label, no review one -> skipped; f3: failed; f4: accepted
    assert al.frames_for_humans(run, 0.6, 0.35) == ["f1.jpg", "f3.jpg"]
    # a frame with nothing >= review (empty output, or only discards) goes to humans too
    only_discard = al.LabelRun("t", [_frame("e.jpg", [_lb("car", [0, 0, 9, 9], 0.1)]), _frame("z.jpg", [])])
    assert al.frames_for_humans(only_discard, 0.6, 0.35) == ["e.jpg", "z.jpg"]
    acc = al.accepted_frames(run, 0.6)
    assert [f["name"] for f in acc] == ["f1.jpg", "f2.jpg", "f4.jpg"]  # failed f3 excluded
    assert [[lb["score"] for lb in f["labels"]] for f in acc] == [[0.9, 0.7], [0.8], [0.95]]
    acc = al.accepted_frames(run, 0.85)  # f2 keeps nothing: left out, unless asked for
    assert [f["name"] for f in acc] == ["f1.jpg", "f4.jpg"]
    assert [f["name"] for f in al.accepted_frames(run, 0.85, keep_empty=True)] == ["f1.jpg", "f2.jpg", "f4.jpg"]
    with pytest.raises(ValueError):
        al.bucket_of(0.5, accept=0.3, review=0.6)


def test_cost_table():
    run, _ = _quality_case()
    c = al.cost_table(run, accept=0.6, review=0.35).set_index("option")
    human = c.loc["human labelling, every frame"]
    assert (human["usd_low"], human["usd_high"]) == (4 * 0.5, 4 * 10.0)
    mixed = c.loc["auto-label (test) + human review queue"]
    assert mixed["human_frames"] == 2 and mixed["usd_high"] == 20.0 and mixed["share_human_skipped"] == 0.5
    assert c.loc["auto-label only (test)", "wall_clock_s"] == 12.0
    assert all("assum" in a or "measured" in a for a in c["assumption"])
    priced = al.cost_table(run, 0.6, 0.35, compute_usd_per_hour=3.6).set_index("option")
    assert priced.loc["auto-label only (test)", "usd_low"] == pytest.approx(0.012)


# ----------------------------------------------------------------------------- exports
@pytest.fixture()
def export_case(images):
    _, paths = images
    frames = [_frame(paths[0].name, [_lb("car", [10, 20, 110, 70], 0.9), _lb("traffic light", [200, 5, 210, 30], 0.7)]),
              _frame(paths[1].name, [])]
    return frames, {p.name: p for p in paths[:2]}


def test_export_coco_loads_with_pycocotools(export_case, tmp_path):
    from pycocotools.coco import COCO

    frames, paths = export_case
    p = al.export_coco(frames, paths, tmp_path / "auto.json")
    coco = COCO(str(p))
    assert len(coco.getImgIds()) == 2 and len(coco.getAnnIds()) == 2
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    a = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert a[0]["bbox"] == [10.0, 20.0, 100.0, 50.0] and a[0]["category_id"] == 3 and a[0]["score"] == 0.9
    assert a[1]["category_id"] == 9
    assert coco.loadImgs(1)[0]["width"] == W and coco.loadImgs(1)[0]["height"] == H
    res = coco.loadRes(a)  # also usable as a detection result file
    assert len(res.getAnnIds()) == 2


def test_export_label_studio(export_case, tmp_path):
    frames, paths = export_case
    root = next(iter(paths.values())).parent
    p = al.export_label_studio(frames, paths, tmp_path / "review.json", model_version="gsam2", root=root)
    tasks = json.loads(p.read_text())
    assert len(tasks) == 2 and tasks[0]["data"]["image"] == f"/data/local-files/?d={frames[0]['name']}"
    r = tasks[0]["predictions"][0]["result"][0]
    assert r["type"] == "rectanglelabels" and r["from_name"] == "label" and r["to_name"] == "image"
    assert r["value"]["rectanglelabels"] == ["car"]
    assert r["value"]["x"] == pytest.approx(100 * 10 / W) and r["value"]["width"] == pytest.approx(100 * 100 / W)
    assert r["value"]["y"] == pytest.approx(100 * 20 / H) and r["value"]["height"] == pytest.approx(100 * 50 / H)
    assert tasks[0]["predictions"][0]["model_version"] == "gsam2"
    assert tasks[1]["predictions"][0]["result"] == []
    cfg = (tmp_path / "review.label_config.xml").read_text()
    assert cfg.count("<Label ") == 10 and 'name="label"' in cfg and 'name="image"' in cfg


def test_export_yolo_passes_ultralytics_checker(export_case, tmp_path):
    from ultralytics.data.utils import check_det_dataset

    frames, paths = export_case
    yaml_path, counts = al.export_yolo_set(frames, paths, tmp_path / "yolo")
    assert counts["frames"] == 2 and counts["boxes written"] == 2
    info = check_det_dataset(str(yaml_path), autodownload=False)
    assert info["nc"] == 10 and list(info["names"].values()) == list(CLASSES)
    assert Path(info["train"]).resolve() == (tmp_path / "yolo" / "images" / "train").resolve()
    rows = (tmp_path / "yolo" / "labels" / "train" / (Path(frames[0]["name"]).stem + ".txt")).read_text().split()
    cls, cx, cy, w, h = rows[:5]
    assert int(cls) == 2 and float(cx) == pytest.approx(60 / W, abs=1e-5) and float(w) == pytest.approx(100 / W, abs=1e-5)
    assert float(cy) == pytest.approx(45 / H, abs=1e-5) and float(h) == pytest.approx(50 / H, abs=1e-5)
    assert (tmp_path / "yolo" / "labels" / "train" / (Path(frames[1]["name"]).stem + ".txt")).read_text() == ""


def test_write_outputs_from_a_gsam2_run(labeler, images, tmp_path):
    frames, paths = images
    keep = [0, 1, 4]
    run = labeler.label([frames[i] for i in keep], [paths[i] for i in keep], progress=False)
    idx = {p.name: p for p in paths}
    yolo = True
    t = al.write_outputs(tmp_path / "out", run, [frames[i] for i in keep], idx, accept=0.9999, review=0.3,
                         spot_check=2, yolo=yolo)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"labels.json", "quality_all.csv", "quality_spot.csv", "missed.csv", "confusions.csv", "router.csv",
            "cost.csv", "coco.json", "label_studio_review.json", "summary.md"} <= names
    assert ("yolo" in names) == yolo
    q = t["quality"]
    assert q.n_frames == 3 and q.n_failed == 1 and len(q.spot_names) == 2
    assert q.all_frames.set_index("class").loc["car", "n_gt"] == 3  # the failed frame's GT stays counted
    r = t["router"].set_index("bucket")
    assert r["n_labels"].sum() == run.n_labels
    need = al.frames_for_humans(run, 0.9999, 0.3)
    tasks = json.loads((tmp_path / "out" / "label_studio_review.json").read_text())
    assert len(tasks) == len(need) - 1  # the failed frame is in the human count, not in the Label Studio queue
    assert "synthetic-corrupt.jpg" in need
    assert sum(len(f["labels"]) for f in t["train_frames"]) == int(r.loc["accept", "n_labels"])
    assert "1 failed" in (tmp_path / "out" / "summary.md").read_text()

