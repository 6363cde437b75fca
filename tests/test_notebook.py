"""The whole notebook headless on the tiny profile, then §6–§8 again in a fresh kernel.

This is the product's end-to-end path (`python -m bdd_engine run`, which `make demo`
calls) on a world small enough for the test suite (~2 min on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bdd_engine import report
from bdd_engine.checkpoint import SECTIONS as _SECTIONS
from bdd_engine.env import PROJECT_ROOT

SECTIONS = list(_SECTIONS.values())
HEADLINE_KEYS = {"worst_slice", "n_eval", "iter0", "iter1", "delta", "delta_ci", "random_delta", "oracle_delta",
                 "continue_delta", "overall_iter0", "overall_iter1", "mining_precision", "slice_base_rate",
                 "labeler", "synthetic"}


def run_notebook(world: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BDD_DATA_ROOT": str(world), "BDD_OUTPUTS_DIR": str(out)}
    return subprocess.run([sys.executable, "-m", "bdd_engine", "run", "--profile", "tiny", *extra], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


def manifests(out: Path) -> dict[str, str]:
    return {s: (out / s / "manifest.json").read_text() for s in SECTIONS if (out / s / "manifest.json").exists()}


def finished(out: Path) -> dict[str, str]:
    """When each section last computed (timing.json; manifests are deterministic, timing is not)."""
    return {s: json.loads((out / s / "timing.json").read_text())["finished"] for s in SECTIONS}


@pytest.fixture(scope="module")
def first_run(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("nb") / "outputs"
    p = run_notebook(tiny_world, out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, manifests(out)


def test_whole_notebook_writes_every_artifact(first_run):
    out, man = first_run
    assert sorted(man) == sorted(SECTIONS), "every section checkpointed"
    nb = json.loads((out / "notebook_tiny.ipynb").read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    h = json.loads((out / "08_delta" / "headline.json").read_text())
    assert HEADLINE_KEYS <= set(h)
    assert h["synthetic"] is True and h["labeler"] == "teacher"
    assert h["delta_ci"][0] <= h["delta"] <= h["delta_ci"][1]
    runs = pd.read_csv(out / "runs" / "runs.csv")
    assert runs["arm"].tolist() == ["iter0", "iter1", "random", "oracle", "continue"]
    assert (runs["epochs"].iloc[1:] == runs["epochs"].iloc[1]).all(), "identical epochs for every arm"
    reg = json.loads((out / "runs" / "registry.json").read_text())
    assert reg["promoted"] in set(runs.loc[runs["arm"].isin(["iter0", "iter1"]), "run"])
    gq = json.loads((out / "golden_qa.json").read_text())
    assert len(gq["history"]) == 1 and set(gq["history"][0]["labelers"]) == {"teacher_iter0", "teacher_iter1"}
    assert "Safety-critical" in (out / "08_delta" / "action_plan.md").read_text()
    for fig in ("slice_distribution", "slice_long_tail", "embedding_map", "slice_map_iter0", "worst_slice_failures",
                "mined_frames_grid", "slice_delta", "architecture"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 10_000, fig


def test_case_study_has_no_placeholders(first_run):
    out, _ = first_run
    md = (out / "case_study" / "case_study_v1.md").read_text()
    assert report.leftovers(md) == []
    assert "SYNTHETIC DATA" in md.split("## 1.")[0], "the synthetic banner comes before any number"
    for n in range(1, 11):
        assert f"\n## {n}. " in md
    lims = md.split("## 10.")[1]
    assert sum(1 for ln in lims.splitlines() if ln[:3].rstrip(". ").isdigit()) >= 6
    assert lims.split("\n1. ")[1].startswith("**The data is synthetic.**")
    for img in __import__("re").findall(r"\]\((\.\./figures/[^)]+)\)", md):
        assert (out / "case_study" / img).exists(), img
    assert (out / "case_study" / "case_study_v1.pdf").read_bytes()[:5] == b"%PDF-"


def test_second_run_recomputes_nothing(first_run, tiny_world):
    out, man = first_run
    t = finished(out)
    p = run_notebook(tiny_world, out)
    assert p.returncode == 0, p.stderr[-2000:]
    assert manifests(out) == man and finished(out) == t
    nb = (out / "notebook_tiny.ipynb").read_text()
    assert "computing" not in nb and nb.count("fresh checkpoint, loading") == 8


def test_rerun_from_6_in_fresh_kernel(first_run, tiny_world):
    """§6–§8 recomputed from their checkpoints alone; same seed → same mined set and headline."""
    out, man = first_run
    t = finished(out)
    mined = (out / "06_mine" / "mined.csv").read_text()
    head = json.loads((out / "08_delta" / "headline.json").read_text())
    p = run_notebook(tiny_world, out, "--from", "6")
    assert p.returncode == 0, p.stderr[-2000:]
    t2 = finished(out)
    for s in SECTIONS[:5]:
        assert t2[s] == t[s], f"{s} must not recompute"
    for s in SECTIONS[5:]:
        assert t2[s] != t[s], f"{s} must recompute"
    now = manifests(out)
    assert now[SECTIONS[5]] == man[SECTIONS[5]], "same seed -> identical mined set and figure"
    # §7/§8 also record wall-clock times (run card, cost table); everything else is identical
    timed = ("arms.csv", "labeling.json", "cost.csv", "summary.md", "runs.csv", "runs.md", "case_study_v1",
             "golden_qa.json")
    for s in SECTIONS[6:]:
        a, b = json.loads(now[s])["artifacts"], json.loads(man[s])["artifacts"]
        assert a.keys() == b.keys()
        diff = [k for k in a if a[k] != b[k] and not any(t in k for t in timed)]
        assert diff == [], f"{s}: non-deterministic artifacts {diff}"
    assert (out / "06_mine" / "mined.csv").read_text() == mined
    again = json.loads((out / "08_delta" / "headline.json").read_text())
    assert {k: again[k] for k in HEADLINE_KEYS} == {k: head[k] for k in HEADLINE_KEYS}
    gq = json.loads((out / "golden_qa.json").read_text())
    assert len(gq["history"]) == 1, "the same iteration replaces its golden-QA entry, never duplicates it"
