"""FiftyOne explorer on a tiny synthetic world, in a private database under tmp.

Each number is checked against an independent computation: tags/fields/counts against
the input tables, mAP against pycocotools, similarity against a FAISS exact search.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bdd_engine import artifacts, bdd, evaluate, explorer, synth  # first: offline-safe env before fiftyone
from bdd_engine.config import load_config
from bdd_engine.env import PROJECT_ROOT

import fiftyone as fo  # noqa: E402,I001  pinned in requirements.txt: missing = an error, not 11 silent skips
from fiftyone import ViewField as F  # noqa: E402


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """65 synthetic frames + GT with crowd and ignore-mapped boxes injected."""
    cfg = load_config("tiny", {"synth_n_train": 40, "synth_n_val": 20}, env=False)
    root = synth.generate(cfg, out_root=tmp_path_factory.mktemp("world") / "synth", workers=1)
    frames = []
    for split in ("train", "val"):
        frames += bdd.load_frames(root / "labels" / "det_20" / f"det_{split}.json")
    rng = np.random.default_rng(0)
    for fr in frames[::5]:  # exercise iscrowd: a crowd car and an "other vehicle" region
        labels = fr["labels"]
        if labels:
            labels[0].setdefault("attributes", {})["crowd"] = True
        b = dict(x1=float(rng.uniform(0, 200)), y1=float(rng.uniform(60, 120)))
        b.update(x2=b["x1"] + 40.0, y2=b["y1"] + 25.0)
        labels.append({"id": "ign0", "category": "other vehicle", "attributes": {}, "box2d": b})
    ft = bdd.frames_table(frames, bdd.index_images(root))
    names = ft["name"].tolist()
    pools = {"train": names[:25], "eval": names[25:50], "pool": names[50:], "golden": names[25:30]}
    return cfg, ft, frames, pools


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """Private mongod in a tmp folder; asserts it is gone after the module."""
    db_dir = tmp_path_factory.mktemp("fo") / "db"
    explorer.disconnect()  # an earlier module may have left its own database connected
    explorer.connect(db_dir)
    yield db_dir
    explorer.disconnect()
    assert explorer.mongod_pids(db_dir) == [], "mongod left running after disconnect()"


@pytest.fixture(scope="module")
def ds(world, db):
    cfg, ft, frames, pools = world
    return explorer.build_dataset(cfg, ft, frames, pools=pools, name="t-explorer", overwrite=True)


def _fake_predictions(frames, seed=0):
    """GT boxes jittered, ~20% dropped, one FP per frame, random scores (BDD schema)."""
    rng = np.random.default_rng(seed)
    out = []
    for fr in frames:
        labels = []
        for i, lb in enumerate(fr["labels"]):
            if lb["category"] not in bdd.CLASS_ID or rng.random() < 0.2:
                continue
            b = lb["box2d"]
            j = rng.normal(0, 1.5, 4)
            x1, y1 = b["x1"] + j[0], b["y1"] + j[1]
            labels.append({"id": str(i), "category": lb["category"], "score": float(rng.uniform(0.05, 1)),
                           "box2d": {"x1": x1, "y1": y1, "x2": max(b["x2"] + j[2], x1 + 0.5), "y2": max(b["y2"] + j[3], y1 + 0.5)}})
        x, y = rng.uniform(0, 250), rng.uniform(0, 150)
        labels.append({"id": "fp", "category": str(rng.choice(bdd.CLASSES[:5])), "score": float(rng.uniform(0, 0.6)),
                       "box2d": {"x1": x, "y1": y, "x2": x + 20, "y2": y + 20}})
        out.append({"name": fr["name"], "attributes": fr.get("attributes"), "labels": labels})
    return out


# ----------------------------------------------------------------------------- tests
def test_fields_tags_counts_equal_tables(ds, world):
    cfg, ft, frames, pools = world
    assert len(ds) == len(ft) and ds.info["skipped"]["missing_image"] == 0
    assert ds.persistent and ds.info["synthetic"] is True and "SYNTHETIC" in ds.description
    tags = ds.count_sample_tags()
    for attr in ("weather", "timeofday", "scene"):
        want = ft[attr].value_counts().to_dict()
        assert ds.count_values(attr) == want
        assert {t.split(":", 1)[1]: c for t, c in tags.items() if t.startswith(attr + ":")} == want
    assert ds.count_values("slice") == ft["slice"].value_counts().to_dict()
    for tag, names in pools.items():
        assert tags[tag] == len(names)
        assert set(ds.match_tags(tag).values("name")) == set(names)
    assert tags["synthetic"] == len(ft)
    by_name = dict(zip(*ds.values(["name", "video"])))
    assert by_name == dict(zip(ft["name"], ft["video"]))
    # boxes: per frame, count / class / crowd / ignore equal the (mapped) box table
    boxes = bdd.boxes_table(frames)
    got = pd.DataFrame([
        {"name": n, "category": d.label, "crowd": d["crowd"], "ignore": d["ignore"]}
        for n, dets in zip(*ds.values(["name", "ground_truth.detections"])) for d in dets
    ])
    key = ["name", "category", "crowd", "ignore"]
    assert len(got) == len(boxes)
    assert got.groupby(key).size().to_dict() == boxes.groupby(key).size().to_dict()
    assert boxes["ignore"].sum() > 0 and boxes["crowd"].sum() > 0


def test_relative_boxes_roundtrip(ds, world):
    """Relative xywh × image size gives back the BDD pixel box."""
    _, _, frames, _ = world
    s = ds.first()
    fr = next(f for f in frames if f["name"] == s["name"])
    W, H = s.metadata.width, s.metadata.height
    shift = evaluate.PIXEL_SHIFT
    det, lb = s.ground_truth.detections[0], fr["labels"][0]
    x, y, w, h = det.bounding_box
    np.testing.assert_allclose([x * W, y * H, x * W + w * W - shift, y * H + h * H - shift],
                               [lb["box2d"][k] for k in ("x1", "y1", "x2", "y2")], atol=1e-6)


def test_eval_run_map_equals_our_evaluator_and_pycocotools(ds, world):
    _, ft, frames, pools = world
    preds = _fake_predictions(frames)
    ref_preds = copy.deepcopy(preds)
    # one inverted box: dropped and counted (FiftyOne's spatial index would crash on it)
    preds[25]["labels"].append({"id": "bad", "category": "car", "score": 0.9, "box2d": {"x1": 50, "y1": 50, "x2": 40, "y2": 60}})
    res = explorer.add_predictions(ds, preds, field="predictions_iter0", eval_key="eval_iter0", eval_on="eval")
    assert "eval_iter0" in ds.list_evaluations()
    assert ds.info["predictions"]["predictions_iter0"]["degenerate_dropped"] == 1
    view = ds.match_tags("eval")
    eval_gt = [f for f in frames if f["name"] in set(pools["eval"])]
    ours = evaluate.evaluate(eval_gt, ref_preds, n_boot=0).AP
    coco = evaluate.pycocotools_reference(eval_gt, ref_preds)["AP"]
    print(f"mAP fiftyone={res.mAP():.5f} evaluate.py={ours:.5f} pycocotools={coco:.5f}")
    assert 0.05 < ours < 0.95  # non-trivial, else the comparison proves nothing
    assert res.mAP() == pytest.approx(ours, abs=1e-3)
    assert res.mAP() == pytest.approx(coco, abs=1e-3)
    # per-sample TP/FP/FN exist and add up to the prediction counts on the eval view
    tp, fp = view.sum("eval_iter0_tp"), view.sum("eval_iter0_fp")
    assert tp > 0 and fp > 0
    n_pred = view.count("predictions_iter0.detections")
    n_crowd_matched = n_pred - tp - fp  # detections matched to crowd/ignore regions
    assert 0 <= n_crowd_matched < n_pred * 0.2
    # pool frames got predictions but are not part of the eval run
    assert ds.match_tags("pool").count("predictions_iter0.detections") > 0
    assert ds.match_tags("pool").exists("eval_iter0_tp").count() == 0


def test_max_dets_caps_predictions_per_class(ds, world):
    _, _, frames, _ = world
    fr = copy.deepcopy(frames[0])
    fr["labels"] = [{"id": str(i), "category": cat, "score": i / 300, "box2d": {"x1": i % 50, "y1": 5.0, "x2": i % 50 + 10, "y2": 20.0}}
                    for cat in ("car", "bus") for i in range(150)]
    explorer.add_predictions(ds, [fr], field="pred_cap", eval_key=None, max_dets=100)
    dets = ds.match(fo.ViewField("name") == fr["name"]).first().pred_cap.detections
    assert len(dets) == 200  # COCO's maxDets is per image *and class*
    for cat in ("car", "bus"):
        kept = [d.confidence for d in dets if d.label == cat]
        assert len(kept) == 100 and min(kept) == pytest.approx(50 / 300)
    ds.delete_sample_field("pred_cap")


def test_similarity_top10_equals_faiss_mining(ds, world):
    """sort_by_similarity on the failure prototype == mine.mine()'s FAISS top-10."""
    from bdd_engine import mine

    cfg, ft, _, pools = world
    rng = np.random.default_rng(3)
    names = ft["name"].tolist()
    emb = rng.normal(size=(len(names), 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # embed.py's contract: unit rows
    explorer.add_embeddings(ds, names, emb, brain_key="img_sim", viz_key="img_viz")
    assert {"img_sim", "img_viz"} <= set(ds.list_brain_runs())
    u = np.asarray(ds.values("uniqueness"), float)
    assert np.all((u >= 0) & (u <= 1)) and u.std() > 0
    pts = ds.load_brain_results("img_viz").current_points
    assert pts.shape == (len(names), 2) and np.isfinite(pts).all()

    eval_df = ft[ft["name"].isin(pools["eval"])]
    worst = eval_df["slice"].value_counts().index[0]
    per_frame = pd.DataFrame({"name": eval_df["name"], "ap50": 0.0, "recall50": 0.0, "n_gt": 3, "n_pred": 1})
    res = mine.mine(per_frame, eval_df, ft[ft["name"].isin(pools["pool"])], emb, names, k=10, strategy="prototype",
                    by=cfg.eval_by, fail_ap=cfg.mine_fail_ap, fail_recall=cfg.mine_fail_recall,
                    hybrid_targeted=cfg.mine_hybrid_targeted, ivf_above=cfg.mine_ivf_above,
                    ivf_recall=cfg.mine_ivf_recall, min_frames=cfg.eval_min_frames, seed=cfg.seed,
                    synthetic=cfg.synthetic, max_per_drive=0, min_distance=0.0, worst_slice=worst)  # plain top-10
    assert len(res.failure_names) >= 2
    proto = emb[[names.index(n) for n in res.failure_names]].mean(0)
    ds.sort_by_similarity(ds.first().id, k=5, brain_key="img_sim")  # an earlier query on another view ...
    got = explorer.sort_by_similarity(ds.match_tags("pool"), proto, k=10).values("name")  # ... must not leak in
    assert got == res.mined["name"].tolist()

    explorer.tag_mined(ds, res.mined)
    m = ds.match_tags("mined").sort_by("mined_rank")
    assert m.values("name") == res.mined["name"].tolist()
    np.testing.assert_allclose(m.values("mined_score"), res.mined["score"], atol=1e-6)
    assert set(m.values("mined_source")) == {"prototype"}


def test_mined_autolabels_and_saved_views(ds, world):
    _, ft, frames, pools = world
    mined = pd.DataFrame({"name": pools["pool"][:6], "rank": range(1, 7), "score": np.linspace(0.9, 0.4, 6)})
    assert explorer.tag_mined(ds, mined) == 6
    assert ds.count_sample_tags()["mined"] == 6
    assert ds.match_tags("mined").sort_by("mined_rank").values("name") == mined["name"].tolist()

    route = lambda s: "accept" if s >= 0.6 else ("review" if s >= 0.35 else "discard")  # noqa: E731
    auto = _fake_predictions([f for f in frames if f["name"] in set(mined["name"])], seed=5)
    counts = explorer.add_autolabels(ds, auto, route=route)
    tab = bdd.boxes_table(auto)
    want = pd.Series([route(s) for s in tab["score"]]).value_counts().to_dict()
    assert counts == want
    assert ds.count_values("autolabels.detections.bucket") == want

    with pytest.raises(ValueError, match="router bucket"):
        explorer.add_autolabels(ds, auto)  # no bucket and no route: refused, not guessed

    worst = ft.loc[ft["name"].isin(pools["eval"]), "slice"].value_counts().index[0]
    if "eval_iter0" not in ds.list_evaluations():
        explorer.add_predictions(ds, _fake_predictions(frames), eval_on="eval")
    explorer.add_predictions(ds, _fake_predictions(frames, seed=9), "predictions_iter1_s42", "eval_iter1_s42", eval_on="eval")
    issues = pd.DataFrame({"name": [mined["name"][1], mined["name"][0], mined["name"][1]], "category": "car",
                           "x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0, "score": [0.9, 0.7, 0.2],
                           "reason": ["wrong class: looks like truck", "spurious box: x", "no issue"],
                           "flagged": [True, True, False], "set": "autolabels"})
    assert explorer.add_label_issues(ds, issues.assign(flagged=False)) == 0  # nothing flagged: no field, no view
    assert not ds.has_sample_field("label_issue_score")
    assert explorer.add_label_issues(ds, issues) == 2
    made = explorer.save_views(ds, worst_slice=worst, eval_key="eval_iter0", compare_key="eval_iter1_s42")
    assert set(made) == set(explorer.SAVED_VIEWS)
    li = ds.load_saved_view("label_issues")  # issue 29: flagged frames, most suspicious first, with the reason
    assert li.values("name") == [mined["name"][1], mined["name"][0]] and li.values("label_issue_score") == [0.9, 0.7]
    assert li.values("label_issues.detections.reason") == [["wrong class: looks like truck"], ["spurious box: x"]]
    n_worst = int(((ft["slice"] == worst) & ft["name"].isin(pools["eval"])).sum())
    assert len(ds.load_saved_view("worst_slice")) == n_worst
    fails = ds.load_saved_view("worst_slice_failures")
    assert 0 < len(fails) <= n_worst
    assert all(tp_fn[0] + tp_fn[1] > 0 for tp_fn in zip(fails.values("eval_iter0_fn"), fails.values("eval_iter0_fp")))
    assert ds.load_saved_view("mined").values("name") == mined["name"].tolist()
    assert len(ds.load_saved_view("golden_qa")) == len(pools["golden"])
    review = ds.load_saved_view("autolabel_review")
    assert review.count("autolabels.detections") == want.get("review", 0)


def test_rebuild_after_delete_reproduces_fields(ds, world):
    cfg, ft, frames, pools = world
    name = "t-rebuild"
    first = explorer.build_dataset(cfg, ft, frames, pools=pools, name=name, overwrite=True)
    schema = {k: str(v) for k, v in first.get_field_schema().items()}
    snap = _snapshot(first)
    first.delete()
    assert not fo.dataset_exists(name)
    rebuilt = explorer.get_dataset(cfg, name=name,
                                   rebuild=lambda: explorer.build_dataset(cfg, ft, frames, pools=pools, name=name))
    assert {k: str(v) for k, v in rebuilt.get_field_schema().items()} == schema
    assert _snapshot(rebuilt) == snap
    with pytest.raises(explorer.ExplorerError, match="exists"):
        explorer.build_dataset(cfg, ft, frames, pools=pools, name=name)
    rebuilt.delete()
    with pytest.raises(explorer.ExplorerError, match="does not exist"):
        explorer.get_dataset(cfg, name=name)


def _snapshot(ds):
    """Everything but ids/timestamps, sorted by name."""
    rows = []
    for s in ds.select_fields(["name", "weather", "timeofday", "scene", "slice", "video", "group", "pool", "ground_truth"]):
        d = s.to_dict()
        d.pop("_id", None)
        d.pop("created_at", None), d.pop("last_modified_at", None)
        for det in (d.get("ground_truth") or {}).get("detections", []):
            for k in [k for k in det if k.endswith("_id")]:  # ObjectIds (own, matched prediction)
                det.pop(k)
        d["tags"] = sorted(d.get("tags", []))
        rows.append(d)
    return sorted(rows, key=lambda r: r["name"])


def test_bad_inputs_are_refused_or_counted(world, db, tmp_path):
    cfg, ft, frames, pools = world
    bad = ft.copy()
    bad.loc[0, "image_path"] = str(tmp_path / "gone.jpg")
    ds2 = explorer.build_dataset(cfg, bad, frames, name="t-bad", overwrite=True)
    assert len(ds2) == len(ft) - 1 and ds2.info["skipped"]["missing_image"] == 1
    ds2.delete()
    with pytest.raises(ValueError, match="no ground-truth"):
        explorer.build_dataset(cfg, ft, frames[1:], name="t-bad", overwrite=True)
    with pytest.raises(ValueError, match="duplicate"):
        explorer.build_dataset(cfg, pd.concat([ft, ft.head(1)]), frames, name="t-bad", overwrite=True)


def test_connect_refuses_a_second_folder(db, tmp_path):
    assert explorer.connect(db) > 0  # idempotent for the same folder
    with pytest.raises(explorer.ExplorerError, match="already connected"):
        explorer.connect(tmp_path / "other")


def test_a_foreign_mongod_is_named_and_its_lock_left_alone(tmp_path):
    """A mongod we did not start already holds the folder: connect fails fast naming its PID,
    and never advises deleting mongod.lock (the lock of a live server); nothing is left behind."""
    import subprocess
    import sys

    import psutil

    db_dir = tmp_path / "locked"
    db_dir.mkdir()
    holder = subprocess.Popen([str(explorer.mongod_path()), "--dbpath", str(db_dir), "--port", "0",
                               "--bind_ip", "127.0.0.1", "--nounixsocket", "--logpath", str(tmp_path / "holder.log")])
    try:
        for _ in range(100):  # wait until the holder owns the lock
            if psutil.Process(holder.pid).net_connections(kind="tcp"):
                break
            holder.poll()
            assert holder.returncode is None, "holder mongod died"
            __import__("time").sleep(0.2)
        code = (
            "import bdd_engine.explorer as e\n"
            "try:\n    e.connect(%r, timeout=60)\nexcept e.ExplorerError as err:\n    print(err); raise SystemExit(3)\n" % str(db_dir)
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                           cwd=PROJECT_ROOT)
        assert r.returncode == 3, r.stderr[-2000:]
        assert f"another mongod (PID {holder.pid}), not started by bdd_engine, already serves {db_dir}" in r.stdout
        assert f"kill {holder.pid}" in r.stdout and "do not delete its mongod.lock" in r.stdout
        assert "remove" not in r.stdout.lower()
        assert explorer.mongod_pids(db_dir) == [holder.pid]  # we started nothing
        assert (db_dir / "mongod.lock").read_text().strip() == str(holder.pid)
    finally:
        holder.terminate()
        holder.wait(timeout=30)
    assert explorer.mongod_pids(db_dir) == []


_CLIENT = """
import sys, time
from pathlib import Path
import bdd_engine.explorer as e
import fiftyone as fo  # imported before the start line: both processes then start the database together
db, go, done = sys.argv[1:4]
print("READY", flush=True)
while not Path(go).exists():
    time.sleep(0.005)
try:
    port = e.connect(db, timeout=90)
except e.ExplorerError as err:
    print("ERROR", err, flush=True)
    raise SystemExit(3)
fo.Dataset().delete()  # a real round trip to the server
print("PORT", port, flush=True)
while not Path(done).exists():  # stay connected until both are
    time.sleep(0.05)
e.disconnect()
"""


def test_two_processes_starting_the_database_at_once_share_one_server(tmp_path):
    """Two processes (a run and the App, say) start the same database folder at the same
    instant: both connect to one mongod (no DBPathInUse), and it exits after both left."""
    import subprocess
    import sys
    import time

    db_dir, go, done = tmp_path / "db", tmp_path / "go", tmp_path / "done"
    outs = [tmp_path / f"out{i}.txt" for i in range(2)]
    # output to files and both reaped as they exit: the watchdog counts an unreaped (zombie)
    # client as alive, and it inherits the starter's stdout, so pipes read one by one would deadlock
    procs = [subprocess.Popen([sys.executable, "-c", _CLIENT, str(db_dir), str(go), str(done)], cwd=PROJECT_ROOT,
                              stdout=open(o, "w"), stderr=subprocess.STDOUT) for o in outs]
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not all("READY" in o.read_text() for o in outs):
            time.sleep(0.05)  # both have imported fiftyone and wait at the start line
        go.touch()
        while time.time() < deadline and not all("PORT" in o.read_text() or "ERROR" in o.read_text() for o in outs):
            time.sleep(0.1)
        done.touch()
        while time.time() < deadline and None in [p.poll() for p in procs]:  # poll (reap) each, every time
            time.sleep(0.1)
    finally:
        done.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    texts = [o.read_text() for o in outs]
    ports = [ln for t in texts for ln in t.splitlines() if ln.startswith("PORT ")]
    assert len(ports) == 2, [t[-1500:] for t in texts]
    assert ports[0] == ports[1], "both must use the one server of the folder"
    assert [p.returncode for p in procs] == [0, 0]
    for _ in range(100):  # the watchdog stops mongod once its last client has gone
        if not explorer.mongod_pids(db_dir):
            break
        time.sleep(0.2)
    assert explorer.mongod_pids(db_dir) == []


def test_the_database_folder_follows_outputs_dir(tmp_path, monkeypatch):
    """Without FIFTYONE_DATABASE_DIR the database lives in <outputs_dir>/.fiftyone/db (two runs
    with different outputs_dir no longer share, and race for, <repo>/outputs/.fiftyone)."""
    from bdd_engine.env import setup_env
    monkeypatch.delenv("FIFTYONE_DATABASE_DIR")
    setup_env()
    assert "FIFTYONE_DATABASE_DIR" not in __import__("os").environ
    cfg = load_config("tiny", {"outputs_dir": str(tmp_path / "o")}, env=False)
    assert explorer.db_dir_for(cfg) == tmp_path / "o" / ".fiftyone" / "db"
    seen = []

    class Stop(Exception):
        pass

    def fake_connect(db_dir=None, timeout=60.0, uri=None):
        seen.append(Path(db_dir))
        raise Stop

    monkeypatch.setattr(explorer.db, "connect", fake_connect)  # what dataset and sync reach via connect_for
    with pytest.raises(Stop):
        explorer.build_dataset(cfg, pd.DataFrame(), [])
    with pytest.raises(Stop):
        explorer.get_dataset(cfg)
    assert seen == [tmp_path / "o" / ".fiftyone" / "db"] * 2
    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", str(tmp_path / "mine"))  # the user's own choice wins
    assert explorer.db_dir_for(cfg) == tmp_path / "mine"


def test_sync_sections_follow_the_section_table():
    """The explorer mirrors sections of the one table (sections.py) in its order, upstream
    first, and every one is downstream of §1 (why a changed §1 rebuilds the dataset)."""
    from bdd_engine.sections import SECTIONS, UPSTREAM

    assert explorer.SYNC_SECTIONS == (1, 2, 3, 5, 6, 7, 8)
    assert set(explorer.SYNC_SECTIONS) <= set(SECTIONS)
    pos = {n: i for i, n in enumerate(explorer.SYNC_SECTIONS)}
    assert all(pos[u] < pos[n] for n in explorer.SYNC_SECTIONS for u in UPSTREAM[n] if u in pos)

    def reaches_1(n):
        return n == 1 or any(reaches_1(u) for u in UPSTREAM[n])

    assert all(reaches_1(n) for n in explorer.SYNC_SECTIONS)


def test_sync_from_checkpoints_rebuilds_after_delete(tiny_cfg, db):
    """§1–§3 run for real (flywheel), §4/§5 checkpoints written by hand (no training
    here): the dataset mirrors them, and deleting it then get_dataset() rebuilds the
    same fields from the files alone."""
    from bdd_engine import flywheel
    from bdd_engine.checkpoint import Section

    cfg = tiny_cfg
    flywheel.s1_collect(cfg)
    flywheel.s2_curate(cfg)
    flywheel.s3_pools(cfg)
    pools = Section(cfg, 3).read_df("pools.csv")
    with Section(cfg, 4).writer() as w:  # stand-in for a trained iter0 (not a model)
        w.write_json("run_card.json", {"stand_in": True})
        w.write_json("weights.json", {"weights": "none.pt"})
    eval_names = set(pools.loc[pools["pool"] == "eval", "name"])
    gt = bdd.load_frames(Section(cfg, 1).dir / "gt_collected.json")
    preds = _fake_predictions([f for f in gt if f["name"] in eval_names])
    worst = pools.loc[pools["pool"] == "eval", "slice"].value_counts().index[0]
    with Section(cfg, 5).writer() as w:
        bdd.write_bdd_json(preds, w.path("predictions.json"))
        w.write_json("worst_slice.json", {"worst_slice": worst})

    name = "t-sync"
    ds1 = explorer.sync_from_checkpoints(cfg, name=name)
    ok = {s for s, why in ds1.info["synced"].items() if why == "ok"}
    assert ok == {"01_collect", "03_pools", "02_curate", "05_eval_iter0"}
    assert ds1.info["synced"]["06_mine"] == "no manifest (never run, or interrupted)"
    assert len(ds1) == len(pools)
    tags = ds1.count_sample_tags()
    for p, n in pools["pool"].value_counts().items():
        assert tags[p] == n
    assert tags["golden"] == int(pools["golden"].astype(str).str.lower().eq("true").sum()) > 0
    emb, emb_names = artifacts.load_embeddings(cfg.out)
    assert ds1.exists("uniqueness").count() == len(set(emb_names) & set(pools["name"]))
    # the App holds boxes at the operating threshold; FiftyOne's eval of them == ours on the same boxes
    from bdd_engine.train import filter_conf

    shown = filter_conf(preds, float(cfg.eval_vis_conf))
    assert 0 < sum(len(f["labels"]) for f in shown) < sum(len(f["labels"]) for f in preds)
    ours = evaluate.evaluate([f for f in gt if f["name"] in eval_names], shown, n_boot=0).AP
    assert ds1.load_evaluation_results("eval_iter0").mAP() == pytest.approx(ours, abs=1e-3)
    assert {"worst_slice", "worst_slice_failures", "golden_qa"} <= set(ds1.list_saved_views())

    schema = {k: str(v) for k, v in ds1.get_field_schema().items()}
    snap, views = _snapshot(ds1), sorted(ds1.list_saved_views())
    ds1.delete()
    ds2 = explorer.get_dataset(cfg, name=name)  # missing → rebuilt from the checkpoints
    assert {k: str(v) for k, v in ds2.get_field_schema().items()} == schema
    assert _snapshot(ds2) == snap and sorted(ds2.list_saved_views()) == views
    assert ds2.load_evaluation_results("eval_iter0").mAP() == pytest.approx(ours, abs=1e-3)

    # a stale section is skipped and said so, not mirrored
    cfg2 = load_config("tiny", {**{k: cfg[k] for k in ("data_root", "outputs_dir")}, "eval_conf": 0.5}, env=False)
    ds3 = explorer.sync_from_checkpoints(cfg2, name=name)
    assert ds3.info["synced"]["05_eval_iter0"] == "config changed"
    assert "eval_iter0" not in ds3.list_evaluations()
    ds3.delete()


def test_ingested_frames_without_gt_carry_predicted_attributes(world, db):
    """Issue 15: an ingested frame (no GT, no attributes) is a sample; §6's predicted attributes are
    set on it, marked attr_source 'predicted' with confidences; labelled frames keep theirs."""
    cfg, ft, frames, _ = world
    lab = ft.head(3).assign(origin="labels")
    ing = pd.DataFrame([{"name": "fe000001-00000001-0000030.jpg", "split": "ingested", "weather": None,
                         "timeofday": None, "scene": None, "slice": None, "video": "fe000001-00000001",
                         "group": "fe000001", "image_path": ft["image_path"].iloc[5], "n_boxes": 0, "origin": "ingested"}])
    table = pd.concat([lab, ing], ignore_index=True)
    with pytest.raises(ValueError, match="have no ground-truth frame"):   # a labelled frame without GT is still refused
        explorer.build_dataset(cfg, table.assign(origin="labels"), frames, name="t-ingested", overwrite=True)
    ds2 = explorer.build_dataset(cfg, table, frames, name="t-ingested", overwrite=True)
    assert len(ds2) == 4 and ds2.match(F("origin") == "ingested").count() == 1
    attrs = pd.DataFrame({"name": table["name"], "weather": ["a", "b", "c", "foggy"], "timeofday": ["x"] * 3 + ["night"],
                          "scene": ["y"] * 3 + ["highway"], "slice": ["s"] * 3 + ["foggy | night | highway"],
                          "weather_conf": [None] * 3 + [0.7], "timeofday_conf": [None] * 3 + [0.9],
                          "scene_conf": [None] * 3 + [0.6], "attr_source": ["labels"] * 3 + ["predicted"]})
    assert explorer.set_predicted_attributes(ds2, attrs, ["weather", "timeofday", "scene"]) == 1
    s = ds2.match(F("name") == ing["name"].iloc[0]).first()
    assert (s["attr_source"], s["slice"], s["weather"], s["timeofday_conf"]) == ("predicted", "foggy | night | highway",
                                                                                  "foggy", 0.9)
    kept = ds2.match(F("attr_source") == "labels")
    assert kept.values("weather") == lab["weather"].tolist() and set(kept.values("weather_conf")) == {None}
    # a pool with nothing predicted (the demo: no ingested frames) syncs too, its confidences all None
    ds3 = explorer.build_dataset(cfg, lab, frames, name="t-ingested-none", overwrite=True)
    assert explorer.set_predicted_attributes(ds3, attrs.head(3), ["weather", "timeofday", "scene"]) == 0
    assert set(ds3.values("scene_conf")) == {None} and set(ds3.values("attr_source")) == {"labels"}
    fo.delete_dataset("t-ingested")
    fo.delete_dataset("t-ingested-none")


def _perfect_or_empty(frames, names_perfect):
    """GT as predictions (score 0.9) on ``names_perfect``, nothing elsewhere (every GT box a miss)."""
    return [{"name": f["name"], "labels": [{**lb, "score": 0.9} for lb in f["labels"] if lb["category"] in bdd.CLASS_ID]
             if f["name"] in names_perfect else []} for f in frames]


def test_every_models_eval_run_exists_with_our_map_and_fixed_broken_views(tiny_world, tmp_path, db):
    """Issue 26 item 1: with seeds the §8 files are <run>_predictions.json; the App holds an eval
    run per model — iter0, every run of arms.csv (any arm name), turn 2's start model (turn 1's
    promotion) and its runs — each with the mAP our evaluator gives the same boxes, which model
    each turn promoted, and the worst slice's fixed_by_iter1 / broken_by_iter1 views."""
    from bdd_engine import flywheel
    from bdd_engine.checkpoint import Section, atomic_write_json
    from bdd_engine.train import filter_conf
    from conftest import make_cfg

    cfg = make_cfg(tiny_world, tmp_path / "outputs", flywheel_turns=2)
    flywheel.s1_collect(cfg)
    flywheel.s2_curate(cfg)
    flywheel.s3_pools(cfg)
    pools = Section(cfg, 3).read_df("pools.csv")
    ev = pools[pools["pool"] == "eval"]
    gt = [f for f in bdd.load_frames(Section(cfg, 1).dir / "gt_collected.json") if f["name"] in set(ev["name"])]
    worst = ev["slice"].value_counts().index[0]
    ws = sorted(ev.loc[ev["slice"] == worst, "name"])
    runs = {"iter1_s42": ("iter1", 42), "iter1_s43": ("iter1", 43), "random_gt_s42": ("random_gt", 42)}
    preds = {"iter0": _fake_predictions(gt, 0), "iter1_s42": _perfect_or_empty(gt, set(ws[::2])),
             "iter1_s43": _fake_predictions(gt, 2), "random_gt_s42": _fake_predictions(gt, 3),
             "t2_iter0": _fake_predictions(gt, 4), "t2_iter1_s42": _fake_predictions(gt, 5)}
    with Section(cfg, 4).writer() as w:  # stand-in for a trained iter0 (not a model)
        w.write_json("run_card.json", {"stand_in": True})
        w.write_json("weights.json", {"weights": "none.pt"})
    for turn, start, arm_runs, promoted in ((1, "iter0", runs, "iter1_s42"), (2, "t2_iter0", {"iter1_s42": ("iter1", 42)}, "iter0")):
        with Section(cfg, 5, turn).writer() as w:
            bdd.write_bdd_json(preds[start], w.path("predictions.json"))
            w.write_json("worst_slice.json", {"worst_slice": worst})
        with Section(cfg, 6, turn).writer() as w:
            w.write_df("mined.csv", pd.DataFrame({"name": pools.loc[pools["pool"] == "pool", "name"][:3], "rank": [1, 2, 3]}))
            w.write_df("pool_attributes.csv", pools.loc[pools["pool"] == "pool", ["name", "slice"]].assign(
                weather="clear", timeofday="daytime", scene="highway", attr_source="labels",
                weather_conf=None, timeofday_conf=None, scene_conf=None))
        with Section(cfg, 7, turn).writer() as w:
            w.write_df("arms.csv", pd.DataFrame([{"run": r, "arm": a, "seed": s} for r, (a, s) in arm_runs.items()]))
        with Section(cfg, 8, turn).writer() as w:
            for r in arm_runs:
                bdd.write_bdd_json(preds[r if turn == 1 else f"t2_{r}"], w.path(f"{r}_predictions.json"))
        atomic_write_json(Section(cfg, 8, turn).base / "runs" / "registry.json", {"promoted": promoted})

    ds = explorer.sync_from_checkpoints(cfg, name="t-models")
    assert {k for k, why in ds.info["synced"].items() if why == "ok"} >= {"08_delta", "turn2/05_eval_iter0", "turn2/08_delta"}
    models = ds.info["models"]
    assert set(models) == set(preds)
    assert models["random_gt_s42"]["arm"] == "random_gt" and models["t2_iter0"]["turn"] == 2
    assert ds.info["promoted"] == {"1": "iter1_s42", "2": "t2_iter0"}
    vis = float(cfg.eval_vis_conf)
    for key, p in preds.items():
        ours = evaluate.evaluate(gt, filter_conf(p, vis), n_boot=0).AP
        assert models[key]["eval_key"] == f"eval_{key}" and f"eval_{key}" in ds.list_evaluations()
        assert ds.load_evaluation_results(f"eval_{key}").mAP() == pytest.approx(ours, abs=1e-3), key

    # fixed / broken by iter1 (turn 1's first iter1 run) on the worst slice: fewer / more FN + FP than iter0
    view = ds.match_tags("eval").match(F("slice") == worst)
    err = {k: {n: a + b for n, a, b in zip(*view.values(["name", f"eval_{k}_fn", f"eval_{k}_fp"]))}
           for k in ("iter0", "iter1_s42")}
    fixed = {n for n in ws if err["iter1_s42"][n] < err["iter0"][n]}
    broken = {n for n in ws if err["iter1_s42"][n] > err["iter0"][n]}
    assert fixed and broken and fixed <= set(ws[::2]) and broken.isdisjoint(ws[::2])
    assert set(ds.load_saved_view("fixed_by_iter1").values("name")) == fixed
    assert set(ds.load_saved_view("broken_by_iter1").values("name")) == broken
    line = explorer.app.contents_line(ds)  # what `python -m bdd_engine app` prints under its URL
    assert "eval_iter1_s42 (promoted)" in line and "eval_t2_iter0 (promoted)" in line and "eval_random_gt_s42," in line
    assert "fixed_by_iter1" in line and "broken_by_iter1" in line
    ds.delete()
