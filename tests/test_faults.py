"""One test per case of the fault and bad-input sweep (issue 12): each plants the fault and
asserts the message, the count, and that nothing was lost or faked."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bdd_engine import artifacts, checkpoint, explorer, mine, synth, train
from bdd_engine import flywheel as fw
from bdd_engine.__main__ import main as cli
from bdd_engine.checkpoint import Section, status
from bdd_engine.config import ConfigError, load_config
from bdd_engine.yolo import export_yolo
from tests.conftest import make_cfg

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def tree_bytes(root: Path) -> dict[str, str]:
    """Every file under root → sha256 (the before/after picture of a user's folder)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def world(tiny_world, tmp_path) -> Path:
    """A private copy of the tiny world that a test may damage."""
    dst = tmp_path / "world"
    shutil.copytree(tiny_world, dst)
    return dst


def labels(world: Path, split: str = "train") -> Path:
    return world / "labels" / "det_20" / f"det_{split}.json"


def edit_labels(world: Path, fn, split: str = "train") -> None:
    p = labels(world, split)
    frames = json.loads(p.read_text())
    fn(frames)
    p.write_text(json.dumps(frames))


def image_of(world: Path, name: str) -> Path:
    return next(world.glob(f"images/*/*/{name}"))


def first_boxed(world: Path, split: str = "train", k: int = 0) -> dict:
    return [f for f in json.loads(labels(world, split).read_text()) if f["labels"]][k]


def project_copy(tmp_path: Path) -> Path:
    """The tracked project files in a tmp folder, with the venv linked (make -o venv skips setup)."""
    dst = tmp_path / "proj"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, (x.decode() for x in files)):
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    (dst / ".venv").symlink_to(ROOT / ".venv")
    return dst


# ----------------------------------------------------------------------------- 1 data safety
def test_real_data_profile_never_touches_a_user_download(tmp_path):
    proj = project_copy(tmp_path)
    user = proj / "data" / "bdd100k"
    (user / "labels" / "det_20").mkdir(parents=True)
    (user / "MY_DOWNLOAD.txt").write_text("keep\n")
    (user / "labels" / "det_20" / "det_val.json").write_text("[]")
    before = tree_bytes(proj / "data")
    env = {**os.environ, "CI": "1"}
    s = subprocess.run([str(proj / ".venv/bin/python"), "-m", "bdd_engine", "synth", "--profile", "full"],
                       cwd=proj, capture_output=True, text=True, env=env, timeout=120)
    assert s.returncode == 2 and "reads real data (synthetic: false)" in s.stderr
    d = subprocess.run(["make", "-o", "venv", "demo", "PROFILE=full"], cwd=proj, capture_output=True, text=True,
                       env=env, timeout=300)
    assert d.returncode != 0
    assert "error in §1 01_collect" in d.stderr and "no image folder under" in d.stderr
    assert tree_bytes(proj / "data") == before  # every byte under data/ as it was
    assert not (user / "SYNTHETIC.md").exists() and not (user / synth.MARKER).exists()


