"""The per-class confusion matrix (bdd_engine.confusion): each planted error lands in its cell —
class confusion, miss (-> background), false positive and duplicate (background ->), boxes
below the operating threshold and on ignore/crowd regions left out."""

from __future__ import annotations

import pandas as pd

from bdd_engine import confusion


def _box(cat, x, y, w=40, h=40, score=None, **attrs):
    lb = {"id": f"{cat}{x}{y}", "category": cat, "attributes": attrs, "box2d": {"x1": x, "y1": y, "x2": x + w, "y2": y + h}}
    if score is not None:
        lb["score"] = score
    return lb


GT = [{"name": "a.jpg", "labels": [_box("car", 0, 0), _box("rider", 100, 0), _box("pedestrian", 200, 0),
                                    _box("other vehicle", 300, 0), _box("bus", 400, 0, crowd=True)]},
      {"name": "b.jpg", "labels": [_box("car", 0, 0)]}]
PRED = [{"name": "a.jpg", "labels": [
    _box("car", 1, 1, score=0.9),            # TP car
    _box("car", 2, 0, score=0.8),            # duplicate of the matched car: a false positive
    _box("pedestrian", 101, 0, score=0.7),   # the rider taken for a pedestrian
    _box("truck", 500, 200, score=0.6),      # nothing there: a false positive
    _box("car", 300, 1, score=0.6),          # on the ignore region (other vehicle): left out
    _box("bus", 400, 1, score=0.6),          # on the crowd box: left out
    _box("bicycle", 200, 0, score=0.1),      # below the operating threshold: left out -> the pedestrian is missed
]}, {"name": "b.jpg", "labels": [_box("car", 0, 0, score=0.9)]}]


def test_each_planted_error_lands_in_its_cell():
    m = confusion.confusion_matrix(GT, PRED, conf=0.25)
    assert list(m.index)[-1] == list(m.columns)[-1] == "background" and m.shape == (11, 11)
    cells = {(t, q): int(m.loc[t, q]) for t in m.index for q in m.columns if m.loc[t, q]}
    assert cells == {("car", "car"): 2, ("background", "car"): 1, ("rider", "pedestrian"): 1,
                     ("background", "truck"): 1, ("pedestrian", "background"): 1}
    # GT rows add up to the non-ignored, non-crowd GT boxes; predicted columns to the counted predictions
    assert int(m.drop(index="background").to_numpy().sum()) == 4
    long = confusion.to_long({"iter0 · eval pool": m})
    assert long["count"].sum() == 6 and set(long["panel"]) == {"iter0 · eval pool"}


def test_a_lower_threshold_and_a_frame_subset_change_only_their_cells():
    low = confusion.confusion_matrix(GT, PRED, conf=0.05)
    assert low.loc["pedestrian", "bicycle"] == 1 and low.loc["pedestrian", "background"] == 0
    only_b = confusion.confusion_matrix(GT, PRED, conf=0.25, names=["b.jpg"])
    assert int(only_b.to_numpy().sum()) == 1 and only_b.loc["car", "car"] == 1


def test_summary_counts_tp_fn_fp_and_the_top_confusion():
    s = confusion.summary(confusion.confusion_matrix(GT, PRED, conf=0.25)).set_index("class")
    assert s.loc["car", ["tp", "fn", "fp"]].tolist() == [2, 0, 1]
    assert s.loc["rider", "confused_as"] == 1 and s.loc["rider", "top_confusion"] == "pedestrian (1)"
    assert s.loc["pedestrian", "fn"] == 1 and s.loc["truck", "fp"] == 1
    assert isinstance(s, pd.DataFrame) and len(s) == 10


def test_figure_has_a_panel_per_matrix_and_says_synthetic(tmp_path):
    from bdd_engine import figures
    from bdd_engine.checkpoint import atomic_save_fig

    m = confusion.confusion_matrix(GT, PRED, conf=0.25)
    panels = {"iter0 · eval pool": m, "iter0 · worst slice": m, "iter1_s42 · eval pool": m * 2, "iter1_s42 · worst slice": m}
    fig = figures.confusion_figure(panels, 0.25, synthetic=True)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 4 and "SYNTHETIC" in fig._suptitle.get_text()
    assert [ax.get_title() for ax in fig.axes] == list(panels)
    assert atomic_save_fig(tmp_path / "confusion.png", fig).stat().st_size > 10_000


def test_section_writer_gets_csv_and_figure_for_eval_pool_and_worst_slice(tiny_cfg):
    """flywheel's §5/§8 helper: one eval-pool and one worst-slice panel per model, the CSV's counts
    are the matrices', the PNG lands in figures/ and the panels name the model and the scope."""
    from bdd_engine import artifacts, bdd, flywheel
    from bdd_engine.checkpoint import Section

    cfg = tiny_cfg
    flywheel.s1_collect(cfg)
    flywheel.s3_pools(cfg)
    ev = flywheel._eval_pool(cfg)
    gt = artifacts.load_gt(cfg.out, 3, "eval")
    preds = [{"name": f["name"], "labels": [{**lb, "score": 0.9} for lb in f["labels"][::2]]} for f in gt]
    worst = ev["slice"].value_counts().index[0]
    with Section(cfg, 5).writer() as w:
        flywheel._write_confusion(cfg, w, "confusion_iter0", ev, worst, {"iter0": preds})
    long = Section(cfg, 5).read_df("confusion_iter0.csv")
    panels = long.groupby("panel")["count"].sum()
    assert len(panels) == 2 and any(p.startswith("iter0 · eval pool") for p in panels.index)
    ws = [p for p in panels.index if worst in p]
    n_gt = len(bdd.boxes_table(gt).query("not ignore and not crowd"))
    assert panels[[p for p in panels.index if "eval pool" in p][0]] == n_gt  # every GT box is a TP or a miss
    assert 0 < panels[ws[0]] < n_gt
    assert (cfg.out / "figures" / "confusion_iter0.png").stat().st_size > 10_000
