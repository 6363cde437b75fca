"""The whole notebook headless on the tiny profile, then §6–§8 again in a fresh kernel.

This is the product's end-to-end path (`python -m bdd_engine run`, which `make demo`
calls) on a world small enough for the test suite (~3 min on 2 cores). It is a real,
if small, experiment: iter0 detects objects, the teacher labels the mined frames, the
accepted labels (and only those) reach iter1's training set, every arm trains on its
own data, and the verdict's words agree with the numbers.

The run takes in new data the way a user would (issue 15): short synthetic drive videos are
ingested at 1 fps (`ingest`) and join the mining pool (`pool_sources: [labels, ingested]`),
so §1–§8 also carry frames without labels or attributes end to end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bdd_engine import bdd, experiment, report
from bdd_engine.__main__ import main as cli
from bdd_engine.config import load_config
from bdd_engine.checkpoint import SECTIONS as _SECTIONS, status
from bdd_engine.env import PROJECT_ROOT

SECTIONS = list(_SECTIONS.values())
HEADLINE_KEYS = {"worst_slice", "n_eval", "iter0", "iter1", "delta", "delta_ci", "random_delta", "oracle_delta",
                 "continue_delta", "overall_iter0", "overall_iter1", "mining_precision", "slice_base_rate",
                 "labeler", "synthetic", "seeds", "confirm_n", "contrast_iter1_random", "contrast_oracle_random_gt",
                 "contrast_oracle_iter1", "g1_continue", "g2_selection", "verdict", "share_recovered", "reading",
                 "mde", "iter0_overall", "teacher_recall", "teacher_classes"}
ARMS = ["iter1", "random", "oracle", "random_gt", "continue"]


def run_notebook(world: Path, out: Path, *extra: str, ingested: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BDD_DATA_ROOT": str(world), "BDD_OUTPUTS_DIR": str(out)}
    if ingested is not None:
        # mine_k 20 (tiny: 12): on the seed-42 tiny world the first ingested frames rank 16th and 17th
        env.update({"BDD_POOL_SOURCES": "[labels, ingested]", "BDD_INGEST_DIR": str(ingested), "BDD_MINE_K": "20"})
    return subprocess.run([sys.executable, "-m", "bdd_engine", "run", "--profile", "tiny", *extra], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def manifests(out: Path) -> dict[str, str]:
    return {s: (out / s / "manifest.json").read_text() for s in SECTIONS if (out / s / "manifest.json").exists()}


def mlflow_state(out: Path) -> tuple[list[str], list[tuple[int, str]], dict[str, int]]:
    """The run's MLflow store read back with MlflowClient: run ids, model versions, aliases."""
    from mlflow import MlflowClient

    from bdd_engine import tracking

    c = MlflowClient(tracking_uri=tracking.local_uri(out))
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=5000)
    versions = sorted((int(v.version), v.run_id) for v in c.search_model_versions("name='bdd_engine-tiny'"))
    return sorted(r.info.run_id for r in runs), versions, c.get_registered_model("bdd_engine-tiny").aliases


def finished(out: Path) -> dict[str, str]:
    """When each section last computed (timing.json; manifests are deterministic, timing is not)."""
    return {s: json.loads((out / s / "timing.json").read_text())["finished"] for s in SECTIONS}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """An ingest folder of 22 three-second synthetic drive videos (16 new drives, 6 of the world's own)."""
    from tests._ingested import make_ingest_dir

    d = make_ingest_dir(tmp_path_factory.mktemp("ingest"))
    return d, listing(d)


@pytest.fixture(scope="module")
def first_run(tiny_world, ingested, tmp_path_factory):
    out = tmp_path_factory.mktemp("nb") / "outputs"
    p = run_notebook(tiny_world, out, ingested=ingested[0])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, manifests(out)


