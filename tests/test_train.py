"""Tiny real Ultralytics training: fresh no-op, interrupted resume, one-pass predict → evaluate;
the profile → TrainSpec mapping keeps every existing fingerprint; the one device resolver."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bdd_engine import bdd
from bdd_engine import train as T
from bdd_engine.config import load_config
from bdd_engine.evaluate import evaluate
from bdd_engine.flywheel import train_spec
from bdd_engine.train import filter_conf, predict, resolve_model, save_predictions, train

W, H = 128, 96


class Interrupt(Exception):
    pass


def _make_dataset(root: Path, n: int = 12, seed: int = 0) -> tuple[Path, list[dict]]:
    """Coloured boxes on grey frames as a YOLO dataset (w = x2 - x1, as yolo.export_yolo)
    and the matching BDD GT frames."""
    rng = np.random.default_rng(seed)
    frames = []
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for i in range(n):
        split = "train" if i < n - 4 else "val"
        img = np.full((H, W, 3), 110, np.uint8)
        lines, labels = [], []
        for j in range(int(rng.integers(1, 4))):
            k = int(rng.choice([2, 0]))            # car (red, wide) or pedestrian (blue, tall)
            w, h = (int(rng.integers(24, 40)), int(rng.integers(14, 22))) if k == 2 else (int(rng.integers(8, 12)), int(rng.integers(22, 34)))
            x1, y1 = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            img[y1:y1 + h, x1:x1 + w] = (220, 30, 30) if k == 2 else (30, 30, 220)
            lines.append(f"{k} {(x1 + w / 2) / W:.6f} {(y1 + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}")
            labels.append({"id": str(j), "category": bdd.CLASSES[k], "attributes": {"crowd": False},
                           "box2d": {"x1": float(x1), "y1": float(y1), "x2": float(x1 + w), "y2": float(y1 + h)}})
        name = f"f{i:03d}-{seed}.jpg"
        Image.fromarray(img).save(root / "images" / split / name, quality=95)
        (root / "labels" / split / name.replace(".jpg", ".txt")).write_text("\n".join(lines) + "\n")
        frames.append({"name": name, "attributes": {"weather": "clear", "timeofday": "daytime", "scene": "highway"},
                       "labels": labels, "split": split})
    names = "\n".join(f"  {i}: {c}" for i, c in enumerate(bdd.CLASSES))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return root / "data.yaml", frames


@pytest.fixture()
def spec():
    return train_spec(load_config("tiny", overrides={"train_epochs": 2, "train_imgsz": 64, "train_batch": 4,
                                                     "train_nbs": 4, "train_warmup_epochs": 0, "device": "cpu"}))


def test_train_fresh_resume_and_predict(tmp_path, spec):
    data_yaml, frames = _make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    spec = replace(spec, resume=True)   # the full profile's train_resume: an interrupted run resumes

    # 1) interrupted after the first epoch (last.pt saved, run unfinished)
    def stop(trainer):
        if trainer.epoch == 0:
            raise Interrupt()
    t0 = time.time()
    with pytest.raises(Interrupt):
        train(spec, data_yaml, runs, name="iter0", callbacks={"on_fit_epoch_end": stop})
    card = json.loads((runs / "iter0" / "run_card.json").read_text())
    assert card["finished"] is False and (runs / "iter0" / "weights" / "last.pt").is_file()

    # 2) same call again → Ultralytics resume, finishes epoch 2
    w = train(spec, data_yaml, runs, name="iter0")
    card = json.loads((runs / "iter0" / "run_card.json").read_text())
    assert card["finished"] and card["resumed"] and card["epochs"] == 2
    assert w == runs / "iter0" / "weights" / "last.pt" and w.is_file()
    res = pd.read_csv(runs / "iter0" / "results.csv")
    assert len(res) == 2                                # epoch 1 from the first call, epoch 2 resumed
    assert card["device"] == "cpu" and card["git_commit"] and card["data_hash"]
    assert card["config"]["nbs"] == 4 and card["config"]["val"] is False and card["config"]["seed"] == 42
    assert "metrics/mAP50(B)" in card["final_metrics"]
    assert time.time() - t0 < 120

    # 3) unchanged config and data → no-op (same file, untouched)
    mtime = w.stat().st_mtime_ns
    t1 = time.time()
    assert train(spec, data_yaml, runs, name="iter0") == w
    assert w.stat().st_mtime_ns == mtime and time.time() - t1 < 5

    # 4) one pass of predictions → BDD frames the evaluator accepts (JSON and parquet alike)
    val = [f for f in frames if f["split"] == "val"]
    paths = [tmp_path / "data" / "images" / "val" / f["name"] for f in val]
    preds = predict(w, paths, conf=0.001, batch=3, device="cpu", progress=False)   # imgsz from the checkpoint
    assert preds == predict(w, paths, conf=0.001, imgsz=64, batch=4, device="cpu", progress=False)
    # chunked Ultralytics calls (1 batch of 2 per call: one frame per chunk when odd) return every frame once, in order
    import bdd_engine.train as train_mod
    chunks = []
    real_predict = __import__("ultralytics").YOLO.predict
    def counting(self, source, **kw):  # noqa: E306
        chunks.append(len(source))
        return real_predict(self, source, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "PREDICT_CHUNK_BATCHES", 1)
        mp.setattr(__import__("ultralytics").YOLO, "predict", counting)
        assert predict(w, paths, conf=0.001, batch=2, device="cpu", progress=False) == \
            predict(w, paths, conf=0.001, batch=len(paths), device="cpu", progress=False)
    n = len(paths)
    assert chunks == [2] * (n // 2) + [n % 2] * (n % 2) + [n] and n >= 3
    assert preds != predict(w, paths, conf=0.001, imgsz=128, batch=4, device="cpu", progress=False)
    assert [p["name"] for p in preds] == [f["name"] for f in val]
    lbs = [lb for p in preds for lb in p["labels"]]
    assert lbs and all(lb["category"] in bdd.CLASSES and 0.001 <= lb["score"] <= 1 for lb in lbs)
    assert all(0 <= lb["box2d"]["x1"] <= lb["box2d"]["x2"] <= W + 1 for lb in lbs)   # original-image pixels
    j, pq = save_predictions(preds, tmp_path / "pred.json", tmp_path / "pred.parquet")
    r1 = evaluate(val, bdd.load_frames(j), n_boot=0)
    r2 = evaluate(val, pd.read_parquet(pq), n_boot=0)
    assert 0 <= r1.AP50 <= 1 and r1.AP50 == pytest.approx(r2.AP50, abs=1e-12)
    assert sum(len(f["labels"]) for f in filter_conf(preds, 0.5)) <= len(lbs)


def _model_weights(pt: Path) -> dict:
    import torch

    ck = torch.load(pt, map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in (ck.get("ema") or ck["model"]).state_dict().items()}


def test_interrupted_run_restarts_from_epoch_0_when_resume_is_off(tmp_path, spec):
    """tiny/demo (train_resume: false): a run killed mid-way leaves a resumable last.pt and an
    unfinished card; the rerun throws it away, trains from epoch 0, records that, and gives the
    weights an uninterrupted run gives. A finished run that had been resumed is retrained too."""
    assert spec.resume is False and load_config("demo", env=False).train_resume is False
    assert load_config("full", env=False).train_resume is True
    data_yaml, _ = _make_dataset(tmp_path / "data", n=10, seed=2)
    clean = train(spec, data_yaml, tmp_path / "clean", name="iter0")
    runs = tmp_path / "runs"

    def stop(trainer):
        if trainer.epoch == 0:
            raise Interrupt()
    with pytest.raises(Interrupt):
        train(spec, data_yaml, runs, name="iter0", callbacks={"on_fit_epoch_end": stop})
    assert T.checkpoint_state(runs / "iter0" / "weights" / "last.pt") == "resumable"   # what a kill leaves
    w = train(spec, data_yaml, runs, name="iter0")
    card = json.loads((runs / "iter0" / "run_card.json").read_text())
    assert card["finished"] and card["resumed"] is False and card["restarts_after_interrupt"] == 1
    assert len(pd.read_csv(runs / "iter0" / "results.csv")) == 2          # both epochs of the new run, none kept
    a, b = _model_weights(w), _model_weights(clean)
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert json.loads((tmp_path / "clean" / "iter0" / "run_card.json").read_text())["restarts_after_interrupt"] == 0

    # a run resumed under train_resume: true is not reused once resuming is off: trained again from epoch 0
    card["resumed"] = True
    (runs / "iter0" / "run_card.json").write_text(json.dumps(card))
    assert train(replace(spec, resume=True), data_yaml, runs, name="iter0") == w     # kept while resuming is on
    w2 = train(spec, data_yaml, runs, name="iter0")
    card = json.loads((runs / "iter0" / "run_card.json").read_text())
    assert card["finished"] and card["resumed"] is False and card["restarts_after_interrupt"] == 2
    a = _model_weights(w2)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_changed_config_retrains(tmp_path, spec):
    data_yaml, _ = _make_dataset(tmp_path / "data", n=8, seed=1)
    spec1 = replace(spec, epochs=1)
    w = train(spec1, data_yaml, tmp_path / "runs", name="a")
    fp1 = json.loads((tmp_path / "runs" / "a" / "run_card.json").read_text())["fingerprint"]
    train(replace(spec1, lr0=0.01), data_yaml, tmp_path / "runs", name="a")
    card = json.loads((tmp_path / "runs" / "a" / "run_card.json").read_text())
    assert card["fingerprint"] != fp1 and card["finished"] and not card["resumed"] and w.is_file()


def test_missing_weights_names_setup(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"setup\.sh --weights"):
        resolve_model("yolov8m.pt", None)
    with pytest.raises(FileNotFoundError, match=r"setup\.sh --weights"):
        resolve_model("yolov8n-w0125.yaml", tmp_path / "nope.pt")
    src, pretrained = resolve_model("yolov8n-w0125.yaml")
    assert Path(src).is_file() and not pretrained      # shipped slim yaml, from scratch


# Fingerprints the profiles gave before TrainSpec (train_args(cfg) of the config itself), for a
# fixed data hash and the shipped slim yaml: every existing run stays fresh. demo's first value
# changed once, on purpose, with train_epochs 14 -> 10 (issue 17); its 3-epoch value did not.
FINGERPRINTS = {"tiny": ("d2c8417f22252b16", "649b50e2775e965b"), "demo": ("5d08d08c95c9f7a2", "b15e4f7b42e31d04"),
                "full": ("f99015a7563ee56c", "f962f5d80d999800")}


@pytest.mark.parametrize("profile", sorted(FINGERPRINTS))
def test_train_spec_keeps_every_profile_fingerprint(profile):
    cfg = load_config(profile, env=False)
    spec = train_spec(cfg)
    model = str(T.MODELS_DIR / "yolov8n-w0125.yaml")
    assert (T.fingerprint(spec, "data123", model, None),
            T.fingerprint(replace(spec, epochs=3), "data123", model, None)) == FINGERPRINTS[profile]
    args = spec.ultralytics_args()
    assert args == {"imgsz": cfg.train_imgsz, "batch": cfg.train_batch, "nbs": cfg.train_nbs,
                    "optimizer": cfg.train_optimizer, "lr0": cfg.train_lr0, "cos_lr": cfg.train_cos_lr,
                    "warmup_epochs": cfg.train_warmup_epochs, "close_mosaic": cfg.train_close_mosaic,
                    "mosaic": cfg.train_mosaic, "val": cfg.train_val, "patience": 100, "epochs": cfg.train_epochs,
                    "seed": cfg.seed, "deterministic": True, "workers": cfg.workers, "plots": cfg.train_plots,
                    "cache": False if cfg.train_cache == "off" else cfg.train_cache}
    assert (spec.model, spec.init_weights, spec.device) == (cfg.train_model, cfg.train_init_weights, cfg.device)
    # device and workers never change the weights, so never the fingerprint
    assert T.fingerprint(replace(spec, device="0", workers=7), "data123", model, None) == FINGERPRINTS[profile][0]
    # nor does the image cache; the arithmetic (bf16 autocast) does
    assert T.fingerprint(replace(spec, cache="disk"), "data123", model, None) == FINGERPRINTS[profile][0]
    assert T.fingerprint(spec, "data123", model, None, "bf16") != FINGERPRINTS[profile][0]


def test_precision_follows_device_and_cpu(monkeypatch):
    spec = train_spec(load_config("demo", env=False))
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: True)
    assert spec.precision("cpu") == "bf16" and spec.precision("0") == "fp32"  # GPU: Ultralytics' own AMP
    assert replace(spec, cpu_bf16=False).precision("cpu") == "fp32"
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: False)  # a CPU without native bf16 stays fp32
    assert spec.precision("cpu") == "fp32"


def test_cpu_bf16_autocast_swaps_and_restores():
    import torch
    import ultralytics.engine.trainer as ul_trainer

    original = ul_trainer.autocast
    with T.cpu_bf16_autocast(True):
        with ul_trainer.autocast(False, device="cpu"):
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert ul_trainer.autocast is original
    with T.cpu_bf16_autocast(False):
        assert ul_trainer.autocast is original


def test_one_device_resolver(monkeypatch):
    import torch

    assert T.resolve_device("cpu") == "cpu" and T.resolve_device("1") == "1"
    assert T.torch_device("0") == "cuda:0" and T.torch_device("1,0") == "cuda:1" and T.torch_device("mps") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert T.resolve_device("auto") == "cpu" and T.torch_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert T.resolve_device("auto") == "0" and T.torch_device("auto") == "cuda:0"
