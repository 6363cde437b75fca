"""Predicted ODD attributes (weather, timeofday, scene) for frames nobody labelled.

Two predictors, both returning, per attribute, the predicted BDD value (verbatim, e.g.
``dawn/dusk``) and a confidence in [0, 1] (the winning class probability):

* :func:`fit_probes` — a linear probe per attribute (multinomial logistic regression) on
  the embeddings of labelled frames (any embedder: ``gradhist`` offline, CLIP, DINOv2).
  ``undefined`` is not a value to learn: frames whose value is ``undefined`` or missing
  are left out of that attribute's training and evaluation.
* :func:`zero_shot` — CLIP zero-shot: cosine of an image embedding with the text
  embeddings of one prompt per value (:data:`PROMPTS`), softmax at CLIP's logit scale.

:func:`evaluate_probes` holds out whole drive groups (``bdd.group_of``: same-drive frames
are near-duplicates) and reports per-attribute accuracy next to the majority-class rate,
plus confusion matrices; :func:`confusion_figure` draws them. Rows produced here carry
``attr_source = "predicted"``. §6 uses :func:`pool_attributes`: the pool frames without
attributes (ingested frames) get predicted ones, and the predictor is scored on the pool's
labelled frames, whose drives no fitted frame shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bdd_engine import executor as executors
from bdd_engine.bdd import SLICE_ATTRS
from bdd_engine.viz import heatmaps

UNDEFINED = "undefined"

# One prompt per BDD value (verbatim keys); "undefined" has no prompt: it is not a condition.
PROMPTS: dict[str, dict[str, str]] = {
    "weather": {"clear": "a photo of a road on a clear day", "overcast": "a photo of a road under an overcast sky",
                "partly cloudy": "a photo of a road under a partly cloudy sky",
                "rainy": "a photo of a road in the rain", "snowy": "a photo of a road in the snow",
                "foggy": "a photo of a road in dense fog"},
    "timeofday": {"daytime": "a photo of a road in daylight", "night": "a photo of a road at night",
                  "dawn/dusk": "a photo of a road at dusk with a low sun"},
    "scene": {"city street": "a photo of a city street", "highway": "a photo of a highway",
              "residential": "a photo of a residential street", "parking lot": "a photo of a parking lot",
              "gas stations": "a photo of a gas station", "tunnel": "a photo of a road in a tunnel"},
}


def _known(values: Sequence[Any]) -> np.ndarray:
    """Mask of values that are a real condition (not ``undefined``, not missing)."""
    return np.array([isinstance(v, str) and v not in ("", UNDEFINED) for v in values])


def fit_probes(X: np.ndarray, labels: pd.DataFrame, *, attrs: Sequence[str] = SLICE_ATTRS, seed: int = 42,
               C: float = 0.1) -> dict[str, Any]:
    """One probe per attribute: standardised features → logistic regression. ``X``: (N, D) float
    embeddings, row i ↔ ``labels.iloc[i]``; ``labels`` has a column per attribute (BDD values).
    ``C``: inverse L2 strength (0.1: on the tiny world's gradhist descriptors C in {0.01, 0.1, 1}
    scored within a few points of each other; without standardising, the small descriptor values
    left scene at the majority class). An attribute with fewer than two known values gets no
    probe (absent from the result)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probes = {}
    for a in attrs:
        y = labels[a].to_numpy(object)
        m = _known(y)
        if len(set(y[m])) < 2:
            continue
        # newton-cg: the same L2 multinomial objective as lbfgs, 12-13 iterations instead of 29-110 (demo
        # train+eval, 373-d gradhist: 0.05-0.12 s vs 1-6 s per attribute, measured)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, random_state=seed, solver="newton-cg"))
        probes[a] = clf.fit(X[m], y[m].astype(str))
    return probes


def predict_attributes(probes: Mapping[str, Any], X: np.ndarray) -> pd.DataFrame:
    """(N rows) ``<attr>``, ``<attr>_conf`` per probed attribute and ``attr_source = "predicted"``."""
    out = {}
    for a, clf in probes.items():
        p = clf.predict_proba(X)
        out[a] = clf.classes_[p.argmax(1)]
        out[f"{a}_conf"] = p.max(1)
    df = pd.DataFrame(out)
    df["attr_source"] = "predicted"
    return df


def zero_shot(image_emb: np.ndarray, text_emb: Mapping[str, tuple[Sequence[str], np.ndarray]],
              logit_scale: float = 100.0) -> pd.DataFrame:
    """CLIP zero-shot. ``image_emb``: (N, D) L2-normalised; ``text_emb``: attr → (values, (K, D)
    L2-normalised text embeddings, row k ↔ values[k]); ``logit_scale``: CLIP's temperature
    (100 for OpenAI/LAION CLIP). Same columns as :func:`predict_attributes`."""
    out = {}
    for a, (values, T) in text_emb.items():
        z = logit_scale * image_emb @ np.asarray(T).T
        z = np.exp(z - z.max(1, keepdims=True))
        p = z / z.sum(1, keepdims=True)
        out[a] = np.asarray(values, object)[p.argmax(1)]
        out[f"{a}_conf"] = p.max(1)
    df = pd.DataFrame(out)
    df["attr_source"] = "predicted"
    return df


