"""A retrain run over many cities: the global unit when the run covers the whole catalog, then the per-city unit
for each city, in this process or a few worker processes. ``cityml train`` runs this; the DAG maps the same
units (dags/retrain_city_models.py) and plans its mapped tasks with :func:`plan_chunks`."""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Literal

from cityml.naming import GLOBAL, model_name
from training.city import CityInputs, Prepared, Stopwatch, city_sets, prepare_city
from training.context import RunContext
from training.datasets import TrainingSet
from training.global_model import train_global
from training.publish import publish
from training.results import TrainResult

log = logging.getLogger(__name__)


def plan_chunks(cities: list[str], max_tasks: int) -> list[list[str]]:
    """Cities grouped into at most ``max_tasks`` chunks (the setting ``train_max_tasks``) of near-equal size, in
    order: one city per chunk while they fit, so each mapped task is named by its city."""
    if max_tasks < 1:
        raise ValueError("max_tasks must be >= 1")
    tasks = min(len(cities), max_tasks)
    size, extra = divmod(len(cities), tasks) if tasks else (0, 0)
    bounds = [i * size + min(i, extra) for i in range(tasks + 1)]  # the first ``extra`` chunks hold one more
    return [cities[a:b] for a, b in itertools.pairwise(bounds)]


def retrains_global(ctx: RunContext, cities: list[str], targets: list[str], with_global: bool | None = None) -> bool:
    """Whether a run of ``cities`` retrains the global models: by default when it covers every catalog city, or
    when a target has no global champion yet (cities without a model of their own need the fallback). The global
    models always learn from the whole catalog, so a run of a few cities otherwise leaves them alone;
    ``with_global`` asks for them (True) or refuses them (False) explicitly."""
    if with_global is not None:
        return with_global
    if set(ctx.catalog.slugs) <= set(cities):
        return True
    return any(ctx.champion(model_name(t, GLOBAL)) is None for t in targets)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Pool worker start-up: the kernel kills this process when the run's process dies (``kill -9``
    included), so no worker goes on fitting, holding memory, or waiting for work that will never come."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):  # not Linux: the pool's broken-pipe handling is all there is
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above ran
        os._exit(1)


def _prepare_in_worker(ctx: RunContext, city: str, targets: list[str], inputs: CityInputs) -> list[Prepared]:
    return prepare_city(ctx, city, targets, inputs)


