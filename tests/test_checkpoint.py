"""checkpoint.py: what makes a section recompute, recovery from a swap killed between its
two renames, and atomicity of every write helper (a failing writer leaves the old file
and no temp file)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bdd_engine import checkpoint as ck
from bdd_engine import flywheel as fw
from bdd_engine.checkpoint import Section
from bdd_engine.config import load_config

REPO = Path(__file__).resolve().parent.parent


def cfg_at(out: Path, **over):
    return load_config("tiny", {"outputs_dir": str(out), **over}, env=False)


def write_section(cfg, n: int, payload: str = "v1", fig: bytes | None = None) -> Section:
    sec = Section(cfg, n)
    with sec.writer() as w:
        w.write_text("data.txt", payload)
        w.write_df("table.csv", pd.DataFrame({"x": [1, 2], "p": [payload, payload]}))
        w.counts["n"] = 2
        if fig is not None:
            p = ck.atomic_write_bytes(cfg.out / "figures" / f"fig{n}.png", fig)
            w.add_external(p)
    return sec


def leftovers(d: Path) -> list[str]:
    """Temp/staging/old entries anywhere under ``d``."""
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")
                  if p.name.endswith((".tmp", ".staging", ".old")) or ".tmp." in p.name)


# ----------------------------------------------------------------------------- invalidation
def test_fresh_after_write_and_nothing_to_recompute(tmp_path, capsys):
    cfg = cfg_at(tmp_path)
    s1 = write_section(cfg, 1, fig=b"png-1")
    s3 = write_section(cfg, 3)
    assert s1.staleness() is None and s3.staleness() is None
    man = s1.manifest()
    assert set(man["artifacts"]) == {"01_collect/data.txt", "01_collect/table.csv", "figures/fig1.png"}
    assert man["artifacts"]["01_collect/data.txt"] == ck.sha256_file(s1.dir / "data.txt")
    assert man["config_hash"] == cfg.section_hash(1) and man["counts"] == {"n": 2}
    assert Section(cfg, 3).manifest()["upstream"] == {"01_collect": s1.manifest_hash()}
    assert fw.needs_run(Section(cfg, 1)) is False and "fresh checkpoint" in capsys.readouterr().out
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("target", ["01_collect/data.txt", "01_collect/table.csv", "figures/fig1.png"])
def test_edited_artifact_forces_a_recompute(tmp_path, capsys, target):
    cfg = cfg_at(tmp_path)
    write_section(cfg, 1, fig=b"png-1")
    p = tmp_path / target
    p.write_bytes(p.read_bytes() + b" ")
    sec = Section(cfg, 1)
    assert sec.staleness() == f"artifact changed: {target}"
    assert fw.needs_run(sec) is True
    assert f"computing — artifact changed: {target}" in capsys.readouterr().out
    p.unlink()
    assert Section(cfg, 1).staleness() == f"artifact missing: {target}"


def test_same_size_edit_is_caught_by_content_hash(tmp_path):
    cfg = cfg_at(tmp_path)
    write_section(cfg, 1, payload="aaaa")
    p = tmp_path / "01_collect" / "data.txt"
    st = p.stat()
    p.write_text("aaab")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))     # same size and mtime
    assert Section(cfg, 1).staleness() == "artifact changed: 01_collect/data.txt"


def test_config_change_invalidates_only_the_section_that_reads_the_key(tmp_path):
    cfg = cfg_at(tmp_path)
    write_section(cfg, 1)
    write_section(cfg, 3)
    pool = cfg_at(tmp_path, pool_eval_size=int(cfg.pool_eval_size) + 1)
    assert Section(pool, 3).staleness() == "config changed"
    assert Section(pool, 1).staleness() is None
    mine = cfg_at(tmp_path, mine_k=int(cfg.mine_k) + 1)                # a later section's key
    assert Section(mine, 1).staleness() is None and Section(mine, 3).staleness() is None
    glob = cfg_at(tmp_path, seed=int(cfg.seed) + 1)                     # a global key: every section
    assert Section(glob, 1).staleness() == "config changed" and Section(glob, 3).staleness() == "config changed"
    moved = cfg_at(tmp_path, workers=7)                                 # not a result key
    assert Section(moved, 1).staleness() is None


def test_upstream_recompute_with_new_content_invalidates_downstream(tmp_path, capsys):
    cfg = cfg_at(tmp_path)
    write_section(cfg, 1, payload="v1")
    write_section(cfg, 2)
    write_section(cfg, 3)
    write_section(cfg, 1, payload="v1")                                 # same content: same manifest bytes
    assert Section(cfg, 3).staleness() is None and Section(cfg, 2).staleness() is None
    write_section(cfg, 1, payload="v2")                                 # new content
    assert Section(cfg, 3).staleness() == "upstream 01_collect changed"
    assert Section(cfg, 2).staleness() == "upstream 01_collect changed"
    assert fw.needs_run(Section(cfg, 3)) is True
    assert "computing — upstream 01_collect changed" in capsys.readouterr().out
    assert Section(cfg, 4).staleness().startswith("no manifest")
    # every downstream link: 4 reads 3 only, so rewriting 1 leaves a fresh 4 fresh until 3 changes
    write_section(cfg, 3)
    write_section(cfg, 4)
    assert Section(cfg, 4).staleness() is None
    write_section(cfg, 3, payload="v2")
    assert Section(cfg, 4).staleness() == "upstream 03_pools changed"


def test_stale_upstream_makes_downstream_stale(tmp_path):
    """Transitive: an edited artifact or a changed key upstream makes every later section
    stale before the upstream section is even recomputed."""
    cfg = cfg_at(tmp_path)
    for n in (1, 3, 4):
        write_section(cfg, n)
    (tmp_path / "01_collect" / "data.txt").write_text("edited")
    assert Section(cfg, 3).staleness() == "upstream 01_collect is stale"
    assert Section(cfg, 4).staleness() == "upstream 03_pools is stale"
    (tmp_path / "01_collect" / "data.txt").write_text("v1")              # undo: fresh again
    assert Section(cfg, 4).staleness() is None
    coll = cfg_at(tmp_path, collect_total=int(cfg.collect_total) + 1)
    assert Section(coll, 1).staleness() == "config changed"
    assert Section(coll, 3).staleness() == "upstream 01_collect is stale"


def _with_inputs(cfg, files, folder):
    sec = Section(cfg, 1)
    with sec.writer() as w:
        w.write_text("data.txt", "x")
        rows = [ck.input_row(f) for f in files] + [ck.input_row(folder, kind="dir")]
        w.record_inputs(pd.DataFrame(rows), labels="test")
    return sec


def test_recorded_inputs_decide_freshness_by_content(tmp_path):
    cfg = cfg_at(tmp_path / "out")
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    lab, img = data / "labels.json", data / "img" / "a.jpg"
    lab.write_text('[{"name": "a.jpg"}]')
    img.write_bytes(b"jpeg")
    _with_inputs(cfg, [lab, img], data / "img")
    assert Section(cfg, 1).staleness() is None
    os.utime(lab, ns=(lab.stat().st_atime_ns, lab.stat().st_mtime_ns + 10**9))   # touch: same content
    assert Section(cfg, 1).staleness() is None
    lab.write_text('[{"name": "b.jpg"}]')                                       # same size, new content
    assert Section(cfg, 1).staleness() == f"input changed: {lab}"
    lab.write_text('[{"name": "a.jpg"}]')
    assert Section(cfg, 1).staleness() is None
    (data / "img" / "b.jpg").write_bytes(b"new")                               # a file added to a folder
    assert Section(cfg, 1).staleness() == f"input folder changed (files added or removed): {data / 'img'}"
    (data / "img" / "b.jpg").unlink()
    assert Section(cfg, 1).staleness() is None
    lab.unlink()
    assert Section(cfg, 1).staleness() == f"input missing: {lab}"


def test_missing_upstream_and_missing_manifest(tmp_path):
    import shutil

    cfg = cfg_at(tmp_path)
    write_section(cfg, 1)
    write_section(cfg, 3)
    (tmp_path / "03_pools" / "manifest.json").unlink()
    assert Section(cfg, 3).staleness() == "no manifest (never run, or interrupted)"
    write_section(cfg, 3)
    shutil.rmtree(tmp_path / "01_collect")
    assert Section(cfg, 3).staleness() == "upstream 01_collect missing"


def test_status_table_gives_each_reason(tmp_path):
    cfg = cfg_at(tmp_path)
    write_section(cfg, 1)
    write_section(cfg, 3)
    (tmp_path / "03_pools" / "data.txt").write_text("edited")
    st = ck.status(cfg).set_index("section")
    assert st.loc[1, "fresh"] and st.loc[1, "reason"] == ""
    assert not st.loc[3, "fresh"] and st.loc[3, "reason"] == "artifact changed: 03_pools/data.txt"
    assert st.loc[2, "reason"].startswith("no manifest") and list(st.index) == list(range(1, 9))


def test_forced_from_section():
    try:
        fw.recompute_from(6)
        assert [fw.forced(n) for n in range(1, 9)] == [False] * 5 + [True] * 3
        with pytest.raises(ValueError, match="sections are 1..8"):
            fw.recompute_from(9)
    finally:
        fw.recompute_from(None)
    assert not any(fw.forced(n) for n in range(1, 9))


# ----------------------------------------------------------------------------- interrupted swap
class Killed(BaseException):
    """Stands in for SIGKILL inside the process (nothing after it runs)."""


def _kill_at(monkeypatch, which: str):
    """Make checkpoint's os.replace die at the first rename ('final->old') or the second
    ('staging->final') of a section swap; every other rename (file writes) goes through."""
    real = os.replace

    def fake(src, dst, *a, **k):
        s, d = Path(src), Path(dst)
        if which == "final->old" and d.name.endswith(".old"):
            raise Killed
        if which == "staging->final" and s.name.endswith(".staging"):
            raise Killed
        return real(src, dst, *a, **k)

    monkeypatch.setattr(ck.os, "replace", fake)


def test_kill_between_the_two_renames_then_recover_restores_the_old_section(tmp_path, monkeypatch):
    cfg = cfg_at(tmp_path)
    old = write_section(cfg, 1, payload="old")
    old_manifest = old.manifest_path.read_bytes()
    _kill_at(monkeypatch, "staging->final")
    with pytest.raises(Killed):
        write_section(cfg, 1, payload="new")
    monkeypatch.undo()
    # state at the kill: the old folder moved aside, no 01_collect (the new one may still be staged)
    assert not (tmp_path / "01_collect").exists()
    assert (tmp_path / ".01_collect.old" / "manifest.json").read_bytes() == old_manifest
    ck.recover(tmp_path, "01_collect")
    sec = Section(cfg, 1)
    assert sec.manifest_path.read_bytes() == old_manifest and (sec.dir / "data.txt").read_text() == "old"
    assert sec.staleness() is None and not (tmp_path / ".01_collect.old").exists()
    # the next run discards the stale staging folder and swaps in cleanly
    write_section(cfg, 1, payload="new")
    assert (tmp_path / "01_collect" / "data.txt").read_text() == "new"
    assert leftovers(tmp_path) == [] and Section(cfg, 1).staleness() is None


def test_kill_after_the_second_rename_keeps_the_new_section(tmp_path, monkeypatch):
    cfg = cfg_at(tmp_path)
    write_section(cfg, 1, payload="old")
    real_rmtree = ck.shutil.rmtree

    def die_on_old(p, *a, **k):
        if Path(p).name.endswith(".old"):
            raise Killed
        return real_rmtree(p, *a, **k)

    monkeypatch.setattr(ck.shutil, "rmtree", die_on_old)
    with pytest.raises(Killed):
        write_section(cfg, 1, payload="new")
    monkeypatch.undo()
    assert (tmp_path / ".01_collect.old").exists() and (tmp_path / "01_collect" / "data.txt").read_text() == "new"
    ck.recover(tmp_path, "01_collect")
    assert not (tmp_path / ".01_collect.old").exists()
    assert (tmp_path / "01_collect" / "data.txt").read_text() == "new" and Section(cfg, 1).staleness() is None


def test_kill_before_the_first_rename_changes_nothing(tmp_path, monkeypatch):
    cfg = cfg_at(tmp_path)
    old = write_section(cfg, 1, payload="old")
    before = old.manifest_path.read_bytes()
    _kill_at(monkeypatch, "final->old")
    with pytest.raises(Killed):
        write_section(cfg, 1, payload="new")
    monkeypatch.undo()
    ck.recover(tmp_path, "01_collect")
    assert Section(cfg, 1).manifest_path.read_bytes() == before and Section(cfg, 1).staleness() is None


def test_real_sigkill_between_the_renames(tmp_path):
    """The same with a real SIGKILL in a child process (no finally/except runs)."""
    cfg = cfg_at(tmp_path)
    write_section(cfg, 1, payload="old")
    before = Section(cfg, 1).manifest_path.read_bytes()
    code = f"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
from bdd_engine import checkpoint as ck
from bdd_engine.config import load_config
cfg = load_config("tiny", {{"outputs_dir": {str(tmp_path)!r}}}, env=False)
real = os.replace
def fake(src, dst, *a, **k):
    if Path(src).name.endswith(".staging"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
ck.os.replace = fake
with ck.Section(cfg, 1).writer() as w:
    w.write_text("data.txt", "new")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not (tmp_path / "01_collect").exists() and (tmp_path / ".01_collect.old").exists()
    assert Section(cfg, 1).staleness() is not None            # not fresh while interrupted
    ck.recover(tmp_path, "01_collect")
    assert Section(cfg, 1).manifest_path.read_bytes() == before and Section(cfg, 1).staleness() is None


def test_recover_is_a_no_op_without_an_interrupted_swap(tmp_path):
    cfg = cfg_at(tmp_path)
    write_section(cfg, 1)
    before = sorted(p.name for p in tmp_path.iterdir())
    ck.recover(tmp_path, "01_collect")
    ck.recover(tmp_path, "02_curate")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_failing_section_body_keeps_the_old_section(tmp_path):
    cfg = cfg_at(tmp_path)
    write_section(cfg, 1, payload="old")
    before = Section(cfg, 1).manifest_path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with Section(cfg, 1).writer() as w:
            w.write_text("data.txt", "half")
            raise RuntimeError("boom")
    assert Section(cfg, 1).manifest_path.read_bytes() == before
    assert (tmp_path / "01_collect" / "data.txt").read_text() == "old" and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- atomic writes
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


class Unserialisable:
    pass


class Unpicklable:
    def __reduce__(self):
        raise OSError("disk full")


class BadFig:
    def savefig(self, path, **kw):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")


class BadFrame(pd.DataFrame):
    def to_parquet(self, *a, **k):
        Path(a[0]).write_bytes(b"partial")
        raise OSError("disk full")


def _unpicklable_array():
    a = np.empty(2, dtype=object)
    a[0], a[1] = 1, Unpicklable()
    return a


@pytest.mark.parametrize("name,write", [
    ("x.json", lambda p: ck.atomic_write_json(p, {"a": Unserialisable()})),
    ("x.bin", lambda p: ck.atomic_write_bytes(p, "not bytes")),
    ("x.png", lambda p: ck.atomic_save_fig(p, BadFig())),
    ("x.parquet", lambda p: ck.atomic_write_df(p, BadFrame({"x": [1]}))),
    ("x.npy", lambda p: ck.atomic_write_npy(p, _unpicklable_array())),
])
def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path, name, write):
    p = tmp_path / "sub" / name
    p.parent.mkdir()
    p.write_bytes(b"OLD CONTENT")
    with pytest.raises((OSError, TypeError, ValueError)):
        write(p)
    assert p.read_bytes() == b"OLD CONTENT"
    assert sorted(x.name for x in p.parent.iterdir()) == [name]


def test_atomic_path_on_error_and_on_success(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    with pytest.raises(ZeroDivisionError):
        with ck.atomic_path(p) as tmp:
            tmp.write_bytes(b"half written")
            assert tmp.parent == p.parent and tmp != p and p.read_bytes() == b"old"   # not visible yet
            1 / 0
    assert p.read_bytes() == b"old" and [x.name for x in tmp_path.iterdir()] == ["f.bin"]
    with ck.atomic_path(p) as tmp:
        tmp.write_bytes(b"new")
    assert p.read_bytes() == b"new" and [x.name for x in tmp_path.iterdir()] == ["f.bin"]
    assert _mode(p) == 0o666 & ~_umask()                                      # umask honoured, not 0600


def test_failed_rename_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "m.json"
    ck.atomic_write_json(p, {"v": 1})
    monkeypatch.setattr(ck.os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError("EXDEV")))
    with pytest.raises(OSError):
        ck.atomic_write_json(p, {"v": 2})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"v": 1} and [x.name for x in tmp_path.iterdir()] == ["m.json"]


def test_writers_round_trip(tmp_path):
    df = pd.DataFrame({"name": ["a", "b"], "v": [1.5, np.nan]})
    ck.atomic_write_df(tmp_path / "t.csv", df)
    assert (tmp_path / "t.csv").read_text() == "name,v\na,1.5\nb,\n"
    ck.atomic_write_df(tmp_path / "t.parquet", df)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), df)
    ck.atomic_write_df(tmp_path / "t.md", df)
    assert (tmp_path / "t.md").read_text().splitlines()[2] == "| a | 1.500 |"
    with pytest.raises(ValueError, match="unsupported suffix"):
        ck.atomic_write_df(tmp_path / "t.xlsx", df)
    assert not (tmp_path / "t.xlsx").exists()
    ck.atomic_write_npy(tmp_path / "a.npy", np.arange(3))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
    ck.atomic_write_json(tmp_path / "j.json", {"i": np.int64(3), "f": np.float32(0.5), "p": tmp_path, "a": np.arange(2)})
    assert json.loads((tmp_path / "j.json").read_text()) == {"i": 3, "f": 0.5, "p": str(tmp_path), "a": [0, 1]}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.npy", "j.json", "t.csv", "t.md", "t.parquet"]


# ----------------------------------------------------------------------------- peak memory per section
def test_peak_rss_is_the_sections_own_after_a_reset(tmp_path):
    """timing.json's peak_rss_mb must not carry an earlier section's peak (issue 14's table)."""
    big = np.ones(300 * 2**20 // 8)  # 300 MB, touched
    held = ck.peak_rss_mb()
    del big
    ck.reset_peak_rss()
    after = ck.peak_rss_mb()
    assert held is not None and after is not None and after < held - 200
    sec = write_section(cfg_at(tmp_path / "out"), 1)
    t = json.loads((sec.dir / "timing.json").read_text())
    assert 0 < t["peak_rss_mb"] < held - 200 and t["seconds"] >= 0


def test_free_memory_returns_a_finished_runs_heap_to_the_os():
    """train.free_memory trims glibc's freed heap: many small freed blocks (as a trainer leaves)
    stay resident without it (3.7 GB -> 0.9 GB after one YOLOv8m run, docs/full_profile.md).
    In a fresh interpreter: the suite's own heap (arenas, earlier tests) would blur the count."""
    code = """
import psutil
from bdd_engine import train
train.free_memory()  # imports torch first
rss = lambda: psutil.Process().memory_info().rss / 2**20
blocks, keep = [], []
for _ in range(4000):  # 250 MB of heap blocks, each followed by a small survivor that pins the heap
    blocks.append(bytearray(64 * 1024))
    keep.append(bytearray(600))
del blocks
before = rss()
train.free_memory()
print(before, rss())
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = map(float, r.stdout.split()[-2:])
    assert after < before - 150, (before, after)


# ----------------------------------------------------------------------------- owned folders
def test_claim_folder_killed_mid_claim_leaves_nothing_a_rerun_refuses(tmp_path, monkeypatch):
    """A kill between creating a folder and marking it must not leave an unmarked folder
    (which every later run would refuse as foreign): the claim appears whole or not at all."""
    target = tmp_path / "out" / "turn2"

    def killed(*a, **k):
        raise KeyboardInterrupt  # stands in for kill -9 after the mkdir, before the marker

    with monkeypatch.context() as m:
        m.setattr(ck, "atomic_write_json", killed)
        with pytest.raises(KeyboardInterrupt):
            ck.claim_folder(target, "TURN.json", "gen", {"turn": 2})
    assert not target.exists()
    assert ck.claim_folder(target, "TURN.json", "gen", {"turn": 2}) == target  # the rerun heals
    assert json.loads((target / "TURN.json").read_text()) == {"generator": "gen", "params": {"turn": 2}}
    assert [p.name for p in target.parent.iterdir()] == ["turn2"]  # the killed claim's temporary is gone
    assert ck.claim_folder(target, "TURN.json", "gen", {"turn": 2}) == target
    foreign = tmp_path / "out" / ".mine.claim-1"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    ck.claim_folder(tmp_path / "out" / "mine", "TURN.json", "gen", {})
    assert (foreign / "notes.txt").read_text() == "user data"  # only an empty or marker-only temporary is removed
