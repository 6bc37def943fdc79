"""The per-city unit of a retrain: one city's training sets built once, both targets fitted, gated and
registered. The DAG maps it over cities; ``cityml train`` loops over it (training/fleet.py)."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cityml.features.request_features import REQUEST_FEATURES
from cityml.modeling import BASE_TAG, CITY_FEATURE, LabelScale
from cityml.naming import GLOBAL, feature_service_name, model_name
from cityml.profile import PROFILE_FILE
from cityml.registry import LoadedModel
from training.context import RunContext
from training.datasets import TrainingSet, build_training_sets
from training.evaluate import LinearOnDistance, Median, RatePerKm, mae, metrics, score_model
from training.fit import Fitted, Split, fit_model, time_split
from training.gate import MIN_PER_KM_ROWS, CleanWindow, GateInputs, decide, label_shifts
from training.publish import Registration, publish, registration
from training.registry import day_kind_mae, feast_registry_version, git_sha
from training.results import TrainResult

log = logging.getLogger(__name__)

MIN_FIT_ROWS = 100  # below this there is nothing to split into train / validation / test

#: A training's result and, when it produced a model, what registering it needs.
Prepared = tuple[TrainResult, Registration | None]


class Stopwatch:
    """Seconds spent per stage of a training, for the throughput benchmark and the logs."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(self.laps.get(stage, 0.0) + now - self._last, 3)
        self._last = now


def window(split: Split) -> dict[str, str]:
    """The time windows of a split, as version tags."""
    ts = [split.train["event_timestamp"], split.valid["event_timestamp"], split.test["event_timestamp"]]
    return {
        "data_start": ts[0].min().isoformat(),
        "data_end": ts[2].max().isoformat(),
        "valid_start": ts[1].min().isoformat(),
        "test_start": ts[2].min().isoformat(),
        "test_end": ts[2].max().isoformat(),
    }


@dataclass
class CityInputs:
    """What a fleet run already knows about one city: its training sets by target (built with the run's window)
    and the global champion's MAE on its test window, where the champion is the run's own global model."""

    sets: dict[str, TrainingSet]
    global_mae: dict[str, float] = field(default_factory=dict)


def city_sets(ctx: RunContext, cities: list[str], targets: list[str]) -> dict[str, dict[str, TrainingSet]]:
    """Training sets by city and target: one stored-trips read and one point-in-time join per target."""
    by_target = {
        t: build_training_sets(ctx.settings, cities, t, ctx.start, ctx.until, store=ctx.store, catalog=ctx.catalog)
        for t in targets
    }
    return {city: {t: by_target[t][city] for t in targets} for city in cities}


def train_city(ctx: RunContext, city: str, targets: list[str], inputs: CityInputs | None = None) -> list[TrainResult]:
    """The unit: ``city``'s models of every target trained, gated and registered. A target that fails is reported
    with its reason and leaves its champion alone; the other target goes on."""
    return [publish(ctx, result, reg) for result, reg in prepare_city(ctx, city, targets, inputs)]


def prepare_city(ctx: RunContext, city: str, targets: list[str], inputs: CityInputs | None = None) -> list[Prepared]:
    """:func:`train_city` without registering (what a pool worker does; its parent publishes).

    The training sets are built here unless ``inputs`` brings them; an error building them is raised (the task
    retries), an error in one target's training is that target's failure.
    """
    ctx.catalog.get(city)  # unknown city: a clear error before any work
    inputs = inputs or CityInputs(city_sets(ctx, [city], targets)[city])
    parity: dict[Any, int] = {}  # the parity check runs once per city and feature set
    out: list[Prepared] = []
    for target in targets:
        try:
            out.append(_prepare(ctx, city, target, inputs.sets[target], parity, inputs.global_mae.get(target)))
        except Exception as exc:
            log.exception("training %s failed", model_name(target, city))
            out.append((TrainResult.failure(model_name(target, city), city, target, exc), None))
    return out


