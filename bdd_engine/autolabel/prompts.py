"""Grounding DINO prompt machinery: prompt phrases -> BDD classes, prompt groups, token spans,
and per-query phrase assignment (pure text/tensor logic; the model calls are in :mod:`.gsam2`).

Grounding DINO answers in the prompt's words, so every prompt phrase must map to a BDD
class explicitly (:data:`PHRASE_TO_CLASS`, ``class_prompts``) or be a negative phrase
(its boxes compete, then are dropped) — never by guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bdd_engine.bdd import CLASS_ID, CLASSES

# The profile's label_gsam2_prompt default: every BDD class once.
DEFAULT_PROMPT = (
    "car . truck . bus . pedestrian . bicycle . motorcycle . traffic light . traffic sign . train . rider"
)
# Explicit phrase -> BDD class. Grounding DINO answers in the prompt's words, so every
# prompt phrase must resolve here (or via class_prompts / negative_prompts), never by guess.
PHRASE_TO_CLASS: dict[str, str] = {
    "pedestrian": "pedestrian", "person": "pedestrian", "people": "pedestrian", "man": "pedestrian",
    "woman": "pedestrian", "child": "pedestrian",
    "rider": "rider", "cyclist": "rider", "motorcyclist": "rider",
    "car": "car", "van": "car", "suv": "car", "taxi": "car",
    "truck": "truck", "pickup truck": "truck", "lorry": "truck",
    "bus": "bus",
    "train": "train", "tram": "train", "streetcar": "train",
    "motorcycle": "motorcycle", "motorbike": "motorcycle", "scooter": "motorcycle",
    "bicycle": "bicycle", "bike": "bicycle",
    "traffic light": "traffic light", "traffic signal": "traffic light",
    "traffic sign": "traffic sign", "road sign": "traffic sign", "stop sign": "traffic sign",
}
# Grounding DINO's phrase delimiter in BERT's vocabulary ("."), see facts.md.
_DOT_ID = 1012


def parse_prompt(prompt: str) -> list[str]:
    """``"car . traffic light ."`` -> ``["car", "traffic light"]`` (lower-case, stripped, no empties)."""
    return [p.strip().lower() for p in prompt.split(".") if p.strip()]


def build_phrase_map(prompt: str, class_prompts: Mapping[str, Sequence[str]] | None = None,
                     negative_prompts: Sequence[str] = (),
                     phrase_map: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Every phrase the model will see -> BDD class (None = negative phrase, dropped).

    Phrases come from ``prompt`` plus ``class_prompts`` ({class: [phrases]}, which also
    define their mapping) plus ``negative_prompts`` (phrases that compete for boxes so
    e.g. a billboard is not called a traffic sign, then get dropped). A phrase without an
    explicit class raises instead of being guessed.
    """
    mapping = dict(PHRASE_TO_CLASS)
    mapping.update({k.lower(): v for k, v in (phrase_map or {}).items()})
    out: dict[str, str | None] = {}
    for cls, phrases in (class_prompts or {}).items():
        if cls not in CLASS_ID:
            raise ValueError(f"class_prompts key {cls!r} is not a BDD class {CLASSES}")
        for p in phrases:
            out[p.strip().lower()] = cls
    for p in parse_prompt(prompt):
        if p in out:
            continue
        if p not in mapping:
            raise ValueError(
                f"prompt phrase {p!r} has no BDD class: add it to label_gsam2_class_prompts "
                f"({{class: [phrases]}}) or label_gsam2_negative_prompts")
        if mapping[p] not in CLASS_ID:
            raise ValueError(f"phrase {p!r} maps to {mapping[p]!r}, not a BDD class")
        out[p] = mapping[p]
    for p in negative_prompts:
        p = p.strip().lower()
        if out.get(p):
            raise ValueError(f"phrase {p!r} is both a class prompt ({out[p]}) and a negative prompt")
        out[p] = None
    return out


def prompt_groups(phrase_map: Mapping[str, str | None], mode: str = "joint") -> list[list[str]]:
    """Phrase lists, one per model forward.

    ``joint``: everything in one prompt (fast). ``per_class``: one prompt per class
    (+ all negatives), because long multi-class prompts lose objects that single-class
    prompts find (facts.md) — at K times the cost.
    """
    negatives = [p for p, c in phrase_map.items() if c is None]
    if mode == "joint":
        return [list(phrase_map)]
    if mode != "per_class":
        raise ValueError(f"label_gsam2_prompt_mode must be 'joint' or 'per_class', got {mode!r}")
    by_cls: dict[str, list[str]] = {}
    for p, c in phrase_map.items():
        if c is not None:
            by_cls.setdefault(c, []).append(p)
    return [phrases + negatives for phrases in by_cls.values()]


def prompt_text(phrases: Sequence[str]) -> str:
    """Grounding DINO's expected format: lower-case phrases separated and ended by ' .'."""
    return " . ".join(phrases) + " ."


def phrase_spans(input_ids: Sequence[int], n_phrases: int) -> list[list[int]]:
    """Token positions of each phrase in ``[CLS] p1 . p2 . ... [SEP]`` (dot id 1012).

    Raises if the tokenizer split the prompt into a different number of phrases (e.g. a
    phrase that itself contains a '.' or tokenises to nothing).
    """
    spans: list[list[int]] = []
    cur: list[int] = []
    for pos, tok in enumerate(list(input_ids)[1:], start=1):
        if tok == 102:  # [SEP]
            break
        if tok == _DOT_ID:
            if cur:
                spans.append(cur)
            cur = []
        else:
            cur.append(pos)
    if cur:
        spans.append(cur)
    if len(spans) != n_phrases:
        raise ValueError(f"prompt tokenised into {len(spans)} phrases, expected {n_phrases}: ids {list(input_ids)}")
    return spans


def assign_phrases(probs, spans: Sequence[Sequence[int]], box_threshold: float, text_threshold: float):
    """Per query: the best phrase, its score, and whether it passes both thresholds.

    ``probs``: (Q, T) sigmoid token probabilities of one image. Phrase score = max token
    probability inside the phrase's span (Grounding DINO's box score restricted to one
    phrase); the winning phrase must also have a **mean** span probability >=
    ``text_threshold``, so "light" alone firing on a street lamp does not become
    "traffic light". Assigning by span instead of decoding the thresholded tokens
    (``post_process_grounded_object_detection``'s ``text_labels``) avoids merged or partial
    phrases such as "car truck" or "traffic".

    Returns (keep_idx (K,), phrase_idx (K,), scores (K,)) as torch tensors.
    """
    import torch  # heavy optional dependency (only the gsam2 labeler needs it): imported on use

    mx = torch.stack([probs[:, list(s)].max(dim=1).values for s in spans], dim=1)    # (Q, P)
    mean = torch.stack([probs[:, list(s)].mean(dim=1) for s in spans], dim=1)        # (Q, P)
    score, best = mx.max(dim=1)
    ok = (score >= box_threshold) & (mean.gather(1, best[:, None])[:, 0] >= text_threshold)
    keep = ok.nonzero(as_tuple=True)[0]
    return keep, best[keep], score[keep]
