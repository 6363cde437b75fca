"""The notebook's section graph, in one table: folder, upstream sections, config prefixes,
and what a flywheel turn repeats.

Read by config (which keys a section's hash covers), checkpoint (folder names and
freshness through upstream manifests) and the explorer (which checkpoints it mirrors).
Imports nothing from the package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SectionSpec:
    number: int
    folder: str                  # checkpoint folder under outputs/
    upstream: tuple[int, ...]    # earlier sections it reads (its freshness follows theirs)
    prefixes: tuple[str, ...]    # config key prefixes it reads, beyond config.GLOBAL_KEYS
    previous_turn: tuple[int, ...] = ()  # turn t > 1: sections of turn t-1 it reads (promoted model, carried labels)
    turn_keys: tuple[str, ...] = ()      # turn t > 1: list-valued keys whose first t-1 entries it reads


SPECS: dict[int, SectionSpec] = {s.number: s for s in (
    SectionSpec(1, "01_collect", (), ("synth_", "collect_")),  # confirm_label_files: a global key (config.GLOBAL_KEYS)
    SectionSpec(2, "02_curate", (1,), ("embed_", "curate_", "infer_")),
    SectionSpec(3, "03_pools", (1,), ("pool_", "confirm_min_frames", "eval_min_pool_frames")),  # eligibility (issue 24)
    SectionSpec(4, "04_train", (3,), ("train_",)),
    SectionSpec(5, "05_eval_iter0", (3, 4), ("eval_", "confirm_", "infer_"), previous_turn=(8,)),
    SectionSpec(6, "06_mine", (2, 3, 5), ("mine_", "infer_")),
    SectionSpec(7, "07_autolabel_retrain", (3, 4, 6), ("label_", "retrain_", "infer_"), previous_turn=(7, 8),
                turn_keys=("flywheel_reviewed",)),
    SectionSpec(8, "08_delta", (3, 5, 6, 7), ("report_", "control_", "infer_")),
)}
SECTIONS: dict[int, str] = {n: s.folder for n, s in SPECS.items()}
UPSTREAM: dict[int, tuple[int, ...]] = {n: s.upstream for n, s in SPECS.items()}
SECTION_PREFIXES: dict[int, tuple[str, ...]] = {n: s.prefixes for n, s in SPECS.items()}

# Flywheel turns: turn 1 is the sections above in outputs/; turn t > 1 repeats §5–§8 in
# outputs/turn<t>/ (same folder names), starting from turn t-1's promoted model.
TURN_SECTIONS: tuple[int, ...] = (5, 6, 7, 8)


def turn_folder(turn: int) -> str:
    """Folder of a turn's §5–§8 under the outputs folder: '' for turn 1, 'turn<t>' after."""
    if int(turn) < 1:
        raise ValueError(f"flywheel turns count from 1, got {turn}")
    return "" if int(turn) == 1 else f"turn{int(turn)}"
