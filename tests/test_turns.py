"""Flywheel turns and the case study's new parts, without training: the turn dimension of
checkpoints (folders, freshness across turns, hashes), the data-safety refusal of a turn
folder we did not make, one learning-curve point per turn, the config table, selection by
profile, stage time/disk, provenance and the at-scale arithmetic. The 2-turn end-to-end run
(imported reviewed labels reaching turn 2's training set) is in test_notebook.py."""

from __future__ import annotations

import json

import matplotlib
import pandas as pd
import pytest

from bdd_engine import artifacts, casestudy, experiment, figures, train
from bdd_engine import flywheel as fw
from bdd_engine.checkpoint import FolderRefused, Section, status
from bdd_engine.config import load_config
from bdd_engine.env import PROJECT_ROOT

from conftest import make_cfg


def _write(sec: Section, counts: dict | None = None) -> None:
    with sec.writer() as w:
        w.write_json("x.json", {"n": sec.number, "turn": sec.turn})
        w.counts.update(counts or {})


def test_turn_sections_live_in_their_own_folder_and_go_stale_with_the_previous_turn(tiny_world, tmp_path):
    cfg = make_cfg(tiny_world, tmp_path / "out", flywheel_turns=2)
    for n in range(1, 9):
        _write(Section(cfg, n))
    for n in (5, 6, 7, 8):
        _write(Section(cfg, n, 2))
    s7 = Section(cfg, 7, 2)
    assert s7.dir == cfg.out / "turn2" / "07_autolabel_retrain" and s7.key == "turn2/07_autolabel_retrain"
    assert Section(cfg, 7).dir == cfg.out / "07_autolabel_retrain"  # turn 1: unchanged layout
    man = s7.manifest()
    assert man["turn"] == 2 and set(man["upstream"]) == {"03_pools", "04_train", "turn2/06_mine", "07_autolabel_retrain",
                                                         "08_delta"}
    assert list(man["artifacts"]) == ["turn2/07_autolabel_retrain/x.json"]
    st = status(cfg)
    assert len(st) == 12 and st["fresh"].all() and st["folder"].tolist()[-1] == "turn2/08_delta"
    _write(Section(cfg, 8), {"recomputed": 1})  # turn 1's §8 changed: every turn-2 section is stale, turn 1 is not
    st = status(cfg).set_index("folder")
    assert st.loc[[f for f in st.index if not f.startswith("turn2")], "fresh"].all()
    assert st.loc["turn2/05_eval_iter0", "reason"] == "upstream 08_delta changed"
    assert st.loc["turn2/06_mine", "reason"] == "upstream turn2/05_eval_iter0 is stale"
    assert st.loc["turn2/07_autolabel_retrain", "reason"] == "upstream turn2/06_mine is stale"
    with pytest.raises(ValueError, match="runs once"):
        Section(cfg, 3, 2)


def test_reviewed_labels_key_changes_only_the_turns_that_read_it(tiny_world, tmp_path):
    base = load_config("tiny", env=False)
    one = load_config("tiny", {"flywheel_reviewed": ["a"]}, env=False)
    two = load_config("tiny", {"flywheel_reviewed": ["a", "b"], "flywheel_turns": 3}, env=False)
    for n in range(1, 9):  # turn 1 never reads the turn keys
        assert base.section_hash(n) == one.section_hash(n) == two.section_hash(n)
    assert base.hash() == two.hash()
    assert base.section_hash(7, 2) != one.section_hash(7, 2) == two.section_hash(7, 2)  # turn 2 reads entry 0 only
    assert one.section_hash(7, 3) != two.section_hash(7, 3)
    assert base.section_hash(6, 2) == two.section_hash(6, 2) != base.section_hash(6)


def test_a_turn_folder_we_did_not_make_is_refused(tiny_world, tmp_path):
    cfg = make_cfg(tiny_world, tmp_path / "out", flywheel_turns=2)
    mine = cfg.out / "turn2"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("a user's file")
    with pytest.raises(FolderRefused, match="was not created by bdd_engine.flywheel"):
        fw.needs_run(Section(cfg, 5, 2))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    fw.release_lock(cfg.out)


