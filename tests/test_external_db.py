"""FiftyOne on its own database server (issue 25 item 3): a real, separate ``mongod`` process
the user runs, reached through ``fiftyone_database_uri``; a server that is down is one line
naming its URI. Also: §2's FiftyOne similarity is skipped above ``explorer_similarity_max``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from bdd_engine import explorer  # first: offline-safe env before fiftyone
from bdd_engine.config import load_config
from bdd_engine.env import PROJECT_ROOT
from test_explorer import world  # noqa: F401  the 65-frame synthetic world (a fixture)

import fiftyone as fo  # noqa: E402,I001


def _wait_ping(uri: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import pymongo

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the external mongod exited during start-up"
        try:
            with pymongo.MongoClient(uri, serverSelectionTimeoutMS=500) as c:
                c.admin.command("ping")
                return
        except pymongo.errors.PyMongoError:
            time.sleep(0.2)
    raise AssertionError(f"mongod at {uri} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A mongod we start ourselves, as a user would: its own port and data folder."""
    data = tmp_path_factory.mktemp("external") / "data"
    data.mkdir()
    port = explorer.free_port()
    proc = subprocess.Popen([str(explorer.mongod_path()), "--dbpath", str(data), "--port", str(port),
                             "--bind_ip", "127.0.0.1", "--nounixsocket", "--logpath", str(data.parent / "mongod.log")])
    uri = f"mongodb://127.0.0.1:{port}"
    try:
        _wait_ping(uri, proc)
        explorer.disconnect()  # an earlier module may have left its own database connected
        yield uri, data, proc
    finally:
        explorer.disconnect()
        proc.terminate()
        proc.wait(timeout=60)


def _cfg(tmp_path, uri):
    return load_config("tiny", {"outputs_dir": str(tmp_path / "out"), "fiftyone_database_uri": uri}, env=False)