class AttributeBatch:
    """The predicted-attributes stage as a batch callable: fitted ``probes`` (:func:`fit_probes`)
    or CLIP ``text_emb`` (:func:`zero_shot`), given once; a batch ``{"x": (N, D) embeddings}`` in,
    :func:`predict_attributes`' columns (+ ``error``) out."""

    def __init__(self, probes: Mapping[str, Any] | None = None,
                 text_emb: Mapping[str, tuple[Sequence[str], np.ndarray]] | None = None):
        if (probes is None) == (text_emb is None):
            raise ValueError("AttributeBatch needs exactly one of probes= or text_emb=")
        self.probes, self.text_emb = probes, text_emb

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.asarray(batch["x"], np.float32)
        df = predict_attributes(self.probes, x) if self.probes is not None else zero_shot(x, self.text_emb)
        return {**{c: df[c].to_numpy() for c in df.columns}, "error": np.full(len(df), "", dtype=object)}


ATTR_BATCH = 65536  # rows per batch of AttributeBatch (a pool below it is one batch, as before the executor)


def predict_rows(X: np.ndarray, *, probes: Mapping[str, Any] | None = None,
                 text_emb: Mapping[str, tuple[Sequence[str], np.ndarray]] | None = None,
                 executor: executors.Executor = executors.LOCAL, batch: int = ATTR_BATCH) -> pd.DataFrame:
    """:class:`AttributeBatch` over ``X`` (N, D) in batches of ``batch`` rows on ``executor``:
    :func:`predict_attributes` / :func:`zero_shot`'s columns, row i ↔ ``X[i]``."""
    spans = executors.chunks(len(X), batch) or [range(0, 0)]  # no rows: one empty batch, as one call was
    outs = executors.run(AttributeBatch, [{"x": np.asarray(X[r.start:r.stop])} for r in spans], executor=executor,
                         stage_kwargs={"probes": probes, "text_emb": text_emb}, name="attributes")
    return pd.DataFrame(executors.concat(outs)).drop(columns="error")


def clip_text_embeddings(model: Any, tokenizer: Any, prompts: Mapping[str, Mapping[str, str]] = PROMPTS,
                         device: str = "cpu") -> dict[str, tuple[list[str], np.ndarray]]:
    """attr → (values, (K, D) L2-normalised text embeddings) from an open_clip ``model`` and its ``tokenizer``."""
    import torch

    out = {}
    with torch.no_grad():
        for a, table in prompts.items():
            values = list(table)
            t = model.encode_text(tokenizer([table[v] for v in values]).to(device)).float().cpu().numpy()
            out[a] = (values, t / np.linalg.norm(t, axis=1, keepdims=True))
    return out


