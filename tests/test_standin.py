"""Stand-in weights (bdd_engine.standin): layout, marker, refusal, BERT-layout vocab, and
(slow) all five full-size models built, counted and loaded by the package's own loaders."""

from __future__ import annotations

import json
import time

import pytest

from bdd_engine import standin, weights
from bdd_engine.__main__ import main


def test_targets_are_the_registry_layout(tmp_path):
    assert set(standin.MODELS) == set(standin.PUBLISHED) == set(standin.BUILDERS)
    for name in standin.MODELS:
        assert standin.target(tmp_path, name) == tmp_path / weights.REGISTRY[name][0]
        assert standin.target(weights.WEIGHTS_DIR.parent / "weights", name).relative_to(
            weights.WEIGHTS_DIR.parent / "weights") == weights.path(name).relative_to(weights.WEIGHTS_DIR)


def test_bert_vocab_follows_bert_layout():
    v = standin.bert_vocab()
    assert len(v) == 30522 and len(set(v.values())) == 30522 and sorted(v.values()) == list(range(30522))
    assert (v["[PAD]"], v["[UNK]"], v["[CLS]"], v["[SEP]"], v["[MASK]"]) == (0, 100, 101, 102, 103)
    assert (v["!"], v["."], v["?"], v["a"], v["~"]) == (999, 1012, 1029, 1037, 1066)  # as in bert-base-uncased
    tok = standin.bert_tokenizer()
    ids = tok("Car . traffic light . rider .")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102 and ids.count(1012) == 3 and 100 not in ids
    assert 100 not in tok("zebra crossing")["input_ids"]  # unknown words fall back to letters, not [UNK]


def test_count_tolerance():
    assert standin.check_count("yolov8m", 25_902_640) < 0.01
    with pytest.raises(AssertionError, match="yolov8m"):
        standin.check_count("yolov8m", 25_000_000)


def test_dinov2_build_marker_loader_and_refusal(tmp_path):
    from bdd_engine.embed import get_embedder

    out = tmp_path / "w"
    t0 = time.time()
    assert main(["stand-in-weights", "--out", str(out), "--only", "dinov2"]) == 0
    dest = out / weights.REGISTRY["dinov2"][0]
    assert (dest / "config.json").is_file() and (dest / "preprocessor_config.json").is_file()
    marker = json.loads((out / standin.MARKER).read_text())
    entry = marker["files"][weights.REGISTRY["dinov2"][0]]
    assert marker["stand_in"] is True and marker["random"] is True and "RANDOM" in marker["note"]
    assert entry["stand_in"] and entry["random"] and entry["published_params"] == 22.1e6
    assert abs(entry["params"] - 22.1e6) / 22.1e6 < standin.TOLERANCE and "dinov2-small" in entry["published_source"]
    emb = get_embedder("dinov2", device="cpu", imgsz=56, clip_arch="ViT-B-32", clip_weights=None, dinov2_dir=dest)
    assert emb.dim == 384
    # a stand-in it wrote is rebuilt; a file it did not write is refused, before anything is built
    assert main(["stand-in-weights", "--out", str(out), "--only", "dinov2"]) == 0
    real = out / weights.REGISTRY["yolov8m"][0]
    real.write_bytes(b"real weights")
    assert main(["stand-in-weights", "--out", str(out), "--only", "yolov8m", "--only", "dinov2"]) == 2
    assert real.read_bytes() == b"real weights"
    assert weights.REGISTRY["yolov8m"][0] not in json.loads((out / standin.MARKER).read_text())["files"]
    assert time.time() - t0 < 60


def test_if_missing_builds_only_what_is_not_complete_and_provenance_finds_it(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["stand-in-weights", "--out", str(out), "--only", "dinov2", "--if-missing"]) == 0
    dest = out / weights.REGISTRY["dinov2"][0]
    assert standin.missing(out) == ["yolov8m", "clip", "grounding-dino", "sam2"]
    stamp = (dest / "config.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["stand-in-weights", "--out", str(out), "--only", "dinov2", "--if-missing"]) == 0
    assert "all present" in capsys.readouterr().out and (dest / "config.json").stat().st_mtime_ns == stamp
    # the marker names what provenance reports; real weights beside it (not listed) are not stand-ins
    assert weights.stand_in_entry(dest)["random"] is True
    (out / "yolov8m.pt").write_bytes(b"real")
    assert weights.stand_in_entry(out / "yolov8m.pt") is None and weights.stand_in_entry(tmp_path / "x.pt") is None
    assert "yolov8m" in standin.missing(out)  # present but not listed: a build would refuse it, not skip it


def test_out_is_required(capsys):
    with pytest.raises(SystemExit):
        main(["stand-in-weights"])
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow
def test_all_five_full_size_and_loaded_by_the_package(tmp_path):
    import torch
    from ultralytics import YOLO

    from bdd_engine.autolabel import make_labeler
    from bdd_engine.embed import get_embedder

    entries = standin.build(tmp_path)
    by_model = {e["model"]: e for e in entries.values()}
    assert set(by_model) == set(standin.MODELS)
    for name, e in by_model.items():
        assert abs(e["params"] - standin.PUBLISHED[name][0]) / standin.PUBLISHED[name][0] <= standin.TOLERANCE, name
        assert standin.target(tmp_path, name).exists()
    print({n: e["params"] for n, e in by_model.items()})

    yolo = YOLO(str(standin.target(tmp_path, "yolov8m")))
    assert len(yolo.names) == 80 and yolo.names[0] == "person"
    assert sum(p.numel() for p in yolo.model.parameters()) == by_model["yolov8m"]["params"]

    clip = get_embedder("clip", device="cpu", imgsz=224, clip_arch="ViT-B-32",
                        clip_weights=standin.target(tmp_path, "clip"), dinov2_dir=None)
    assert clip.dim == 512
    dino = get_embedder("dinov2", device="cpu", imgsz=224, clip_arch="ViT-B-32", clip_weights=None,
                        dinov2_dir=standin.target(tmp_path, "dinov2"))
    assert dino.dim == 384

    lab = make_labeler("gsam2", gdino_dir=standin.target(tmp_path, "grounding-dino"),
                       sam_dir=standin.target(tmp_path, "sam2"), device="cpu")
    assert sum(p.numel() for p in lab.gd_model.parameters()) == by_model["grounding-dino"]["params"]
    assert lab.gd_proc.tokenizer.vocab_size == 30522
    # Sam2Model (the image path) takes every one of its tensors from the sam2_video checkpoint: none re-initialised
    from safetensors.torch import load_file

    saved = {}
    for f in sorted(standin.target(tmp_path, "sam2").glob("*.safetensors")):
        saved.update(load_file(f))
    sd = lab.sam_model.state_dict()
    missing = [k for k, t in sd.items() if k not in saved or not torch.equal(saved[k], t)]
    assert not missing, missing[:5]
    assert lab.sam_model.config.vision_config.backbone_config.blocks_per_stage == [1, 2, 7, 2]
