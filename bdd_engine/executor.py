"""Run a per-frame stage over batches: in this process (``local``) or on a Ray cluster (``ray``).

A *stage* is written once, as a batch callable: a class whose ``__init__`` loads its model once
and whose ``__call__`` maps a batch (``dict`` of equally long numpy arrays, one entry per frame)
to a batch of output rows (the same kind of ``dict``, one row per input row, with an ``error``
column: ``""`` when the frame went through); or a plain function for a stateless stage.
:func:`run` feeds it the caller's batches and yields one output batch per input batch, **in
input order**, whatever the executor:

* ``local``: the stage is built once in this process and called batch after batch.
* ``ray``: a Ray Data pipeline, ``map_batches`` over an actor pool (``workers`` actors, each
  with ``cpus_per_actor`` / ``gpus_per_actor``); ``address`` None starts a local Ray, an
  address (``auto``, ``HOST:6379``, ``ray://HOST:10001``) joins that cluster. Actors whose node
  dies are restarted elsewhere and their batches retried (``max_restarts``), so a lost
  node costs time, not results.

Why one Ray row is one whole batch: batched models (YOLO's letterbox, a transformer's padded
matmuls) can give different floats for a frame with other batch-mates, so the batches are the
caller's, never Ray's block layout, and the outputs are byte-identical across executors. The
batch travels pickled, so Arrow never converts a dtype on the way.

Failure isolation (both executors): a batch whose call raises is redone frame by frame; a frame
that still raises becomes one row from the stage's ``failed(batch, message)`` (its ``error``
column says why): counted per frame, never fatal to the job. A stage without ``failed`` lets
the exception through.

This module imports nothing from the package and Ray only when ``ray`` is asked for.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

EXECUTORS = ("local", "ray")
Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Executor:
    """Where stages run. ``kind``: local | ray. Ray only: ``address`` (None = start a local Ray),
    ``workers`` (actors per stage), ``cpus_per_actor`` / ``gpus_per_actor`` (Ray resources each
    actor holds; a fraction shares a GPU), ``max_restarts`` (times a dead actor is restarted and
    its batch retried), ``env`` (environment variables of the workers, e.g. thread counts)."""

    kind: str = "local"
    address: str | None = None
    workers: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    max_restarts: int = 3
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"executor {self.kind!r} is not one of {EXECUTORS}")
        if self.workers < 1:
            raise ValueError(f"ray_workers must be >= 1, got {self.workers}")

    @property
    def is_local(self) -> bool:
        return self.kind == "local"


LOCAL = Executor()


def chunks(n: int, size: int, start: int = 0) -> list[range]:
    """Row ranges ``[start, n)`` in steps of ``size`` (the last one shorter)."""
    size = max(1, int(size))
    return [range(i, min(i + size, n)) for i in range(start, n, size)]


def take(columns: Mapping[str, Any], rows: range | list[int]) -> Batch:
    """One batch of ``columns`` (sequences or arrays of equal length): the rows ``rows``.
    Strings and objects become object arrays (a str array would pad and copy)."""
    out = {}
    for k, v in columns.items():
        if isinstance(v, np.ndarray):
            out[k] = v[np.asarray(rows, dtype=np.int64)]
        else:
            a = np.empty(len(rows), dtype=object)
            a[:] = [v[i] for i in rows]
            out[k] = a
    return out


def concat(batches: Iterable[Batch]) -> Batch:
    """Output batches → one batch (rows in order)."""
    batches = list(batches)
    if not batches:
        return {}
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def n_errors(batch: Batch) -> int:
    """Frames of an output batch whose ``error`` is set."""
    return int(sum(1 for e in batch.get("error", []) if e))


class _Guarded:
    """The stage as both executors call it: built once; a raising batch is redone frame by frame."""

    def __init__(self, stage: Callable, kwargs: Mapping[str, Any] | None):
        self.stage = stage(**(kwargs or {})) if isinstance(stage, type) else stage

    def __call__(self, batch: Batch) -> Batch:
        failed = getattr(self.stage, "failed", None)
        try:
            return self.stage(batch)
        except Exception as e:  # noqa: BLE001 - isolate the frame(s) that raise
            if failed is None:
                raise
            n = len(next(iter(batch.values())))
            if n == 1:
                return failed(batch, _message(e))
        rows = []
        for i in range(n):
            row = {k: v[i:i + 1] for k, v in batch.items()}
            try:
                rows.append(self.stage(row))
            except Exception as e:  # noqa: BLE001 - a per-frame failure, counted in its row
                rows.append(failed(row, _message(e)))
        return concat(rows)


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class _RayStage:
    """Ray actor body: unpickles a batch, runs the guarded stage, pickles the result."""

    def __init__(self, stage: Callable, kwargs: Mapping[str, Any] | None):
        self.guarded = _Guarded(stage, kwargs)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [pickle.dumps(self.guarded(pickle.loads(p)), protocol=5) for p in rows["payload"]]
        return {"i": rows["i"], "payload": np.array(out, dtype=object)}


def run(stage: Callable, batches: Iterable[Batch], *, executor: Executor = LOCAL,
        stage_kwargs: Mapping[str, Any] | None = None, name: str | None = None) -> Iterator[Batch]:
    """Yield ``stage``'s output for each of ``batches``, in order (see the module doc).

    ``stage``: a class (built once per process or actor with ``stage_kwargs``, which must pickle
    for Ray) or a function. ``name``: the Ray operator's name in logs."""
    if executor.is_local:
        guarded = _Guarded(stage, stage_kwargs)
        return (guarded(b) for b in batches)
    return _run_ray(stage, list(batches), executor, stage_kwargs, name or getattr(stage, "__name__", "stage"))


