"""Label Studio round trip: our own review queue, edited the way Label Studio writes an
export (moved, deleted, added and relabelled boxes), comes back as BDD frames whose
numbers move exactly as edited; bad exports fail naming the file and the fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bdd_engine.__main__ import main as cli
from bdd_engine.autolabel import export_label_studio, import_label_studio, next_turn_frames
from bdd_engine.autolabel import review_import
from bdd_engine.autolabel.review_import import ExportError
from bdd_engine.bdd import load_frames

W, H = 640, 360
ATTRS = {"weather": "foggy", "timeofday": "night", "scene": "highway"}


def _lb(cat, box, score):
    return {"id": cat, "category": cat, "box2d": dict(zip(("x1", "y1", "x2", "y2"), map(float, box))), "score": score}


@pytest.fixture()
def queue(tmp_path):
    """Our review queue file (exports.export_label_studio) for 5 frames of W x H px."""
    frames = [
        {"name": "a.jpg", "attributes": ATTRS, "timestamp": 10000,
         "labels": [_lb("car", [10, 20, 110, 70], 0.5), _lb("pedestrian", [300, 100, 330, 180], 0.4),
                    _lb("traffic sign", [500, 30, 540, 60], 0.45)]},
        {"name": "b.jpg", "attributes": ATTRS, "labels": [_lb("bus", [33.3, 44.4, 255.5, 199.9], 0.55)]},
        {"name": "c.jpg", "attributes": ATTRS, "labels": [_lb("car", [1, 1, 50, 50], 0.5)]},
        {"name": "d.jpg", "attributes": ATTRS, "labels": [_lb("car", [1, 1, 50, 50], 0.5)]},
        {"name": "e.jpg", "attributes": ATTRS, "labels": []},
    ]
    paths = {}
    for fr in frames:
        paths[fr["name"]] = tmp_path / fr["name"]
        Image.new("RGB", (W, H)).save(paths[fr["name"]])
    path = export_label_studio(frames, paths, tmp_path / "label_studio_review.json", root=tmp_path)
    return frames, json.loads(path.read_text())


def _annotate(task, result, **kw):
    """What Label Studio adds when a reviewer submits: an annotation holding the edited regions."""
    ann = {"id": 100 + task["id"], "completed_by": 1, "was_cancelled": False, "ground_truth": False,
           "created_at": "2026-12-02T05:00:00.000000Z", "updated_at": "2026-12-02T05:00:00.000000Z",
           "result": result, **kw}
    task.setdefault("annotations", []).append(ann)


def _export(tasks, tmp_path):
    """Edit our queue as a reviewer in Label Studio would, and write it as LS's JSON export."""
    tasks = copy.deepcopy(tasks)
    for i, t in enumerate(tasks, start=1):
        t["id"] = i
        t.setdefault("annotations", [])
    a, b, _c, d, e = tasks
    res = copy.deepcopy(a["predictions"][0]["result"])
    car, _ped, sign = res
    car["value"]["x"] += 2.5         # moved 16 px right (2.5 % of 640)
    car["value"]["y"] += 5.0         # and 18 px down (5 % of 360)
    sign["value"]["rectanglelabels"] = ["traffic light"]  # class changed
    added = {"id": "new1", "type": "rectanglelabels", "from_name": "label", "to_name": "image", "origin": "manual",
             "original_width": W, "original_height": H, "image_rotation": 0,
             "value": {"x": 50.0, "y": 50.0, "width": 10.0, "height": 20.0, "rotation": 0, "rectanglelabels": ["rider"]}}
    _annotate(a, [car, sign, added])  # the pedestrian was deleted
    _annotate(b, copy.deepcopy(b["predictions"][0]["result"]))  # accepted unchanged
    # c: never opened (predictions only); d: skipped by the reviewer
    _annotate(d, [], was_cancelled=True)
    _annotate(e, [])  # submitted with nothing in it: a reviewed empty frame
    p = tmp_path / "export.json"
    p.write_text(json.dumps(tasks))
    return p


def _box(fr, cat):
    (lb,) = [lb for lb in fr["labels"] if lb["category"] == cat]
    return [lb["box2d"][k] for k in ("x1", "y1", "x2", "y2")]


