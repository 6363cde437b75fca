"""Headless Chromium for the App test (tests/test_app_browser.py): screenshot, DOM dump,
grid-thumbnail count. Test-only: the package never drives a browser.

Chromium comes from Debian (`.ci/install_chromium.sh`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from bdd_engine.checkpoint import atomic_path

CHROMIUM_FLAGS = (
    # no GPU/sandbox in containers; the background-networking flags stop Chromium's own
    # calls home (refused here, and noise everywhere); a fresh profile per run
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
)


class BrowserError(RuntimeError):
    """Chromium missing, failed or timed out; the message says which and how to fix it."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None (`.ci/install_chromium.sh` installs one)."""
    for b in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(b):
            return path
    return None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _chromium(url: str, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` with a fresh profile; ``timeout`` in seconds."""
    exe = find_chromium()
    if exe is None:
        raise BrowserError("no chromium found; run `bash .ci/install_chromium.sh` (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="bdd_chromium_") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
        # own session: a timeout kills the whole Chromium tree (zygote, renderers, GPU)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise BrowserError(f"chromium did not finish within {timeout:.0f} s on {url}") from None
        finally:
            _kill_group(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def screenshot(url: str, out_png: str | os.PathLike, size: tuple[int, int] = (1400, 900),
               budget_ms: int = 20000, timeout: float = 120.0) -> Path:
    """Headless-Chromium PNG of ``url`` (written atomically), ``size`` = (width, height)
    in pixels. ``budget_ms`` is virtual time for the page's scripts (the App loads its
    grid asynchronously); ``timeout`` is wall-clock seconds."""
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        r = _chromium(url, [f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}",
                            f"--screenshot={tmp}"], timeout)
        if r.returncode != 0 or tmp.stat().st_size == 0:
            raise BrowserError(f"chromium screenshot failed (exit {r.returncode}): {r.stderr[-800:]}")
    return out_png


def dump_dom(url: str, budget_ms: int = 20000, timeout: float = 120.0) -> str:
    """The page's DOM after ``budget_ms`` of virtual time (headless Chromium)."""
    r = _chromium(url, [f"--virtual-time-budget={budget_ms}", "--dump-dom"], timeout)
    if r.returncode != 0:
        raise BrowserError(f"chromium --dump-dom failed (exit {r.returncode}): {r.stderr[-800:]}")
    return r.stdout


def grid_thumbnails(dom: str) -> int:
    """Number of sample thumbnails the App's grid has drawn (loaded looker canvases)."""
    return len(re.findall(r'<canvas class="_lookerCanvas[^"]*"[^>]*canvas-loaded="true"', dom))
