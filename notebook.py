# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # BDD100K mini data-engine — one turn of the driving-data flywheel
#
# collect → curate → label → train → **evaluate by ODD slice** → **mine the worst slice** →
# auto-label → retrain → report.
#
# The one number this notebook exists for: the iter-0 → iter-1 change in mAP@0.5 on the
# worst-performing slice (`weather | timeofday | scene`, BDD's own attributes verbatim),
# next to its confidence interval and the controls that say whether mining earned it.
#
# Run it cell by cell, headless (`make demo`, `python -m bdd_engine run --profile P`), or
# from any section in a fresh kernel: every section reads only the checkpoints of the
# sections before it (`outputs/0N_*`), and recomputes only what is stale.
# `fw` runs the sections (`flywheel.py`); `vw` shows their results (`views.py`).
# The profile comes from `$BDD_PROFILE` (default `demo`); any key can be overridden with
# `BDD_<KEY>=value`.

# %%
from bdd_engine import flywheel as fw, views as vw

cfg = vw.cfg()
vw.banner(cfg)
fw.preflight(cfg)  # inputs beyond the profile (flywheel_reviewed files), checked before any section runs

# %% [markdown]
# ## §1 Collect
# Load the det_20 labels, index the images that are actually on disk, validate every record
# (each bad record is counted and listed, never silently dropped), then draw a stratified
# sample by `weather × timeofday`: every condition keeps at least `collect_min_floor` frames,
# so rare conditions survive the cut.

# %%
from bdd_engine import flywheel as fw, views as vw

cfg = vw.cfg()
r1 = fw.s1_collect(cfg)
print(r1.info["coverage"])
print("validation:", r1.info["summary"])
display(r1["strata"])

# %% [markdown]
# ## Checkpoint

# %%
vw.checkpoint_note(cfg.out, 1)

# %% [markdown]
# ## §2 Curate
# Embed every collected frame (the profile's embedder; the demo uses an offline classic
# descriptor, never a random network posing as CLIP), then look at the data the way a
# curator does: how the slices are distributed, how long the tail is, and whether
# conditions separate in embedding space.

# %%
from bdd_engine import flywheel as fw, views as vw

cfg = vw.cfg()
r2 = fw.s2_curate(cfg)
display(vw.imbalance_table(r2.info["imbalance"], r2.info["embeddings"]))
vw.show(cfg.out, "slice_distribution.png", "slice_long_tail.png", "embedding_map.png")

# %% [markdown]
# The same data in FiftyOne (a persistent view over the checkpoints; `make app` opens it):
# `count_values` per attribute and `match_tags` on a condition.

# %%
vw.explorer_demo(cfg, 2)

# %% [markdown]
# ## Checkpoint

# %%
vw.checkpoint_note(cfg.out, 2)

# %% [markdown]
# ## §3 Pools
# Split by **drive group** (first hex block of the video name), so near-duplicate frames of
# one drive never straddle train and eval: eval is balanced over the eligible slices (enough
# confirmation frames to confirm a Δ and enough mining-pool frames to move it),
# train is stratified by `weather × timeofday`, the rest is the mining pool — unlabelled to
# us (its labels are read only to score auto-labels and for the oracle control).
# A leakage check fails loudly if any eval drive leaks.

# %%
from bdd_engine import flywheel as fw, views as vw

cfg = vw.cfg()
r3 = fw.s3_pools(cfg)
display(r3["summary"])
display(r3["eval_slices"])

# %% [markdown]
# ## Checkpoint

# %%
vw.checkpoint_note(cfg.out, 3)

# %% [markdown]
# ## §4 Train iter0
# Ultralytics YOLO on the train pool, offline-safe (no font or AMP download), seeded,
# resumable with Ultralytics' own `resume` if interrupted.

# %%
from bdd_engine import flywheel as fw, views as vw

cfg = vw.cfg()
r4 = fw.s4_train(cfg)
display(vw.run_card_table(r4.info["run_card"]))

# %% [markdown]
# ## Checkpoint

# %%
vw.checkpoint_note(cfg.out, 4)

# %% [markdown]
# ## §5 Evaluate iter0 per slice
# One inference pass over the eval pool; the official BDD metric (COCO-style AP, crowd and
# ignored categories as ignore regions) computed once per (frame, class) match and then
# aggregated for every slice, with a bootstrap 95% CI — slices have only 15–25 frames.

# %%
from bdd_engine import flywheel as fw, views as vw

cfg = vw.cfg()
r5 = fw.s5_eval(cfg)
display(vw.worst_slice_table(r5.info))
vw.show(cfg.out, "slice_map_iter0.png", "worst_slice_failures.png", "confusion_iter0.png")

# %% [markdown]
# ## Checkpoint

# %%
vw.checkpoint_note(cfg.out, 5)

