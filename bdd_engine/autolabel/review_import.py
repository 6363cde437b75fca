"""Reviewed labels come back: a Label Studio JSON export -> BDD frames, and the next turn's
training labels (accepted auto-labels + reviewed labels).

The exact inverse of :func:`bdd_engine.autolabel.exports.export_label_studio`: a task's
``data`` gives the frame (``name``, ``attributes``, ``timestamp``); its completed
annotation's ``rectanglelabels`` results give the boxes. Label Studio stores a box as
``xywh_pct`` (top-left x, y, width, height in **percent** of ``original_width`` /
``original_height``, rotation in degrees clockwise about the top-left corner); BDD frames
get ``box2d`` in **xyxy pixels** through ``geometry.xywh_pct_to_xyxy``.

Which annotation counts: Label Studio's own converter rule — annotations that were not
cancelled (skipped), the most recently updated one. A task without one is counted and
skipped (reported), never imported as an empty frame — a task the reviewer skipped
(``was_cancelled``) apart from one never opened; an annotation whose result is empty *is*
imported: the reviewer deleted every box (a frame with nothing to label).

Checked against the review queue the export came from (``--queue``, else the
``queue_file`` every task of our queue carries): a task whose frame is not in the queue,
or that carries another queue's id, is refused (:class:`ExportError` with the count and
the first names); queue frames missing from the export are counted as never reviewed
(Label Studio's default JSON export leaves out tasks without an annotation). A box
reaching past the image is clipped to it (counted); one entirely outside is left out
(counted).

Why no library does the parsing: ``label-studio-sdk`` 2.1.2 pins opencv-python-headless
< 4.13 (we pin 4.14 for Ultralytics/FiftyOne), ``label-studio-converter`` is unmaintained
since 2024 and copies/downloads images as a side effect, and FiftyOne's
``import_label_studio_annotation`` only divides by 100 behind a 3 s import.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from bdd_engine.bdd import load_frames, map_category, write_bdd_json
from bdd_engine.checkpoint import atomic_write_json
from bdd_engine.env import PROJECT_ROOT
from bdd_engine.geometry import xywh_pct_to_xyxy

GENERATOR = "bdd_engine.autolabel.review_import"
REPORT = "import_report.json"
LABELS = "labels.json"
EXPORT_FIX = ("export the project from Label Studio with Export → 'JSON' (a list of tasks, each with "
              "'data' and 'annotations[].result[]'), not JSON-MIN, CSV or COCO")
EXPORT_ALL = ("to list them in the export too, export with every task: GET /api/projects/<id>/export?"
              "exportType=JSON&download_all_tasks=true")
NEVER_OPENED = "never opened (no annotation)"
SKIPPED = "skipped by the reviewer (was_cancelled)"
OUTSIDE_PX = 1e-6  # a box past the image edge by more than this is clipped and counted (float round-off is not)


class ExportError(ValueError):
    """The export cannot be read as Label Studio JSON; the message names the file and the fix."""


@dataclass
class ImportReport:
    """What an import read, kept and skipped (every skip counted, with task ids to look up)."""

    source: str
    tasks: int = 0
    frames: int = 0
    boxes: int = 0
    empty_frames: int = 0                                            # reviewed: no object in the frame
    skipped_tasks: dict[str, list[Any]] = field(default_factory=dict)  # reason -> task ids
    skipped_results: Counter = field(default_factory=Counter)        # reason -> results not imported
    rotated: int = 0                                                 # boxes replaced by their enclosing box
    several_annotations: int = 0                                     # tasks where the latest annotation won
    without_attributes: int = 0                                      # frames whose task data had no BDD attributes
    names_from_url: int = 0                                          # no data.name: named after the image URL
    clipped: int = 0                                                 # boxes past the image edge, clipped to it
    queue: str | None = None                                         # the review queue file checked against
    queue_tasks: int = 0                                             # its tasks
    not_exported: list[str] = field(default_factory=list)            # queue frames with no task in the export

    def skip_task(self, reason: str, task_id: Any) -> None:
        self.skipped_tasks.setdefault(reason, []).append(task_id)

    def to_dict(self) -> dict[str, Any]:
        return {"generator": GENERATOR, "source": self.source, "tasks": self.tasks, "frames": self.frames,
                "boxes": self.boxes, "empty_frames": self.empty_frames,
                "skipped_tasks": {k: {"n": len(v), "task_ids": v} for k, v in self.skipped_tasks.items()},
                "skipped_results": dict(self.skipped_results), "rotated_boxes": self.rotated,
                "tasks_with_several_annotations": self.several_annotations,
                "frames_without_attributes": self.without_attributes, "names_from_url": self.names_from_url,
                "clipped_boxes": self.clipped, "queue": self.queue, "queue_tasks": self.queue_tasks,
                "never_reviewed": self.never_reviewed(), "not_in_export": {"n": len(self.not_exported),
                                                                            "names": self.not_exported}}

    def never_reviewed(self) -> int:
        """Queue tasks without a reviewed frame: missing from the export, never opened, or skipped."""
        return len(self.not_exported) + sum(len(self.skipped_tasks.get(k, [])) for k in (NEVER_OPENED, SKIPPED))

    def summary(self) -> str:
        skipped = "; ".join(f"{len(v)} {k} (task ids {v[:5]}{' ...' if len(v) > 5 else ''})"
                            for k, v in self.skipped_tasks.items()) or "none"
        res = ", ".join(f"{n} {k}" for k, n in self.skipped_results.items()) or "none"
        queue = ""
        if self.queue is not None:
            queue = (f" Review queue {self.queue}: {self.queue_tasks} tasks, {self.frames} reviewed, "
                     f"{self.never_reviewed()} never reviewed")
            if self.not_exported:
                queue += (f" ({len(self.not_exported)} not in the export, e.g. {self.not_exported[:3]}: Label Studio's "
                          f"default JSON export leaves out tasks without an annotation; {EXPORT_ALL})")
            queue += "."
        return (f"{self.source}: {self.tasks} tasks -> {self.frames} frames, {self.boxes} boxes "
                f"({self.empty_frames} frames reviewed empty). Skipped tasks: {skipped}. Skipped results: {res}. "
                f"Boxes clipped to the image: {self.clipped}. Rotated boxes made axis-aligned: {self.rotated}.{queue}")


# ----------------------------------------------------------------------------- reading
def load_tasks(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The task list of a Label Studio JSON export; :class:`ExportError` naming the file and the fix."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ExportError(f"{path}: cannot read the Label Studio export ({e.strerror or e}); check the path") from e
    if raw[:4] == b"PK\x03\x04":  # Label Studio's COCO, YOLO, VOC and image exports are zip archives
        raise ExportError(f"{path}: a zip archive (Label Studio's COCO/YOLO/VOC export), not its JSON export; "
                          f"{EXPORT_FIX}")
    try:
        tasks = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ExportError(f"{path}: not a text file (byte {e.start} is not UTF-8), so not Label Studio's JSON "
                          f"export; {EXPORT_FIX}") from e
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not JSON (line {e.lineno}: {e.msg}); {EXPORT_FIX}") from e
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise ExportError(f"{path}: not a Label Studio JSON export (expected a list of tasks with a 'data' dict); "
                          f"{EXPORT_FIX}")
    if tasks and not any("annotations" in t or "completions" in t for t in tasks):
        raise ExportError(f"{path}: no task has 'annotations' (this looks like an import file or a JSON-MIN "
                          f"export); {EXPORT_FIX}")
    return tasks


def completed_annotation(task: Mapping[str, Any]) -> tuple[dict[str, Any] | None, int]:
    """(the annotation that counts, how many non-cancelled ones there were).

    Cancelled (skipped) annotations never count; of the others the latest
    ``updated_at``/``created_at`` wins (ISO strings sort in time order), then the higher id."""
    anns = task.get("annotations", task.get("completions")) or []
    done = [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled") and not a.get("skipped")]
    if not done:
        return None, 0
    latest = max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
    return latest, len(done)


def frame_name(task: Mapping[str, Any]) -> str | None:
    """``data.name`` (our exports write it), else the last part of the image URL (``?d=`` path for local files)."""
    data = task["data"]
    if data.get("name"):
        return str(data["name"])
    url = str(data.get("image") or "")
    local = url.split("?d=", 1)[1] if "?d=" in url else urlparse(url).path
    return Path(unquote(local)).name or None


def result_label(res: Mapping[str, Any], where: str) -> tuple[dict[str, Any] | None, str | None, bool]:
    """One ``rectanglelabels`` result -> (BDD label, None, rotated) or (None, skip reason, False).

    The box is clipped to the image (the label's ``clipped`` flag says whether that moved it);
    a box entirely outside the image is a skip.

    A result without ``original_width``/``original_height`` or without x/y/width/height is a
    malformed export (:class:`ExportError`): percent cannot become pixels without them."""
    if res.get("type") != "rectanglelabels":
        return None, f"result type {res.get('type')!r} (not a box)", False
    v = res.get("value") or {}
    try:
        w, h = float(res["original_width"]), float(res["original_height"])
        pct = [float(v[k]) for k in ("x", "y", "width", "height")]
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{where}: a rectanglelabels result lacks {e} (needs value.x/y/width/height and "
                          f"original_width/original_height); {EXPORT_FIX}") from e
    names = v.get("rectanglelabels") or []
    if len(names) != 1:
        return None, "box without exactly one class", False
    if map_category(str(names[0]))[0] is None:  # not a class, nor a BDD name/ignore mapping of one
        return None, f"unknown category {names[0]!r}", False
    rotation = float(v.get("rotation") or 0.0)
    x1, y1, x2, y2 = (float(c) for c in xywh_pct_to_xyxy([pct], w, h, rotation)[0])
    if not (x2 > x1 and y2 > y1):
        return None, "box with no area", False
    if x1 >= w or y1 >= h or x2 <= 0 or y2 <= 0:
        return None, "box entirely outside the image", False
    clipped = min(x1, y1, w - x2, h - y2) < -OUTSIDE_PX  # a box past the edge (a rotated one's enclosing box, say)
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, w), min(y2, h)
    label = {"id": str(res.get("id", "")), "category": str(names[0]), "attributes": {},
             "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "clipped": clipped}
    return label, None, rotation != 0.0


def task_frame(task: Mapping[str, Any], where: str, report: ImportReport) -> dict[str, Any] | None:
    """One task -> a BDD frame (None: skipped, counted in ``report``)."""
    tid = task.get("id", where)
    name = frame_name(task)
    if not name:
        report.skip_task("without a frame name (data.name or data.image)", tid)
        return None
    ann, n_done = completed_annotation(task)
    if ann is None:
        report.skip_task(SKIPPED if task.get("annotations", task.get("completions")) else NEVER_OPENED, tid)
        return None
    report.several_annotations += n_done > 1
    report.names_from_url += not task["data"].get("name")  # Label Studio uploads may prefix a hash: check these
    labels = []
    for res in ann.get("result") or []:
        label, reason, rotated = result_label(res, f"{where} ({name})")
        if label is None:
            report.skipped_results[reason] += 1
            continue
        report.rotated += rotated
        report.clipped += label.pop("clipped")
        labels.append(label)
    attrs = task["data"].get("attributes")
    report.without_attributes += not attrs
    frame = {"name": name, "attributes": dict(attrs or {}), "labels": labels}
    if "timestamp" in task["data"]:
        frame["timestamp"] = task["data"]["timestamp"]
    return frame


def import_label_studio(path: str | os.PathLike, queue: str | os.PathLike | None = None
                        ) -> tuple[list[dict[str, Any]], ImportReport]:
    """Label Studio JSON export -> (BDD frames sorted by name, :class:`ImportReport`).

    Frames carry ``box2d`` in xyxy pixels (clipped to the image), the category as the
    reviewer chose it (raw BDD names such as ``person`` are kept; ``bdd.map_category`` maps
    them at load), label attributes ``{}`` (the review did not set occluded/truncated/crowd)
    and no ``score`` (human labels). ``queue``: the review queue file imported into Label
    Studio (default: the ``queue_file`` its tasks carry; see :func:`check_against_queue`).
    Two tasks for the same frame are an :class:`ExportError`.
    """
    tasks = load_tasks(path)
    report = ImportReport(source=str(path), tasks=len(tasks))
    check_against_queue(tasks, path, queue, report)
    frames: dict[str, dict[str, Any]] = {}
    for i, task in enumerate(tasks):
        fr = task_frame(task, f"{path}: task {task.get('id', f'#{i}')}", report)
        if fr is None:
            continue
        if fr["name"] in frames:
            raise ExportError(f"{path}: frame {fr['name']} is in two tasks; delete one task in Label Studio "
                              f"(or merge its boxes) and export again")
        frames[fr["name"]] = fr
    out = [frames[n] for n in sorted(frames)]
    report.frames, report.boxes = len(out), sum(len(f["labels"]) for f in out)
    report.empty_frames = sum(1 for f in out if not f["labels"])
    return out, report


def queue_path(tasks: Sequence[Mapping[str, Any]], path: str | os.PathLike, queue: str | os.PathLike | None) -> Path:
    """The review queue file to check ``tasks`` against: ``queue`` if given, else the one
    ``queue_file`` the tasks name (relative to the project root). :class:`ExportError` when
    none is named, several are, or the file is gone."""
    if queue is None:
        named = sorted({str(t["data"]["queue_file"]) for t in tasks if t["data"].get("queue_file")})
        if len(named) > 1:
            raise ExportError(f"{path}: tasks of {len(named)} review queues ({named[:3]}); export the project of one "
                              f"queue, or pass --queue QUEUE.json to import that queue's tasks")
        if not named:
            raise ExportError(f"{path}: its tasks do not name their review queue; pass --queue with the "
                              f"label_studio_review.json you imported into Label Studio")
        queue = Path(named[0]) if Path(named[0]).is_absolute() else PROJECT_ROOT / named[0]
    queue = Path(queue)
    if not queue.is_file():
        raise ExportError(f"{path}: review queue {queue} not found; pass --queue with the label_studio_review.json "
                          f"you imported into Label Studio")
    return queue


def check_against_queue(tasks: Sequence[Mapping[str, Any]], path: str | os.PathLike, queue: str | os.PathLike | None,
                        report: ImportReport) -> None:
    """Refuse an export that is not of this review queue; record the queue's never-exported frames.

    :class:`ExportError` (count and first names) when tasks carry another queue's id (an
    export of another project/queue) or name frames the queue does not hold. Fills
    ``report.queue``, ``queue_tasks`` and ``not_exported`` (queue frames with no task here)."""
    qpath = queue_path(tasks, path, queue)
    try:
        qtasks = json.loads(qpath.read_text())
        qnames = [str(t["data"]["name"]) for t in qtasks]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{qpath}: not a review queue written by label/§7 (label_studio_review.json): {e}") from e
    qids = {t["data"].get("queue") for t in qtasks} - {None}
    other = [t for t in tasks if t["data"].get("queue") is not None and t["data"]["queue"] not in qids]
    if other:
        raise ExportError(f"{path}: {len(other)} of its {len(tasks)} tasks are of another review queue (queue id "
                          f"{other[0]['data']['queue']}, not {'/'.join(sorted(qids)) or 'that of ' + str(qpath)}), e.g. "
                          f"{[frame_name(t) for t in other[:3]]}; export the Label Studio project of {qpath}")
    names = [frame_name(t) for t in tasks]
    foreign = [n for n in names if n is not None and n not in set(qnames)]  # nameless: skipped, counted later
    if foreign:
        raise ExportError(f"{path}: {len(foreign)} of its {len(tasks)} tasks show images that are not in the review "
                          f"queue {qpath}: {foreign[:5]}{' ...' if len(foreign) > 5 else ''}; delete those tasks in "
                          f"Label Studio (or export the project of this queue) and export again")
    report.queue, report.queue_tasks = str(qpath), len(qnames)
    report.not_exported = sorted(set(qnames) - set(names))


# ----------------------------------------------------------------------------- next turn
def reviewed_frames(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The BDD frames of an ``import-labels`` output (its labels.json), checked before a run
    uses them: a raw Label Studio export, or an entry that is not a named frame, is an
    :class:`ExportError` naming the file and the fix (not a ``KeyError`` after sections have run)."""
    path, make = Path(path), "make it with `python -m bdd_engine import-labels --label-studio EXPORT.json --out DIR`"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot read it as JSON ({e}); {make}") from e
    entries = data.get("frames") if isinstance(data, dict) else data   # bdd.load_frames' two layouts
    if isinstance(entries, list) and any(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in entries):
        raise ExportError(f"{path} is a Label Studio export; convert it with `python -m bdd_engine import-labels "
                          f"--label-studio {path} --out DIR` and use DIR")
    if not isinstance(entries, list):
        raise ExportError(f"{path}: not a list of BDD frames; {make}")
    bad = [i for i, f in enumerate(entries)
           if not (isinstance(f, dict) and isinstance(f.get("name"), str) and f["name"])]
    if bad:
        raise ExportError(f"{path}: not BDD frames as `import-labels` writes them (entry #{bad[0]} is not a frame "
                          f"with a 'name'); {make}")
    return load_frames(path)