def test_start_weights_follow_the_previous_turns_registry(tmp_path):
    out = tmp_path / "out"
    (out / "04_train").mkdir(parents=True)
    (out / "04_train" / "weights.json").write_text(json.dumps({"weights": "runs/iter0/weights/last.pt"}))
    (out / "runs").mkdir()
    (out / "runs" / "registry.json").write_text(json.dumps({"promoted": "iter1_s43", "weights": "runs/iter1_s43/weights/best.pt"}))
    (out / "turn2" / "runs").mkdir(parents=True)
    (out / "turn2" / "runs" / "registry.json").write_text(json.dumps({"promoted": "iter0",
                                                                      "weights": "runs/iter1_s43/weights/best.pt"}))
    assert artifacts.start_weights(out, 1) == out / "runs/iter0/weights/last.pt"
    assert artifacts.start_weights(out, 2) == out / "runs/iter1_s43/weights/best.pt"
    assert artifacts.start_weights(out, 3) == out / "runs/iter1_s43/weights/best.pt"  # turn 2 kept its incumbent


def _headline(worst, i0, i1, rnd, o0, o1, contrast):
    return {"worst_slice": worst, "iter0": i0, "iter1": i1, "random_delta": rnd, "overall_iter0": o0, "overall_iter1": o1,
            "contrast_iter1_random": None if contrast is None else {"delta": contrast, "ci": [contrast - 0.1, contrast + 0.1]}}


def _head(rnd_overall):
    return pd.DataFrame({"slice": ["s", "overall (all eval frames)"], "random_delta": [0.0, rnd_overall]})


def test_learning_curve_has_one_point_per_turn():
    pts = [experiment.turn_point(1, _headline("fog | night | highway", 0.30, 0.34, -0.02, 0.50, 0.51, 0.05), _head(-0.01),
                                 {"promoted": "iter1_s42"}),
           experiment.turn_point(2, _headline("rain | night | city street", 0.28, 0.29, None, 0.51, 0.52, None),
                                 pd.DataFrame({"slice": ["overall (all eval frames)"]}), {"promoted": "iter0"})]
    assert [p["turn"] for p in pts] == [1, 2]
    assert pts[0]["random_worst_AP50"] == pytest.approx(0.28) and pts[0]["random_overall_AP50"] == pytest.approx(0.49)
    assert pts[1]["random_worst_AP50"] is None and pts[1]["random_overall_AP50"] is None
    matplotlib.use("Agg")
    fig = figures.learning_curve(pts, synthetic=True)
    worst_ax, overall_ax = fig.axes
    iter1 = [ln for ln in worst_ax.get_lines() if ln.get_color() == "tab:blue"]
    rnd = [ln for ln in worst_ax.get_lines() if ln.get_color() == "tab:orange"]
    assert len(iter1) == 2 and len(rnd) == 1, "one iter1 segment per turn; no random segment where none ran"
    assert [list(ln.get_xdata()) for ln in iter1] == [[0, 1], [1, 2]]
    assert [list(ln.get_ydata()) for ln in iter1] == [[0.30, 0.34], [0.28, 0.29]]  # turn 2 starts at its own level
    assert list(overall_ax.get_lines()[-1].get_ydata()) == [0.51, 0.52]
    assert "SYNTHETIC" in fig._suptitle.get_text()
    figures.close_all()


class _Res:
    def __init__(self, ap, ap50, car, ped, n_ped=5):
        self.AP, self.AP50 = ap, ap50
        self.per_class = pd.DataFrame({"recall50": [car, ped], "n_gt": [10, n_ped]}, index=["car", "pedestrian"])


def test_config_table_has_each_runs_settings_and_scores():
    runs = pd.DataFrame({"run": ["iter0", "iter1"], "arm": ["iter0", "iter1"], "seed": [42, 42], "data_hash": ["a", "b"]})
    cards = {"iter0": {"model": "/x/yolov8n-w0125.yaml", "init_weights": "bdd_engine/models/synthpre-w0125.pt",
                       "config": {"imgsz": 320, "batch": 16, "nbs": 16, "optimizer": "AdamW", "lr0": 0.002, "epochs": 10}},
             "iter1": {"model": "/x/yolov8n-w0125.yaml", "init_weights": "/o/turn2/runs/iter1_s42/weights/best.pt",
                       "config": {"imgsz": 320, "epochs": 2}}}
    t = experiment.config_table(runs, cards, {"iter0": _Res(0.12, 0.31, 0.6, 0.2), "iter1": _Res(0.13, 0.33, 0.7, 0.0, 0)})
    assert t["init"].tolist() == ["synthpre-w0125.pt", "turn2/iter1_s42"]
    assert t["epochs"].tolist() == [10, 2] and pd.isna(t.loc[1, "batch"])
    assert t["mAP@0.5:0.95"].tolist() == [0.12, 0.13] and t["mAP@0.5"].tolist() == [0.31, 0.33]
    assert t["recall car"].tolist() == [0.6, 0.7]
    assert t.loc[0, "recall pedestrian"] == 0.2 and pd.isna(t.loc[1, "recall pedestrian"])  # no GT: not a 0