def test_round_trip_moves_numbers_exactly_as_edited(queue, tmp_path):
    frames, tasks = queue
    out, rep = import_label_studio(_export(tasks, tmp_path))
    by = {f["name"]: f for f in out}
    assert sorted(by) == ["a.jpg", "b.jpg", "e.jpg"]
    a = by["a.jpg"]
    assert len(a["labels"]) == 3 and sorted(lb["category"] for lb in a["labels"]) == ["car", "rider", "traffic light"]
    assert _box(a, "car") == pytest.approx([26, 38, 126, 88], abs=1e-9)          # moved +16, +18 px
    assert _box(a, "traffic light") == pytest.approx([500, 30, 540, 60], abs=1e-9)  # same box, new class
    assert _box(a, "rider") == pytest.approx([320, 180, 384, 252], abs=1e-9)       # 50 % + 10 % x 20 %
    assert not any(lb["category"] in ("pedestrian", "traffic sign") for lb in a["labels"])
    assert all("score" not in lb for lb in a["labels"]), "reviewed labels are human labels"
    assert a["attributes"] == ATTRS and a["timestamp"] == 10000
    assert _box(by["b.jpg"], "bus") == pytest.approx([33.3, 44.4, 255.5, 199.9], abs=1e-9)  # untouched: exact inverse
    assert by["e.jpg"]["labels"] == []
    assert rep.skipped_tasks == {review_import.NEVER_OPENED: [3], review_import.SKIPPED: [4]}  # never opened apart from skipped
    assert (rep.tasks, rep.frames, rep.boxes, rep.empty_frames) == (5, 3, 4, 1)
    assert (rep.queue_tasks, rep.never_reviewed(), rep.not_exported, rep.clipped) == (5, 2, [], 0)


def test_next_turn_frames_reviewed_replace_auto_labels(queue, tmp_path):
    frames, tasks = queue
    reviewed, _ = import_label_studio(_export(tasks, tmp_path))
    accepted = [{"name": "a.jpg", "attributes": ATTRS, "labels": [_lb("car", [10, 20, 110, 70], 0.9)] * 2},
                {"name": "x.jpg", "attributes": ATTRS, "labels": [_lb("truck", [0, 0, 9, 9], 0.8)]}]
    merged, counts = next_turn_frames(accepted, reviewed)
    by = {f["name"]: f for f in merged}
    assert [f["name"] for f in merged] == ["a.jpg", "b.jpg", "e.jpg", "x.jpg"]
    assert by["a.jpg"]["labels"] == reviewed[0]["labels"], "the review replaces the frame's auto-labels"
    assert by["x.jpg"]["labels"] == accepted[1]["labels"]
    assert counts == {"auto_frames": 1, "reviewed_frames": 3, "replaced": 1, "added": 2, "frames": 4, "labels": 5}
    with pytest.raises(ValueError, match="repeat names"):
        next_turn_frames(accepted + accepted[:1], reviewed)


def test_latest_non_cancelled_annotation_counts(queue, tmp_path):
    _, tasks = queue
    t = copy.deepcopy(tasks[1])
    t["id"] = 7
    r = copy.deepcopy(t["predictions"][0]["result"])
    old = copy.deepcopy(r)
    old[0]["value"]["x"] = 0.0
    _annotate(t, old, id=1, updated_at="2026-12-01T00:00:00Z")
    _annotate(t, r, id=2, updated_at="2026-12-02T00:00:00Z")
    later_cancel = copy.deepcopy(r)
    later_cancel[0]["value"]["rectanglelabels"] = ["train"]
    _annotate(t, later_cancel, id=3, updated_at="2026-12-03T00:00:00Z", was_cancelled=True)
    p = tmp_path / "multi.json"
    p.write_text(json.dumps([t]))
    (fr,), rep = import_label_studio(p)
    assert _box(fr, "bus") == pytest.approx([33.3, 44.4, 255.5, 199.9], abs=1e-9)
    assert rep.several_annotations == 1