def _run_ray(stage: Callable, batches: list[Batch], ex: Executor, kwargs: Mapping[str, Any] | None,
             name: str) -> Iterator[Batch]:
    ray = connect(ex)
    import ray.data

    have = ray.cluster_resources()
    for key, want in (("GPU", ex.gpus_per_actor), ("CPU", ex.cpus_per_actor)):
        if want > have.get(key, 0):  # Ray would wait forever for an actor it cannot place
            raise ValueError(f"ray_{key.lower()}s_per_actor is {want:g} but the Ray cluster has {have.get(key, 0):g} "
                             f"{key}s in all; lower it (0 GPUs = CPU only) or join a cluster that has them")

    if not batches:
        return iter(())
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # and every row carries its index: checked below
    ctx.enable_progress_bars = False
    items = [{"i": i, "payload": pickle.dumps(b, protocol=5)} for i, b in enumerate(batches)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    out = ds.map_batches(
        _RayStage, fn_constructor_kwargs={"stage": stage, "kwargs": dict(kwargs or {})}, batch_size=1,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=min(ex.workers, len(items))),
        num_cpus=ex.cpus_per_actor, num_gpus=ex.gpus_per_actor or None,
        max_restarts=ex.max_restarts, max_task_retries=ex.max_restarts,
        scheduling_strategy="SPREAD",  # actors on as many nodes as possible: a lost node takes fewer down
        runtime_env={"env_vars": dict(ex.env)} if ex.env else None)
    return _in_order(out.iter_rows(), len(items))


def _in_order(rows: Iterator[Mapping[str, Any]], n: int) -> Iterator[Batch]:
    got = 0
    for want, row in enumerate(rows):
        if int(row["i"]) != want:  # preserve_order is Ray's promise; a broken one must not pass silently
            raise RuntimeError(f"ray executor: batch {int(row['i'])} arrived where batch {want} belongs")
        got += 1
        yield pickle.loads(row["payload"])
    if got != n:
        raise RuntimeError(f"ray executor: {got} of {n} batches came back")


def connect(ex: Executor) -> Any:
    """The ``ray`` module, initialised: joins ``ex.address`` or starts a local Ray (once per
    process; a Ray already initialised here, e.g. by a test's cluster, is used as it is)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ex.address, logging_level="ERROR", log_to_driver=False, include_dashboard=False,
                 configure_logging=False)
    return ray
