"""What the notebook's cells show: the run banner, figures, checkpoint notes, small
tables and the FiftyOne idioms. Display only: nothing here computes a result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bdd_engine import artifacts, explorer, weights
from bdd_engine.checkpoint import status
from bdd_engine.config import Config, load_config
from bdd_engine.env import setup_env
from bdd_engine.sections import SECTIONS


def cfg() -> Config:
    """The run's config: profile from ``$BDD_PROFILE`` (default demo) + ``BDD_<KEY>`` overrides.
    Also makes the kernel offline-safe (env.setup_env) before any section imports a model library."""
    setup_env()
    return load_config()


def banner(cfg: Config) -> None:
    """Title-cell summary: profile, config hash, the synthetic banner, section status."""
    if cfg.synthetic:
        print("SYNTHETIC DATA — every number below is measured on a generated BDD100K-format world, "
              "not on BDD100K.")
    stand_ins = stand_in_models(cfg)
    if stand_ins:  # "warning" lines reach the terminal of a headless run too (runner.ECHO_PREFIXES)
        print(f"warning: STAND-IN WEIGHTS — {', '.join(stand_ins)} are randomly initialised "
              f"({weights.STAND_IN_MARKER}): every prediction, embedding and label below is meaningless.")
    print(f"profile {cfg.profile} · config {cfg.hash()} · data {cfg.data_dir} · outputs {cfg.out} · seed {cfg.seed}")
    _display(status(cfg))


def _weights_used(cfg: Config) -> dict[str, Path]:
    """Registry name -> the weights file/folder the profile's models load (as the loaders resolve
    them: a bare .pt name lives in weights/, any other relative path is project-relative)."""
    def where(value: Any, name: str) -> Path:
        if not value:
            return weights.path(name)
        v = Path(str(value))
        return v if v.is_absolute() else (weights.WEIGHTS_DIR / v if len(v.parts) == 1 else cfg.root / v)

    init = cfg.train_init_weights or (cfg.train_model if str(cfg.train_model).endswith(".pt") else None)
    used = {"yolov8m": where(init, "yolov8m")} if init else {}
    if cfg.embed_model in ("clip", "dinov2"):
        key = "embed_clip_weights" if cfg.embed_model == "clip" else "embed_dinov2_dir"
        used[cfg.embed_model] = where(cfg[key], cfg.embed_model)
    if cfg.label_labeler == "gsam2":
        used["grounding-dino"] = where(cfg.label_gsam2_gdino_dir, "grounding-dino")
        if cfg.label_gsam2_refine:
            used["sam2"] = where(cfg.label_gsam2_sam_dir, "sam2")
    return used


def stand_in_models(cfg: Config) -> list[str]:
    """The profile's models whose weights are STAND-INs (listed in a ``STAND_IN.json``)."""
    return [name for name, p in _weights_used(cfg).items() if weights.stand_in_entry(p)]


def _display(obj: Any) -> None:
    try:
        from IPython.display import display

        display(obj)
    except ImportError:
        print(obj)


