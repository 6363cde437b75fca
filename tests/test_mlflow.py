"""Experiment tracking in MLflow (issue 26 item 3): training runs with their per-epoch
losses, run card and data hash, logged once; evaluations with their per-slice table; the
registry's stages as model-registry aliases; a tracking server that is down named in one
line before anything computes; Ultralytics' own MLflow callback stays off. (The file name
matters: Ultralytics' callback only logs under pytest in a test whose id holds
``test_mlflow``.) The tiny end-to-end run's store is checked in test_notebook.py."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pandas as pd
import pytest

from bdd_engine import tracking
from bdd_engine.env import PROJECT_ROOT

from conftest import make_cfg

EPOCHS = 3


def _fake_run(out: Path, rel: str, fp: str, loss0: float) -> Path:
    """A finished training run folder as train.train leaves it (card, results.csv, weights)."""
    d = out / rel
    (d / "weights").mkdir(parents=True, exist_ok=True)
    (d / "weights" / "last.pt").write_bytes(fp.encode() * 10)
    rows = [{"epoch": e, "time": 1.5 * e, "train/box_loss": loss0 / e, "train/cls_loss": 2 * loss0 / e,
             "metrics/mAP50(B)": 0, "val/box_loss": 0, "lr/pg0": 0.001 * e} for e in range(1, EPOCHS + 1)]
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    card = {"name": d.name, "fingerprint": fp, "finished": True, "synthetic": True, "profile": "tiny",
            "model": "/x/yolov8n-w0125.yaml", "pretrained": False, "init_weights": None, "data_hash": f"data-{fp}",
            "config": {"imgsz": 64, "lr0": 0.002, "val": False, "epochs": EPOCHS, "seed": 42},
            "git_commit": "abc123", "device": "cpu", "precision": "fp32", "resumed": False, "epochs": EPOCHS,
            "wall_time_s": 12.5, "weights": str(d / "weights" / "last.pt"),
            "final_metrics": {"source": "ultralytics val", "metrics/mAP50(B)": 0.25}}
    (d / "run_card.json").write_text(json.dumps(card))
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlflow") / "outputs"
    runs = {r: _fake_run(out, f"runs/{r}", f"fp{i}", 3.0 + i) for i, r in enumerate(["iter0", "iter1_s42", "iter1_s43"])}
    return out, runs, tracking.open_tracker(None, out, "bdd_engine-tiny", synthetic=True)


def _runs(tr, kind):
    return tr.client.search_runs([tr.experiment_id], filter_string=f"tags.bdd_kind = '{kind}'")


def test_mlflow_training_run_holds_params_epoch_losses_card_and_hash_once(store):
    out, runs, tr = store
    ids = {r: tr.training(d) for r, d in runs.items()}
    assert {r: tr.training(d) for r, d in runs.items()} == ids          # logged once per run folder + fingerprint
    logged = {r.info.run_name: r for r in _runs(tr, "training")}
    assert sorted(logged) == sorted(runs) and len(set(ids.values())) == 3
    run = tr.client.get_run(ids["iter1_s42"])
    res = pd.read_csv(runs["iter1_s42"] / "results.csv")
    hist = {m.step: m.value for m in tr.client.get_metric_history(run.info.run_id, "train/box_loss")}
    assert hist == dict(zip(res["epoch"], res["train/box_loss"]))       # step = epoch
    assert not [k for k in run.data.metrics if k.startswith(("metrics/", "val/"))]  # val off: zeros, not measured
    assert run.data.metrics["duration_s"] == 12.5 and run.data.metrics["final/metrics/mAP50B"] == 0.25
    assert run.info.end_time - run.info.start_time == 12500   # the UI's duration is the training's, not the logging's
    assert run.data.params["ul.lr0"] == "0.002" and run.data.params["model"] == "yolov8n-w0125.yaml"
    assert run.data.tags["data_hash"] == run.data.params["data_hash"] == "data-fp1"
    assert run.data.tags["mlflow.source.git.commit"] == "abc123" and "SYNTHETIC" in run.data.tags["mlflow.note.content"]
    card = Path(tr.client.download_artifacts(run.info.run_id, "run_card.json", str(out.parent)))
    assert json.loads(card.read_text()) == json.loads((runs["iter1_s42"] / "run_card.json").read_text())
    # the local store and its artifacts live under outputs/mlflow/, nowhere else
    assert (out / "mlflow" / "mlflow.db").is_file() and run.info.artifact_uri.startswith((out / "mlflow").as_uri())
    # a retrained run (new fingerprint) is a new MLflow run; the old one stays
    again = _fake_run(out, "runs/iter1_s43", "fp9", 1.0)
    assert tr.training(again) not in ids.values() and len(_runs(tr, "training")) == 4
    _fake_run(out, "runs/iter1_s43", "fp2", 5.0)  # back to what the registry test expects


def test_mlflow_evaluation_logs_its_slice_table_once_nested_under_its_model(store):
    out, runs, tr = store
    slices = pd.DataFrame({"slice": ["a | b | c", "d | e | f"], "level": "full", "AP50": [0.1, 0.4]})
    per_class = pd.DataFrame({"class": ["car"], "AP50": [0.3]})
    w = runs["iter0"] / "weights" / "last.pt"
    rid = tr.evaluation("s5", "iter0", w, {"AP50": 0.3, "worst_slice_AP50": 0.1},
                        {"slices.csv": slices, "per_class.csv": per_class})
    assert tr.evaluation("s5", "iter0", w, {"AP50": 0.3}, {"slices.csv": slices, "per_class.csv": per_class}) == rid
    run = tr.client.get_run(rid)
    assert run.info.run_name == "s5-iter0" and run.data.metrics == {"AP50": 0.3, "worst_slice_AP50": 0.1}
    assert run.data.tags["mlflow.parentRunId"] == tr.training(runs["iter0"])
    got = pd.read_csv(tr.client.download_artifacts(rid, "slices.csv", str(out.parent)))
    pd.testing.assert_frame_equal(got, slices)
    changed = slices.assign(AP50=[0.2, 0.4])   # a recomputed table that differs: a new evaluation run
    assert tr.evaluation("s5", "iter0", w, {"AP50": 0.3}, {"slices.csv": changed}) != rid
    assert len(_runs(tr, "evaluation")) == 2


def _registry(stages: dict, promoted: str) -> dict:
    return {"promoted": promoted, "stages": {r: {"stage": s, "held_by": [] if s != "candidate" else ["overall mAP@0.5 drop"]}
                                              for r, s in stages.items()}}


def test_mlflow_registry_stages_are_aliases_on_one_registered_model(store):
    out, runs, tr = store
    table = pd.DataFrame({"run": list(runs), "worst_slice_AP50": [0.40, 0.50, 0.45],
                          "weights": [f"runs/{r}/weights/last.pt" for r in runs]})
    reg = _registry({"iter0": "promoted", "iter1_s42": "deployable", "iter1_s43": "candidate"}, "iter1_s42")
    aliases = tr.registry(reg, table, turn=1)
    c = tr.client
    versions = {v.tags["run"]: v for v in c.search_model_versions("name='bdd_engine-tiny'")}
    assert {r: v.tags["stage"] for r, v in versions.items()} == {r: s["stage"] for r, s in reg["stages"].items()}
    num = {r: int(v.version) for r, v in versions.items()}
    assert aliases == {"promoted": num["iter1_s42"], "deployable": num["iter1_s42"], "candidate": num["iter1_s43"]}
    assert {a: int(v) for a, v in c.get_registered_model("bdd_engine-tiny").aliases.items()} == aliases
    assert versions["iter1_s42"].run_id == tr.training(runs["iter1_s42"])
    assert [a.path for a in c.list_artifacts(versions["iter0"].run_id, "weights")] == ["weights/last.pt"]
    # the next registry: nothing held back, nothing deployable -> those aliases go; no new versions
    reg2 = _registry({"iter0": "promoted", "iter1_s42": "promoted", "iter1_s43": "promoted"}, "iter1_s42")
    assert tr.registry(reg2, table, turn=2) == {"promoted": num["iter1_s42"]}
    assert {a: int(v) for a, v in c.get_registered_model("bdd_engine-tiny").aliases.items()} == {"promoted": num["iter1_s42"]}
    assert len(c.search_model_versions("name='bdd_engine-tiny'")) == 3
    assert tr.models().set_index("run_dir").loc["runs/iter1_s42", "aliases"] == "promoted"


def test_mlflow_status_lists_each_models_run_id_version_and_aliases(store, capsys):
    from bdd_engine.__main__ import main as cli

    out, runs, tr = store
    pd.DataFrame({"run": list(runs), "arm": ["iter0", "iter1", "iter1"], "worst_slice_AP50": [0.40, 0.50, 0.45],
                  "weights": [f"runs/{r}/weights/last.pt" for r in runs]}).to_csv(out / "runs" / "runs.csv", index=False)
    reg = _registry({"iter0": "promoted", "iter1_s42": "promoted", "iter1_s43": "promoted"}, "iter1_s42")
    (out / "runs" / "registry.json").write_text(json.dumps(reg))
    assert cli(["status", "--profile", "tiny", "--set", f"outputs_dir={out}"]) == 0
    text = capsys.readouterr().out
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("iter1_s42"))
    assert tr.training(runs["iter1_s42"]) in row and row.split()[-1] == "promoted"
    assert f"mlflow ui --backend-store-uri {tracking.local_uri(out)}" in text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_server_down_fails_the_section_in_one_line_before_training(tiny_world, tmp_path):
    from bdd_engine import flywheel as fw

    uri = f"http://127.0.0.1:{_closed_port()}"
    cfg = make_cfg(tiny_world, tmp_path / "out", mlflow_tracking_uri=uri)
    t0 = time.time()
    with pytest.raises(tracking.TrackingUnreachable) as e:
        fw.s4_train(cfg)
    fw.release_lock(cfg.out)
    msg = str(e.value)
    assert uri in msg and "mlflow_tracking_uri: null" in msg and "\n" not in msg and time.time() - t0 < 10
    assert not (cfg.out / "runs").exists() and not (cfg.out / "mlflow").exists()   # nothing trained, nothing logged


def test_mlflow_ultralytics_callback_stays_off_and_writes_nothing_outside_outputs(tmp_path, monkeypatch):
    """A user whose Ultralytics settings have mlflow on (its default): training logs nothing
    of Ultralytics' own (it would write ./mlruns or ./mlflow.db, or runs/mlflow)."""
    from test_train import _make_dataset
    from ultralytics.utils import SETTINGS

    from bdd_engine import train as T
    from bdd_engine.config import load_config
    from bdd_engine.flywheel import train_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = {p for p in (PROJECT_ROOT / "mlruns", PROJECT_ROOT / "mlflow.db", PROJECT_ROOT / "runs") if p.exists()}
    dict.__setitem__(SETTINGS, "mlflow", True)  # in memory only: the settings file other processes read stays as it is
    data_yaml, _ = _make_dataset(tmp_path / "data", n=6)
    spec = train_spec(load_config("tiny", overrides={"train_epochs": 1, "train_imgsz": 32, "train_batch": 2,
                                                     "train_nbs": 2, "train_warmup_epochs": 0, "device": "cpu"}))
    T.train(spec, data_yaml, tmp_path / "outputs" / "runs", name="iter0")
    assert SETTINGS["mlflow"] is False
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "mlruns" in p.name or "mlflow" in p.name)
    assert left == []
    after = {p for p in (PROJECT_ROOT / "mlruns", PROJECT_ROOT / "mlflow.db", PROJECT_ROOT / "runs") if p.exists()}
    assert after == before
