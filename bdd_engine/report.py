"""§8 reporting: failure modes, action plan, golden QA, runs table, case study (md + PDF).

Everything here turns measured tables into text and figures; nothing is estimated.
Boxes are BDD xyxy **pixels** throughout (``bdd.boxes_table``), IoU with the same
+1 pixel convention as :mod:`bdd_engine.evaluate`.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from bdd_engine.bdd import CLASSES, SAFETY_CLASSES, boxes_table
from bdd_engine.checkpoint import atomic_path, atomic_write_json, df_to_markdown
from bdd_engine.geometry import PIXEL_SHIFT, box_iou

MODES = ("missed", "mislocalised", "class confusion", "false positive")


# ----------------------------------------------------------------------------- failure modes
def failure_modes(gt_frames: Sequence[Mapping[str, Any]], pred_frames: Sequence[Mapping[str, Any]],
                  conf: float, frame_slice: Mapping[str, str]) -> pd.DataFrame:
    """One row per error at the operating threshold ``conf`` (not the mAP threshold).

    Each non-ignored GT box without a same-class prediction at IoU >= 0.5 is
    ``mislocalised`` (a same-class prediction at IoU 0.1–0.5), else ``class confusion``
    (another class at IoU >= 0.5), else ``missed``. Each prediction matching no GT box of
    its class at IoU >= 0.5 and overlapping no GT (any class, IoU >= 0.1, ignore regions
    included) is a ``false positive``. Greedy by score, one prediction per GT.
    Columns: name, slice, class, mode.
    """
    g_all, p_all = boxes_table(gt_frames), boxes_table(pred_frames)
    p_all = p_all[p_all["score"] >= conf]
    gb = dict(tuple(g_all.groupby("name", sort=False))) if len(g_all) else {}
    pb = dict(tuple(p_all.groupby("name", sort=False))) if len(p_all) else {}
    cols = ["x1", "y1", "x2", "y2"]
    rows = []
    for name in sorted(set(gb) | set(pb)):
        g = gb.get(name, g_all.iloc[:0])
        p = pb.get(name, p_all.iloc[:0]).sort_values("score", ascending=False, kind="mergesort")
        iou = box_iou(g[cols].to_numpy(float), p[cols].to_numpy(float), pixel_shift=PIXEL_SHIFT)
        same = g["category"].to_numpy()[:, None] == p["category"].to_numpy()[None, :]
        real = ~(g["ignore"].to_numpy(bool) | g["crowd"].to_numpy(bool))
        used = np.zeros(len(p), bool)
        matched_gt = np.zeros(len(g), bool)
        for j in range(len(p)):        # greedy by score: each prediction takes its best free GT
            cand = np.where(same[:, j] & ~matched_gt & (iou[:, j] >= 0.5))[0]
            if len(cand):
                i = cand[np.argmax(iou[cand, j])]
                matched_gt[i], used[j] = True, True
        sl = frame_slice.get(name)
        for i in np.where(real & ~matched_gt)[0]:
            if (same[i] & (iou[i] >= 0.1)).any():
                mode = "mislocalised"
            elif (~same[i] & (iou[i] >= 0.5)).any():
                mode = "class confusion"
            else:
                mode = "missed"
            rows.append((name, sl, g["category"].iloc[i], mode))
        for j in np.where(~used)[0]:
            if not (iou[:, j] >= 0.1).any():
                rows.append((name, sl, p["category"].iloc[j], "false positive"))
    return pd.DataFrame(rows, columns=["name", "slice", "class", "mode"])


def mode_counts(modes: pd.DataFrame, by: str) -> pd.DataFrame:
    """Counts of each failure mode per ``by`` (class or slice), most errors first."""
    t = modes.groupby([by, "mode"]).size().unstack(fill_value=0).reindex(columns=list(MODES), fill_value=0)
    t["total"] = t.sum(axis=1)
    return t.sort_values(["total"], ascending=False, kind="stable").reset_index()


# ----------------------------------------------------------------------------- action plan
def action_plan(per_class: pd.DataFrame, slices_df: pd.DataFrame, modes: pd.DataFrame, worst: Mapping[str, Any],
                model: str, safety_recall: float, synthetic: bool) -> tuple[str, list[dict[str, Any]]]:
    """The model-improvement report as markdown + its prioritised actions.

    ``per_class``: EvalResult.per_class with a ``class`` column; ``slices_df``: full-level
    slice table; ``modes``: :func:`failure_modes`. Every action names the number that
    triggered it and a measurable success criterion.
    """
    pc = per_class.set_index("class")
    actions: list[dict[str, Any]] = []
    safety = pc.reindex(list(SAFETY_CLASSES))[["n_gt", "recall50", "AP50"]].reset_index()
    safety["target"] = safety_recall
    safety["gap"] = safety_recall - safety["recall50"]
    for r in safety.itertuples(index=False):
        if r.n_gt and r.recall50 == r.recall50 and r.recall50 < safety_recall:
            actions.append({"priority": 1, "trigger": f"{r[0]} recall@0.5 = {r.recall50:.2f} "
                            f"< {safety_recall:.0%} target ({int(r.n_gt)} GT boxes)",
                            "action": f"mine and label more {r[0]} instances (class-targeted query in the pool), "
                                      "review its auto-labels by hand",
                            "success": f"{r[0]} recall@0.5 >= {safety_recall:.2f} on the eval pool"})
    ranked = pc[pc["n_gt"] > 0].sort_values("AP50").head(3)
    for cls, r in ranked.iterrows():
        top_mode = modes[modes["class"] == cls]["mode"].value_counts()
        why = f"; most common error: {top_mode.index[0]} ({int(top_mode.iloc[0])})" if len(top_mode) else ""
        actions.append({"priority": 2, "trigger": f"{cls} AP@0.5 = {r.AP50:.3f} (among the 3 worst classes){why}",
                        "action": f"add {cls} examples" + (" and tighten box labels" if why.find("mislocalised") >= 0 else ""),
                        "success": f"next turn: {cls} AP@0.5 > {r.AP50:.3f} and recall@0.5 > {r.recall50:.2f} "
                                   "on the same eval pool"})
    actions.append({"priority": 1, "trigger": f"worst slice '{worst['worst_slice']}' mAP@0.5 = {worst['AP50']:.3f} "
                    f"vs best slice {worst['best_AP50']:.3f} (n_eval = {worst['n_eval']})",
                    "action": "another mining turn on this slice with a larger K, and enlarge its eval share "
                              "so its CI narrows",
                    "success": "worst-slice Δ mAP@0.5 with a paired-bootstrap 95% CI excluding 0"})
    small = pc[["AP_small", "AP_medium", "AP_large"]].mean()
    if small["AP_small"] == small["AP_small"] and small["AP_small"] < 0.5 * small["AP_large"]:
        actions.append({"priority": 3, "trigger": f"mean AP small = {small['AP_small']:.3f} vs large = {small['AP_large']:.3f}",
                        "action": "train at a larger image size or tile; mine frames rich in small objects",
                        "success": "AP_small at least half of AP_large"})
    actions.sort(key=lambda a: a["priority"])
    by_class, by_slice = mode_counts(modes, "class"), mode_counts(modes, "slice")
    lines = [f"# Action plan — {model}" + (" (SYNTHETIC data: numbers are from a generated world, not BDD100K)" if synthetic else ""),
             "", "Generated from the evaluation on the eval pool; every action cites the number that triggered it.", "",
             f"## Safety-critical classes: recall@0.5 vs the {safety_recall:.0%} target", "",
             df_to_markdown(safety.rename(columns={"index": "class"})), "",
             "## Worst classes by AP@0.5", "", df_to_markdown(ranked[["AP50", "recall50", "n_gt"]].reset_index()), "",
             "## Object size", "", df_to_markdown(pc[["AP_small", "AP_medium", "AP_large"]].reset_index()), "",
             "## Failure modes per class (operating threshold)", "", df_to_markdown(by_class), "",
             "## Failure modes per slice (10 with most errors)", "", df_to_markdown(by_slice.head(10)), "",
             "## Prioritised actions", "",
             df_to_markdown(pd.DataFrame(actions)[["priority", "trigger", "action", "success"]]), ""]
    return "\n".join(lines), actions


# ----------------------------------------------------------------------------- golden QA
def label_stats(frames: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Label statistics of a frame set: frames with labels, boxes per frame, empty frames, class shares."""
    t = boxes_table(frames)
    t = t[~t["ignore"]]
    n = len(frames)
    per = t.groupby("name").size()
    share = (t["category"].value_counts() / max(len(t), 1)).reindex(list(CLASSES), fill_value=0.0)
    return {"frames": n, "frames_with_labels": int(len(per)), "empty_frames": n - int(len(per)),
            "boxes": int(len(t)), "boxes_per_frame": float(len(t) / n) if n else float("nan"),
            "class_share": {k: round(float(v), 4) for k, v in share.items()}}