def show(out: Path, *names: str) -> None:
    """Display figures from ``<out>/figures`` (inline in Jupyter, paths when headless)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display

        inline = get_ipython() is not None
    except ImportError:
        inline = False
    for n in names:
        p = Path(out) / "figures" / n
        if not p.exists():
            print(f"(figure not produced: {p})")
        elif inline:
            display(Image(filename=str(p)))
        else:
            print(f"figure: {p}")


CHECKPOINT_NOTES: dict[int, tuple[str, str]] = {
    # section: (what to check by eye, what is safe to delete)
    1: ("validation.json says 0 issues on synthetic data (real BDD: read validation_issues.csv); the coverage line; "
        "strata.csv keeps rare conditions at the floor.",
        "01_collect/ (recomputes in seconds; every later section recomputes after it). Never delete data/."),
    2: ("figures/slice_distribution.png: night ≈ a third, fog nearly absent (BDD's shape); slice_long_tail.png: a long tail; "
        "embedding_map.png: adverse conditions form regions, not noise.",
        "02_curate/ and outputs/.cache/embeddings/ (embeddings are recomputed, ~1 min on the demo)."),
    3: ("pool_summary.csv: train/eval/pool sizes; eval_slices.csv: eval balanced over the top slices; "
        "open a few files under 03_pools/yolo/labels/train to see YOLO lines.",
        "03_pools/ (then §4 onward recompute: training is the expensive part)."),
    4: ("runs/iter0/results.csv: the loss goes down; run_card.json: device, wall time, data hash.",
        "runs/iter0/weights/epoch*.pt if any; deleting 04_train/ or runs/iter0 retrains iter0."),
    5: ("figures/slice_map_iter0.png: the worst slice is an adverse condition and its CI is wide; "
        "worst_slice_failures.png: green GT boxes without red predictions are the misses.",
        "05_eval_iter0/ (re-predicts in seconds)."),
    6: ("figures/mined_frames_grid.png: mined frames look like the worst slice (captions give their real attributes); "
        "mining_summary.json: precision vs base rate.",
        "06_mine/ (seconds)."),
    7: ("label_quality tables: head classes best, rare classes worst; router bucket precision rises with the threshold; "
        "runs/runs.csv: every arm finished with the same epochs.",
        "runs/<arm>/weights/ except last.pt; deleting 07_autolabel_retrain/ retrains every arm (the longest step)."),
    8: ("08_delta/headline.json and figures/slice_delta.png: the worst-slice Δ beside its CI and the controls; "
        "case_study/case_study_v1.md reads end to end with no placeholders.",
        "08_delta/ and case_study/ (regenerated in seconds from §5–§7)."),
}


def checkpoint_note(out: Path, n: int) -> None:
    """What section n saved (from its manifest), what to check by eye, what is safe to delete."""
    folder = artifacts.section_dir(out, n)
    try:
        man = json.loads((folder / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        print(f"§{n}: no checkpoint yet ({folder})")
        return
    name = SECTIONS[n]
    arts = man["artifacts"]
    own = [a for a in arts if a.startswith(name + "/")]
    tops = sorted({a.split("/")[1] if a.count("/") > 1 else a.split("/")[-1] for a in own})
    ext = [a for a in arts if not a.startswith(name + "/")]
    print(f"saved in {folder}: {', '.join(tops)}  ({len(own)} files)")
    if ext:
        print("also:", ", ".join(ext))
    print("counts:", man.get("counts", {}))
    check, delete = CHECKPOINT_NOTES[n]
    print("check by eye:", check)
    print("safe to delete:", delete)


def imbalance_table(imbalance: Mapping[str, Any], embeddings: Mapping[str, Any]) -> pd.DataFrame:
    """§2's imbalance statistics (``imbalance.json``) and the embedder (``embeddings.json``)."""
    s = imbalance
    rows = [("frames", s["n_frames"]), ("slices", s["n_slices"]),
            ("most common slice", f"{s['most_common_slice']} ({s['most_common_share']:.1%})"),
            (f"slices < {s['small_threshold']} frames", s["n_slices_below_small"]),
            ("rarest slices", "; ".join(f"{r['slice']} ({r['n_frames']})" for r in s["rarest_operational"])),
            ("embedder", f"{embeddings['embedder']} (dim {embeddings['dim']})")]
    return pd.DataFrame(rows, columns=["statistic", "value"])


def run_card_table(card: Mapping[str, Any]) -> pd.DataFrame:
    """A training run card (``run_card.json``) as key/value rows."""
    keep = ("model", "device", "epochs", "wall_time_s", "commit", "data_hash", "finished")
    rows = [(k, Path(str(card[k])).name if k == "model" else card.get(k)) for k in keep if k in card]
    return pd.DataFrame(rows, columns=["key", "value"])


def worst_slice_table(i: Mapping[str, Any]) -> pd.DataFrame:
    """§5's ``worst_slice.json``: worst, best and overall mAP@0.5 with CIs."""
    return pd.DataFrame([
        {"": "worst slice", "slice": i["worst_slice"], "n_eval": i["n_eval"], "mAP@0.5": i["AP50"], "95% CI": _ci(i["ci"])},
        {"": "best slice", "slice": i["best_slice"], "n_eval": None, "mAP@0.5": i["best_AP50"], "95% CI": _ci(i["best_ci"])},
        {"": "overall", "slice": "all eval frames", "n_eval": None, "mAP@0.5": i["overall_AP50"], "95% CI": ""},
    ])


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else "–"