def test_full_profile_selects_hybrid_and_the_case_study_says_why():
    full, demo = load_config("full", env=False), load_config("demo", env=False)
    assert (full.mine_strategy, full.mine_hybrid_targeted) == ("hybrid", 0.7)
    assert demo.mine_strategy == "prototype"
    hyb = casestudy.strategy_sentence({"k": 100, "strategy": "hybrid"}, 0.7)
    assert "`hybrid`" in hyb and "70 of the 100 frames (70%)" in hyb and "coverage" in hyb
    pro = casestudy.strategy_sentence({"k": 100, "strategy": "prototype"}, 0.7)
    assert "`prototype`" in pro and "leave 70 targeted frames" in pro


def test_stage_rows_read_timing_and_bytes(tiny_world, tmp_path):
    cfg = make_cfg(tiny_world, tmp_path / "out")
    sec = Section(cfg, 3)
    with sec.writer() as w:
        w.write_text("a.txt", "x" * 1000)
        ext = cfg.out / "figures" / "f.png"
        ext.parent.mkdir(parents=True)
        ext.write_bytes(b"y" * 2500)
        w.add_external(ext)
    timing_json = json.loads((sec.dir / "timing.json").read_text())
    t = timing_json["seconds"]
    rows = casestudy.stage_rows([sec, Section(cfg, 4)])
    assert rows.loc[0, "wall_s"] == t and rows.loc[0, "outside_MB"] == 2500 / 1e6
    assert rows.loc[0, "peak_rss_MB"] == timing_json["peak_rss_mb"] > 0  # the section's own VmHWM
    man, timing = (sec.dir / "manifest.json").stat().st_size, (sec.dir / "timing.json").stat().st_size
    assert rows.loc[0, "folder_MB"] == (1000 + man + timing) / 1e6
    assert rows.loc[1, "note"] == "no timing.json" and rows.loc[1, "folder_MB"] == 0


def test_scale_text_extrapolates_this_runs_measurements():
    stage = pd.DataFrame({"folder": ["02_curate"], "wall_s": [20.0]})
    txt = casestudy.scale_text(1000, stage, 512, 500, 100, {"epochs": 10, "wall_time_s": 50.0},
                               {"seconds": 4.0, "frames": 8}, 0.25, 100.0)
    assert "at 20.0 ms/frame (512-d)" in txt and "0.050 s per image-epoch" in txt and "0.50 s/frame" in txt
    # 100x: 100,000 frames x 0.02 s = 0.6 h; flat index 50,000 x 512 x 4 B = 0.10 GB; 10,000x: 10M frames (> 3 days in days)
    assert "| 100× | 100,000 | 0.6 h | 0.10 GB | 1.4 h | 10.0 GB |" in txt
    assert "| 10,000× | 10,000,000 | 55.6 h | 10.24 GB | 6 days | 1000.0 GB |" in txt
    assert "kept 25% of this run's mined frames away from humans" in txt
    for engine in ("FAISS IVF-PQ", "FiftyOne Enterprise", "MongoDB", "DDP", "Label Studio", "Ray Data"):
        assert engine in txt


def test_commit_is_unknown_outside_a_git_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "PROJECT_ROOT", tmp_path)
    assert train.git_commit() == "unknown"


# ----------------------------------------------------------------------------- reviewed files, checked at the start
LS_EXPORT = [{"id": 1, "data": {"image": "/data/local-files/?d=x/a.jpg", "name": "a.jpg"},
              "annotations": [{"id": 1, "result": []}]}]


