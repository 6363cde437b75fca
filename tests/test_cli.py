"""The CLI's ``--set``, ``status`` and ``run --from`` paths (the notebook itself is not
executed here: tests/test_notebook.py does that; ``run`` gets a recording stand-in for
nbclient's client)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bdd_engine import checkpoint as ck
from bdd_engine import flywheel as fw
from bdd_engine.__main__ import main
from bdd_engine.config import load_config

REPO = Path(__file__).resolve().parent.parent


def _write(cfg, n):
    with ck.Section(cfg, n).writer() as w:
        w.write_text("x.txt", f"section {n}")


def _status_rows(text: str) -> dict[int, str]:
    """section number -> the rest of its line in `status` output."""
    rows = {}
    for line in text.splitlines()[1:]:
        parts = line.split(None, 1)
        if parts and parts[0].isdigit():
            rows[int(parts[0])] = parts[1]
    return rows


def test_status_subprocess_with_set_outputs_dir(tmp_path):
    cfg = load_config("tiny", {"outputs_dir": str(tmp_path)}, env=False)
    _write(cfg, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BDD_")}
    r = subprocess.run([sys.executable, "-m", "bdd_engine", "status", "--profile", "tiny",
                        "--set", f"outputs_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _status_rows(r.stdout)
    assert sorted(rows) == list(range(1, 9))
    assert "01_collect" in rows[1] and "True" in rows[1]
    for n in range(2, 9):
        assert "False" in rows[n] and "no manifest" in rows[n], rows[n]


def test_status_set_changes_the_config_it_checks(tmp_path, capsys):
    cfg = load_config("tiny", {"outputs_dir": str(tmp_path)}, env=False)
    _write(cfg, 1)
    _write(cfg, 3)
    assert main(["status", "--profile", "tiny", "--set", f"outputs_dir={tmp_path}"]) == 0
    rows = _status_rows(capsys.readouterr().out)
    assert "True" in rows[1] and "True" in rows[3]
    # --set is repeatable and typed: a pool_ key makes §3 stale and leaves §1 fresh
    assert main(["status", "--profile", "tiny", "--set", f"outputs_dir={tmp_path}",
                 "--set", f"pool_eval_size={int(cfg.pool_eval_size) + 1}"]) == 0
    rows = _status_rows(capsys.readouterr().out)
    assert "True" in rows[1] and "False" in rows[3] and "config changed" in rows[3]
    # a global key (seed) makes every written section stale
    assert main(["status", "--profile", "tiny", "--set", f"outputs_dir={tmp_path}", "--set", "seed=43"]) == 0
    rows = _status_rows(capsys.readouterr().out)
    assert "config changed" in rows[1] and "config changed" in rows[3]


def test_set_unknown_key_is_refused(tmp_path, capsys):
    try:
        rc = main(["status", "--profile", "tiny", "--set", f"outputs_dir={tmp_path}", "--set", "mine_kk=3"])
    except ValueError as e:                    # raised, or reported with a non-zero exit code
        assert "mine_kk" in str(e)
    else:
        assert rc != 0 and "mine_kk" in capsys.readouterr().err


class RecordingClient:
    """Stands in for nbclient.NotebookClient: records what the kernel would inherit."""

    seen: dict = {}

    def __init__(self, nb, **kw):
        self.nb = nb

    def execute(self, *a, **k):
        RecordingClient.seen = {k: os.environ.get(k) for k in ("BDD_PROFILE", "BDD_OUTPUTS_DIR", "BDD_MINE_K")}
        RecordingClient.seen["cells"] = len(self.nb.cells)
        RecordingClient.seen["first"] = self.nb.cells[0].source
        return self.nb


@pytest.fixture
def fake_kernel(monkeypatch):
    import nbclient

    for k in ("BDD_PROFILE", "BDD_OUTPUTS_DIR", "BDD_MINE_K"):
        # run sets them in this process: setenv records "absent" so teardown removes them again (delenv of a
        # missing key records nothing, and BDD_MINE_K=7 leaked into every later test's notebook run)
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    monkeypatch.setattr(nbclient, "NotebookClient", RecordingClient)
    monkeypatch.setattr(fw, "data_root", lambda cfg: None, raising=False)   # no world generation here
    RecordingClient.seen = {}
    return RecordingClient


@pytest.mark.parametrize("frm", [6, None])
def test_run_from_passes_the_section_and_overrides_to_the_kernel(tmp_path, fake_kernel, frm, capsys):
    argv = ["run", "--profile", "tiny", "--set", f"outputs_dir={tmp_path}", "--set", "mine_k=7"]
    assert main(argv + (["--from", str(frm)] if frm else [])) == 0
    seen = fake_kernel.seen
    assert seen["BDD_PROFILE"] == "tiny" and seen["BDD_OUTPUTS_DIR"] == str(tmp_path) and seen["BDD_MINE_K"] == "7"
    assert seen["cells"] > 10
    assert ("fw.recompute_from(6)" in seen["first"]) == bool(frm)   # a visible first cell, not an env var
    out = tmp_path / "notebook_tiny.ipynb"
    assert out.exists() and '"cells"' in out.read_text()
    assert str(out) in capsys.readouterr().out
    if frm:   # what the kernel does with it: sections >= N recompute even when fresh
        try:
            exec(seen["first"], {})
            assert [fw.forced(n) for n in range(1, 9)] == [n >= frm for n in range(1, 9)]
        finally:
            fw.recompute_from(None)


def test_run_from_rejects_a_non_number(tmp_path, fake_kernel):
    with pytest.raises(SystemExit) as e:
        main(["run", "--profile", "tiny", "--set", f"outputs_dir={tmp_path}", "--from", "six"])
    assert e.value.code == 2 and fake_kernel.seen == {}


def test_status_lists_each_models_stage_and_the_gate_that_held_it(tmp_path, capsys):
    """Issue 26: `status` says which stage (candidate -> promoted -> deployable) each model of
    the registry reached and which gate held it."""
    import json

    import pandas as pd

    from bdd_engine import experiment

    runs = pd.DataFrame([{"run": "iter0", "arm": "iter0", "overall_AP50": 0.30, "worst_slice_AP50": 0.10, "weights": "w0"},
                         {"run": "iter1_s42", "arm": "iter1", "overall_AP50": 0.31, "worst_slice_AP50": 0.20, "weights": "w1"},
                         {"run": "iter1_s43", "arm": "iter1", "overall_AP50": 0.20, "worst_slice_AP50": 0.30, "weights": "w2"}])
    pc = pd.DataFrame({"recall50": [0.9, 0.9, 0.9, 0.5], "n_gt": [5, 5, 5, 5]},
                      index=["pedestrian", "rider", "bicycle", "motorcycle"])
    golden = {"labelers": {f"teacher_{r}": {"drift_flags": []} for r in ("iter1_s42", "iter1_s43")}}
    reg = experiment.registry(runs, 0.01, {r: pc for r in runs["run"]}, golden, recall_target=0.8, map_floor=0.25)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "registry.json").write_text(json.dumps(reg))
    assert main(["status", "--profile", "tiny", "--set", f"outputs_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert sorted(_status_rows(out)) == list(range(1, 9))  # the section rows are unchanged
    lines = {ln.split()[0]: ln for ln in out.split("model registry", 1)[1].splitlines()[2:] if ln.strip()}
    assert "candidate" in lines["iter1_s43"] and "overall mAP@0.5 drop" in lines["iter1_s43"]
    assert "promoted" in lines["iter1_s42"] and "motorcycle recall@0.5 target 0.500" in lines["iter1_s42"]
    assert "True" in lines["iter1_s42"] and "False" in lines["iter0"]
