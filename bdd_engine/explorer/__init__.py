"""FiftyOne as the data explorer: a persistent dataset that mirrors the checkpoints.

The checkpointed files stay the source of truth (resume never depends on database
state); this package builds and enriches a real, persistent FiftyOne dataset from them
so a user can open the App, filter by ODD slice, look at failures and pull frames.

This module only re-exports; one concept per module, each importing only the ones
above it in this list (and the lower floors of ``bdd_engine``):

==============  ===================================================================
``errors``      ExplorerError
``db``          the private mongod per data folder: connect / disconnect
``boxes``       BDD xyxy pixel boxes → FiftyOne relative [x, y, w, h] Detections
``dataset``     the profile's dataset built from §1's tables (samples, GT, tags)
``enrich``      embeddings + 2-D map, predictions + eval runs, mined/pool tags,
                auto-labels with router buckets, saved views (fixed/broken by iter1)
``sync``        mirror the checkpoint folders incrementally per section manifest
                (an eval run per model: iter0, every run of arms.csv, later turns)
``app``         App launch/stop and the ``python -m bdd_engine app`` command
==============  ===================================================================

FiftyOne itself (~3 s to import) is imported inside the functions that use it, so
importing this package stays cheap.
"""

from bdd_engine.explorer.app import AppHandle, free_port, launch_app, main_app, port_in_use
from bdd_engine.explorer.boxes import rel_boxes
from bdd_engine.explorer.dataset import GT_FIELD, build_dataset, dataset_name
from bdd_engine.explorer.db import (
    DATABASE,
    DB_FIX,
    PrivateDatabase,
    check_server,
    check_writable,
    connect,
    connect_for,
    database_uri_for,
    db_dir_for,
    default_db_dir,
    disconnect,
    mongod_path,
    mongod_pids,
)
from bdd_engine.explorer.enrich import (
    SAVED_VIEWS,
    add_autolabels,
    add_embeddings,
    add_label_issues,
    add_predictions,
    save_views,
    set_predicted_attributes,
    sort_by_similarity,
    tag_mined,
    tag_pools,
)
from bdd_engine.explorer.errors import ExplorerError
from bdd_engine.explorer.sync import MIRRORED, SYNC_SECTIONS, get_dataset, model_key, sync_from_checkpoints

__all__ = [
    "AppHandle", "free_port", "launch_app", "main_app", "port_in_use",
    "rel_boxes",
    "GT_FIELD", "build_dataset", "dataset_name",
    "DATABASE", "DB_FIX", "PrivateDatabase", "check_server", "check_writable", "connect", "connect_for",
    "database_uri_for", "db_dir_for", "default_db_dir", "disconnect", "mongod_path", "mongod_pids",
    "SAVED_VIEWS", "add_autolabels", "add_embeddings", "add_label_issues", "add_predictions", "save_views", "set_predicted_attributes",
    "sort_by_similarity", "tag_mined", "tag_pools",
    "ExplorerError",
    "MIRRORED", "SYNC_SECTIONS", "get_dataset", "model_key", "sync_from_checkpoints",
]