def test_rotated_box_unknown_class_and_non_box_results_are_counted(queue, tmp_path):
    _, tasks = queue
    t = copy.deepcopy(tasks[0])
    t["id"] = 1
    res = copy.deepcopy(t["predictions"][0]["result"])
    res[0]["value"]["rotation"] = 90          # car [10, 20, 110, 70] turned about its top-left corner
    res[1]["value"]["rectanglelabels"] = ["tree"]
    res.append({"type": "choices", "value": {"choices": ["blurry"]}, "from_name": "q", "to_name": "image"})
    _annotate(t, res)
    p = tmp_path / "rot.json"
    p.write_text(json.dumps([t]))
    (fr,), rep = import_label_studio(p)
    assert _box(fr, "car") == pytest.approx([0, 20, 10, 20 + 100], abs=1e-9)  # enclosing box, clockwise, clipped
    assert rep.rotated == 1 and rep.clipped == 1 and len(fr["labels"]) == 2
    assert rep.skipped_results == {"unknown category 'tree'": 1, "result type 'choices' (not a box)": 1}


@pytest.mark.parametrize("content, match", [
    ("{not json", r"not JSON .*Export → 'JSON'"),
    ('{"tasks": []}', r"not a Label Studio JSON export .*not JSON-MIN"),
    ('[{"image": "a.jpg", "label": []}]', r"not a Label Studio JSON export"),
])
def test_malformed_export_names_file_and_fix(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(ExportError, match=match) as e:
        import_label_studio(p)
    assert str(p) in str(e.value)


def test_queue_file_itself_and_missing_size_are_refused(queue, tmp_path):
    _, tasks = queue
    p = tmp_path / "queue.json"
    p.write_text(json.dumps(tasks))  # the import file, never reviewed: no task has annotations
    with pytest.raises(ExportError, match=rf"{p}: no task has 'annotations'"):
        import_label_studio(p)
    t = copy.deepcopy(tasks[0])
    t["id"] = 9
    res = copy.deepcopy(t["predictions"][0]["result"])
    del res[0]["original_width"]
    _annotate(t, res)
    p.write_text(json.dumps([t]))
    with pytest.raises(ExportError, match=r"task 9 \(a.jpg\).*'original_width'"):
        import_label_studio(p)


def test_cli_writes_bdd_frames_and_refuses_a_foreign_folder(queue, tmp_path, capsys):
    _, tasks = queue
    export = _export(tasks, tmp_path)
    out = tmp_path / "reviewed"
    assert cli(["import-labels", "--label-studio", str(export), "--out", str(out)]) == 0
    frames = load_frames(out / "labels.json")
    assert [f["name"] for f in frames] == ["a.jpg", "b.jpg", "e.jpg"]
    rep = json.loads((out / "import_report.json").read_text())
    assert rep["skipped_tasks"] == {review_import.NEVER_OPENED: {"n": 1, "task_ids": [3]}, review_import.SKIPPED: {"n": 1, "task_ids": [4]}}
    assert rep["never_reviewed"] == 2 and rep["queue_tasks"] == 5
    printed = capsys.readouterr().out
    assert f"1 {review_import.NEVER_OPENED} (task ids [3]); 1 {review_import.SKIPPED} (task ids [4])" in printed
    assert "5 tasks, 3 reviewed, 2 never reviewed." in printed
    assert cli(["import-labels", "--label-studio", str(export), "--out", str(out)]) == 0  # re-import: ours
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert cli(["import-labels", "--label-studio", str(export), "--out", str(foreign)]) == 2
    assert "choose a new --out folder" in capsys.readouterr().err
    assert sorted(x.name for x in foreign.iterdir()) == ["notes.txt"]


def test_task_without_data_name_is_named_after_its_local_file_url(queue, tmp_path):
    _, tasks = queue
    t = copy.deepcopy(tasks[1])
    t["id"] = 5
    del t["data"]["name"]
    t["data"]["image"] = "/data/local-files/?d=frames/b.jpg"
    _annotate(t, copy.deepcopy(t["predictions"][0]["result"]))
    p = tmp_path / "url.json"
    p.write_text(json.dumps([t]))
    (fr,), rep = import_label_studio(p)
    assert fr["name"] == "b.jpg" and rep.names_from_url == 1
    t["data"]["image"] = "/data/local-files/?d=frames/b%20copy.jpg"  # a file the queue never held
    p.write_text(json.dumps([t]))
    with pytest.raises(ExportError, match=r"1 of its 1 tasks show images that are not in the review queue .*'b copy.jpg'"):
        import_label_studio(p)


def _one_box_export(tasks, tmp_path, boxes):
    """Task 1 (a.jpg) reviewed with rectangles given as (x, y, width, height) percent."""
    t = copy.deepcopy(tasks[0])
    t["id"] = 1
    res = [{"id": f"r{i}", "type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": W,
            "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": bw, "height": bh, "rotation": 0, "rectanglelabels": ["car"]}}
           for i, (x, y, bw, bh) in enumerate(boxes)]
    _annotate(t, res)
    p = tmp_path / "boxes.json"
    p.write_text(json.dumps([t]))
    return p