def next_turn_frames(accepted: Sequence[Mapping[str, Any]],
                     reviewed: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The next turn's extra training labels: accepted auto-label frames + reviewed frames.

    A reviewed frame replaces the auto-labels of the same frame whole (the reviewer saw
    the entire image, pre-annotations included); a reviewed frame with no label stays (a
    human said there is nothing to label). Boxes stay xyxy pixels. Returns (frames sorted
    by name, counts: auto_frames, reviewed_frames, replaced, added, frames, labels).
    """
    for what, frames in (("accepted", accepted), ("reviewed", reviewed)):
        dup = [n for n, k in Counter(f["name"] for f in frames).items() if k > 1]
        if dup:
            raise ValueError(f"next_turn_frames: {what} frames repeat names {dup[:5]}; each frame once")
    merged = {f["name"]: dict(f) for f in accepted}
    replaced = sum(1 for f in reviewed if f["name"] in merged)
    merged.update({f["name"]: dict(f) for f in reviewed})
    out = [merged[n] for n in sorted(merged)]
    counts = {"auto_frames": len(accepted) - replaced, "reviewed_frames": len(reviewed), "replaced": replaced,
              "added": len(reviewed) - replaced, "frames": len(out),
              "labels": sum(len(f.get("labels") or []) for f in out)}
    return out, counts


# ----------------------------------------------------------------------------- writing
def write_import(out_dir: str | os.PathLike, frames: Sequence[Mapping[str, Any]], report: ImportReport) -> Path:
    """Write ``labels.json`` (BDD det_20 frames) and ``import_report.json`` into ``out_dir``, atomically.

    Writes only into a folder it creates, or one that already holds its own report
    (a re-import): anything else raises :class:`ExportError` and nothing is written."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and _generator(out / REPORT) != GENERATOR:
        raise ExportError(f"{out} exists and was not written by import-labels (no {REPORT} of ours); "
                          f"choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    write_bdd_json(frames, out / LABELS)
    atomic_write_json(out / REPORT, report.to_dict())
    return out / LABELS


def _generator(p: Path) -> str | None:
    try:
        return json.loads(p.read_text()).get("generator")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def main(argv: Sequence[str]) -> int:
    """``python -m bdd_engine import-labels --label-studio EXPORT.json --out DIR [--queue QUEUE.json]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bdd_engine import-labels",
                                description="Label Studio JSON export of the review queue -> BDD det_20 frames")
    p.add_argument("--label-studio", required=True, type=Path, metavar="EXPORT.json")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help=f"new folder for {LABELS} + {REPORT}")
    p.add_argument("--queue", type=Path, default=None, metavar="QUEUE.json",
                   help="the label_studio_review.json imported into Label Studio (default: the one its tasks name)")
    args = p.parse_args(list(argv))
    frames, report = import_label_studio(args.label_studio, args.queue)
    path = write_import(args.out, frames, report)
    print(report.summary())
    print(f"wrote {path} and {args.out / REPORT}")
    return 0
