"""Issue 29: planted label errors in the synthetic world, the label-issues stage, its command."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from bdd_engine import synth
from bdd_engine.config import load_config
from bdd_engine.geometry import box_iou


@pytest.fixture(scope="module")
def specs():
    cfg = load_config("tiny", {"synth_n_train": 30, "synth_n_val": 0, "synth_share_10k": 0.0}, env=False)
    return synth.plan_world(cfg)


def _digest(frames):
    h = hashlib.sha256()
    for img, labels in frames:
        h.update(img.tobytes())
        h.update(json.dumps(labels, sort_keys=True).encode())
    return h.hexdigest()[:16]


def test_clean_world_is_unchanged_and_plants_nothing(specs):
    """Noise 0 draws no extra random number: the first frames render exactly as before issue 29
    (digest pinned from the pre-change code), and nothing is recorded."""
    planted: list = []
    frames = [synth.render_frame(s, planted) for s in specs[:4]]
    assert planted == []
    assert _digest(frames) == "9d2e234c981f4ee4"


def test_every_planted_kind_is_recorded_and_true(specs):
    planted: list = []
    out = {s.name: (s, synth.render_frame(replace(s, label_noise=0.3), planted)[1]) for s in specs[:12]}
    kinds = {e["kind"] for e in planted}
    assert kinds == set(synth.NOISE_KINDS), kinds
    for e in planted:
        spec, labels = out[e["name"]]
        clean = synth.render_frame(spec)[1]  # the same frame without noise: the truth
        by_id = {lb["id"]: lb for lb in labels}
        clean_boxes = np.array([synth._xyxy(lb) for lb in clean])
        if e["kind"] == "dropped":
            assert e["label_id"] is None
            assert box_iou(np.array([e["true_box"]]), np.array([synth._xyxy(lb) for lb in labels]).reshape(-1, 4),
                           pixel_shift=0).max(initial=0) < 0.99, "a dropped box is still in the labels"
            continue
        lb = by_id[e["label_id"]]
        assert synth._xyxy(lb) == e["box"] and lb["category"] == e["category"]
        best = box_iou(np.array([e["box"]]), clean_boxes, pixel_shift=0).max(initial=0)
        if e["kind"] == "swapped":
            assert e["category"] == synth.SWAP[e["true_category"]] != e["true_category"] and best > 0.99
        elif e["kind"] == "shifted":
            assert e["category"] == e["true_category"] and best < 0.999
        else:  # spurious: overlaps no true box
            assert e["true_box"] is None and best == 0.0


def test_world_writes_the_sidecar_only_with_noise(tmp_path):
    base = {"synth_n_train": 6, "synth_n_val": 2, "synth_share_10k": 0.0}
    clean = synth.generate(load_config("tiny", base, env=False), tmp_path / "clean", workers=1)
    noisy = synth.generate(load_config("tiny", {**base, "synth_label_noise": 0.3}, env=False), tmp_path / "noisy", workers=1)
    assert not (clean / synth.PLANTED_FILE).exists()
    side = json.loads((noisy / synth.PLANTED_FILE).read_text())
    assert side["label_noise"] == 0.3 and side["errors"]
    names = {f["name"] for s in ("train", "val") for f in json.loads((noisy / f"labels/det_20/det_{s}.json").read_text())}
    assert {e["name"] for e in side["errors"]} <= names
