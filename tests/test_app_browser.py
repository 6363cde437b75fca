"""End to end: `python -m bdd_engine app` serves the FiftyOne App, headless Chromium renders its grid,
SIGTERM stops it and leaves no process behind.

Marked ``browser`` (~60 s). Chromium comes from Debian (`.ci/install_chromium.sh`, run
here when no chromium is found); without it the test fails when ``CI`` is set (``.ci/run``
exports CI=true) and skips otherwise. The screenshot goes to tmp only (tests never write
into the checkout); set ``EXPLORER_SCREENSHOT=outputs/figures/app_screenshot.png`` to keep a copy.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bdd_engine import bdd, explorer, synth
from bdd_engine.config import load_config
from bdd_engine.env import PROJECT_ROOT

from browser import dump_dom, find_chromium, grid_thumbnails, screenshot  # tests/browser.py

pytestmark = pytest.mark.browser


def in_ci() -> bool:
    """``CI`` set to anything but empty/0/false (``.ci/run`` exports CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def chromium():
    """A chromium binary. Missing and not installable: a failure in CI (the test must run
    there), a skip on a developer machine."""
    msg = ""
    if find_chromium() is None:
        r = subprocess.run(["bash", str(PROJECT_ROOT / ".ci" / "install_chromium.sh")],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            msg = f"chromium missing and .ci/install_chromium.sh failed: {r.stderr[-1000:]}"
        elif find_chromium() is None:
            msg = f"chromium still not found after .ci/install_chromium.sh: {r.stdout[-500:]}"
    if msg:
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return find_chromium()


@pytest.fixture(scope="module")
def app_db(tmp_path_factory):
    """Tiny synthetic dataset under the profile's dataset name, in a tmp database."""
    tmp = tmp_path_factory.mktemp("app")
    cfg = load_config("tiny", {"synth_n_train": 16, "synth_n_val": 8}, env=False)
    root = synth.generate(cfg, out_root=tmp / "synth", workers=1)
    frames = bdd.load_frames(root / "labels" / "det_20" / "det_val.json")
    frames += bdd.load_frames(root / "labels" / "det_20" / "det_train.json")
    ft = bdd.frames_table(frames, bdd.index_images(root))
    db_dir = tmp / "db"
    explorer.disconnect()  # an earlier module may have left its own database connected
    explorer.connect(db_dir)
    ds = explorer.build_dataset(cfg, ft, frames, pools={"eval": ft["name"][:8]}, overwrite=True)
    yield cfg, ds, db_dir
    explorer.disconnect()
    assert explorer.mongod_pids(db_dir) == [], "mongod left running"


def _read_url(proc: subprocess.Popen, timeout: float) -> tuple[str, list[str]]:
    """Read the app's stdout until it prints its URL line."""
    lines: list[str] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if line.startswith("FiftyOne App: "):
                return line.split()[2], lines
        elif proc.poll() is not None:
            break
    raise AssertionError(f"app did not print its URL within {timeout} s:\n{''.join(lines)[-3000:]}")


def test_app_renders_grid_and_stops_clean(chromium, app_db, tmp_path):
    import psutil
    from PIL import Image

    cfg, ds, db_dir = app_db
    n_samples = len(ds)
    port = explorer.free_port()
    env = {**os.environ, "FIFTYONE_DATABASE_DIR": str(db_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)  # the app finds our mongod by folder
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "bdd_engine", "app", "--profile", "tiny", "--port", str(port)],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree: list[int] = []
    try:
        url, _ = _read_url(proc, timeout=120)
        t_up = time.time() - t0
        assert url == f"http://127.0.0.1:{port}/datasets/{ds.name}"
        tree = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert tree, "the App server should run as a child process"

        shot = screenshot(url, tmp_path / "app_screenshot.png")
        dom = dump_dom(url)
        t_browser = time.time() - t0 - t_up
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    t_total = time.time() - t0
    print(f"app up {t_up:.1f} s, screenshot+dom {t_browser:.1f} s, total incl. stop {t_total:.1f} s")

    # stopped cleanly: exit 0, every process it started is gone, the port is free
    assert proc.returncode == 0, out[-3000:]
    assert "stopping the App" in out
    deadline = time.time() + 10
    while time.time() < deadline and any(psutil.pid_exists(p) for p in tree):
        time.sleep(0.2)
    left = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"processes left behind: {left}"
    assert not explorer.port_in_use("127.0.0.1", port)
    # our mongod (owned by this test process) still serves us
    assert len(explorer.mongod_pids(db_dir)) == 1 and ds.count() == n_samples

    # the page rendered the grid: thumbnails drawn, our fields in the sidebar, no error page
    n_thumbs = grid_thumbnails(dom)
    assert n_thumbs >= 6, f"only {n_thumbs} grid thumbnails rendered"
    for field in ("ground_truth", "slice", "weather"):
        assert f'data-cy="checkbox-{field}"' in dom
    assert "Something went wrong" not in dom and "No samples" not in dom

    # ... and the pixels agree: the grid area is busy images, not a blank/uniform page
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert img.shape[:2] == (900, 1400)
    grid = img[150:, 320:]  # right of the sidebar, below the toolbars
    assert grid.std() > 25, f"grid area nearly uniform (std {grid.std():.1f})"
    assert len(np.unique(grid.reshape(-1, 3).astype(np.uint8), axis=0)) > 2000
    if dest := os.environ.get("EXPLORER_SCREENSHOT"):
        dest_path = Path(dest) if Path(dest).is_absolute() else PROJECT_ROOT / dest
        from bdd_engine.checkpoint import atomic_write_bytes

        atomic_write_bytes(dest_path, shot.read_bytes())
