"""Experiment tracking in MLflow: training runs, evaluations and the registry's stages.

The section runners (``flywheel``) call a :class:`Tracker` with explicit arguments, only
while a section computes: a fresh section logs nothing. Every write is keyed (training: the
run folder + its fingerprint; evaluation: section, model and a hash of its per-slice
table; registry: one model version per training run), so a recomputed section whose
numbers did not change logs nothing new either. Plain exports stay where they were
(``runs.csv``, ``registry.json``); nothing here changes any other output.

Store: ``mlflow_tracking_uri`` null = a local SQLite store (the model registry needs a
database store) with its artifacts, both under ``<outputs>/mlflow/``; else the team's
tracking server. A server that does not answer fails the section in one line naming the
URI, before anything is computed: skipping would leave the run out for good, since the
section would then be fresh and its rerun a no-op.

Training run (name = our run name, ``iter0``, ``iter1_s42``, ``turn2/iter1_s42``): params
(Ultralytics arguments, model, init weights, data hash, fingerprint), per-epoch losses and
learning rates from Ultralytics' ``results.csv`` (step = epoch), its run card and data
hash; §8 adds the metrics ``runs.csv`` shows (step = turn). Evaluation run (``s5-iter0``,
``s8-iter1_s42``, nested under the model's training run): mAP@0.5, mAP@0.5:0.95, the worst
slice's mAP@0.5 (and §8's Δ vs iter0), its per-slice and per-class tables. Registry: one
registered model per profile (``bdd_engine-<profile>``), a version per candidate with its
stage as a tag, and aliases: ``promoted`` = registry.json's chosen model, ``deployable`` =
the best deployable candidate, ``candidate`` = the best candidate the promotion gates held
back (an alias is removed when no model has it). MLflow itself is imported only when
something is logged (its import takes seconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from bdd_engine.checkpoint import atomic_path
from bdd_engine.env import CACHE_DIR

LOCAL_DIR = "mlflow"          # <outputs>/mlflow/: mlflow.db + artifacts/
ALIASES = ("candidate", "promoted", "deployable")
KEY_TAG = "bdd_key"            # sha256[:16] of what a logged item is: a rerun finds it and logs nothing new


class TrackingUnreachable(RuntimeError):
    """The configured tracking server does not answer (one line: the URI and the fix)."""


def local_uri(out: Path) -> str:
    """The local store's backend URI (``mlflow ui --backend-store-uri`` takes it as is)."""
    return f"sqlite:///{(Path(out) / LOCAL_DIR / 'mlflow.db').resolve()}"


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingUnreachable` when an http(s) tracking server does not answer
    its ``/health`` within ``timeout`` seconds (other URIs are not servers: nothing to check)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingUnreachable(
            f"MLflow tracking server {uri} (mlflow_tracking_uri) is not reachable ({reason}); start it, or set "
            f"mlflow_tracking_uri: null to track into the local store under outputs/{LOCAL_DIR}/") from None


def open_tracker(uri: str | None, out: Path, name: str, synthetic: bool) -> "Tracker":
    """The store of a profile: ``uri`` (None = the local store under ``out``), experiment and
    registered model ``name``. A server is checked now (before a section computes); the
    client is made on first use."""
    if uri:
        check_server(str(uri))
    return Tracker(str(uri) if uri else None, Path(out), name, synthetic)


def _quiet_env() -> None:
    """Before mlflow is imported: a server that dies mid-run fails in seconds, not after
    MLflow's default 7 retries with back-off; its INFO lines stay out of the notebook."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow  # noqa: F401  (configures its logger on import: quieten it after)

    for lg in ("mlflow", "alembic"):
        logging.getLogger(lg).setLevel(logging.WARNING)


def _empty_store(db: Path) -> None:
    """Create ``db`` as an empty MLflow SQLite store by copying a cached, already migrated one
    (``<cache>/mlflow/empty-<version>.db``): MLflow's own creation runs every schema migration,
    ~10 s on 2 busy cores, for each new outputs folder."""
    import mlflow
    from mlflow import MlflowClient

    template = CACHE_DIR / "mlflow" / f"empty-{mlflow.__version__}.db"
    if not template.is_file():
        template.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(template) as tmp:
            MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()  # creates + migrates
    db.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(db) as tmp:
        shutil.copyfile(template, tmp)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _key(name: str) -> str:
    """An MLflow metric name from an Ultralytics column (MLflow refuses parentheses)."""
    return name.replace("(", "").replace(")", "").strip()


class Tracker:
    """One MLflow store, experiment and registered model; see the module docstring."""

    def __init__(self, uri: str | None, out: Path, name: str, synthetic: bool):
        self.out, self.name, self.synthetic = out.resolve(), name, bool(synthetic)
        self.uri = uri or local_uri(out)
        self._client: Any = None
        self._exp: str | None = None

    # ------------------------------------------------------------------ store
    @property
    def client(self) -> Any:
        if self._client is None:
            _quiet_env()
            from mlflow import MlflowClient

            db = self.out / LOCAL_DIR / "mlflow.db"
            if self.uri == local_uri(self.out) and not db.is_file():
                _empty_store(db)
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._exp is None:
            local = self.uri == local_uri(self.out)
            art = (self.out / LOCAL_DIR / "artifacts").as_uri() if local else None  # MLflow's default: ./mlruns
            name = self.name
            exp = self.client.get_experiment_by_name(name)
            if local and exp is not None and exp.artifact_location != art:
                # a copied or moved outputs folder: its store's experiment keeps artifacts in the old folder,
                # so this folder logs into its own experiment (nothing is written into the old one)
                name = f"{self.name} ({self.out})"
                exp = self.client.get_experiment_by_name(name)
            self._exp = (exp.experiment_id if exp is not None
                         else self.client.create_experiment(name, artifact_location=art))
        return self._exp

    def _find(self, key: str) -> Any:
        """The run logged under ``key`` (latest first), or None."""
        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.{KEY_TAG} = '{_sha(key.encode())}'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
        return found[0] if found else None

    def _new_run(self, run_name: str, key: str, tags: Mapping[str, str], params: Mapping[str, Any],
                 metrics: Iterable[tuple[str, float, int]], files: Mapping[str, Any],
                 span: tuple[int, int] | None = None) -> str:
        """Create a finished run: tags, params, metrics (key, value, step), files (name -> path,
        DataFrame or JSON-able value, all logged as artifacts); ``span`` = (start, end) in ms
        (default: the time it takes to log)."""
        from mlflow.entities import Metric, Param

        c = self.client
        note = "SYNTHETIC data: numbers are not BDD100K results." if self.synthetic else ""
        all_tags = {KEY_TAG: _sha(key.encode()), "synthetic": str(self.synthetic).lower(), **tags,
                    **({"mlflow.note.content": note} if note else {})}
        run = c.create_run(self.experiment_id, run_name=run_name, tags=all_tags,
                           start_time=span[0] if span else None)
        rid = run.info.run_id
        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, int(s)) for k, v, s in metrics]
        ps = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, max(len(ms), len(ps), 1), 100):  # MLflow's batch limits (1000 metrics, 100 params)
            c.log_batch(rid, metrics=ms[i:i + 100], params=ps[i:i + 100])
        self._log_files(rid, files)
        c.set_terminated(rid, end_time=span[1] if span else None)
        return rid

    def _log_files(self, rid: str, files: Mapping[str, Any], folder: str | None = None) -> None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bdd_mlflow_") as tmp:
            for fname, obj in files.items():
                if isinstance(obj, Path):
                    src = obj
                else:
                    src = Path(tmp) / fname
                    if isinstance(obj, pd.DataFrame):
                        obj.to_csv(src, index=False)
                    else:
                        src.write_text(json.dumps(obj, indent=1, default=str))
                if src.is_file():
                    self.client.log_artifact(rid, str(src), folder)

    # ------------------------------------------------------------------ training
    def run_name(self, run_dir: Path) -> str:
        """Our run name: ``iter0``, ``iter1_s42``; later turns ``turn2/iter1_s42``."""
        rel = Path(run_dir).resolve().relative_to(self.out)
        return "/".join(p for p in rel.parts if p != "runs")

    def training(self, run_dir: Path) -> str | None:
        """Log one finished training run (once per run folder and fingerprint); its run id,
        or None when the folder (under the outputs folder) holds no finished run card."""
        run_dir = Path(run_dir).resolve()
        try:
            card = json.loads((run_dir / "run_card.json").read_text())
            rel = str(run_dir.relative_to(self.out))  # a model from outside the outputs folder is not a run of ours
        except (OSError, ValueError):
            return None
        if not card.get("finished"):
            return None
        key = f"{self.out}|{rel}|{card['fingerprint']}"
        found = self._find(key)
        if found is not None:
            return found.info.run_id
        params = {**{f"ul.{k}": v for k, v in (card.get("config") or {}).items()},
                  **{k: card.get(k) for k in ("model", "init_weights", "pretrained", "data_hash", "fingerprint",
                                              "precision", "epochs", "profile", "synthetic")}}
        params["model"] = Path(str(params["model"])).name
        tags = {"bdd_kind": "training", "bdd_run_dir": rel, "data_hash": str(card.get("data_hash")),
                "fingerprint": str(card["fingerprint"]), "device": str(card.get("device")),
                "resumed": str(bool(card.get("resumed"))).lower(),
                "mlflow.source.git.commit": str(card.get("git_commit"))}
        metrics = list(_epoch_metrics(run_dir / "results.csv", bool((card.get("config") or {}).get("val"))))
        metrics.append(("duration_s", float(card.get("wall_time_s") or 0.0), int(card.get("epochs") or 0)))
        metrics += [(f"final/{_key(k)}", v, int(card.get("epochs") or 0))
                    for k, v in (card.get("final_metrics") or {}).items() if isinstance(v, (int, float))]
        end = int((run_dir / "run_card.json").stat().st_mtime * 1000)  # the card is written when training ends
        return self._new_run(self.run_name(run_dir), key, tags, params, metrics,
                             {"run_card.json": run_dir / "run_card.json", "results.csv": run_dir / "results.csv",
                              "args.yaml": run_dir / "args.yaml"},
                             span=(end - int(1000 * float(card.get("wall_time_s") or 0.0)), end))

    def runs_table(self, runs: pd.DataFrame, turn: int) -> None:
        """The metrics runs.csv shows (``overall_AP50``, ``worst_slice_AP50``, step = turn) and
        its labels (arm, seed, config hash) on each run's training run; a step already logged
        is not logged again."""
        from mlflow.entities import Metric, RunTag

        for r in runs.itertuples(index=False):
            rid = self.training(self.out / Path(r.weights).parent.parent)
            if rid is None:
                continue
            have = self.client.get_run(rid).data
            ms = [Metric(k, float(getattr(r, k)), int(time.time() * 1000), int(turn))
                  for k in ("overall_AP50", "worst_slice_AP50")
                  if int(turn) not in {m.step for m in self.client.get_metric_history(rid, k)}]
            tags = [RunTag(k, str(v)) for k, v in (("arm", r.arm), ("seed", r.seed), ("config_hash", r.config_hash))
                    if have.tags.get(k) != str(v)]
            if ms or tags:
                self.client.log_batch(rid, metrics=ms, tags=tags)

    # ------------------------------------------------------------------ evaluation
    def evaluation(self, section: str, model: str, weights: Path, metrics: Mapping[str, float],
                   tables: Mapping[str, pd.DataFrame], files: Mapping[str, Any] | None = None) -> str:
        """Log one model's evaluation of a section (``section``: e.g. ``s5``, ``turn2/s8``)
        once per per-slice table (``tables["slices.csv"]``), nested under the training run
        of ``weights``; its run id."""
        digest = _sha(tables["slices.csv"].to_csv(index=False).encode())
        key = f"{self.out}|{section}|{model}|{digest}"
        found = self._find(key)
        if found is not None:
            return found.info.run_id
        parent = self.training(Path(weights).resolve().parent.parent)
        tags = {"bdd_kind": "evaluation", "section": section, "model": model, "slices_sha": digest,
                **({"mlflow.parentRunId": parent} if parent else {})}
        return self._new_run(f"{section}-{model}", key, tags, {"model": model},
                             [(k, v, 0) for k, v in metrics.items() if v is not None], {**tables, **(files or {})})

    # ------------------------------------------------------------------ registry
    def registry(self, reg: Mapping[str, Any], runs: pd.DataFrame, turn: int) -> dict[str, int]:
        """registry.json as model versions and aliases (see the module docstring); alias ->
        version number."""
        from mlflow.exceptions import MlflowException

        c = self.client
        try:
            c.get_registered_model(self.name)
        except MlflowException:
            c.create_registered_model(self.name, description="bdd_engine detector: registry.json's candidates per turn"
                                      + (" (SYNTHETIC data)" if self.synthetic else ""))
        by_run = runs.set_index("run")
        versions = {}
        for run, st in reg["stages"].items():
            run_dir = (self.out / by_run.loc[run, "weights"]).parent.parent
            v = self._version(run_dir, by_run.loc[run, "weights"])
            tags = {"stage": st["stage"], "held_by": "; ".join(st["held_by"]) or "-", "turn": str(turn),
                    "run": run, "chosen": str(run == reg["promoted"]).lower()}
            for k, val in tags.items():
                if v.tags.get(k) != val:
                    c.set_model_version_tag(self.name, v.version, k, val)
            versions[run] = int(v.version)
        rank = sorted(reg["stages"], key=lambda r: (-float(by_run.loc[r, "worst_slice_AP50"]), r))
        pick = {"promoted": reg["promoted"],
                "deployable": next((r for r in rank if reg["stages"][r]["stage"] == "deployable"), None),
                "candidate": next((r for r in rank if reg["stages"][r]["stage"] == "candidate"), None)}
        have = c.get_registered_model(self.name).aliases
        out = {}
        for alias, run in pick.items():
            if run is None:
                if alias in have:
                    c.delete_registered_model_alias(self.name, alias)
                continue
            out[alias] = versions[run]
            if have.get(alias) != versions[run]:
                c.set_registered_model_alias(self.name, alias, versions[run])
        return out

    def _version(self, run_dir: Path, weights: str) -> Any:
        """The model version of a training run (created once, its weights logged as artifacts)."""
        rid = self.training(run_dir)
        if rid is None:
            raise ValueError(f"{run_dir}: no finished run card to register")
        found = self.client.search_model_versions(f"name='{self.name}' and run_id='{rid}'")
        if found:
            return found[0]
        self._log_files(rid, {Path(weights).name: self.out / weights}, "weights")
        src = f"{self.client.get_run(rid).info.artifact_uri}/weights"
        return self.client.create_model_version(self.name, src, run_id=rid)

    def models(self) -> pd.DataFrame:
        """Each registered version: run dir (relative to outputs), run id, version, aliases."""
        from mlflow.exceptions import MlflowException

        try:
            aliases = self.client.get_registered_model(self.name).aliases
        except MlflowException:
            return pd.DataFrame(columns=["run_dir", "mlflow_run", "version", "aliases"])
        by_version: dict[int, list[str]] = {}
        for a, v in aliases.items():
            by_version.setdefault(int(v), []).append(a)
        rows = []
        for v in self.client.search_model_versions(f"name='{self.name}'"):
            rows.append({"run_dir": self.client.get_run(v.run_id).data.tags.get("bdd_run_dir"),
                         "mlflow_run": v.run_id, "version": int(v.version),
                         "aliases": ",".join(sorted(by_version.get(int(v.version), []))) or "-"})
        return pd.DataFrame(rows, columns=["run_dir", "mlflow_run", "version", "aliases"])


def _epoch_metrics(results_csv: Path, val: bool) -> Iterable[tuple[str, float, int]]:
    """Ultralytics' per-epoch columns as (key, value, step = epoch). With ``val`` off
    Ultralytics writes 0 for every ``metrics/*`` and ``val/*`` column (not measured): left out."""
    if not results_csv.is_file():
        return
    df = pd.read_csv(results_csv)
    df.columns = [c.strip() for c in df.columns]
    for col in df.columns:
        if col == "epoch" or (not val and col.startswith(("metrics/", "val/"))):
            continue
        for ep, v in zip(df["epoch"], df[col]):
            if pd.notna(v):
                yield _key(col), float(v), int(ep)