def _prepare(
    ctx: RunContext,
    city: str,
    target: str,
    ts: TrainingSet,
    parity_cache: dict[Any, int],
    global_mae: float | None,
) -> Prepared:
    """Fit, evaluate and gate ``<target>-<city>``: its result and its registration, not yet published."""
    settings = ctx.settings
    started = time.perf_counter()
    clock = Stopwatch()
    name = model_name(target, city)
    if ts.rows < MIN_FIT_ROWS:
        reason = f"too little data: {ts.rows} trips with a {ts.label}, fewer than {MIN_FIT_ROWS} to fit on"
        return TrainResult(name, city, target, "skipped", reason), None
    split = time_split(ts.frame)
    tuning: dict[str, Any] | None = None
    fit_params: dict[str, Any] = {}
    pooled_on: str | None = None
    scales = [LabelScale(kind) for kind in settings.train_label_scales]
    if settings.tune_budget_s > 0:
        from training.tune import tune

        scale = scales[0]
        tuned = tune(
            split,
            ts.features,
            ts.label,
            settings.tune_budget_s,
            threads=settings.train_threads,
            max_trials=settings.tune_max_trials,
            scale=scale,
        )
        fitted = Fitted(tuned.booster, scale, tuned.booster.best_iteration, refit=False)
        fit_params, tuning = tuned.params, tuned.summary()
        clock.lap("tune")
    else:
        fleet = _pool_base(ctx, city, target, ts.features)
        base = None if fleet is None else functools.partial(_base_predictions, fleet, city)
        fitted = fit_model(
            split,
            ts.features,
            ts.label,
            scales,
            refit=settings.train_refit,
            threads=settings.train_threads,
            base=base,
            blended=settings.train_blend,
            narrow=REQUEST_FEATURES if settings.train_narrow_members else (),
        )
        if fitted.pooled and fleet is not None:
            pooled_on = f"{fleet.name}/{fleet.version}"
        clock.lap("fit")
    y = split.test[ts.label].to_numpy()
    test_pred = fitted.predict(split.test)
    m = metrics(y, test_pred)
    m.update(day_kind_mae(np.abs(test_pred - y), split.test["is_weekend"].to_numpy().astype(bool)))
    rate = RatePerKm.fit(split.train, ts.label)
    m["baseline_mae"] = mae(y, rate.predict(split.test))
    m["linear_baseline_mae"] = mae(y, LinearOnDistance.fit(split.train, ts.label).predict(split.test))
    m["median_mae"] = mae(y, Median.fit(split.train, ts.label).predict(split.test))
    clock.lap("evaluate")

    held = ctx.champion(name)
    champion_mae = score_model(held, split.test, ts.label)
    shifts = label_shifts(
        _label_reference(held),
        {
            "training labels": (split.train[ts.label].to_numpy(), split.train["distance_km"].to_numpy()),
            "test labels": (y, split.test["distance_km"].to_numpy()),
            "test predictions": (test_pred, split.test["distance_km"].to_numpy()),
        },
    )
    clean = _clean_window(held, ts.frame, fitted, ts.label)
    if global_mae is None:
        global_mae = score_model(ctx.champion(model_name(target, GLOBAL)), split.test.assign(city=city), ts.label)
    clock.lap("gate_models")
    parity = _gate_parity(ctx, city, target, parity_cache)
    clock.lap("parity")
    decision = decide(
        GateInputs(m["mae"], m["median_mae"], len(split.train), champion_mae, global_mae, parity, shifts, clean),
        settings,
    )
    for key, value in (("champion_mae", champion_mae), ("global_mae", global_mae)):
        if value is not None:
            m[key] = value
    m.update(
        best_iteration=float(fitted.rounds),
        train_rows=float(len(split.train)),
        test_rows=float(len(split.test)),
        **{f"valid_mae_{kind}": v for kind, v in fitted.valid_mae.items()},
    )
    tags = {
        "city": city,
        "target": target,
        "feature_service": ts.feature_service,
        "git_sha": git_sha(),
        "feast_registry": feast_registry_version(settings),
        "train_rows": len(split.train),
        "dag_run_id": ctx.run_label,
        "refit": "train+valid" if fitted.refit else "no",
        **({BASE_TAG: pooled_on} if pooled_on else {}),
        **window(split),
    }
    if tuning is not None:
        tags["tuned"] = (
            f"{tuning['trials']} trials in {tuning['seconds']} s, "
            f"valid MAE {tuning['valid_mae']:.4g} (defaults {tuning['default_valid_mae']:.4g})"
        )
    reg = registration(
        name,
        fitted,
        split,
        ts.features,
        m,
        tags,
        decision,
        ctx.forced_by,
        {**fit_params, "baseline_rate_per_km": rate.rate},
        ts.label,
        test_pred,
    )
    clock.lap("register")
    log.info("%s: mae %.4g baseline %.4g -> %s", name, m["mae"], m["baseline_mae"], decision.summary)
    result = TrainResult(
        name,
        city,
        target,
        "promoted" if reg.promote else "rejected",
        decision.summary,
        forced=reg.promote and not decision.promote,
        forced_by=ctx.forced_by if reg.promote and not decision.promote else "",
        pooled=fitted.pooled,
        checks=decision.reasons,
        test_window=[str(tags["test_start"]), str(tags["test_end"])],
        metrics={k: round(v, 6) for k, v in m.items() if np.isfinite(v)},
        seconds=round(time.perf_counter() - started, 2),
        timings=clock.laps,
        tuning=tuning,
    )
    return result, reg