def mining_table(i: Mapping[str, Any]) -> pd.DataFrame:
    """§6's ``mining_summary.json`` as one row."""
    return pd.DataFrame([{"worst slice": i["worst_slice"], "strategy": i["strategy"], "mined": i["k"],
                          "failure frames": i["n_failure_frames"], "precision": i["precision"],
                          "base rate in pool": i["base_rate"], "lift": i["lift"], "index": i["index"],
                          "drives (top-k → mined)": f"{i['dedup']['before']['drives']} → {i['dedup']['after']['drives']}",
                          "capped": i["dedup"]["capped"], "near-duplicates": i["dedup"]["near_duplicates"],
                          "with GT": i["counts"]["mined_with_gt"],
                          "predicted attributes": i["counts"]["mined_predicted_attrs"]}])


def explorer_demo(cfg: Any, n: int) -> pd.DataFrame:
    """The seed's FiftyOne idioms on our dataset, as a table of (idiom, call, result).

    §2: ``count_values`` of each slice attribute, ``match_tags`` for a rare condition,
    ``sort_by_similarity`` from one night frame. §6: ``sort_by_similarity`` on the failure
    prototype (checked against the FAISS mined top-10) and the saved ``mined`` view.
    The dataset is (re)built from the checkpoints when they changed (explorer.get_dataset).
    """
    ds = explorer.get_dataset(cfg)
    rows: list[tuple[str, str, Any]] = [("dataset", f"fo.load_dataset({ds.name!r})", f"{len(ds)} samples")]
    if n == 2:
        for attr in ("weather", "timeofday", "scene"):
            counts = ds.count_values(attr)
            rows.append(("count_values", f"ds.count_values({attr!r})",
                         ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))))
        for tags in (["timeofday:night", "weather:rainy"], ["weather:foggy"]):
            rows.append(("match_tags", f"ds.match_tags({tags}, all=True).count()",
                         ds.match_tags(tags, all=True).count()))
        if "img_sim" in ds.list_brain_runs():
            night = ds.match_tags("timeofday:night").first()
            top = explorer.sort_by_similarity(ds, night.id, k=10)
            share = np.mean([t == "night" for t in top.values("timeofday")])
            rows.append(("sort_by_similarity", f"ds.sort_by_similarity(<night frame {night['name']}>, k=10)",
                         f"{share:.0%} of the 10 nearest frames are night too"))
    elif n == 6:
        info, mined = artifacts.load_json(cfg.out, 6, "mining_summary.json"), artifacts.read_df(cfg.out, 6, "mined.csv")
        emb, names = artifacts.load_embeddings(cfg.out)
        idx = {nm: i for i, nm in enumerate(names)}
        proto = np.asarray(emb)[[idx[f] for f in info["failure_frames"]]].mean(0)
        top = explorer.sort_by_similarity(ds.match_tags("pool"), proto, k=10).values("name")
        same = top == mined["name"].head(10).tolist()
        rows.append(("sort_by_similarity", "ds.match_tags('pool').sort_by_similarity(prototype, k=10)",
                     f"top-10 {'identical to' if same else 'DIFFERS from'} FAISS mining"
                     + ("" if info["strategy"] == "prototype" else f" (strategy {info['strategy']}: not comparable)")))
        view = ds.load_saved_view("mined")
        rows.append(("saved view", "ds.load_saved_view('mined').count_values('slice')",
                     ", ".join(f"{k}: {v}" for k, v in sorted(view.count_values("slice").items(), key=lambda kv: -kv[1])[:5])))
        rows.append(("match_tags", f"ds.match_tags('mined').match(F('slice') == {info['worst_slice']!r}).count()",
                     f"{int((mined['slice'] == info['worst_slice']).sum()) if 'slice' in mined else 'n/a'} of {len(mined)}"))
    rows.append(("saved views", "ds.list_saved_views()", ", ".join(ds.list_saved_views())))
    rows.append(("App", "python -m bdd_engine app --profile " + str(cfg.profile), "opens these views in a browser"))
    return pd.DataFrame(rows, columns=["idiom", "call", "result"])