def clip_embedder_texts(embedder: Any, arch: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """:func:`clip_text_embeddings` of :data:`PROMPTS` for an ``embed.ClipEmbedder`` (its open_clip
    model, ``arch``'s tokenizer, which ships with open_clip: no download)."""
    if not str(getattr(embedder, "name", "")).startswith("clip"):
        raise ValueError(f"mine_attr_predictor zero_shot needs embed_model: clip (the text tower), not "
                         f"{getattr(embedder, 'name', embedder)!r}; use mine_attr_predictor: probe")
    import open_clip

    return clip_text_embeddings(embedder.model, open_clip.get_tokenizer(arch), device=embedder.device)


def evaluate_probes(X: np.ndarray, labels: pd.DataFrame, groups: Sequence[str], *, test_size: float = 0.3,
                    attrs: Sequence[str] = SLICE_ATTRS, seed: int = 42,
                    C: float = 0.1) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Fit on some drive groups, score on the held-out ones (``test_size``: share of groups).

    Returns (table: attribute, n_train, n_test, accuracy, majority (share of the test set's most
    common value), mean_conf; confusion: attr → DataFrame of counts, rows = truth, cols = predicted)."""
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import GroupShuffleSplit

    tr, te = next(GroupShuffleSplit(1, test_size=test_size, random_state=seed).split(X, groups=np.asarray(groups)))
    probes = fit_probes(X[tr], labels.iloc[tr], attrs=attrs, seed=seed, C=C)
    pred = predict_attributes(probes, X[te])
    n_train = {a: int(_known(labels[a].to_numpy(object)[tr]).sum()) for a in probes}
    return score_predictions(pred, labels.iloc[te], n_train, {a: clf.classes_ for a, clf in probes.items()})


def score_predictions(pred: pd.DataFrame, truth: pd.DataFrame, n_train: Mapping[str, int],
                      classes: Mapping[str, Sequence[str]] | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Predicted vs true attributes, row i ↔ row i, on the rows whose true value is known.

    ``pred``: :func:`predict_attributes` / :func:`zero_shot` columns; ``truth``: a column per
    attribute of ``n_train`` (attribute → frames the predictor was fitted on; 0 for zero-shot);
    ``classes``: values the predictor can output (confusion axes, besides the true ones).
    Returns (table: attribute, n_train, n_test, accuracy, majority (share of the scored rows'
    most common value), mean_conf; confusion: attr → counts, rows = truth, cols = predicted)."""
    from sklearn.metrics import confusion_matrix

    rows, conf = [], {}
    for a in n_train:
        y = truth[a].to_numpy(object)
        m = _known(y)
        y, p = y[m].astype(str), pred[a].to_numpy()[m].astype(str)
        values = sorted(set(y) | set(p) | set((classes or {}).get(a, ())))
        conf[a] = pd.DataFrame(confusion_matrix(y, p, labels=values), index=values, columns=values)
        rows.append({"attribute": a, "n_train": int(n_train[a]),
                     "n_test": int(m.sum()), "accuracy": float((y == p).mean()) if m.any() else np.nan,
                     "majority": float(pd.Series(y).value_counts(normalize=True).iloc[0]) if m.any() else np.nan,
                     "mean_conf": float(pred[f"{a}_conf"].to_numpy()[m].mean()) if m.any() else np.nan})
    return pd.DataFrame(rows), conf


PREDICTORS = ("probe", "zero_shot")


def pool_attributes(pool: pd.DataFrame, X_pool: np.ndarray, fit_frames: pd.DataFrame, X_fit: np.ndarray, *,
                    method: str, text_emb: Mapping[str, tuple[Sequence[str], np.ndarray]] | None = None,
                    attrs: Sequence[str] = SLICE_ATTRS, seed: int = 42, C: float = 0.1,
                    executor: executors.Executor = executors.LOCAL) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """Predicted attributes for the pool frames that have none, scored on those that have them.

    ``pool``: frame table (name + ``attrs``) with ``X_pool`` (P, D) embeddings row-aligned;
    ``fit_frames`` / ``X_fit`` (F, D): labelled frames to fit the ``probe`` on (``method``;
    ``zero_shot`` uses ``text_emb`` from :func:`clip_text_embeddings` instead and fits nothing).
    A pool frame with every attribute missing gets the predicted values, ``<attr>_conf`` and
    ``attr_source = "predicted"``; every other frame keeps its labels (``attr_source =
    "labels"``, confidence NaN). ``slice`` is recomputed from the filled attributes.
    Returns (pool with those columns, accuracy table, confusions) — scored on the pool's
    labelled frames, none of which the probe saw (§3 splits by drive group). ``executor``: where
    the per-frame prediction (:class:`AttributeBatch`) runs; the probe is fitted here."""
    from bdd_engine.slices import key

    if method not in PREDICTORS:
        raise ValueError(f"unknown mine_attr_predictor {method!r}; choose one of {PREDICTORS}")
    if method == "probe":
        probes = fit_probes(X_fit, fit_frames, attrs=attrs, seed=seed, C=C)
        if set(probes) != set(attrs):
            raise ValueError(f"attribute probe: the labelled frames hold fewer than two values of "
                             f"{sorted(set(attrs) - set(probes))}; nothing to learn from")
        pred = predict_rows(X_pool, probes=probes, executor=executor)
        n_fit = {a: int(_known(fit_frames[a].to_numpy(object)).sum()) for a in attrs}
        classes = {a: list(clf.classes_) for a, clf in probes.items()}
    else:
        if text_emb is None:
            raise ValueError("mine_attr_predictor zero_shot needs CLIP text embeddings (embed_model: clip)")
        pred = predict_rows(np.asarray(X_pool, np.float32), text_emb=text_emb, executor=executor)
        n_fit, classes = {a: 0 for a in attrs}, {a: list(text_emb[a][0]) for a in attrs}
    out = pool.reset_index(drop=True).copy()
    none = out[list(attrs)].isna().all(axis=1).to_numpy()
    for a in attrs:
        out[a] = out[a].astype(object)
        out.loc[none, a] = pred.loc[none, a].to_numpy()
        out[f"{a}_conf"] = np.where(none, pred[f"{a}_conf"].to_numpy(), np.nan)
    out["attr_source"] = np.where(none, "predicted", "labels")
    out["slice"] = key(out, attrs)
    labelled = ~none
    table, conf = score_predictions(pred[labelled].reset_index(drop=True),
                                    pool.reset_index(drop=True)[labelled].reset_index(drop=True), n_fit, classes)
    table.insert(1, "method", method)
    return out, table, conf


def confusion_figure(confusions: Mapping[str, pd.DataFrame], table: pd.DataFrame | None = None, title: str = ""):
    """One panel per attribute: row-normalised confusion (share of each true value), counts written in."""
    heads = {}
    for a in confusions:
        heads[a] = a
        if table is not None and a in set(table["attribute"]):
            r = table.set_index("attribute").loc[a]
            heads[a] += f": accuracy {r['accuracy']:.2f} (majority {r['majority']:.2f}, n={int(r['n_test'])})"
    return heatmaps([(heads[a], cm) for a, cm in confusions.items()], "predicted", "true (held-out drives)", title)
