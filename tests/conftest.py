"""Shared fixtures: one tiny synthetic world per test session, isolated outputs per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bdd_engine.env import setup_env

setup_env()  # offline-safe env before any test imports ultralytics/fiftyone/transformers
from bdd_engine import synth  # noqa: E402
from bdd_engine.config import load_config  # noqa: E402

# Tests never see the developer's own BDD_* overrides.
for _k in [k for k in os.environ if k.startswith("BDD_") and k != "BDD_CACHE_DIR"]:
    del os.environ[_k]
# Never attach tests to the project's own FiftyOne database (outputs/.fiftyone/db).
import tempfile as _tempfile  # noqa: E402

os.environ["FIFTYONE_DATABASE_DIR"] = _tempfile.mkdtemp(prefix="bdd_test_fodb_")


def pytest_unconfigure(config):
    """Remove this session's FiftyOne database folder (one was left in /tmp per test session).
    FiftyOne's mongod is stopped first: it holds files in the folder until the process ends."""
    import shutil
    import sys

    fodb = sys.modules.get("fiftyone.core.odm.database")  # only if a test used FiftyOne
    svc = getattr(fodb, "_db_service", None)
    if svc is not None:
        try:
            svc.stop()
        except Exception:  # best effort: the folder is removed below either way
            pass
    shutil.rmtree(os.environ["FIFTYONE_DATABASE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The tiny profile's synthetic world, generated once (~10 s) into a session tmp dir."""
    root = tmp_path_factory.mktemp("world") / "synth_tiny"
    synth.generate(load_config("tiny", env=False), root)
    return root


def make_cfg(world: Path, outputs: Path, **overrides):
    return load_config("tiny", {"data_root": str(world), "outputs_dir": str(outputs), **overrides}, env=False)


@pytest.fixture
def tiny_cfg(tiny_world, tmp_path):
    """tiny profile pointed at the session world and a fresh outputs dir."""
    return make_cfg(tiny_world, tmp_path / "outputs")