def test_explorer_and_app_use_a_separate_mongod(server, world, tmp_path):  # noqa: F811
    import pymongo

    uri, data, proc = server
    cfg0, ft, frames, pools = world
    cfg = _cfg(tmp_path, uri)
    cfg["synthetic"] = cfg0["synthetic"]
    assert explorer.connect_for(cfg) == int(uri.rsplit(":", 1)[1])
    ds = explorer.build_dataset(cfg, ft, frames, pools=pools, name="t-external", overwrite=True)
    assert len(ds) == len(ft)
    # nothing embedded was started or created: no private folder, no mongod of ours
    assert explorer.DATABASE.service is None and explorer.mongod_pids(explorer.db_dir_for(cfg)) == []
    assert not (tmp_path / "out" / ".fiftyone").exists()
    # the samples are in the user's server (its own data folder), read back by a plain client
    with pymongo.MongoClient(uri) as c:
        doc = c["fiftyone"]["datasets"].find_one({"name": "t-external"})
        assert doc is not None and c["fiftyone"][doc["sample_collection_name"]].count_documents({}) == len(ft)
    # the App's server (a child process) reads the same server: its GraphQL counts the samples
    handle = explorer.launch_app(cfg, port=explorer.free_port(), dataset=ds)
    try:
        body = json.dumps({"query": '{ dataset(name: "t-external") { name estimatedSampleCount } }'}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{handle.port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
        got = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert got["data"]["dataset"] == {"name": "t-external", "estimatedSampleCount": len(ft)}, got
    finally:
        handle.stop()
    # reconnect: the dataset persists in the server and reads back equal
    explorer.disconnect()
    assert explorer.DATABASE.uri is None
    explorer.connect_for(cfg)
    back = fo.load_dataset("t-external")
    assert sorted(back.values("name")) == sorted(ft["name"]) and back.count("ground_truth.detections") == \
        ds.count("ground_truth.detections")
    back.delete()
    explorer.disconnect()
    assert proc.poll() is None, "the user's server keeps running after disconnect()"


def test_a_dataset_is_deleted_after_a_reconnect(server, tmp_path):
    """disconnect() then connect again, in one process: deleting a dataset still works. FiftyOne
    caches repositories on the client of the first connection (Dataset.delete() uses the
    delegated-operations one); the full suite hit 'Cannot use MongoClient after close' when an
    earlier test had deleted a dataset before this module reconnected."""
    uri, _, _ = server
    cfg = _cfg(tmp_path, uri)
    for round_ in range(2):
        explorer.connect_for(cfg)
        ds = fo.Dataset(f"t-reconnect-{round_}")
        ds.delete()
        explorer.disconnect()
    explorer.connect_for(cfg)
    assert not {"t-reconnect-0", "t-reconnect-1"} & set(fo.list_datasets())
    explorer.disconnect()


def test_a_server_that_is_down_is_one_line_naming_the_uri(tmp_path):
    uri = f"mongodb://127.0.0.1:{explorer.free_port()}"  # nothing listens there
    explorer.disconnect()
    t0 = time.time()
    with pytest.raises(explorer.ExplorerError) as err:
        explorer.connect_for(_cfg(tmp_path, uri))
    msg = str(err.value)
    assert "\n" not in msg and uri in msg and "does not answer" in msg, msg
    assert "fiftyone_database_uri: null" in msg and time.time() - t0 < 30
    assert explorer.DATABASE.uri is None and explorer.DATABASE.service is None
    assert explorer.mongod_pids(explorer.db_dir_for(_cfg(tmp_path, uri))) == []
    # the App command: one error line, no traceback
    r = subprocess.run([sys.executable, "-m", "bdd_engine", "app", "--profile", "tiny", "--set",
                        f"fiftyone_database_uri={uri}", "--set", f"outputs_dir={tmp_path / 'out'}"],
                       capture_output=True, text=True, timeout=180, cwd=PROJECT_ROOT)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and lines[-1].startswith("error: ") and uri in lines[-1], r.stderr[-2000:]


def test_uri_messages_mask_the_password_and_refuse_other_schemes(tmp_path):
    assert explorer.db.mask_uri("mongodb://ana:s3cret@db.example:27017/x") == "mongodb://ana:***@db.example:27017/x"
    assert explorer.db.mask_uri("mongodb://db.example:27017") == "mongodb://db.example:27017"
    with pytest.raises(explorer.ExplorerError, match="is not a mongodb:// URI") as err:
        explorer.check_server("http://ana:s3cret@db.example:27017")
    assert "s3cret" not in str(err.value)
    with pytest.raises(explorer.ExplorerError) as err:
        explorer.check_server(f"mongodb://ana:s3cret@127.0.0.1:{explorer.free_port()}", timeout=0.5)
    assert "s3cret" not in str(err.value) and "ana:***@" in str(err.value)


def test_similarity_is_skipped_above_explorer_similarity_max(monkeypatch, tmp_path):
    """FiftyOne's brain runs hold every vector in RAM: above the cap they are skipped, with a message."""
    from bdd_engine.explorer import sync

    names = [f"f{i}.jpg" for i in range(12)]
    monkeypatch.setattr(sync, "load_embeddings", lambda out: (np.eye(12, 4, dtype=np.float32), names))
    monkeypatch.setattr(sync, "ids_by_name", lambda ds: {n: i for i, n in enumerate(names)})
    calls = []
    monkeypatch.setattr(sync, "add_embeddings", lambda ds, nm, emb, **kw: calls.append(len(nm)))

    class FakeDataset:
        info: dict = {}

    for cap, want_calls in ((11, []), (12, [12])):
        cfg = load_config("tiny", {"outputs_dir": str(tmp_path), "explorer_similarity_max": cap}, env=False)
        sync._apply_embeddings(cfg, FakeDataset)
        assert calls == want_calls
    assert "similarity_skipped" not in FakeDataset.info
    sync._apply_embeddings(load_config("tiny", {"outputs_dir": str(tmp_path), "explorer_similarity_max": 11},
                                       env=False), FakeDataset)
    assert "12 frames > explorer_similarity_max 11" in FakeDataset.info["similarity_skipped"]