# %% [markdown]
# ## §6 Mine the worst slice
# Failure frames = worst-slice eval frames with frame AP@0.5 = 0 or recall < 0.3. Their
# normalised mean embedding is the query; FAISS searches the mining pool (exact inner
# product, IVF above `mine_ivf_above`). Mining precision — how many mined frames really are
# of the worst slice — is measured against the slice's base rate in the pool. Near-duplicate
# control: at most `mine_max_per_drive` frames per drive, none closer than `mine_min_distance`
# (cosine) to another mined frame. Pool frames without attributes (ingested with
# `pool_sources: [labels, ingested]`) get predicted ones (`attr_source: predicted`); the
# predictor is scored on the labelled pool frames, whose drives it never saw.

# %%
from bdd_engine import flywheel as fw, views as vw

cfg = vw.cfg()
r6 = fw.s6_mine(cfg)
display(vw.mining_table(r6.info))
display(r6["attributes"])
display(r6["uncertainty_by_slice"])  # iter0's mean uncertainty (1 - max score) per pool slice, most uncertain first
vw.show(cfg.out, "mined_frames_grid.png", "attribute_confusion.png")

# %% [markdown]
# In FiftyOne: `sort_by_similarity` on the failure prototype and the saved `mined` view.

# %%
vw.explorer_demo(cfg, 6)

# %% [markdown]
# ## Checkpoint

# %%
vw.checkpoint_note(cfg.out, 6)

# %% [markdown]
# ## §7 Auto-label the mined frames, retrain iter1 (and the controls)
# The profile's labeler (`gsam2` with real weights; in the demo `teacher` = a larger detector
# trained offline on a disjoint synthetic world, `label_teacher_weights`) labels the mined frames;
# label quality is measured against the held-back GT (also at the threshold that feeds
# training: `quality_accept`) and routed by confidence (accept / review / discard). Then every
# arm trains with identical epochs, seed, hyper-parameters (a continuation recipe with no restart
# cost) and number of steps, on the same replay set of train frames plus: **iter1** (mined,
# auto-labels), **random** (as many pool frames drawn per seed, same labeler), **oracle** (mined,
# GT labels), **random_gt** (the same random frames, GT labels) and **continue** (train frames
# iter0 already saw: no new data).

# %%
from bdd_engine import flywheel as fw, views as vw

cfg = vw.cfg()
r7 = fw.s7_autolabel_retrain(cfg)
display(r7["quality"])
display(r7["router"])
display(r7["cost"])
display(r7["runs"])

# %% [markdown]
# ## Checkpoint

# %%
vw.checkpoint_note(cfg.out, 7)

# %% [markdown]
# ## §8 Evaluate iter1 and the delta
# The same predict-once evaluation for every arm, then the headline: the worst slice's Δ
# mAP@0.5 with a paired-bootstrap 95% CI (both models scored on the same resampled frames),
# beside the controls; on the confirmation set, the verdict: G1 (continue moves nothing) and
# G2 (GT on mined frames beats GT on random frames) must pass, else it is `inconclusive`.
# Then golden-set QA, the action plan, the runs table and the generated case study.

# %%
from bdd_engine import flywheel as fw, views as vw

cfg = vw.cfg()
r8 = fw.s8_delta(cfg)
display(r8["headline"])
display(r8["runs"])
vw.show(cfg.out, "slice_delta.png", "confusion.png", "architecture.png")
print("verdict:", r8.info["verdict"], "—", r8.info["headline"].get("reading", ""))
print("case study:", r8.info["case_study"])

# %% [markdown]
# ## Checkpoint

# %%
vw.checkpoint_note(cfg.out, 8)

# %% [markdown]
# ## More turns (`flywheel_turns`)
# Turn t > 1 repeats §5–§8 in `outputs/turn<t>/`: the model the previous turn's registry
# promoted becomes iter0 and teacher, the worst slice is chosen again, only frames no earlier
# turn mined are mined, and every arm trains on train ∪ the earlier turns' accepted
# auto-labels ∪ their reviewed labels (`flywheel_reviewed`: `import-labels` folders of the
# Label Studio review queue). The learning curve shows mAP@0.5 per turn, iter1 beside the
# random control. With `flywheel_turns: 1` (the demo) this cell only shows turn 1's point.

# %%
import pandas as pd

from bdd_engine import artifacts, flywheel as fw, views as vw

cfg = vw.cfg()
fw.more_turns(cfg)
n = int(cfg.flywheel_turns)
display(pd.DataFrame(artifacts.load_json(cfg.out, 8, "learning_curve.json", n)))
vw.show(artifacts.turn_dir(cfg.out, n), "learning_curve.png")
print("case study:", artifacts.turn_dir(cfg.out, n) / "case_study" / "case_study_v1.md")
