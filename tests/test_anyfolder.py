"""``label`` and ``predict`` on any folder (bdd_engine.anyfolder through the CLI), on the tiny world:
outputs load in pycocotools and in our evaluator; videos go through ingest; folders are claimed."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bdd_engine import bdd, synth, synthvideo
from bdd_engine.__main__ import main
from bdd_engine.config import load_config
from bdd_engine.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import build_tiny_yolo  # noqa: E402

N_IMAGES = 8


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    return build_tiny_yolo(tmp_path_factory.mktemp("w") / "tiny-random-yolo.pt")


@pytest.fixture(scope="module")
def folder(tiny_world, tmp_path_factory):
    """8 val images of the tiny world, a corrupt image, and one synthetic drive video (3 s)."""
    src = tmp_path_factory.mktemp("anyfolder")
    names = sorted(p.name for p in (tiny_world / "images/100k/val").glob("*.jpg"))[:N_IMAGES]
    for n in names:
        shutil.copy(tiny_world / "images/100k/val" / n, src / n)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    spec = next(s for s in synth.plan_world(load_config("tiny", env=False)) if s.split == "val")
    synthvideo.write_drive_video(spec, src / "clips" / "drive-v.mov", seconds=3, fps=30, key_second=1)
    gt = {f["name"]: f for f in bdd.load_frames(tiny_world / "labels/det_20/det_val.json")}
    return src, [gt[n] for n in names]


def test_predict_cli_writes_bdd_json_the_evaluator_reads(tiny_world, yolo, tmp_path, capsys):
    val = tiny_world / "images/100k/val"
    pred = tmp_path / "pred.json"
    assert main(["predict", "--profile", "tiny", "--weights", str(yolo), "--src", str(val), "--out", str(pred),
                 "--imgsz", "128", "--set", "device=cpu"]) == 0
    frames = bdd.load_frames(pred)
    on_disk = sorted(p.name for p in val.glob("*.jpg"))
    assert sorted(f["name"] for f in frames) == on_disk  # one frame per image
    gt = [g for g in bdd.load_frames(tiny_world / "labels/det_20/det_val.json") if g["name"] in set(on_disk)]
    labels = [lb for f in frames for lb in f["labels"]]
    assert labels and all(lb["category"] in bdd.CLASSES and 0.001 <= lb["score"] <= 1 for lb in labels)
    res = evaluate(gt, frames, n_boot=0)
    assert 0.0 <= res.AP <= res.AP50 <= 1.0 and len(res.per_frame) == len(gt)
    assert res.per_class["n_pred"].sum() == len(labels)
    capsys.readouterr()
    assert main(["evaluate", "--gt", str(tiny_world / "labels/det_20/det_val.json"), "--pred", str(pred),
                 "--n-boot", "0"]) == 0
    assert "AP" in capsys.readouterr().out
    # never overwrites without --force; videos are refused with the ingest hint
    assert main(["predict", "--profile", "tiny", "--weights", str(yolo), "--src", str(val), "--out", str(pred)]) == 2
    assert "--force" in capsys.readouterr().err


def test_label_cli_teacher_on_images_and_videos(tiny_world, folder, yolo, tmp_path, capsys):
    from pycocotools.coco import COCO

    src, gt = folder
    out = tmp_path / "labelled"

    def label(out: Path, accept: float) -> None:
        # the random tiny model gives every box the same score (0.00125): accept decides all or none
        assert main(["label", "--profile", "tiny", "--src", str(src), "--labeler", "teacher", "--weights", str(yolo),
                     "--out", str(out), "--set", "device=cpu", "--set", "label_teacher_imgsz=128",
                     "--set", "label_teacher_conf=0.001", "--set", "label_review=0.001",
                     "--set", f"label_accept={accept}"]) == 0, capsys.readouterr().err

    label(out, 0.0012)
    ing = pd.read_csv(out / "ingest" / "frames.csv")
    video_frames = sorted(ing.loc[ing["video"] == "drive-v", "name"])
    assert video_frames == [f"drive-v-{30 * k:07d}.jpg" for k in range(3)]
    assert list(pd.read_csv(out / "ingest" / "skipped.csv")["source_path"]) == [str(src / "broken.jpg")]
    labels = bdd.load_frames(out / "labels.json")
    assert sorted(f["name"] for f in labels) == sorted([g["name"] for g in gt] + video_frames)
    n_labels = sum(len(f["labels"]) for f in labels)
    assert n_labels and all(0.001 <= lb["score"] <= 1 for f in labels for lb in f["labels"])
    # COCO loads in pycocotools, one image per labelled frame, boxes = BDD xyxy as xywh
    coco = COCO(str(out / "coco.json"))
    assert len(coco.imgs) == len(labels) and len(coco.anns) == n_labels
    b = labels[0]["labels"][0]["box2d"]
    assert coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]["bbox"] == pytest.approx(
        [b["x1"], b["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"]])
    # the router: all accepted -> the YOLO set holds every label, nobody needs to review
    router = pd.read_csv(out / "router.csv").set_index("bucket")
    assert router["n_labels"].to_dict() == {"accept": n_labels, "review": 0, "discard": 0}
    yolo_txt = list((out / "yolo" / "labels" / "train").glob("*.txt"))
    assert sum(len(p.read_text().splitlines()) for p in yolo_txt) == n_labels
    assert json.loads((out / "label_studio_review.json").read_text()) == []
    # accept above every score: all go to review, pre-annotated in the Label Studio queue, no YOLO set
    label(tmp_path / "strict", 0.5)
    router = pd.read_csv(tmp_path / "strict" / "router.csv").set_index("bucket")
    assert router["n_labels"].to_dict() == {"accept": 0, "review": n_labels, "discard": 0}
    tasks = json.loads((tmp_path / "strict" / "label_studio_review.json").read_text())
    assert len(tasks) == len(labels) and sum(len(t["predictions"][0]["result"]) for t in tasks) == n_labels
    assert not (tmp_path / "strict" / "yolo").exists()
    assert (tmp_path / "strict" / "label_studio_review.label_config.xml").exists()
    # our evaluator reads the labels against the images' ground truth
    img_labels = [f for f in labels if f["name"] in {g["name"] for g in gt}]
    res = evaluate(gt, img_labels, n_boot=0)
    assert 0.0 <= res.AP <= res.AP50 <= 1.0 and len(res.per_frame) == N_IMAGES


def test_label_refuses_a_folder_it_did_not_create(folder, yolo, tmp_path, capsys):
    src, _ = folder
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["label", "--profile", "tiny", "--src", str(src), "--labeler", "teacher", "--weights", str(yolo),
                 "--out", str(mine)]) == 2
    assert "not created by bdd_engine.label" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert main(["label", "--profile", "tiny", "--src", str(src), "--labeler", "teacher",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--weights" in capsys.readouterr().err
    # a NEW folder inside --src was created and written (issue 23 item 7: refused like predict's --out)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    for out in (src / "labels_new", src / "clips" / "deep" / "x", src):
        assert main(["label", "--profile", "tiny", "--src", str(src), "--labeler", "teacher", "--weights", str(yolo),
                     "--out", str(out)]) == 2
        assert capsys.readouterr().err.startswith(f"error: --out {out} is inside --src {src}: label never writes")
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


def test_predict_never_writes_inside_src_force_or_not_and_refuses_a_folder_out(folder, yolo, tmp_path, capsys):
    src, _ = folder
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    good = next(iter(sorted(src.glob("*.jpg"))))
    base = ["predict", "--profile", "tiny", "--weights", str(yolo), "--src", str(src), "--set", "device=cpu"]
    for out, force in ((good, ["--force"]), (good, []), (src / "new.json", ["--force"]),
                       (src / "clips" / "p.json", []), (src, ["--force"])):
        assert main([*base, "--out", str(out), *force]) == 2, out
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out} is inside --src {src}") and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # nothing written, nothing added
    d = tmp_path / "preds"
    d.mkdir()
    assert main([*base, "--out", str(d), "--force"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {d} is a folder; predict writes one JSON file: pass a file path, e.g. {d / 'predictions.json'}\n"


def test_predict_writes_pixel_xyxy_boxes_of_the_original_image(tiny_world, tmp_path):
    """The predictions file holds box2d = x1, y1, x2, y2 in pixels of each original image (not the
    letterboxed input, not normalised, not centre-xywh), checked against Ultralytics' normalised
    xyxy scaled by the image's own size, on two images that are not square (issue 23, item 21).
    The demo's shipped pretrained model finds real objects in the synthetic frames."""
    from PIL import Image
    from ultralytics import YOLO

    weights = Path(__file__).resolve().parent.parent / "bdd_engine" / "models" / "synthpre-w0125.pt"
    src = tmp_path / "src"
    src.mkdir()
    first = sorted((tiny_world / "images/100k/val").glob("*.jpg"))[:2]
    sizes = {"a_wide.jpg": (640, 300), "b_tall.jpg": (300, 520)}
    for f, (n, wh) in zip(first, sizes.items()):
        with Image.open(f) as im:
            im.resize(wh).save(src / n, quality=95)
    pred = tmp_path / "pred.json"
    assert main(["predict", "--profile", "tiny", "--weights", str(weights), "--src", str(src), "--out", str(pred),
                 "--imgsz", "320", "--conf", "0.05", "--set", "device=cpu"]) == 0
    frames = {f["name"]: f for f in bdd.load_frames(pred)}
    results = YOLO(str(weights)).predict([str(src / n) for n in sizes], imgsz=320, conf=0.05, iou=0.7, max_det=300,
                                         batch=16, device="cpu", verbose=False)
    inner = 0
    for (n, (W, H)), r in zip(sizes.items(), results):
        want = (r.boxes.xyxyn.cpu().numpy().astype(float) * [W, H, W, H]).tolist()
        got = [[lb["box2d"][k] for k in ("x1", "y1", "x2", "y2")] for lb in frames[n]["labels"]]
        assert len(got) == len(want) > 0, n
        assert np.allclose(got, want, atol=1e-2), n
        b = np.array(got)
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b >= 0).all() and (b[:, [0, 2]] <= W).all() and (b[:, [1, 3]] <= H).all()
        inner += int(((b[:, 0] > 1) & (b[:, 1] > 1) & (b[:, 2] < W - 1) & (b[:, 3] < H - 1)).sum())
    assert inner > 0  # boxes inside the frame, not only clipped full-frame ones: every coordinate is checked


def test_label_cli_teacher_takes_the_profiles_teacher_weights(folder, yolo, tmp_path, capsys):
    """Without --weights the teacher is the profile's label_teacher_weights; with that null it is refused, naming both."""
    src, _ = folder
    common = ["label", "--profile", "tiny", "--src", str(src), "--labeler", "teacher", "--set", "device=cpu",
              "--set", "label_teacher_imgsz=128", "--set", "label_teacher_conf=0.001", "--set", "label_review=0.001"]
    assert main(common + ["--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "--weights" in err and "label_teacher_weights" in err and not (tmp_path / "refused").exists()
    assert main(common + ["--out", str(tmp_path / "ok"), "--set", f"label_teacher_weights={yolo}"]) == 0, capsys.readouterr().err
    assert bdd.load_frames(tmp_path / "ok" / "labels.json") and (tmp_path / "ok" / "summary.md").exists()