def _label_reference(held: LoadedModel | None) -> dict[str, Any] | None:
    """The champion's training labels as its reference profile recorded them (None for versions before that)."""
    if held is None or held.files is None:
        return None
    profile = held.files.run_json(PROFILE_FILE)
    reference = profile.get("label") if profile is not None else None
    return reference if isinstance(reference, dict) else None


def _clean_window(held: LoadedModel | None, frame: pd.DataFrame, fitted: Fitted, label: str) -> CleanWindow | None:
    """Challenger and champion on the champion's own test window, re-read from today's training set."""
    start, end = (held.tags.get("test_start"), held.tags.get("test_end")) if held is not None else (None, None)
    if held is None or not start or not end:
        return None
    at = frame["event_timestamp"]
    rows = frame[(at >= pd.Timestamp(start)) & (at <= pd.Timestamp(end))]
    champion_mae = score_model(held, rows, label) if len(rows) >= MIN_PER_KM_ROWS else None
    if champion_mae is None:
        return None
    return CleanWindow(start, end, len(rows), mae(rows[label].to_numpy(), fitted.predict(rows)), champion_mae)


def _pool_base(ctx: RunContext, city: str, target: str, features: list[str]) -> LoadedModel | None:
    """The fleet champion a city model may start from, when pooling is on and it can serve the city."""
    if not ctx.settings.train_pool:
        return None
    fleet = ctx.champion(model_name(target, GLOBAL))
    if fleet is None or fleet.base is not None or not fleet.serves(city):
        return None
    if not set(fleet.features) - {CITY_FEATURE} <= set(features):  # trained on another feature set
        return None
    return fleet


def _base_predictions(fleet: LoadedModel, city: str, frame: pd.DataFrame) -> np.ndarray:
    return fleet.predict(frame.assign(**{CITY_FEATURE: city}))


def _gate_parity(ctx: RunContext, city: str, target: str, cache: dict[Any, int]) -> int | None:
    """Mismatches of the gate's parity check (None when disabled), once per city and feature set."""
    settings = ctx.settings
    if settings.gate_parity_sample <= 0:
        return None
    from training.parity import parity_check, service_signature

    key = (city, service_signature(ctx.store.get_feature_service(feature_service_name(target))))
    if key in cache:
        return cache[key]
    report = parity_check(
        settings,
        city,
        sample=settings.gate_parity_sample,
        target=target,
        hours=settings.gate_parity_hours,
        store=ctx.store,
        catalog=ctx.catalog,
    )
    cache[key] = int(report["mismatches"])
    return cache[key]
