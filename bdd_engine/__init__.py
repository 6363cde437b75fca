"""bdd_engine: one turn of the driving-data flywheel on BDD100K (or its synthetic twin).

Importing the package makes the process offline-safe first (see env.py), so the
notebook and the CLI can import ultralytics/fiftyone afterwards without surprises.
"""

from bdd_engine.env import setup_env as _setup_env

_setup_env()

__version__ = "0.1.0"
