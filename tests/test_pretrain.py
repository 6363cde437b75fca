"""The demo's pretrained init: the committed file is the one its run card describes, it was
trained on a world disjoint from the demo's, and that world has the stated condition mix."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bdd_engine import bdd, pretrain, synth
from bdd_engine.checkpoint import sha256_file
from bdd_engine.config import load_config
from bdd_engine.env import PROJECT_ROOT


def _init_path():
    return PROJECT_ROOT / load_config("demo", env=False).train_init_weights


def test_committed_init_matches_its_run_card():
    pt = _init_path()
    card = json.loads(pt.with_suffix(".json").read_text())
    assert pt.stat().st_size == card["bytes"] <= pretrain.MAX_SHIPPED_BYTES
    assert sha256_file(pt) == card["sha256"], f"{pt} is not the file its run card recorded; rebuild: {card['command']}"
    assert card["command"] == "python -m bdd_engine pretrain" and "SYNTHETIC" in card["what"]
    assert card["what"] == pretrain.WHAT["pretrain"]
    pre = load_config("pretrain", env=False)
    assert card["world"]["world_hash"] == synth.world_hash(pre), "the run card is from another pretrain world"
    assert [r["epoch"] for r in card["learning_curve"]] == list(range(1, pre.train_epochs + 1))


def test_pretrain_world_shares_no_frame_or_drive_with_the_demo_world():
    demo, pre = load_config("demo", env=False), load_config("pretrain", env=False)
    a, b = synth.plan_world(demo), synth.plan_world(pre)
    assert not {s.name for s in a} & {s.name for s in b}
    groups = lambda specs: {bdd.group_of(bdd.video_of(s.name, {})) for s in specs}  # noqa: E731
    assert not groups(a) & groups(b)


def test_pretrain_world_has_the_stated_condition_mix():
    pre = load_config("pretrain", env=False)
    specs = synth.plan_world(pre)
    tod = Counter(s.timeofday for s in specs)
    share = {k: v / len(specs) for k, v in tod.items()}
    want = {k: v / sum(pre.synth_timeofday_mix.values()) for k, v in pre.synth_timeofday_mix.items()}
    for k, p in want.items():  # drives of 4 frames share conditions: a loose binomial band
        assert abs(share.get(k, 0.0) - p) < 0.04, (k, share, want)
    assert share["daytime"] > 0.8 and Counter(s.weather for s in specs)["clear"] / len(specs) > 0.5


def test_a_mix_with_a_value_bdd_does_not_use_is_refused():
    cfg = load_config("pretrain", {"synth_weather_mix": {"clear": 1, "sunny": 2}}, env=False)
    with pytest.raises(ValueError, match="synth_weather_mix.*unknown: \\['sunny'\\]"):
        synth.plan_world(cfg)


# ----------------------------------------------------------------------------- the demo's teacher labeler
def _teacher_path():
    return PROJECT_ROOT / load_config("demo", env=False).label_teacher_weights


def test_committed_teacher_matches_its_run_card():
    """The shipped teacher is the file its run card describes, built by `pretrain --profile teacher`
    on the teacher world, with the YOLOv8n-scale model (larger than the student)."""
    pt = _teacher_path()
    card = json.loads(pt.with_suffix(".json").read_text())
    assert pt.stat().st_size == card["bytes"] <= pretrain.MAX_SHIPPED_BYTES
    assert sha256_file(pt) == card["sha256"], f"{pt} is not the file its run card recorded; rebuild: {card['command']}"
    assert card["command"] == f"python -m bdd_engine pretrain --profile teacher --name {pt.stem}"
    assert card["what"] == pretrain.WHAT["teacher"] and "SYNTHETIC" in card["what"]
    teacher, demo = load_config("teacher", env=False), load_config("demo", env=False)
    assert card["world"]["world_hash"] == synth.world_hash(teacher), "the run card is from another teacher world"
    assert card["model"] == teacher.train_model == "yolov8n.yaml" != demo.train_model
    assert [r["epoch"] for r in card["learning_curve"]] == list(range(1, teacher.train_epochs + 1))


def test_teacher_world_shares_no_frame_or_drive_with_the_demo_or_pretrain_world():
    worlds = {p: synth.plan_world(load_config(p, env=False)) for p in ("demo", "pretrain", "teacher")}
    groups = lambda specs: {bdd.group_of(bdd.video_of(s.name, {})) for s in specs}  # noqa: E731
    t = worlds["teacher"]
    for other in ("demo", "pretrain"):
        assert not {s.name for s in t} & {s.name for s in worlds[other]}, other
        assert not groups(t) & groups(worlds[other]), other
    assert load_config("teacher", env=False).data_root not in {load_config(p, env=False).data_root for p in ("demo", "pretrain")}


def test_teacher_world_covers_every_condition_roughly_uniformly():
    """A foundation model's data covers every condition: every weather x timeofday cell of the
    stated uniform mix is present, none far from its 1/18 share (drives of 4 frames share conditions)."""
    teacher = load_config("teacher", env=False)
    specs = synth.plan_world(teacher)
    cells = Counter((s.weather, s.timeofday) for s in specs)
    want = {(w, t) for w in teacher.synth_weather_mix for t in teacher.synth_timeofday_mix}
    assert set(cells) == want and len(want) == 18
    share = {k: v / len(specs) for k, v in cells.items()}
    assert all(0.5 / 18 < p < 1.5 / 18 for p in share.values()), share


def test_pretrain_command_names_the_profile_and_the_model():
    assert pretrain.command_for("pretrain", "synthpre-w0125", "synthpre-w0125") == "python -m bdd_engine pretrain"
    assert (pretrain.command_for("teacher", "synthteacher-w025", "synthpre-w0125")
            == "python -m bdd_engine pretrain --profile teacher --name synthteacher-w025")