def test_box_past_the_edge_is_clipped_and_one_outside_is_left_out(queue, tmp_path, capsys):
    _, tasks = queue
    p = _one_box_export(tasks, tmp_path, [(90, 10, 50, 20), (150, 150, 10, 10), (10, 10, 10, 10)])
    (fr,), rep = import_label_studio(p)
    boxes = sorted([lb["box2d"][k] for k in ("x1", "y1", "x2", "y2")] for lb in fr["labels"])
    assert np.allclose(boxes, [[64, 36, 128, 72], [576, 36, 640, 108]], atol=1e-9)  # 90 % + 50 %: clipped at 640 px
    assert rep.clipped == 1 and rep.skipped_results == {"box entirely outside the image": 1}
    assert all(set(lb) == {"id", "category", "attributes", "box2d"} for lb in fr["labels"])
    assert cli(["import-labels", "--label-studio", str(p), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "Skipped results: 1 box entirely outside the image. Boxes clipped to the image: 1." in out
    assert json.loads((tmp_path / "o" / "import_report.json").read_text())["clipped_boxes"] == 1


def test_export_of_another_queue_or_with_foreign_images_is_refused(queue, tmp_path, capsys):
    frames, tasks = queue
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    Image.new("RGB", (W, H)).save(other_dir / "z.jpg")
    other = json.loads(export_label_studio([{"name": "z.jpg", "attributes": ATTRS, "labels": []}],
                                           {"z.jpg": other_dir / "z.jpg"}, other_dir / "queue.json").read_text())
    export = _export(tasks, tmp_path)
    # another project's export, checked against this run's queue: refused with the count and the names
    t = copy.deepcopy(other[0])
    t["id"] = 1
    _annotate(t, [])
    p = tmp_path / "other_export.json"
    p.write_text(json.dumps([t]))
    assert import_label_studio(p)[1].queue == str(other_dir / "queue.json")  # its own queue: fine
    with pytest.raises(ExportError, match=r"1 of its 1 tasks are of another review queue .*\['z.jpg'\]"):
        import_label_studio(p, queue=tmp_path / "label_studio_review.json")
    # a task added in Label Studio for an image the queue never held
    mixed = json.loads(export.read_text())
    stray = copy.deepcopy(mixed[1])
    stray["id"], stray["data"]["name"] = 6, "stray.jpg"
    del stray["data"]["queue"]
    p.write_text(json.dumps(mixed + [stray]))
    assert cli(["import-labels", "--label-studio", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 of its 6 tasks show images that are not in the review queue" in err
    assert "['stray.jpg']" in err and not (tmp_path / "o").exists()
    # tasks that do not name their queue (an older queue file) need --queue
    for t in mixed:
        del t["data"]["queue_file"]
    p.write_text(json.dumps(mixed))
    with pytest.raises(ExportError, match="do not name their review queue; pass --queue"):
        import_label_studio(p)
    assert import_label_studio(p, queue=tmp_path / "label_studio_review.json")[1].frames == 3


def test_tasks_missing_from_the_export_are_counted_as_never_reviewed(queue, tmp_path, capsys):
    _, tasks = queue
    full = json.loads(_export(tasks, tmp_path).read_text())
    p = tmp_path / "default_export.json"
    p.write_text(json.dumps([t for t in full if t["annotations"]][:2]))  # Label Studio's default: annotated only
    _, rep = import_label_studio(p)
    assert (rep.tasks, rep.frames, rep.queue_tasks) == (2, 2, 5)
    assert rep.not_exported == ["c.jpg", "d.jpg", "e.jpg"] and rep.never_reviewed() == 3
    s = rep.summary()
    assert "5 tasks, 2 reviewed, 3 never reviewed (3 not in the export, e.g. ['c.jpg', 'd.jpg', 'e.jpg']" in s
    assert "download_all_tasks=true" in s


def test_a_zip_export_is_named_as_such(tmp_path, capsys):
    import zipfile

    p = tmp_path / "project-1-at-2026-12-02.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("result.json", json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ExportError, match=r"a zip archive \(Label Studio's COCO/YOLO/VOC export\), not its JSON export; "
                                          r"export the project from Label Studio with Export → 'JSON'") as e:
        import_label_studio(p)
    assert "check the path" not in str(e.value) and "utf-8" not in str(e.value)
    p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ExportError, match="not a text file .* so not Label Studio's JSON export"):
        import_label_studio(p)


def test_every_image_url_is_under_one_document_root_with_its_setup(tmp_path):
    """Images in two folders outside the project: every URL is relative to the one document
    root that setup.md names (never an absolute path beside relative ones)."""
    from urllib.parse import unquote

    paths = {}
    for sub, name in (("cam1", "a.jpg"), ("cam2/deep", "b.jpg")):
        (tmp_path / sub).mkdir(parents=True)
        paths[name] = tmp_path / sub / name
        Image.new("RGB", (W, H)).save(paths[name])
    frames = [{"name": n, "attributes": ATTRS, "labels": []} for n in paths]
    q = export_label_studio(frames, paths, tmp_path / "label_studio_review.json")
    setup = (tmp_path / "label_studio_review.setup.md").read_text()
    (root,) = [ln.split("=", 1)[1].rstrip(" \\") for ln in setup.splitlines()
               if "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=" in ln]
    assert "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true" in setup
    for t in json.loads(q.read_text()):
        d = unquote(t["data"]["image"].split("?d=", 1)[1])
        assert not d.startswith("/") and Path(root) / d == paths[t["data"]["name"]].resolve()
    assert f"       {(tmp_path / 'cam1').resolve()}\n       {(tmp_path / 'cam2' / 'deep').resolve()}\n" in setup
    assert str(tmp_path / "label_studio_review.label_config.xml") in setup


def test_document_root_is_the_project_root_when_it_covers_every_image():
    from bdd_engine.autolabel.exports import document_root, storage_folders
    from bdd_engine.env import PROJECT_ROOT

    inside = [PROJECT_ROOT / "data" / "w" / "a.jpg", PROJECT_ROOT / "outputs" / "x" / "b.jpg",
              PROJECT_ROOT / "outputs" / "x" / "y" / "c.jpg"]
    assert document_root(inside) == PROJECT_ROOT.resolve()
    assert storage_folders(inside) == [(PROJECT_ROOT / "data" / "w").resolve(), (PROJECT_ROOT / "outputs" / "x").resolve()]
    assert document_root([PROJECT_ROOT / "a.jpg"]) == PROJECT_ROOT.resolve().parent  # a storage may not be the root
    assert document_root(inside + [Path("/elsewhere/videos/c.jpg")]) == Path("/")


def test_a_queue_written_in_a_section_staging_folder_names_its_committed_path(queue, tmp_path):
    """§7 writes the queue inside ``.07_autolabel_retrain.staging/``, renamed on commit: the
    tasks and setup.md must name the committed file, where import-labels will find it."""
    frames, _ = queue
    stage = tmp_path / ".07_autolabel_retrain.staging" / "labels_mined"
    stage.mkdir(parents=True)
    paths = {f["name"]: tmp_path / f["name"] for f in frames}
    q = export_label_studio(frames, paths, stage / "label_studio_review.json")
    final = tmp_path / "07_autolabel_retrain" / "labels_mined" / "label_studio_review.json"
    assert {t["data"]["queue_file"] for t in json.loads(q.read_text())} == {str(final)}
    setup = (stage / "label_studio_review.setup.md").read_text()
    assert f"upload {final}" in setup and ".staging" not in setup