def test_synth_refuses_any_folder_it_did_not_create(tmp_path):
    cfg = load_config("tiny", env=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(synth.WorldRefused, match="not a synthetic world made by bdd_engine"):
        synth.generate(cfg, foreign, force=True)
    partial = tmp_path / "w.partial"  # a .partial folder we did not mark is not ours either
    partial.mkdir()
    (partial / "x").write_text("x")
    with pytest.raises(synth.WorldRefused):
        synth.generate(cfg, tmp_path / "w")
    assert (foreign / "notes.txt").read_text() == "mine" and (partial / "x").exists()


def test_collect_refuses_a_synthetic_world_under_a_real_data_profile(tiny_world, tmp_path):
    cfg = load_config("full", {"data_root": str(tiny_world), "outputs_dir": str(tmp_path / "o")}, env=False)
    with pytest.raises(ValueError, match="holds a synthetic world made by bdd_engine.*synthetic: false"):
        fw.s1_collect(cfg)
    assert not Section(cfg, 1).dir.exists()


def test_own_world_regenerates_when_its_keys_change(tmp_path):
    cfg = load_config("tiny", {"synth_n_train": 40, "synth_n_val": 12}, env=False)
    root = synth.generate(cfg, tmp_path / "w", workers=1)
    n = json.loads((root / synth.MARKER).read_text())["frames"]
    cfg2 = load_config("tiny", {"synth_n_train": 48, "synth_n_val": 12}, env=False)
    synth.generate(cfg2, root, workers=1)
    assert json.loads((root / synth.MARKER).read_text())["frames"] > n


# ----------------------------------------------------------------------------- 2 changed inputs
def test_edited_labels_make_collect_and_everything_after_it_stale(world, tmp_path):
    cfg = make_cfg(world, tmp_path / "o")
    fw.s1_collect(cfg)
    fw.s3_pools(cfg)
    man = Section(cfg, 1).manifest()
    assert man["inputs"]["label_files"]["labels/det_20/det_train.json"] == checkpoint.sha256_file(labels(world))
    assert man["inputs"]["label_files"]["labels/det_20/det_val.json"] == checkpoint.sha256_file(labels(world, "val"))
    os.utime(labels(world))  # touched, same bytes: still fresh
    assert status(cfg).set_index("section").loc[[1, 3], "fresh"].all()
    edit_labels(world, lambda fr: fr[0]["attributes"].update(weather="foggy"))
    st = status(cfg).set_index("section")
    assert st.loc[1, "reason"].startswith("input changed:") and "det_train.json" in st.loc[1, "reason"]
    assert st.loc[3, "reason"] == "upstream 01_collect is stale"
    img = image_of(world, first_boxed(world)["name"])
    fw.s1_collect(cfg)
    img.write_bytes(img.read_bytes()[:-1] + b"\0")  # one byte of one image
    assert "input changed:" in Section(cfg, 1).staleness()
    fw.s1_collect(cfg)
    extra = img.with_name("zz_new.jpg")
    shutil.copy(img, extra)  # a new file in an image folder
    assert Section(cfg, 1).staleness().startswith("input folder changed")


# ----------------------------------------------------------------------------- 3 one run at a time
def test_second_process_is_refused_naming_the_holder(tiny_world, tmp_path):
    out = tmp_path / "o"
    code = ("import sys, time; from bdd_engine import checkpoint; checkpoint.acquire_lock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([PY, "-c", code, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = make_cfg(tiny_world, out)
        with pytest.raises(checkpoint.OutputsBusy, match=f"in use by PID {holder.pid}"):
            fw.s1_collect(cfg)
        assert not Section(cfg, 1).dir.exists() and not (out / ".01_collect.staging").exists()
        r = subprocess.run([PY, "-m", "bdd_engine", "run", "--profile", "tiny", "--set", f"outputs_dir={out}",
                            "--set", f"data_root={tiny_world}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and f"in use by PID {holder.pid}" in r.stderr
    finally:
        holder.kill()
        holder.wait()
    fw.s1_collect(make_cfg(tiny_world, out))  # the OS released the dead holder's lock
    assert Section(make_cfg(tiny_world, out), 1).is_fresh()


# ----------------------------------------------------------------------------- 4 finished, unstripped
KILL_AT_LAST_SAVE = """
import os, signal, sys
from pathlib import Path
from tests.conftest import make_cfg
from bdd_engine import train
from bdd_engine.flywheel import train_spec
cfg = make_cfg(Path(sys.argv[1]), Path(sys.argv[2]), train_epochs=1)
def die(trainer):
    if trainer.epoch == trainer.epochs - 1:
        os.kill(os.getpid(), signal.SIGKILL)   # right after the last epoch's last.pt is on disk
train.train(train_spec(cfg), sys.argv[3], Path(sys.argv[2]) / "runs", name="iter0", data_hash="h",
            callbacks={"on_model_save": die})
"""


def test_kill_after_last_epoch_save_is_finalised_not_stuck(tiny_world, tmp_path):
    cfg = make_cfg(tiny_world, tmp_path / "o", train_epochs=1)
    fw.s1_collect(cfg)
    r3 = fw.s3_pools(cfg)
    p = subprocess.run([PY, "-c", KILL_AT_LAST_SAVE, str(tiny_world), str(cfg.out), str(r3.info["data_yaml"])],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    last = cfg.out / "runs" / "iter0" / "weights" / "last.pt"
    assert train.checkpoint_state(last) == "finished-unstripped"
    w = train.train(fw.train_spec(cfg), r3.info["data_yaml"], cfg.out / "runs", name="iter0", data_hash="h")
    assert w == last and train.checkpoint_state(last) == "finished"
    card = json.loads((cfg.out / "runs" / "iter0" / "run_card.json").read_text())
    assert card["finished"] and card["weights_sha256"] == checkpoint.sha256_file(last)
    assert train.train(fw.train_spec(cfg), r3.info["data_yaml"], cfg.out / "runs", name="iter0", data_hash="h") == last


def test_interrupted_s4_on_tiny_restarts_and_matches_an_uninterrupted_run(tiny_world, tmp_path):
    """A §4 run killed after its first epoch (a resumable last.pt, an unfinished card: what a kill
    leaves) and rerun gives iter0 weights and §5 numbers equal to an uninterrupted §4 (tiny:
    train_resume false), and its run card records the restart."""
    import torch

    class Stop(Exception):
        pass

    def stop(trainer):
        if trainer.epoch == 0:
            raise Stop()
    cfgs = {k: make_cfg(tiny_world, tmp_path / k, train_epochs=2) for k in ("clean", "killed")}
    for k, cfg in cfgs.items():
        fw.s1_collect(cfg)
        r3 = fw.s3_pools(cfg)
        if k == "killed":
            with pytest.raises(Stop):
                train.train(fw.train_spec(cfg), r3.info["data_yaml"], cfg.out / "runs", name="iter0",
                            data_hash=Section(cfg, 3).manifest_hash(), callbacks={"on_fit_epoch_end": stop})
            assert train.checkpoint_state(cfg.out / "runs" / "iter0" / "weights" / "last.pt") == "resumable"
        fw.s4_train(cfg)
    cards = {k: json.loads((c.out / "04_train" / "run_card.json").read_text()) for k, c in cfgs.items()}
    assert cards["killed"]["restarts_after_interrupt"] == 1 and cards["clean"]["restarts_after_interrupt"] == 0
    assert not cards["killed"]["resumed"] and cards["killed"]["fingerprint"] == cards["clean"]["fingerprint"]
    sd = {k: torch.load(c.out / "runs" / "iter0" / "weights" / "last.pt", weights_only=False)["model"].state_dict()
          for k, c in cfgs.items()}
    assert all(torch.equal(sd["clean"][n], sd["killed"][n]) for n in sd["clean"])
    preds = {k: json.loads((fw.s5_eval(c).dir / "predictions.json").read_text()) for k, c in cfgs.items()}
    assert preds["clean"] == preds["killed"]


# ----------------------------------------------------------------------------- 5 unreadable images
def test_truncated_and_empty_jpegs_are_counted_listed_and_left_out(world, tmp_path):
    a, b = first_boxed(world, k=0)["name"], first_boxed(world, k=1)["name"]
    pa, pb = image_of(world, a), image_of(world, b)
    pa.write_bytes(pa.read_bytes()[: pa.stat().st_size // 2])  # truncated
    pb.write_bytes(b"")  # zero bytes
    cfg = make_cfg(world, tmp_path / "o", collect_total=10_000)
    r = fw.s1_collect(cfg)
    assert r.info["counts"]["unreadable image"] == 2 and r.info["unreadable_images"] == 2
    issues = r["validation_issues"]
    bad = issues[issues["kind"] == "unreadable image"].set_index("name")["detail"]
    assert "empty file (0 bytes)" in bad[b] and str(pb) in bad[b]
    assert "truncated" in bad[a] and str(pa) in bad[a]
    assert not {a, b} & set(r["frames"]["name"])  # never reaches training or §5
    assert r.info["frames_with_image"] == r.info["frames_labelled"] - 2


# ----------------------------------------------------------------------------- 6 / 7 bad coordinates
def test_null_and_nan_coordinates_are_degenerate_boxes_never_written(world, tmp_path):
    def plant(frames):
        boxed = [f for f in frames if f["labels"]]
        boxed[0]["labels"][0]["box2d"]["y2"] = None
        boxed[1]["labels"][0]["box2d"]["x1"] = float("nan")

    edit_labels(world, plant, split="train")
    cfg = make_cfg(world, tmp_path / "o", collect_total=10_000)
    r1 = fw.s1_collect(cfg)
    assert r1.info["counts"]["degenerate box"] == 2 and r1.info["boxes_left_out"] == 2
    fw.s2_curate(cfg)  # crashed with a TypeError naming no frame
    r3 = fw.s3_pools(cfg)
    txt = "".join(p.read_text() for p in (r3.dir / "yolo" / "labels").rglob("*.txt"))
    assert "nan" not in txt and "inf" not in txt
    assert r3.info["yolo_export"].get("degenerate box", 0) == 0  # §1 already left them out of the GT (issue 23)


# ----------------------------------------------------------------------------- 8 mixed sizes
def test_mixed_image_sizes_are_reported_and_each_frame_uses_its_own(world, tmp_path):
    fr = first_boxed(world)
    p = image_of(world, fr["name"])
    with Image.open(p) as im:
        w, h = im.size
        im.resize((2 * w, 2 * h)).save(p, quality=90)
    edit_labels(world, lambda frames: [lb["box2d"].update({k: 2 * v for k, v in lb["box2d"].items()})
                                       for f in frames if f["name"] == fr["name"] for lb in f["labels"]])
    cfg = make_cfg(world, tmp_path / "o", collect_total=10_000)
    r = fw.s1_collect(cfg)
    assert r.info["counts"]["image size"] == 1 and r.info["image_sizes"] == {f"{w}x{h}": r.info["frames_with_image"] - 1,
                                                                             f"{2 * w}x{2 * h}": 1}
    row = r["frames"].set_index("name").loc[fr["name"]]
    assert (row["width"], row["height"]) == (2 * w, 2 * h)
    assert "out-of-image box" not in r.info["counts"]  # scaled boxes are inside their own frame
    frame = next(f for f in json.loads(labels(world).read_text()) if f["name"] == fr["name"])
    _, counts = export_yolo({"train": [frame]}, {fr["name"]: p}, tmp_path / "y", artifacts.image_sizes(r["frames"]))
    first = (tmp_path / "y/labels/train" / (fr["name"][:-4] + ".txt")).read_text().splitlines()[0].split()
    b = frame["labels"][0]["box2d"]
    assert abs(float(first[3]) - (min(b["x2"], 2 * w) - max(b["x1"], 0)) / (2 * w)) < 1e-5


# ----------------------------------------------------------------------------- 9 empty label files
def test_empty_label_files(world, tmp_path, capsys):
    # an empty confirmation file (val): a warning, no candidates, and §5 will say what is missing
    labels(world, "val").write_text("[]")
    r = fw.s1_collect(make_cfg(world, tmp_path / "one"))
    assert r.info["empty_label_files"] == [str(labels(world, "val"))]
    assert len(artifacts.read_df(r.dir.parent, 1, "confirm_frames.csv")) == 0
    assert "holds no frames" in capsys.readouterr().out
    # every collect label file empty: nothing to collect, one error naming the file and the fix
    labels(world, "train").write_text("[]")
    with pytest.raises(ValueError, match="every label file is empty .*det_train.json.*synth --profile tiny --force"):
        fw.s1_collect(make_cfg(world, tmp_path / "both"))


def test_missing_label_file_of_a_synthetic_world_says_regenerate_it(world, tmp_path):
    labels(world, "val").unlink()
    with pytest.raises(FileNotFoundError) as e:
        fw.s1_collect(make_cfg(world, tmp_path / "o"))
    assert str(e.value) == (f"label file not found: {labels(world, 'val')}. "
                            "Regenerate the world: python -m bdd_engine synth --profile tiny --force.")
    assert "download" not in str(e.value).lower()


# ----------------------------------------------------------------------------- 10 bad types, failed sections
def test_mistyped_override_fails_at_load_and_stale_upstream_propagates(tiny_world, tmp_path, capsys):
    with pytest.raises(ConfigError, match="'train_epochs' in the overrides of profile 'tiny' expects int, got 'abc'"):
        load_config("tiny", {"train_epochs": "abc"}, env=False)
    assert cli(["status", "--profile", "tiny", "--set", "train_epochs=abc"]) == 2
    assert "train_epochs" in capsys.readouterr().err
    cfg = make_cfg(tiny_world, tmp_path / "o")
    fw.s1_collect(cfg)
    fw.s3_pools(cfg)
    changed = make_cfg(tiny_world, tmp_path / "o", collect_total=200)  # §1 stale, §3's own hash unchanged
    st = status(changed).set_index("section")
    assert st.loc[1, "reason"] == "config changed" and st.loc[3, "reason"] == "upstream 01_collect is stale"
    assert not st["fresh"].any()


# ----------------------------------------------------------------------------- 11 fallback rule
def test_failure_rule_names_the_fallback_actually_used():
    pf = pd.DataFrame({"name": ["a", "b", "c"], "ap50": [0.9, 0.5, 0.7], "recall50": [1.0, 1.0, 1.0]})
    ev = pd.DataFrame({"name": ["a", "b", "c"], "slice": ["s"] * 3})
    names, rule = mine.failure_frames(pf, ev, "s", fail_ap=-1.0, fail_recall=0.0)
    assert rule.startswith("fallback: no frame met 'ap50 <= -1.0 or recall50 < 0.0'") and names == ["b", "c"]
    src = (ROOT / "bdd_engine" / "casestudy.py").read_text()
    assert "mining['failure_rule']" in src and "cfg.mine_fail_ap" not in src


# ----------------------------------------------------------------------------- 12 read-only outputs
def test_unwritable_outputs_are_named_not_blamed_on_fiftyone(tiny_world, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "outputs"  # cannot be created: a file stands where its parent should be
    assert cli(["run", "--profile", "tiny", "--set", f"outputs_dir={out}", "--set", f"data_root={tiny_world}"]) == 2
    err = capsys.readouterr().err
    assert f"outputs folder {out} is not writable" in err and "fiftyone" not in err.lower()
    with pytest.raises(checkpoint.OutputsNotWritable, match=str(out)):
        fw.s1_collect(make_cfg(tiny_world, out))
    with pytest.raises(explorer.ExplorerError, match="database folder .* is not writable") as e:
        explorer.check_writable(out / ".fiftyone" / "db")
    assert "pip install" not in str(e.value)


# ----------------------------------------------------------------------------- 13 + 17 Ctrl-C, progress
def test_ctrl_c_in_training_prints_one_line_to_resume_and_sections_stream(tiny_world, tmp_path):
    out = tmp_path / "o"
    cmd = [PY, "-m", "bdd_engine", "run", "--profile", "tiny", "--set", f"outputs_dir={out}",
           "--set", f"data_root={tiny_world}", "--set", "train_epochs=30"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    t0 = time.time()
    for line in proc.stdout:  # streamed while the kernel runs, not after
        lines.append(line)
        if line.startswith("§4 04_train: computing"):
            break
        assert time.time() - t0 < 300
    time.sleep(3)  # inside Ultralytics' epoch loop
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    rest_out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert any(ln.startswith("[run] §1 01_collect: done in") and "(recomputed)" in ln for ln in lines)
    assert any(ln.startswith("§3 03_pools: computing") for ln in lines)
    tail = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert tail.startswith("interrupted in §4 04_train") and "to resume, run `python -m bdd_engine run --profile tiny" in tail
    assert "Traceback" not in err and "AssertionError" not in err
    assert Section(make_cfg(tiny_world, out, train_epochs=30), 3).is_fresh()  # finished sections kept


# ----------------------------------------------------------------------------- 14 / 15 / 16 CLI
def test_cli_rejects_bad_section_numbers_and_slice_keys(tmp_path, capsys):
    for n in ("0", "9"):
        with pytest.raises(SystemExit) as e:
            cli(["run", "--profile", "tiny", "--from", n])
        assert e.value.code == 2
        assert f"invalid choice: {n}" in capsys.readouterr().err
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps([{"name": "a.jpg", "attributes": {"weather": "clear"}, "labels": []}]))
    with pytest.raises(SystemExit) as e:
        cli(["evaluate", "--gt", str(gt), "--pred", str(gt), "--by", "weather,nonsense"])
    assert e.value.code == 2 and "unknown attribute(s) nonsense" in capsys.readouterr().err


def test_every_command_accepts_set(capsys):
    for cmd in (["app"], ["status"], ["synth"], ["run"], ["evaluate", "--gt", "x", "--pred", "y"], ["pretrain"],
                ["label", "--src", "x", "--labeler", "teacher", "--out", "y"],
                ["predict", "--weights", "w.pt", "--src", "x", "--out", "y.json"]):
        assert cli([*cmd, "--profile", "tiny", "--set", "mine_kk=3"]) == 2  # parsed, then rejected by name
        assert "did you mean 'mine_k'?" in capsys.readouterr().err


def test_commands_that_read_no_profile_refuse_set_in_one_line_and_the_readme_says_which(capsys):
    from bdd_engine.__main__ import NO_PROFILE_COMMANDS

    assert NO_PROFILE_COMMANDS == ("ingest", "import-labels", "stand-in-weights")
    for cmd in NO_PROFILE_COMMANDS:
        for flags in (["--set", "mine_k=3"], ["--profile", "tiny"], ["--set=mine_k=3"]):
            assert cli([cmd, "--src", "x", "--out", "y", *flags]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith(f"error: {cmd} reads no profile, so --profile/--set "), err
    names = ", ".join(f"`{c}`" for c in NO_PROFILE_COMMANDS[:-1]) + f" and `{NO_PROFILE_COMMANDS[-1]}`"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"Every command but {names} takes `--profile` and `--set key=value`" in readme


# ----------------------------------------------------------------------------- 18 manifest claim
def test_manifest_holds_no_wall_clock_and_repeats_byte_identically(tiny_world, tmp_path):
    a, b = make_cfg(tiny_world, tmp_path / "a"), make_cfg(tiny_world, tmp_path / "b")
    for c in (a, b):
        fw.s1_collect(c)
    ma, mb = Section(a, 1).manifest_path.read_bytes(), Section(b, 1).manifest_path.read_bytes()
    assert ma == mb and b"seconds" not in ma and b"finished" not in ma
    assert "seconds" in json.loads((Section(a, 1).dir / "timing.json").read_text())
    doc = " ".join(checkpoint.__doc__.split())
    assert "byte-identical manifest;" not in doc and "manifests from §4 on differ" in doc


def test_strict_json_writer(tmp_path):
    p = checkpoint.atomic_write_json(tmp_path / "x.json", {"a": float("nan"), "b": [np.float64("inf"), 1.5]})
    assert json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}")) == {"a": None, "b": [None, 1.5]}


RACE = """
import sys
from bdd_engine.config import load_config
from bdd_engine import synth
cfg = load_config("tiny", {"synth_n_train": 400, "synth_n_val": 40}, env=False)
print(synth.generate(cfg, sys.argv[1], workers=1), flush=True)
"""


def test_two_runs_generating_one_world_wait_for_each_other(tmp_path):
    root = tmp_path / "w"
    first = subprocess.Popen([PY, "-c", RACE, str(root)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    t0 = time.time()
    while not (tmp_path / "w.partial" / synth.PARTIAL_MARKER).exists():
        assert time.time() - t0 < 60 and first.poll() is None
        time.sleep(0.05)
    second = subprocess.run([PY, "-c", RACE, str(root)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err1[-2000:] + second.stderr[-2000:]
    assert f"waiting for PID {first.pid}" in second.stdout            # it waited, it did not delete
    assert "synth world" not in second.stderr                          # and it generated nothing itself
    marker = json.loads((root / synth.MARKER).read_text())
    assert marker["frames"] == len(list(root.glob("images/*/*/*.jpg")))
    assert not (tmp_path / "w.partial").exists() and not (root / synth.PARTIAL_MARKER).exists()