def test_preflight_refuses_a_raw_label_studio_export_and_missing_entries(tiny_world, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    (good / "labels.json").write_text(json.dumps([{"name": "a.jpg", "attributes": {}, "labels": []}]))
    raw = tmp_path / "export.json"
    raw.write_text(json.dumps(LS_EXPORT))
    unnamed = tmp_path / "unnamed.json"
    unnamed.write_text(json.dumps([{"attributes": {}, "labels": []}]))
    cfg = lambda *entries: make_cfg(tiny_world, tmp_path / "o", flywheel_reviewed=[str(e) for e in entries])  # noqa: E731
    fw.preflight(cfg(good, good / "labels.json"))            # a folder or its labels.json
    with pytest.raises(fw.ConfigError) as e:
        fw.preflight(cfg(good, raw))                          # the second entry: turn 2's review, checked now
    assert str(e.value) == (f"flywheel_reviewed[1] = {str(raw)!r}: {raw} is a Label Studio export; convert it with "
                            f"`python -m bdd_engine import-labels --label-studio {raw} --out DIR` and use DIR")
    with pytest.raises(fw.ConfigError, match=r"flywheel_reviewed\[0\] = .*entry #0 is not a frame with a 'name'.*import-labels"):
        fw.preflight(cfg(unnamed))
    with pytest.raises(FileNotFoundError, match=r"flywheel_reviewed\[0\] = .*: no .*nope .*import-labels"):
        fw.preflight(cfg(tmp_path / "nope"))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"no {empty_dir / 'labels.json'} "):
        fw.preflight(cfg(empty_dir))


def test_run_checks_reviewed_files_before_any_section_or_kernel(tiny_world, tmp_path, monkeypatch, capsys):
    from bdd_engine import runner
    from bdd_engine.__main__ import main

    raw = tmp_path / "export.json"
    raw.write_text(json.dumps(LS_EXPORT))
    monkeypatch.setattr(runner, "run_notebook", lambda *a, **k: pytest.fail("a kernel was started"))
    out = tmp_path / "o"
    rc = main(["run", "--profile", "tiny", "--set", f"data_root={tiny_world}", "--set", f"outputs_dir={out}",
               "--set", "flywheel_turns=2", "--set", f"flywheel_reviewed=[{raw}]"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "is a Label Studio export; convert it with `python -m bdd_engine import-labels" in err
    assert not out.exists() or not any(out.glob("0*"))     # no section ran
    nb = (PROJECT_ROOT / "notebook.py").read_text()
    first = nb[nb.index("# %%\n"):nb.index("## §1")]
    assert "fw.preflight(cfg)" in first                        # the notebook checks in its first cell too


# ----------------------------------------------------------------------------- resumed training is said
def test_resumed_runs_reach_headline_and_case_study(tiny_world, tmp_path):
    cfg = make_cfg(tiny_world, tmp_path / "o")
    for run, resumed in (("iter1_s42", True), ("random_s42", False)):
        d = cfg.out / "runs" / run
        (d / "weights").mkdir(parents=True)
        (d / "run_card.json").write_text(json.dumps({"finished": True, "resumed": resumed}))
    arms = pd.DataFrame({"run": ["iter1_s42", "random_s42"],
                         "weights": ["runs/iter1_s42/weights/last.pt", "runs/random_s42/weights/last.pt"]})
    assert fw._resumed_runs(cfg, {"resumed": True}, arms) == ["iter0", "iter1_s42"]
    assert fw._resumed_runs(cfg, {}, arms.iloc[1:]) == []
    h = {"delta_ci": [-0.1, 0.1], "synthetic": True, "n_eval": 40, "seeds": [42], "retrain_epochs": 1,
         "warm_start": False}
    lab, mining, card0 = {"mined": {"labeler": "teacher"}}, {"precision": 0.2, "base_rate": 0.1}, {"epochs": 1}
    text = "\n".join(casestudy.limitations(cfg, {**h, "resumed_runs": ["iter0", "iter1_s42"]}, lab, mining, card0, "x"))
    assert "**Resumed training.** iter0, iter1_s42 were interrupted and resumed" in text and "train_resume: false" in text
    assert "Resumed" not in "\n".join(casestudy.limitations(cfg, {**h, "resumed_runs": []}, lab, mining, card0, "x"))
