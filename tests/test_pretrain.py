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
