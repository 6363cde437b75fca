"""Auto-label mined frames: one :class:`Labeler` interface, three labelers, honest quality.

This file is only the public front: it re-exports names from the modules below it,
one concept each (none of them imports this front or anything above the package).

=============  =====================================================================
module         concept
=============  =====================================================================
``base``       :class:`Labeler` (frames + image paths in), :class:`LabelRun` (labels,
               failures, stats out), image decoding, :class:`LabelBatch` (the stage on Ray)
``prompts``    Grounding DINO prompt phrases -> BDD classes, prompt groups, token spans
``gsam2``      ``gsam2``: Grounding DINO boxes, SAM 2.1 masks, box tightening, rider rule
``teacher``    ``teacher``: any Ultralytics weights through ``train.predict``
``oracle``     ``oracle``: the held-back ground truth (``is_oracle=True``, never an auto-label)
``factory``    :func:`make_labeler` (explicit keywords) and :func:`get_labeler` (profile adapter)
``quality``    :func:`label_quality`: P/R at IoU 0.5 vs GT, spot check, missed classes, confusions
``router``     accept / review / discard by score, who needs a human, the training set, cost,
               P/R of the labels that feed training (:func:`quality_at_accept`)
``thresholds`` the threshold that feeds training: one ``label_accept`` or per-class thresholds
               chosen by F-beta on the EVAL POOL only (:func:`choose_on_eval_pool`)
``exports``    COCO, Label Studio, YOLO exports and :func:`write_outputs` (what §7 calls)
``review_import``  the inverse: Label Studio JSON export -> BDD frames; :func:`next_turn_frames`
               (accepted auto-labels + reviewed labels)
=============  =====================================================================

Boxes are ``xyxy`` pixels of the original image everywhere (BDD ``box2d``); scores are in [0, 1].
"""

from bdd_engine.autolabel.base import LabelBatch, Labeler, LabelRun, WeightsMissingError, load_rgb
from bdd_engine.autolabel.exports import (LABEL_STUDIO_CONFIG, export_coco, export_label_studio, export_yolo_set,
                                          grey_uncertain,
                                          write_outputs)
from bdd_engine.autolabel.factory import (LABELERS, PROFILE_KEYS, get_labeler, labeler_input_files, labeler_options,
                                         make_labeler, teacher_weights)
from bdd_engine.autolabel.gsam2 import (GDINO_DIR, RIDEABLE, SAM2_DIR, SETUP_HINT, GroundedSam2Labeler,
                                        apply_rider_rule, check_weights, tighten_to_mask)
from bdd_engine.autolabel.oracle import OracleLabeler
from bdd_engine.autolabel.prompts import (DEFAULT_PROMPT, PHRASE_TO_CLASS, assign_phrases, build_phrase_map,
                                          parse_prompt, phrase_spans, prompt_groups, prompt_text)
from bdd_engine.autolabel.quality import QualityReport, confusions, label_quality, pr_summary, pr_table
from bdd_engine.autolabel.review_import import ExportError, ImportReport, import_label_studio, next_turn_frames
from bdd_engine.autolabel.router import (BUCKETS, accepted_frames, bucket_of, cost_table, frames_for_humans,
                                         quality_at_accept, route, router_table)
from bdd_engine.autolabel.thresholds import (Accept, accept_of, choose_on_eval_pool, eval_pool_frames, fbeta_thresholds,
                                             threshold_grid)
from bdd_engine.autolabel.teacher import TeacherLabeler

__all__ = [
    # base
    "Labeler", "LabelRun", "LabelBatch", "WeightsMissingError", "load_rgb",
    # labelers and how to build them
    "GroundedSam2Labeler", "TeacherLabeler", "OracleLabeler", "LABELERS", "PROFILE_KEYS", "make_labeler",
    "labeler_options", "get_labeler", "labeler_input_files", "teacher_weights",
    # gsam2 machinery
    "DEFAULT_PROMPT", "PHRASE_TO_CLASS", "parse_prompt", "build_phrase_map", "prompt_groups", "prompt_text",
    "phrase_spans", "assign_phrases", "GDINO_DIR", "SAM2_DIR", "SETUP_HINT", "RIDEABLE", "check_weights",
    "tighten_to_mask", "apply_rider_rule",
    # quality, router, exports
    "QualityReport", "label_quality", "pr_table", "pr_summary", "confusions",
    "BUCKETS", "bucket_of", "route", "router_table", "frames_for_humans", "accepted_frames", "cost_table",
    "quality_at_accept", "Accept", "accept_of", "threshold_grid", "fbeta_thresholds", "eval_pool_frames",
    "choose_on_eval_pool", "grey_uncertain",
    "LABEL_STUDIO_CONFIG", "export_coco", "export_label_studio", "export_yolo_set", "write_outputs",
    # review import
    "ExportError", "ImportReport", "import_label_studio", "next_turn_frames",
]