def test_whole_notebook_writes_every_artifact(first_run):
    out, man = first_run
    assert sorted(man) == sorted(SECTIONS), "every section checkpointed"
    nb = json.loads((out / "notebook_tiny.ipynb").read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # §6's cell shows the uncertainty-by-slice table (issue 26: it was written but shown nowhere)
    s6 = next(c for c in nb["cells"] if c["cell_type"] == "code" and "fw.s6_mine(cfg)" in "".join(c["source"]))
    shown = "".join("".join(o.get("data", {}).get("text/html", "")) for o in s6.get("outputs", []))
    assert "mean_uncertainty" in shown
    conf = pd.read_csv(out / "08_delta" / "confusion.csv")
    assert conf["panel"].str.startswith("iter0 · eval pool").any() and (conf["count"] > 0).all()
    h = json.loads((out / "08_delta" / "headline.json").read_text())
    assert HEADLINE_KEYS <= set(h)
    assert h["synthetic"] is True and h["labeler"] == "teacher"
    assert h["resumed_runs"] == []      # no training was interrupted (tiny: train_resume false restarts anyway)
    # each run's Δ lies inside its own CI, and the headline's seed-mean Δ inside the CI of that mean
    # (it once stood beside the first seed's CI: mean -0.023, CI [-0.062, -0.025])
    d = pd.read_csv(out / "08_delta" / "deltas.csv")
    assert ((d["ci_lo"] <= d["delta"] + 1e-12) & (d["delta"] <= d["ci_hi"] + 1e-12)).all()
    lo, hi = h["delta_ci"]
    worst = d[(d["arm"] == "iter1") & (d["slice"] == h["worst_slice"])]
    assert lo - 1e-12 <= h["delta"] <= hi + 1e-12 and h["delta"] == pytest.approx(worst["delta"].mean(), abs=1e-12)
    assert [lo, hi] != [worst.sort_values("seed").iloc[0]["ci_lo"], worst.sort_values("seed").iloc[0]["ci_hi"]]
    runs = pd.read_csv(out / "runs" / "runs.csv")
    seeds = load_config("tiny", env=False).retrain_seeds
    assert runs["arm"].tolist() == ["iter0"] + [a for a in ARMS for _ in seeds]
    assert h["seeds"] == seeds and runs["run"].tolist()[1:3] == [f"iter1_s{s}" for s in seeds]
    confirm = pd.read_csv(out / "05_eval_iter0" / "confirm.csv")
    assert h["confirm_n"] == len(confirm) >= load_config("tiny", env=False).confirm_min_frames
    assert set(confirm["slice"]) == {h["worst_slice"]} == {h["confirm_slice"]}
    # confirmation frames come from held-out drives: none in any pool, none sharing a drive with one
    pools = pd.read_csv(out / "03_pools" / "pools.csv")
    assert not set(confirm["name"]) & set(pools["name"]) and not set(confirm["group"]) & set(pools["group"])
    lo, hi = h["contrast_iter1_random"]["ci"]
    assert lo < hi and h["mde"] > 0
    assert (runs["epochs"].iloc[1:] == runs["epochs"].iloc[1]).all(), "identical epochs for every arm"
    reg = json.loads((out / "runs" / "registry.json").read_text())
    assert reg["promoted"] in set(runs.loc[runs["arm"].isin(["iter0", "iter1"]), "run"])
    cands = set(runs.loc[runs["arm"].isin(["iter0", "iter1"]), "run"])
    assert set(reg["stages"]) == cands and reg["stage"] == reg["stages"][reg["promoted"]]["stage"]
    gq = json.loads((out / "golden_qa.json").read_text())
    iter1_runs = set(runs.loc[runs["arm"] == "iter1", "run"])
    assert len(gq["history"]) == 1 and set(gq["history"][0]["labelers"]) == {"teacher_iter0"} | {
        f"teacher_{r}" for r in iter1_runs}  # each candidate's own labels: its drift gate
    assert "Safety-critical" in (out / "08_delta" / "action_plan.md").read_text()
    for fig in ("slice_distribution", "slice_long_tail", "embedding_map", "slice_map_iter0", "worst_slice_failures",
                "mined_frames_grid", "attribute_confusion", "slice_delta", "confirm_contrast", "architecture",
                "confusion_iter0", "confusion"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 10_000, fig


def test_mlflow_store_holds_one_run_per_training_with_runs_csv_metrics_and_stage_aliases(first_run):
    """Issue 26 item 3, read back from the tiny run's local store (outputs/mlflow/)."""
    from mlflow import MlflowClient

    from bdd_engine import tracking

    out, _ = first_run
    c = MlflowClient(tracking_uri=tracking.local_uri(out))
    exp = c.get_experiment_by_name("bdd_engine-tiny")
    assert exp.artifact_location == (out / "mlflow" / "artifacts").as_uri()
    runs = pd.read_csv(out / "runs" / "runs.csv")
    logged = {r.info.run_name: r for r in c.search_runs([exp.experiment_id], "tags.bdd_kind = 'training'")}
    assert sorted(logged) == sorted(runs["run"]), "one MLflow run per training, named as runs.csv names it"
    for r in runs.itertuples():
        m, tags = logged[r.run].data.metrics, logged[r.run].data.tags
        assert (m["overall_AP50"], m["worst_slice_AP50"]) == pytest.approx((r.overall_AP50, r.worst_slice_AP50),
                                                                           abs=1e-12), r.run
        assert (tags["data_hash"], tags["arm"], m["duration_s"]) == (r.data_hash, r.arm, pytest.approx(r.duration_s)), r.run
        losses = c.get_metric_history(logged[r.run].info.run_id, "train/box_loss")
        assert [h.step for h in losses] == list(range(1, r.epochs + 1)), r.run   # step = epoch
    evals = {r.info.run_name: r for r in c.search_runs([exp.experiment_id], "tags.bdd_kind = 'evaluation'")}
    assert sorted(evals) == sorted(["s5-iter0", "s8-iter0", *(f"s8-{r}" for r in runs["run"][1:])])
    ev = json.loads((out / "08_delta" / "iter1_s42_eval.json").read_text())
    assert evals["s8-iter1_s42"].data.metrics["AP50"] == pytest.approx(ev["AP50"], abs=1e-12)
    got = pd.read_csv(c.download_artifacts(evals["s8-iter1_s42"].info.run_id, "slices.csv", str(out.parent)))
    pd.testing.assert_frame_equal(got, pd.read_csv(out / "08_delta" / "iter1_s42_slices.csv"))
    h = json.loads((out / "08_delta" / "headline.json").read_text())
    assert evals["s8-iter0"].data.metrics["headline/delta"] == pytest.approx(h["delta"], abs=1e-12)
    # registry.json's stages: a version per candidate (its stage a tag), aliases by the documented rule
    reg = json.loads((out / "runs" / "registry.json").read_text())
    versions = {v.tags["run"]: v for v in c.search_model_versions("name='bdd_engine-tiny'")}
    assert {r: v.tags["stage"] for r, v in versions.items()} == {r: s["stage"] for r, s in reg["stages"].items()}
    assert all(v.run_id == logged[r].info.run_id for r, v in versions.items())
    rank = runs.set_index("run").loc[list(reg["stages"])].sort_values("worst_slice_AP50", ascending=False).index
    want = {"promoted": reg["promoted"], **{a: next(r for r in rank if reg["stages"][r]["stage"] == a)
                                             for a in ("deployable", "candidate")
                                             if a in {s["stage"] for s in reg["stages"].values()}}}
    aliases = c.get_registered_model("bdd_engine-tiny").aliases
    assert {a: int(v) for a, v in aliases.items()} == {a: int(versions[r].version) for a, r in want.items()}
    assert not (PROJECT_ROOT / "mlruns").exists() and not (PROJECT_ROOT / "runs" / "mlflow").exists()


NOTE_FILE = re.compile(r"(?<![\w/.<>*-])([\w.<>*/-]+\.(?:json|csv|png|md|pdf|pt|txt|yaml|parquet))\b")
NOTE_FOLDER = re.compile(r"\b(0[1-8]_[a-z0-9_]+(?:/[\w.-]+)*)")


def test_label_issues_of_the_mined_frames(first_run):
    """Issue 29: §7 scores the mined frames' accepted auto-labels and ground truth against iter0."""
    from bdd_engine import labelissues

    out, _ = first_run
    d = out / "07_autolabel_retrain" / "label_issues"
    sets = json.loads((d / "summary.json").read_text())["sets"]
    gt = {f["name"]: f for f in bdd.load_frames(out / "03_pools" / "gt_pool.json")}
    mined = pd.read_csv(out / "06_mine" / "mined.csv")["name"]
    assert sets["gt"]["boxes"] == len(bdd.boxes_table([gt[n] for n in mined if n in gt]).query("not crowd and not ignore"))
    for which, summ in sets.items():
        t = pd.read_csv(d / f"{which}.issues.csv", keep_default_na=False)
        assert list(t.columns) == labelissues.COLUMNS and (t["row"] == "label").sum() == summ["boxes"]
        assert summ["flagged_boxes"] == int((t["flagged"].astype(str) == "True")[t["row"] == "label"].sum())


def test_every_file_a_checkpoint_note_names_exists(first_run):
    """What each section's checkpoint note tells the user to open exists after the run (a note
    named 06_mine/mining.json; the file is mining_summary.json)."""
    from bdd_engine.views import CHECKPOINT_NOTES

    out, _ = first_run
    missing, checked = [], 0
    for n, note in CHECKPOINT_NOTES.items():
        text = " ".join(note)
        for name in NOTE_FILE.findall(text):
            rel = name.removeprefix("outputs/")
            if "*" in rel:  # a glob the note says may match nothing ("epoch*.pt if any"): its folder exists
                found = (out / rel).parent.is_dir()
            else:
                found = any(p.is_file() for p in (out / rel, out / _SECTIONS[n] / rel, out / "figures" / rel)) or \
                    any(out.glob(f"runs/*/weights/{rel}"))
            checked += 1
            missing += [] if found else [f"§{n}: {name}"]
        for folder in NOTE_FOLDER.findall(text):
            checked += 1
            missing += [] if (out / folder).exists() else [f"§{n}: {folder}"]
    assert checked >= 25 and not missing, missing


def _no_bare_constant(name: str):
    raise ValueError(f"bare {name} is not JSON")


def test_every_json_output_is_strict(first_run):
    """Strict parsers (browsers, jq, Go, Rust) reject NaN/Infinity: outputs say null instead."""
    out, _ = first_run
    files = sorted(p for ext in ("*.json", "*.ipynb") for p in out.rglob(ext) if p.is_file())
    assert len(files) > 20
    bad = {}
    for p in files:
        try:
            json.loads(p.read_text(), parse_constant=_no_bare_constant)
        except ValueError as e:
            bad[str(p.relative_to(out))] = str(e)[:120]
    assert bad == {}


def test_iter0_detects_objects_on_the_tiny_world(first_run):
    out, _ = first_run
    w = json.loads((out / "05_eval_iter0" / "worst_slice.json").read_text())
    ev = json.loads((out / "05_eval_iter0" / "eval.json").read_text())
    assert w["AP50"] > 0, "iter0 finds nothing on its worst slice: the experiment is empty"
    assert ev["AP50"] > 0 and w["overall_AP50"] == pytest.approx(ev["AP50"])
    assert w["best_AP50"] >= w["AP50"] and w["ci"][1] > w["ci"][0], "a slice CI of zero width: no signal"
    preds = bdd.load_frames(out / "05_eval_iter0" / "predictions.json")
    assert sum(len(f["labels"]) for f in preds) > 0


def _yolo_classes(d: Path, names) -> dict[str, list[int]]:
    """YOLO label file of each frame in ``names`` present in split dir ``d`` -> sorted class ids."""
    return {n: sorted(int(ln.split()[0]) for ln in (d / f"{Path(n).stem}.txt").read_text().splitlines() if ln.strip())
            for n in names if (d / f"{Path(n).stem}.txt").exists()}


def test_accepted_auto_labels_and_only_those_reach_iter1(first_run):
    out, _ = first_run
    cfg = load_config("tiny", env=False)
    accept = float(cfg.label_accept)
    s7 = out / "07_autolabel_retrain"
    labeling = json.loads((s7 / "labeling.json").read_text())
    assert labeling["accept"] == {"rule": "global", "accept": accept}
    all_arms = pd.read_csv(s7 / "arms.csv")
    n_data = all_arms.groupby("arm")["data_hash"].nunique()
    assert (n_data.drop(["random", "random_gt"]) == 1).all(), "seeds of one arm share its data"
    assert (n_data[["random", "random_gt"]] == all_arms["seed"].nunique()).all(), "random frames are drawn per seed"
    seed0 = all_arms["seed"].min()
    arms = all_arms[all_arms["seed"] == seed0].set_index("arm")
    k = int(json.loads((out / "06_mine" / "mining_summary.json").read_text())["k"])  # the run sets mine_k
    replay, filler = labeling["replay"]["names"], labeling["replay"]["filler"]
    assert len(filler) == k and not set(replay) & set(filler) and len(replay) == arms["replay_frames"].iloc[0]
    assert (all_arms["train_frames"] == len(replay) + k).all(), "every arm takes the same number of steps"
    mined = pd.read_csv(out / "06_mine" / "mined.csv")["name"].tolist()
    drawn = pd.read_csv(s7 / "random_frames.csv")
    random_names = drawn.loc[drawn["seed"] == seed0, "name"].tolist()
    assert set(mined) != set(random_names)
    for which, arm, names in (("mined", "iter1", mined), ("random", "random", random_names)):
        lab = labeling[which]
        labelled = mined if which == "mined" else sorted(set(drawn["name"]))  # random: every seed's draw, labelled once
        assert lab["labeler"] == "teacher" and lab["frames"] == len(labelled) and lab["failed"] == 0
        assert lab["labels"] > 0, f"the teacher labelled nothing on the {which} frames"
        labels = {f["name"]: f["labels"] for f in bdd.load_frames(s7 / f"labels_{which}" / "labels.json")}
        assert set(labels) == set(labelled)
        assert sum(map(len, labels.values())) == lab["labels"]
        labels = {n: v for n, v in labels.items() if n in set(names)}
        kept = {n: sorted(bdd.CLASSES.index(lb["category"]) for lb in ls if lb["score"] >= accept)
                for n, ls in labels.items()}
        kept = {n: c for n, c in kept.items() if c}
        assert kept, f"no {which} label scores >= label_accept {accept}: nothing for {arm} to learn from"
        if which == "mined":
            assert lab["train_frames"] == len(kept) and lab["train_labels"] == sum(map(len, kept.values()))
        router = pd.read_csv(s7 / f"labels_{which}" / "router.csv").set_index("bucket")
        assert router.loc["accept", "n_labels"] == lab["train_labels"]
        # P/R of exactly the labels that feed training (tiny: one label_accept for every class)
        qa = pd.read_csv(s7 / f"labels_{which}" / "quality_accept.csv").set_index("class")
        assert qa.loc["overall", "tp"] + qa.loc["overall", "fp"] <= lab["train_labels"]
        assert lab["at_accept"]["recall"] == round(float(qa.loc["overall", "recall"]), 4)
        assert lab["at_accept"]["recall"] <= lab["recall"] + 1e-9  # a stricter threshold never finds more
        assert router.loc[["accept", "review", "discard"], "n_labels"].sum() == lab["labels"]
        # the arm's training set on disk: the replay set + exactly the accepted labels of its frames,
        # topped up with seen train frames to mine_k (equal steps)
        yolo = out / "runs" / "data" / arms.loc[arm, "run"] / "labels" / "train"
        top_up = filler[: k - len(kept)]
        assert {p.stem for p in yolo.glob("*.txt")} == {Path(n).stem for n in set(replay) | set(kept) | set(top_up)}
        assert _yolo_classes(yolo, names) == kept, f"{arm} trained on labels the router did not accept"
        row = arms.loc[arm]
        assert (row["extra_frames"], row["extra_labels"]) == (len(kept), sum(map(len, kept.values())))
        assert row["filler_frames"] == len(top_up)
    cont = out / "runs" / "data" / arms.loc["continue", "run"] / "labels" / "train"
    assert {p.stem for p in cont.glob("*.txt")} == {Path(n).stem for n in set(replay) | set(filler)}
    assert set(replay) | set(filler) <= {f["name"] for f in bdd.load_frames(out / "03_pools" / "gt_train.json")}
    with_gt = {f["name"] for f in bdd.load_frames(out / "03_pools" / "gt_pool.json")} & set(mined)
    assert 0 < len(with_gt) < len(mined), "the mined set mixes labelled and ingested frames"
    assert (arms.loc["continue", "extra_frames"], arms.loc["oracle", "extra_frames"]) == (0, len(with_gt))
    hashes = arms["data_hash"]
    assert hashes.is_unique, f"two arms trained on identical data: {hashes.to_dict()}"
    runs = pd.read_csv(out / "runs" / "runs.csv").set_index("run")
    assert runs.loc[list(arms["run"]), "data_hash"].tolist() == hashes.tolist()


def test_verdict_words_match_the_delta(first_run):
    out, _ = first_run
    h = json.loads((out / "08_delta" / "headline.json").read_text())
    d, (lo, hi), v = h["delta"], h["delta_ci"], h["reading"]
    # the verdict label follows from the two controls and the headline contrast (experiment.verdict_label)
    assert h["verdict"] == experiment.verdict_label(h["g1_continue"], h["g2_selection"], h["contrast_iter1_random"])
    assert h["verdict"] in experiment.VERDICTS
    assert hi > lo, "a zero-width CI: iter1 and iter0 predicted the same"  # d: seed mean, may lie outside
    assert h["overall_iter1"] != h["overall_iter0"], "iter1 is iter0: the retrain changed nothing"
    c = h["contrast_iter1_random"]
    assert v.startswith(f"On {h['confirm_n']} held-out frames of {h['confirm_slice']}, Δ(iter1) − Δ(random) = "
                        f"{c['delta']:+.3f} (95% CI [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]): ")
    v = v.split("On the eval pool the slice was chosen on: ")[1]
    assert v.startswith(f"Δ {d:+.3f} (95% CI [{lo:+.3f}, {hi:+.3f}]): ")
    sig = {"improved": "the worst slice improved beyond its CI", "worse": "the worst slice got worse beyond its CI",
           "noise": "within noise (its CI contains 0)"}
    def word(lo, hi):
        return "improved" if lo > 0 else "worse" if hi < 0 else "noise"
    # the raw CI decides; at a CI edge that prints as 0.000, deciding at 3 decimals is also right
    want = {word(lo, hi), word(round(lo, 3), round(hi, 3))}
    said = {k for k in sig if sig[k] in v}
    assert len(said) == 1 and said <= want, (want, v)
    half = (hi - lo) / 2
    for arm in ("random", "continue"):
        a = h[f"{arm}_delta"]
        beat = d - a
        assert f"iter1 minus the {arm} control ({a:+.3f}) = {beat:+.3f}" in v, v
        if abs(abs(beat) - half) > 1e-3:   # away from the boundary, where rounding decides
            where = "inside" if abs(beat) < half else "beyond"
            assert f"= {beat:+.3f} ({where} the CI half-width)" in v, v
    assert f"the oracle control reached {h['oracle_delta']:+.3f}" in v


def test_case_study_has_no_placeholders(first_run):
    out, _ = first_run
    md = (out / "case_study" / "case_study_v1.md").read_text()
    assert report.leftovers(md) == []
    assert "SYNTHETIC DATA" in md.split("## 1.")[0], "the synthetic banner comes before any number"
    for n in range(1, 15):
        assert f"\n## {n}. " in md
    lims = md.split("## 14.")[1]
    assert sum(1 for ln in lims.splitlines() if ln[:3].rstrip(". ").isdigit()) >= 6
    assert lims.split("\n1. ")[1].startswith("**The data is synthetic.**")
    for img in __import__("re").findall(r"\]\((\.\./figures/[^)]+)\)", md):
        assert (out / "case_study" / img).exists(), img
    assert (out / "case_study" / "case_study_v1.pdf").read_bytes()[:5] == b"%PDF-"


def test_timing_covers_training_and_case_study_states_the_rule_used(first_run):
    out, _ = first_run
    card = json.loads((out / "04_train" / "run_card.json").read_text())
    t4 = json.loads((out / "04_train" / "timing.json").read_text())["seconds"]
    assert card["wall_time_s"] > 0 and t4 >= 0.9 * card["wall_time_s"]   # was ~0 s: only the writer was timed
    rule = json.loads((out / "06_mine" / "mining_summary.json").read_text())["failure_rule"]
    assert f"`{rule}`" in (out / "case_study" / "case_study_v1.md").read_text()


def test_second_run_recomputes_nothing(first_run, tiny_world, ingested):
    out, man = first_run
    t = finished(out)
    logged = mlflow_state(out)
    p = run_notebook(tiny_world, out, ingested=ingested[0])
    assert p.returncode == 0, p.stderr[-2000:]
    assert manifests(out) == man and finished(out) == t
    assert mlflow_state(out) == logged, "a fresh rerun logs nothing to MLflow"
    nb = (out / "notebook_tiny.ipynb").read_text()
    assert "computing" not in nb and nb.count("fresh checkpoint, loading") == 8


def test_rerun_from_6_in_fresh_kernel(first_run, tiny_world, ingested):
    """§6–§8 recomputed from their checkpoints alone; same seed → same mined set and headline."""
    out, man = first_run
    t = finished(out)
    mined = (out / "06_mine" / "mined.csv").read_text()
    head = json.loads((out / "08_delta" / "headline.json").read_text())
    logged = mlflow_state(out)
    p = run_notebook(tiny_world, out, "--from", "6", ingested=ingested[0])
    assert p.returncode == 0, p.stderr[-2000:]
    assert mlflow_state(out) == logged, "recomputed sections with unchanged trainings and tables log nothing new"
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


def _section(md: str, n: int) -> str:
    return md.split(f"\n## {n}. ")[1].split("\n## ")[0]


def _row(table: str, first: str) -> list[str]:
    """Cells of the markdown table row whose first cell is ``first``."""
    (row,) = [ln for ln in table.splitlines() if ln.startswith(f"| {first} |")]
    return [c.strip() for c in row.strip("|").split(" | ")]


def test_case_study_new_sections_hold_this_runs_numbers(first_run, tiny_world):
    out, _ = first_run
    md = (out / "case_study" / "case_study_v1.md").read_text()
    h = json.loads((out / "08_delta" / "headline.json").read_text())
    problem = md.split("## Problem, hypothesis and success metric")[1].split("\n## 1. ")[0]
    assert "**Δ(iter1) − Δ(random)**" in problem and "**The verdict follows from two controls first**" in problem
    assert "Design card (pre-registered before any arm was scored)" in problem
    # the summary leads with the verdict and the two controls, then the headline contrast
    summary = md.split("\n## 1. Summary")[1].split("\n## 2. ")[0]
    word = {"improved": "IMPROVED", "no_gain": "NO GAIN", "worse": "WORSE", "inconclusive": "INCONCLUSIVE"}[h["verdict"]]
    assert summary.strip().startswith(f"**Verdict: {word}.**")
    assert summary.index("G1, the negative control") < summary.index("G2, the positive control") \
        < summary.index("**The answer, on")
    if h["verdict"] == "inconclusive":
        assert "not beat" not in summary
    assert f"over {len(h['seeds'])} training seed(s)" in problem
    assert "**Selection strategy: `prototype`**" in _section(md, 6)
    # the training-config table: every run, its mAP@0.5:0.95 and car/pedestrian recall as evaluated
    runs = pd.read_csv(out / "runs" / "runs.csv")
    for run in runs["run"]:
        d = out / ("05_eval_iter0" if run == "iter0" else "08_delta")
        pre = "" if run == "iter0" else f"{run}_"
        ev = json.loads((d / f"{pre}eval.json").read_text())
        pc = pd.read_csv(d / f"{pre}per_class.csv").set_index("class")
        cells = _row(_section(md, 8).split("recall@0.5 of car and pedestrian:")[1].split("![")[0], run)
        assert cells[-4:] == [f"{ev['AP']:.3f}", f"{ev['AP50']:.3f}", f"{pc.loc['car', 'recall50']:.3f}",
                              f"{pc.loc['pedestrian', 'recall50']:.3f}"], run
    # learning curve: one point (turn 1), the headline's numbers
    (pt,) = json.loads((out / "08_delta" / "learning_curve.json").read_text())
    assert (pt["turn"], pt["start_worst_AP50"], pt["worst_AP50"]) == (1, h["iter0"], h["iter1"])
    assert pt["random_worst_AP50"] == pytest.approx(h["iter0"] + h["random_delta"])
    assert (out / "figures" / "learning_curve.png").stat().st_size > 10_000
    assert _row(_section(md, 10), "1")[1] == h["worst_slice"].replace("|", "\\|")
    # time and disk: every section's timing.json (training included), folder bytes
    stage = _section(md, 11)
    for n, folder in enumerate(SECTIONS[:7], 1):
        t = json.loads((out / folder / "timing.json").read_text())["seconds"]
        assert _row(stage, f"§{n}")[1:3] == [folder, f"{t:.1f}"], folder
    card = json.loads((out / "04_train" / "run_card.json").read_text())
    assert float(_row(stage, "§4")[2]) >= 0.9 * card["wall_time_s"] > 1
    rss4 = json.loads((out / "04_train" / "timing.json").read_text())["peak_rss_mb"]
    assert rss4 > 100 and float(_row(stage, "§4")[3]) == pytest.approx(rss4, abs=0.5)  # MB, the section's own peak
    assert float(_row(stage, "§5")[4]) > 0.1 and float(_row(stage, "§7")[5]) > 1  # MB: predictions; arm weights
    # provenance: the SHA-256 of every label file §1 read, recomputed here
    prov = _section(md, 12)
    for rel in ("labels/det_20/det_train.json", "labels/det_20/det_val.json"):
        assert f"| `{rel}` | `{hashlib.sha256((tiny_world / rel).read_bytes()).hexdigest()}` |" in prov
    assert re.search(r"generated at commit `([0-9a-f]{40}(-dirty)?|unknown)`", prov)
    scale = _section(md, 13)
    assert "| 100× | 22,200 |" in scale and "| 10,000× | 2,220,000 |" in scale and "FAISS IVF-PQ" in scale
    for n in (10, 11, 12, 13):
        assert not re.search(r"\b(None|nan|NaN)\b", _section(md, n)), n


def _review(queue: list, out: Path) -> tuple[Path, str]:
    """Turn 1's Label Studio queue as a reviewer would submit it: the first task's boxes all
    relabelled bus plus an added motorcycle, every other task accepted as pre-annotated."""
    tasks = copy.deepcopy(queue)
    for i, t in enumerate(tasks, 1):
        t["id"] = i
        res = copy.deepcopy(t["predictions"][0]["result"]) if t.get("predictions") else []
        if i == 1:
            for r in res:
                r["value"]["rectanglelabels"] = ["bus"]
            res.append({"id": "added", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                        "original_width": 320, "original_height": 180, "image_rotation": 0,
                        "value": {"x": 5.0, "y": 5.0, "width": 20.0, "height": 30.0, "rotation": 0,
                                  "rectanglelabels": ["motorcycle"]}})
        t["annotations"] = [{"id": 100 + i, "was_cancelled": False, "result": res,
                             "created_at": "2026-12-02T05:00:00Z", "updated_at": "2026-12-02T05:00:00Z"}]
    out.write_text(json.dumps(tasks))
    return out, tasks[0]["data"]["name"]


def test_two_turns_train_on_the_imported_reviewed_labels(first_run, tiny_world, ingested, tmp_path):
    """flywheel_turns 2 on a copy of the first run (turn 1 stays fresh): turn 2 starts from the
    registry's model, mines frames turn 1 did not, and every arm trains on the reviewed labels."""
    src, _ = first_run
    out = tmp_path / "outputs"
    shutil.copytree(src, out, symlinks=True)
    src_store = listing(src / "mlflow")
    queue = json.loads((out / "07_autolabel_retrain" / "labels_mined" / "label_studio_review.json").read_text())
    assert queue, "turn 1 sent nothing to review: the test needs a queue"
    export, edited = _review(queue, tmp_path / "export.json")
    assert cli(["import-labels", "--label-studio", str(export), "--out", str(tmp_path / "reviewed")]) == 0
    p = run_notebook(tiny_world, out, "--set", "flywheel_turns=2", "--set", f"flywheel_reviewed=[{tmp_path / 'reviewed'}]",
                     ingested=ingested[0])  # the first run's data: turn 1 stays fresh
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "§5–§8 turn 2: done in" in p.stdout
    assert listing(src / "mlflow") == src_store, "the copy logged into the original outputs' MLflow store"
    t1, t2 = out, out / "turn2"
    assert json.loads((t2 / "TURN.json").read_text())["params"] == {"turn": 2}
    for s in SECTIONS:  # turn 1 was loaded, not recomputed
        assert (t1 / s / "manifest.json").read_text() == (src / s / "manifest.json").read_text(), s
    # the registry's model is turn 2's iter0: its eval-pool mAP is the one the registry recorded
    reg = json.loads((t1 / "runs" / "registry.json").read_text())
    promoted = {c["run"]: c for c in reg["candidates"]}[reg["promoted"]]
    assert json.loads((t2 / "05_eval_iter0" / "eval.json").read_text())["AP50"] == pytest.approx(promoted["overall_AP50"])
    mined1 = set(pd.read_csv(t1 / "06_mine" / "mined.csv")["name"])
    mined2 = set(pd.read_csv(t2 / "06_mine" / "mined.csv")["name"])
    random2 = set(pd.read_csv(t2 / "07_autolabel_retrain" / "random_frames.csv")["name"])
    assert mined2 and not mined2 & mined1 and not random2 & mined1, "turn 2 re-used frames turn 1 added"
    # carried = turn 1's accepted auto-labels with the reviewed frames replacing theirs
    reviewed = {f["name"]: f for f in bdd.load_frames(tmp_path / "reviewed" / "labels.json")}
    carried = {f["name"]: f for f in bdd.load_frames(t2 / "07_autolabel_retrain" / "carried.json")}
    lab2 = json.loads((t2 / "07_autolabel_retrain" / "labeling.json").read_text())["carried"]
    assert lab2["reviewed_frames"] == len(reviewed) == len(queue) and set(reviewed) <= set(carried)
    accepted1 = {n for n, f in ((f["name"], f) for f in bdd.load_frames(
        t1 / "07_autolabel_retrain" / "labels_mined" / "labels.json")) if any(lb["score"] >= 0.4 for lb in f["labels"])}
    assert set(carried) == accepted1 | set(reviewed) and lab2["frames"] == len(carried)
    want = sorted(bdd.CLASSES.index(c) for c in [lb["category"] for lb in reviewed[edited]["labels"]])
    assert set(want) == {bdd.CLASSES.index("bus"), bdd.CLASSES.index("motorcycle")}
    assert [lb["category"] for lb in carried[edited]["labels"]] == [lb["category"] for lb in reviewed[edited]["labels"]]
    # issue 29: the imported reviews are scored too, against iter0 (never trained on pool frames)
    li = json.loads((t2 / "07_autolabel_retrain" / "label_issues" / "summary.json").read_text())["sets"]
    assert li["reviewed"]["boxes"] == sum(len(bdd.boxes_table([f]).query("not crowd and not ignore"))
                                          for f in reviewed.values())
    # ... and reach every arm's YOLO training set on disk
    arms = pd.read_csv(t2 / "07_autolabel_retrain" / "arms.csv")
    gt_train = bdd.load_frames(t1 / "03_pools" / "gt_train.json")
    assert (arms["carried_frames"] == len(carried)).all() and set(arms["init"]) == {"turn1 promoted"}
    for r in arms.itertuples():
        yolo = t2 / "runs" / "data" / r.run / "labels" / "train"
        assert _yolo_classes(yolo, [edited]) == {edited: want}, r.run
        assert {Path(n).stem for n in carried} <= {q.stem for q in yolo.glob("*.txt")}
    cont = arms[arms["arm"] == "continue"].iloc[0]
    assert cont["data_hash"] == experiment.frames_hash(gt_train + sorted(carried.values(), key=lambda f: f["name"]))
    # the learning curve: one point per turn, turn 1's as turn 1 drew it
    curve = json.loads((t2 / "08_delta" / "learning_curve.json").read_text())
    assert [c["turn"] for c in curve] == [1, 2]
    assert curve[0] == json.loads((t1 / "08_delta" / "learning_curve.json").read_text())[0]
    h2 = json.loads((t2 / "08_delta" / "headline.json").read_text())
    assert (curve[1]["start_worst_AP50"], curve[1]["worst_AP50"]) == (h2["iter0"], h2["iter1"])
    assert curve[1]["start_overall_AP50"] == pytest.approx(promoted["overall_AP50"])
    md = (t2 / "case_study" / "case_study_v1.md").read_text()
    assert report.leftovers(md) == [] and "flywheel turn 2" in md.splitlines()[0]
    assert [ln.split(" | ")[0] for ln in _section(md, 10).splitlines() if ln.startswith("| ") and ln[2].isdigit()] == \
        ["| 1", "| 2"]
    for img in re.findall(r"\]\(((?:\.\./)+figures/[^)]+)\)", md):
        assert (t2 / "case_study" / img).exists(), img
    assert "§8 (turn 2)" in _section(md, 11)
    # a changed review makes turn 2's §7 and §8 stale, nothing before them
    # the run's own config: the profile, its --set keys and the BDD_* environment the run inherited
    cfg = load_config("tiny", {"data_root": str(tiny_world), "outputs_dir": str(out), "flywheel_turns": 2,
                               "flywheel_reviewed": [str(tmp_path / "reviewed")], "pool_sources": ["labels", "ingested"],
                               "ingest_dir": str(ingested[0]), "mine_k": 20})
    st = status(cfg)
    assert st["fresh"].all(), (st[["folder", "reason"]].to_string(), {k: v for k, v in os.environ.items() if "BDD" in k})
    frames = bdd.load_frames(tmp_path / "reviewed" / "labels.json")
    frames[0]["labels"] = frames[0]["labels"][:-1]
    bdd.write_bdd_json(frames, tmp_path / "reviewed" / "labels.json")
    st = status(cfg).set_index("folder")
    assert st.loc[st.index[:10], "fresh"].all()
    assert st.loc["turn2/07_autolabel_retrain", "reason"].startswith("input changed: ")
    assert st.loc["turn2/08_delta", "reason"] == "upstream turn2/07_autolabel_retrain is stale"


def test_ingested_frames_join_the_pool_and_only_the_pool(first_run, ingested):
    """Issue 15: frames without labels or attributes are mined with predicted attributes, labelled by §7,
    kept out of train/eval/oracle and of label quality; the ingest folder is only read."""
    out, _ = first_run
    folder, before = ingested
    assert listing(folder) == before, "the run wrote into the ingest folder"
    rows = pd.read_csv(folder / "frames.csv")
    frames = pd.read_csv(out / "01_collect" / "frames.csv", keep_default_na=False, na_values=[""])
    confirm = pd.read_csv(out / "01_collect" / "confirm_frames.csv")
    j = json.loads((out / "01_collect" / "ingested.json").read_text())
    conf_drive = rows["group"].astype(str).isin(confirm["group"].astype(str))
    assert j["ingested"] == len(rows) == 22 * 3 and j["ingested_dropped_confirm_drive"] == int(conf_drive.sum()) > 0
    assert j["ingested_joined"] == len(rows) - int(conf_drive.sum()) - j["ingested_dropped_name_clash"]
    ing = frames[frames["origin"] == "ingested"]
    assert len(ing) == j["ingested_joined"] and ing[["weather", "timeofday", "scene", "slice"]].isna().all().all()
    pools = pd.read_csv(out / "03_pools" / "pools.csv", keep_default_na=False, na_values=[""])
    p_ing = pools[pools["origin"] == "ingested"]
    eval_groups = set(pools.loc[pools["pool"] == "eval", "group"].astype(str))
    assert set(p_ing["pool"]) <= {"pool", "holdout"}
    assert (p_ing["pool"] == "holdout").tolist() == p_ing["group"].astype(str).isin(eval_groups).tolist()
    gt_names = {f["name"] for f in bdd.load_frames(out / "03_pools" / "gt_pool.json")}
    assert not gt_names & set(p_ing["name"])
    # §6: predicted attributes, marked, with a confidence; mined frames say whether they have GT
    attrs = pd.read_csv(out / "06_mine" / "pool_attributes.csv", keep_default_na=False, na_values=[""])
    pool_ing = set(p_ing.loc[p_ing["pool"] == "pool", "name"])
    pred = attrs[attrs["attr_source"] == "predicted"]
    assert set(pred["name"]) == pool_ing and len(pool_ing) >= 16 * 3
    for a in ("weather", "timeofday", "scene"):
        assert pred[a].notna().all() and pred[f"{a}_conf"].between(0, 1, inclusive="right").all()
        assert attrs.loc[attrs["attr_source"] == "labels", f"{a}_conf"].isna().all()
    acc = pd.read_csv(out / "06_mine" / "attribute_accuracy.csv").set_index("attribute")
    lab_rows = attrs[attrs["attr_source"] == "labels"]
    assert set(acc.index) == {"weather", "timeofday", "scene"}
    for a in acc.index:  # scored on every labelled pool frame whose value is a condition (not undefined)
        assert acc.loc[a, "n_test"] == int((lab_rows[a] != "undefined").sum()) > 50
    assert acc["accuracy"].between(0, 1).all() and (out / "figures" / "attribute_confusion.png").stat().st_size > 10_000
    mined = pd.read_csv(out / "06_mine" / "mined.csv", keep_default_na=False, na_values=[""])
    summary = json.loads((out / "06_mine" / "mining_summary.json").read_text())
    n_gt = int(mined["name"].isin(gt_names).sum())
    assert summary["counts"]["mined_with_gt"] == n_gt == int((mined["origin"] == "labels").sum())
    assert summary["counts"]["mined_predicted_attrs"] == len(mined) - n_gt > 0
    assert (mined["attr_source"] == "predicted").tolist() == (mined["origin"] == "ingested").tolist()
    # §7 labels them; quality counts only frames with GT; the oracle arm cannot use them
    lab = json.loads((out / "07_autolabel_retrain" / "labeling.json").read_text())["mined"]
    assert lab["frames"] == len(mined) and lab["frames_with_gt"] == n_gt
    labels = {f["name"] for f in bdd.load_frames(out / "07_autolabel_retrain" / "labels_mined" / "labels.json")}
    assert set(mined["name"]) == labels
    md = (out / "case_study" / "case_study_v1.md").read_text()
    assert f"{n_gt} of the {len(mined)} mined frames have ground truth" in md and "**predicted** attributes" in md
    assert f"measured only where it exists ({n_gt} of {len(mined)} frames)" in md
    d = summary["dedup"]
    assert f"the mined {d['after']['frames']} come from {d['after']['drives']} drives" in md