def _pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` fresh processes for the run's cities, started once and fed chunk after chunk.

    Spawned, not forked: no MLflow or Feast connections are inherited. They die with this process.
    """
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )


def _in_pool(
    ctx: RunContext,
    pool: ProcessPoolExecutor,
    share: RunContext,
    targets: list[str],
    inputs: dict[str, CityInputs],
    progress: Callable[[TrainResult], None],
) -> list[TrainResult]:
    """The city unit for every city of ``inputs``, as many at once as ``pool`` has workers.

    Workers only fit and gate (with ``share``: the run's context with their share of the cores, so
    LightGBM threads do not fight over them); this process registers and promotes what they return.
    """
    results: list[TrainResult] = []
    futures = {city: pool.submit(_prepare_in_worker, share, city, targets, x) for city, x in inputs.items()}
    for city, future in futures.items():
        try:
            published = [publish(ctx, result, reg) for result, reg in future.result()]
        except Exception as exc:  # a worker that died (out of memory, killed): the city's models fail alone
            log.exception("training %s failed in its worker", city)
            published = [
                TrainResult.failure(model_name(t, city), city, t, f"worker: {type(exc).__name__}: {exc}")
                for t in targets
            ]
        for result in published:
            progress(result)
        results += published
    return results


def train_fleet(
    ctx: RunContext,
    cities: list[str],
    targets: list[str],
    *,
    with_global: bool | None = None,
    workers: int = 1,
    phases: dict[str, float] | None = None,
    progress: Callable[[TrainResult], None] | None = None,
    join_errors: Literal["fail", "raise"] = "fail",
) -> list[TrainResult]:
    """The global units first when the run retrains them (:func:`retrains_global`; the gate compares each city
    with them), then the city unit of every city.

    The run holds at most ``train_chunk_cities`` cities' training sets at once, so its memory does not grow with
    the catalog: when every city it needs fits in one chunk, their sets are built once per target (one join) and
    shared by the global and the city units; otherwise the global unit joins the catalog chunk by chunk, keeping
    its bounded share of each city, and the run's cities are then joined and fitted a chunk at a time. A chunk
    whose join fails fails its cities' models alone, or with ``join_errors="raise"`` (an Airflow task, which
    retries) raises. With ``workers > 1`` the cities are fitted in that many
    processes at once, started once for the run. ``phases``, when given, receives the wall seconds of each phase:
    ``datasets``, ``global`` and ``cities``. ``progress`` is called with each model's result as it is published
    (the CLI's progress bar).
    """
    done_one = progress or (lambda _: None)
    for city in cities:
        ctx.catalog.get(city)  # unknown city: a clear error before any work
    results: list[TrainResult] = []
    clock = Stopwatch()
    fleet = retrains_global(ctx, cities, targets, with_global)
    # The registry's schema and the experiment are created here, once: pool workers opening a new SQLite store
    # at the same moment would each try to migrate it.
    ctx.experiment  # noqa: B018 - created now, by this process, before any worker needs it
    size = ctx.settings.train_chunk_cities
    needed = sorted(set(ctx.catalog.slugs) | set(cities)) if fleet else list(cities)
    shared: dict[str, dict[str, TrainingSet]] | None = None
    if len(needed) <= size:
        try:
            shared = city_sets(ctx, needed, targets)
        except Exception as exc:
            if join_errors == "raise":
                raise
            log.exception("training sets failed")
            names = [GLOBAL, *cities] if fleet else cities
            return [TrainResult.failure(model_name(t, c), c, t, exc) for t in targets for c in names]
        clock.lap("datasets")
    global_mae: dict[str, dict[str, float]] = {city: {} for city in cities}
    if fleet:
        for target in targets:
            try:
                given = {city: by_target[target] for city, by_target in shared.items()} if shared is not None else None
                done = train_global(ctx, target, given)
            except Exception as exc:
                log.exception("training %s failed", model_name(target, GLOBAL))
                done = TrainResult.failure(model_name(target, GLOBAL), GLOBAL, target, exc)
            results.append(done)
            done_one(done)
            if done.status == "promoted":  # the global champion is this run's model, which measured every city
                for city in cities:
                    if city in done.per_city_mae:
                        global_mae[city][target] = done.per_city_mae[city]
    clock.lap("global")
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(_pool(workers)) if workers > 1 and len(cities) > 1 else None
        share = ctx.for_worker(train_threads=max(1, ctx.settings.train_threads // workers))
        for i in range(0, len(cities), size):
            chunk = cities[i : i + size]
            try:
                sets = {city: shared[city] for city in chunk} if shared is not None else city_sets(ctx, chunk, targets)
            except Exception as exc:
                if join_errors == "raise":
                    raise
                log.exception("training sets failed for %s", ", ".join(chunk))
                failed = [TrainResult.failure(model_name(t, c), c, t, exc) for c in chunk for t in targets]
                for result in failed:
                    done_one(result)
                results += failed
                continue
            if shared is None:
                clock.lap("datasets")
            inputs = {city: CityInputs(sets.pop(city), global_mae[city]) for city in chunk}
            if pool is None:
                for city in chunk:
                    for result, reg in prepare_city(ctx, city, targets, inputs.pop(city)):
                        results.append(publish(ctx, result, reg))
                        done_one(results[-1])
            else:
                results += _in_pool(ctx, pool, share, targets, inputs, done_one)
            clock.lap("cities")
    if phases is not None:
        phases.update(clock.laps)
    return results