def drift_flags(stats: Mapping[str, Any], ref: Mapping[str, Any], tol: float, ref_name: str) -> list[str]:
    """Statistics that moved by more than ``tol`` (relative; class shares: absolute points) from ``ref``."""
    flags = []
    for k in ("frames_with_labels", "empty_frames", "boxes_per_frame"):
        a, b = float(stats[k]), float(ref[k])
        if abs(a - b) > tol * max(abs(b), 1e-9) and not (a == b == 0):
            flags.append(f"{k} {a:.3g} vs {ref_name} {b:.3g}")
    for c in CLASSES:
        a, b = stats["class_share"].get(c, 0.0), ref["class_share"].get(c, 0.0)
        if abs(a - b) > tol * max(b, 0.05):
            flags.append(f"share of {c} {a:.2f} vs {ref_name} {b:.2f}")
    return flags


def golden_qa(history_path: Path, run_id: str, gt: Sequence[Mapping[str, Any]],
              labelled: Mapping[str, Sequence[Mapping[str, Any]]], tol: float, synthetic: bool) -> dict[str, Any]:
    """Label statistics of GT and of each labeler on the golden set, drift flags vs GT and
    vs the previous run, appended to the history at ``history_path`` (an entry with the
    same ``run_id`` is replaced, so re-running one iteration never duplicates it)."""
    try:
        hist = json.loads(Path(history_path).read_text())
    except (OSError, json.JSONDecodeError):
        hist = {"history": []}
    prev = next((h for h in reversed(hist["history"]) if h["run_id"] != run_id), None)
    gs = label_stats(gt)
    entry: dict[str, Any] = {"run_id": run_id, "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                             "synthetic": synthetic, "n_golden": len(gt), "tol": tol, "ground_truth": gs, "labelers": {}}
    for name, frames in labelled.items():
        s = label_stats(frames)
        flags = drift_flags(s, gs, tol, "GT")
        if prev and name in prev["labelers"]:
            flags += drift_flags(s, prev["labelers"][name]["stats"], tol, "previous run")
        entry["labelers"][name] = {"stats": s, "drift_flags": flags}
    hist["history"] = [h for h in hist["history"] if h["run_id"] != run_id] + [entry]
    atomic_write_json(history_path, hist)
    return entry


def golden_table(entry: Mapping[str, Any]) -> pd.DataFrame:
    rows = [{"source": "ground truth", **{k: entry["ground_truth"][k] for k in ("frames", "frames_with_labels", "empty_frames", "boxes_per_frame")},
             "drift flags": ""}]
    for name, v in entry["labelers"].items():
        s = v["stats"]
        rows.append({"source": name, **{k: s[k] for k in ("frames", "frames_with_labels", "empty_frames", "boxes_per_frame")},
                     "drift flags": _first(v["drift_flags"], 3)})
    return pd.DataFrame(rows)


def _first(items: Sequence[str], n: int) -> str:
    if not items:
        return "none"
    return "; ".join(items[:n]) + (f" (+{len(items) - n} more in golden_qa.json)" if len(items) > n else "")


# ----------------------------------------------------------------------------- architecture figure
MERMAID = re.compile(r"```mermaid\n(.*?)```\n?", re.S)
NODE = re.compile(r'(\w+)\["([^"]+)"\]')
EDGE = re.compile(r'^\s*(\w+)(?:\["[^"]*"\])?\s*(-->|-\.->)\s*(?:\|([^|]*)\|)?\s*(\w+)', re.M)


def parse_flowchart(mermaid: str) -> tuple[dict[str, str], list[tuple[str, str, bool, str]]]:
    """Nodes {id: "title: subtitle"} in order of appearance and edges (src, dst, dashed, label)
    from a mermaid ``flowchart`` (the subset the template uses: ``a["text"] --> b``, ``-.->|label|``)."""
    nodes: dict[str, str] = {}
    for nid, text in NODE.findall(mermaid):
        nodes.setdefault(nid, text)
    edges = [(a, b, arrow == "-.->", label or "") for a, arrow, label, b in EDGE.findall(mermaid)]
    unknown = {n for a, b, _, _ in edges for n in (a, b)} - set(nodes)
    if unknown:
        raise ValueError(f"flowchart edges name undefined nodes {sorted(unknown)}")
    return nodes, edges


def architecture_figure(mermaid: str, per_row: int = 4) -> Any:
    """A mermaid flowchart (the case study template's: ``casestudy.flowchart()``) drawn with
    matplotlib, offline. Nodes are laid out in reading order, snaking over rows of ``per_row``."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    nodes, edges = parse_flowchart(mermaid)
    rows = (len(nodes) + per_row - 1) // per_row
    fig, ax = plt.subplots(figsize=(11, 2.1 * rows))
    ax.set_xlim(0, per_row)
    ax.set_ylim(0, rows)
    ax.axis("off")
    pos = {}
    for i, nid in enumerate(nodes):
        r, c = divmod(i, per_row)
        pos[nid] = ((c if r % 2 == 0 else per_row - 1 - c) + 0.5, rows - r - 0.5)
    for nid, text in nodes.items():
        x, y = pos[nid]
        title, _, sub = text.partition(": ")
        ax.add_patch(FancyBboxPatch((x - 0.42, y - 0.25), 0.84, 0.5, boxstyle="round,pad=0.02",
                                    fc="#f8d7d0" if "mine" in title else "#dbe8f6", ec="#34495e"))
        ax.text(x, y + 0.07, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x, y - 0.11, sub, ha="center", va="center", fontsize=7.5)
    for a, b, dashed, label in edges:
        (xa, ya), (xb, yb) = pos[a], pos[b]
        if ya == yb:
            s = np.sign(xb - xa)
            start, end = (xa + 0.44 * s, ya), (xb - 0.44 * s, yb)
        else:
            s = np.sign(yb - ya)
            start, end = (xa, ya + 0.27 * s), (xb, yb - 0.27 * s)
        color = "#c0392b" if dashed else "#34495e"
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color=color,
                                     linestyle="--" if dashed else "-"))
        if label:
            ax.text((start[0] + end[0]) / 2 + 0.06, (start[1] + end[1]) / 2, label, fontsize=8, color=color, va="center")
    ax.set_title("BDD100K mini data-engine: one turn of the flywheel (one checkpoint folder per section)", fontsize=11)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- case study
FIELD = re.compile(r"\{\{\s*([a-zA-Z0-9_]+)\s*\}\}")
# template markers ({{x}}), unformatted Python fields ({x}), to-do words and placeholder text
LEFTOVER = re.compile(r"\{\{|\}\}|\{[A-Za-z_][A-Za-z0-9_.]*\}|\be\.g\.|\bTODO\b|\bTBD\b|\bXXX\b|\bplaceholder\b|"
                      r"\[insert", re.IGNORECASE)


def render(template: str, fields: Mapping[str, Any]) -> str:
    """Fill ``{{name}}`` fields; a field missing from ``fields`` is an error, not a blank."""
    missing = sorted({m for m in FIELD.findall(template) if m not in fields})
    if missing:
        raise KeyError(f"case study template fields without a value: {missing}")
    return FIELD.sub(lambda m: str(fields[m.group(1)]), template)


def leftovers(text: str) -> list[str]:
    """Template markers, placeholders or 'e.g.' that survived rendering (each with context)."""
    return [text[max(0, m.start() - 30):m.end() + 30].replace("\n", " ") for m in LEFTOVER.finditer(text)]


def _fonts() -> tuple[Path, Path]:
    import matplotlib

    d = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return d / "DejaVuSans.ttf", d / "DejaVuSansMono.ttf"


# Long on purpose: a small markdown renderer (headings, tables, images, lists) for fpdf2 — one dispatch over block kinds.
def markdown_to_pdf(md: str, base_dir: Path, out_pdf: Path) -> Path:
    """A plain PDF of the case study: headings, paragraphs, bullet lists, tables in
    monospace, and the referenced PNGs (relative to ``base_dir``). fpdf2, Unicode fonts
    from matplotlib (DejaVu), written atomically."""
    from fpdf import FPDF

    sans, mono = _fonts()
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(True, margin=14)
    pdf.add_font("S", "", str(sans))
    pdf.add_font("M", "", str(mono))
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    table: list[str] = []

    def flush_table() -> None:
        if not table:
            return
        rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in table
                if not re.fullmatch(r"\|?[\s:|-]+\|?", ln.strip())]
        ncol = max(len(r) for r in rows)
        widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(ncol)]
        size = max(4.5, min(8.0, 8.0 * 110 / max(sum(widths) + 3 * ncol, 1)))
        pdf.set_font("M", size=size)
        for r in rows:
            line = " | ".join((r[i] if i < len(r) else "").ljust(widths[i]) for i in range(ncol))
            pdf.multi_cell(width, size * 0.5, line, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
        table.clear()

    for raw in md.splitlines():
        line = raw.rstrip()
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        img = re.match(r"!\[(.*?)\]\((.*?)\)", line.strip())
        if img:
            p = (base_dir / img.group(2)).resolve()
            if p.exists():
                from PIL import Image

                with Image.open(p) as im:
                    w, h = im.size
                iw = min(width, 180.0)
                if pdf.get_y() + iw * h / w > pdf.h - 20:
                    pdf.add_page()
                pdf.image(str(p), w=iw)
                pdf.set_font("S", size=7.5)
                pdf.multi_cell(width, 4, img.group(1), new_x="LMARGIN", new_y="NEXT")
            continue
        text = re.sub(r"\*\*(.*?)\*\*|`(.*?)`", lambda m: m.group(1) or m.group(2), line)
        text = re.sub(r"\[(.*?)\]\((.*?)\)", r"\1", text)
        if not text.strip():
            pdf.ln(2)
        elif text.startswith("#"):
            level = len(text) - len(text.lstrip("#"))
            pdf.set_font("S", size={1: 16, 2: 13, 3: 11}.get(level, 10))
            pdf.ln(2)
            pdf.multi_cell(width, 7, text.lstrip("#").strip(), new_x="LMARGIN", new_y="NEXT")
        else:
            pdf.set_font("S", size=9.5)
            pdf.multi_cell(width, 5, text, new_x="LMARGIN", new_y="NEXT")
    flush_table()
    with atomic_path(out_pdf) as tmp:
        pdf.output(str(tmp))
    return out_pdf


def fmt(v: Any, nd: int = 3, signed: bool = False) -> str:
    """A number for prose: fixed decimals, '+' when signed, 'n/a' for missing/NaN."""
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


def fmt_ci(ci: Sequence[Any] | None) -> str:
    if not ci or ci[0] is None or ci[0] != ci[0]:
        return "n/a"
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"
