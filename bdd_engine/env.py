"""Offline-safe process environment.

Ultralytics, FiftyOne, open_clip and transformers all reach for the network or for
``~`` at import time (settings files, telemetry, font download, hub look-ups). On
our machines that means hangs, failures or a silently changing venv, so the
variables below are set *before* any of them is imported: entry points and the functions
that load those libraries call :func:`setup_env` (idempotent; importing the package does
nothing). It never overrides a value the user already set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("BDD_CACHE_DIR", PROJECT_ROOT / ".cache"))


def setup_env() -> None:
    """Set offline/telemetry/cache variables (setdefault: user values win)."""
    defaults = {
        # Ultralytics: settings.json + Arial.ttf live here instead of ~/.config
        "YOLO_CONFIG_DIR": str(CACHE_DIR / "ultralytics"),
        "YOLO_OFFLINE": "1",            # no import-time connectivity probes / telemetry
        "YOLO_AUTOINSTALL": "false",    # never pip-install extras mid-run
        "YOLO_VERBOSE": "false",
        "HF_HUB_OFFLINE": "1",          # transformers/open_clip: fail fast, never hub
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(CACHE_DIR / "hf"),
        "MPLCONFIGDIR": str(CACHE_DIR / "matplotlib"),
        "MPLBACKEND": os.environ.get("MPLBACKEND", "Agg") if not _in_ipython() else "",
        "NUMBA_CACHE_DIR": str(CACHE_DIR / "numba"),
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_CONFIG_PATH": str(CACHE_DIR / "fiftyone" / "config.json"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        if value:
            os.environ.setdefault(key, value)
    _place_font()


def _in_ipython() -> bool:
    try:
        return __IPYTHON__  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        return False


def _place_font() -> None:
    """Ultralytics checks for Arial.ttf with a 3 s GitHub request on every train/val
    that reads a data yaml, even with plots=False. Any TTF at the expected path stops it;
    matplotlib ships DejaVuSans."""
    target = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics" / "Arial.ttf"
    if target.exists():
        return
    try:
        import matplotlib

        src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
        shutil.copyfile(src, target.with_name("Arial.Unicode.ttf"))
    except Exception:  # matplotlib missing: Ultralytics will just try its download
        pass
