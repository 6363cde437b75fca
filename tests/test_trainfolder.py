"""`python -m bdd_engine train` (bdd_engine.trainfolder): a labelled folder in BDD, COCO or YOLO
layout is read into the same boxes, split by drive, trained like §4 (tiny: a few frames, 1 epoch,
small imgsz) and leaves an evaluate-ready prediction file; bad input is one line and exit 2."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from bdd_engine import autolabel, bdd, evaluate, trainfolder
from bdd_engine.__main__ import main
from bdd_engine.yolo import export_yolo

TINY_TRAIN = ["--profile", "tiny", "--set", "train_epochs=1", "--set", "train_imgsz=64", "--set", "train_batch=2",
              "--set", "train_nbs=2"]


@pytest.fixture
def labelled(tiny_world, tmp_path):
    """8 frames of 4 drives of the tiny world copied to a folder with their BDD labels.json."""
    frames = bdd.load_frames(tiny_world / "labels" / "det_20" / "det_train.json")
    index = bdd.index_images(tiny_world)
    by_drive: dict[str, list] = {}
    for f in frames:
        if f["name"] in index and f["labels"]:
            by_drive.setdefault(f["name"].split("-")[0], []).append(f)
    picked = [f for fs in list(by_drive.values())[:4] for f in fs[:2]]
    d = tmp_path / "labelled"
    (d / "img").mkdir(parents=True)
    for f in picked:
        shutil.copyfile(index[f["name"]], d / "img" / f["name"])
    bdd.write_bdd_json(picked, d / "labels.json")
    return d, picked


def _key_boxes(frames):
    b = bdd.boxes_table(frames)
    b = b[~b["ignore"] & ~b["crowd"]].sort_values(["name", "category", "x1", "y1"]).reset_index(drop=True)
    return b[["name", "category", "x1", "y1", "x2", "y2"]]


def test_bdd_coco_and_yolo_layouts_read_to_the_same_boxes(labelled, tmp_path):
    d, picked = labelled
    frames, paths, fmt = trainfolder.read_labels(d)
    assert fmt == "bdd" and len(frames) == len(picked) and set(paths) == {f["name"] for f in picked}
    want = _key_boxes(picked)
    coco = tmp_path / "coco"
    coco.mkdir()
    autolabel.export_coco(picked, paths, coco / "instances.json")
    cf, cpaths, cfmt = trainfolder.read_labels(coco / "instances.json", images=d)
    assert cfmt == "coco" and set(cpaths) >= {f["name"] for f in cf}
    pd.testing.assert_frame_equal(_key_boxes(cf), want)
    yolo_dir = tmp_path / "yolo"
    export_yolo({"train": picked}, paths, yolo_dir)
    yf, ypaths, yfmt = trainfolder.read_labels(yolo_dir)
    assert yfmt == "yolo" and sorted(ypaths) == sorted(paths)
    got = _key_boxes(yf)
    assert got[["name", "category"]].equals(want[["name", "category"]])
    assert (got[["x1", "y1", "x2", "y2"]] - want[["x1", "y1", "x2", "y2"]]).abs().max().max() < 0.01  # px


def test_split_is_by_drive_and_deterministic():
    names = [f"{g}-{i:08x}.jpg" for g in ("aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd", "eeeeeeee") for i in range(3)]
    t, rule = trainfolder.group_split(names, 0.2, seed=42)
    assert "drive" in rule and (t.groupby("group")["split"].nunique() == 1).all()
    assert (t["split"] == "val").sum() == 3 and t.equals(trainfolder.group_split(names, 0.2, seed=42)[0])
    other, rule2 = trainfolder.group_split(["a.jpg", "b.jpg", "c-0000001.jpg", "c-0000002.jpg"], 0.5, seed=1)
    assert "file stem" in rule2 and other.groupby("group")["split"].nunique().max() == 1 and other["group"].nunique() == 3
    with pytest.raises(trainfolder.TrainDataError, match="one drive group"):
        trainfolder.group_split(["aaaaaaaa-00000001.jpg", "aaaaaaaa-00000002.jpg"], 0.2, seed=42)


def test_train_command_trains_records_the_split_and_writes_evaluate_ready_predictions(labelled, tmp_path, capsys):
    d, picked = labelled
    out = tmp_path / "model"
    assert main(["train", "--data", str(d), "--out", str(out), *TINY_TRAIN]) == 0, capsys.readouterr().err
    card = json.loads((out / "run_card.json").read_text())
    split = pd.read_csv(out / "split.csv")
    assert sorted(split["name"]) == sorted(f["name"] for f in picked)
    assert (split.groupby("group")["split"].nunique() == 1).all(), "no drive on both sides"
    assert card["split"]["val"] == (split["split"] == "val").sum() >= 1 and card["data"]["format"] == "bdd"
    assert card["epochs"] == 1 and card["config"]["imgsz"] == 64 and card["finished"]
    assert (out / "TRAIN.json").exists() and (out / "runs" / "detector" / "weights").is_dir()
    gt, preds = bdd.load_frames(out / "val_gt.json"), bdd.load_frames(out / "val_predictions.json")
    assert sorted(f["name"] for f in gt) == sorted(split.loc[split["split"] == "val", "name"]) == sorted(f["name"] for f in preds)
    res = evaluate.evaluate(gt, preds, n_boot=0)
    assert 0.0 <= res.AP50 <= 1.0
    assert main(["evaluate", "--gt", str(out / "val_gt.json"), "--pred", str(out / "val_predictions.json")]) == 0
    assert "evaluate --gt" in capsys.readouterr().out


@pytest.mark.parametrize("plant, says", [
    ("missing_image", "have no image"),
    ("unknown_class", "unknown classes 'spaceship'"),
    ("no_boxes", "no box of BDD's 10 classes"),
])
def test_bad_input_is_one_line_and_exit_2_before_anything_is_written(labelled, tmp_path, capsys, plant, says):
    d, picked = labelled
    frames = json.loads((d / "labels.json").read_text())
    if plant == "missing_image":
        (d / "img" / frames[0]["name"]).unlink()
    elif plant == "unknown_class":
        frames[1]["labels"][0]["category"] = "spaceship"
    else:
        for f in frames:
            f["labels"] = [lb for lb in f["labels"] if lb["category"] == "lane"]
    (d / "labels.json").write_text(json.dumps(frames))
    out = tmp_path / "model"
    assert main(["train", "--data", str(d), "--out", str(out), *TINY_TRAIN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0] and str(d) in err[0], err
    assert not out.exists()
