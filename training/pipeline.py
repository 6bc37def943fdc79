"""Training runs: one city's model, the fleet (global) model, and a whole fleet run with its gate report."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cityml.catalog import load_catalog
from cityml.modeling import BASE_TAG, CITY_FEATURE, LabelScale
from cityml.naming import CITY_MAE_METRIC, GLOBAL, feature_service_name, model_name
from cityml.profile import PROFILE_FILE, build_profile, day_segments, feature_profile
from cityml.registry import LoadedModel, champion, client, load_version, selftest_doc
from cityml.request_features import ZONE_FEATURES
from cityml.settings import Settings
from training.datasets import TrainingSet, build_training_set, build_training_sets
from training.evaluate import LinearOnDistance, Median, RatePerKm, mae, metrics
from training.fit import DEFAULT_PARAMS, Fitted, Split, fit_model, time_split
from training.gate import (
    MIN_PER_KM_ROWS,
    CleanWindow,
    Decision,
    GateInputs,
    decide,
    label_reference,
    label_shifts,
)
from training.registry import experiment_id, feast_registry_version, git_sha, log_version, set_champion

if TYPE_CHECKING:
    import lightgbm as lgb
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

MIN_FIT_ROWS = 100  # below this there is nothing to split into train / validation / test
PROFILE_ROWS = 100_000  # training rows a reference profile is computed from, at most


#: Registered models this process has loaded, by (tracking URI, name, version): a fleet run
#: compares every city with the same global model, which is downloaded and parsed once.
_LOADED: dict[tuple[str, str, str], LoadedModel] = {}


def _champion(settings: Settings, name: str) -> LoadedModel | None:
    """``name@champion``, loaded once per version and process."""
    c = client(settings)
    mv = champion(c, name)
    if mv is None:
        return None
    key = (settings.mlflow_tracking_uri, name, str(mv.version))
    if key not in _LOADED:
        _LOADED[key] = load_version(c, mv)
    return _LOADED[key]


def _score(model: LoadedModel | None, frame: pd.DataFrame, label: str) -> float | None:
    """MAE of a registered model on a frame, or None when it is absent, needs other features or
    cannot serve a city of the frame (a fleet model that never learned it)."""
    if model is None or frame.empty or not set(model.features) <= set(frame.columns):
        return None
    if CITY_FEATURE in frame.columns and not all(model.serves(c) for c in frame[CITY_FEATURE].astype(str).unique()):
        return None
    return mae(frame[label].to_numpy(), model.predict(frame))


def _window(split: Split) -> dict[str, str]:
    ts = [split.train["event_timestamp"], split.valid["event_timestamp"], split.test["event_timestamp"]]
    return {
        "data_start": ts[0].min().isoformat(),
        "data_end": ts[2].max().isoformat(),
        "valid_start": ts[1].min().isoformat(),
        "test_start": ts[2].min().isoformat(),
        "test_end": ts[2].max().isoformat(),
    }


@dataclass
class Registration:
    """Everything a fitted model needs to become a registered version, and what the gate decided.

    Built where the model was fitted (a pool worker, maybe) and published by :func:`publish` in the process that
    runs the fleet, so that a worker left behind by a dead parent can never register or promote.
    """

    name: str
    booster: lgb.Booster
    scale: LabelScale
    example: pd.DataFrame
    features: list[str]
    metrics: dict[str, float]
    tags: dict[str, Any]
    profile: dict[str, Any]
    params: dict[str, Any]
    gate_tags: dict[str, Any]
    selftest: dict[str, Any]
    promote: bool
    why: str


#: ``promotion`` tag of a version the gate passed, until ``@champion`` points at it. A run that dies in between
#: leaves it so; the next run of the model reports and closes it (:func:`_close_abandoned`).
PENDING = "pending"


def _registration(
    name: str,
    fitted: Fitted,
    split: Split,
    features: list[str],
    m: dict[str, float],
    tags: dict[str, Any],
    decision: Decision,
    forced: bool,
    params: dict[str, Any],
    label: str,
) -> Registration:
    # Quantile bins need a sample, not every row: a fleet model's million rows would cost more
    # to predict than to fit.
    train = split.train
    if len(train) > PROFILE_ROWS:
        train = train.sample(n=PROFILE_ROWS, random_state=0)
    train_pred = fitted.predict(train)
    segments = day_segments(train["is_weekend"])
    if CITY_FEATURE in features:  # the fleet model: one reference per city, for cities it serves
        segments.update({f"city={c}": (train[CITY_FEATURE] == c).to_numpy() for c in train[CITY_FEATURE].unique()})
    # Numbers get a quantile sketch, categories (zones, the fleet model's city) their shares.
    profile = build_profile(train[features], train_pred, segments)
    profile["rows"], profile["profiled_rows"] = len(split.train), len(train)
    # What the next challenger's labels are compared with (training/gate.py, check f).
    profile["label"] = label_reference(split.train[label].to_numpy(), split.train["distance_km"].to_numpy())
    # The model's absolute errors on its test window: what realized errors on completed trips are read against.
    if len(split.test):
        errors = np.abs(fitted.predict(split.test) - split.test[label].to_numpy())
        profile["test_error"] = feature_profile(pd.Series(errors))
    promote = decision.promote or forced
    gate_tags = {"gate": "passed" if decision.promote else "failed", "gate_reasons": "; ".join(decision.reasons)[:4900]}
    if forced:
        gate_tags["force_promoted"] = "true"
    gate_tags["promotion"] = PENDING if promote else f"rejected: {decision.summary}"
    # What the server must repeat before this version serves (cityml.registry.self_test).
    example = split.test.head(SELFTEST_ROWS)
    inputs = [f for f in dict.fromkeys([*features, "distance_km", CITY_FEATURE]) if f in example.columns]
    selftest = selftest_doc({f: example[f].to_numpy() for f in inputs}, fitted.predict(example))
    return Registration(
        name=name,
        booster=fitted.booster,
        scale=fitted.scale,
        example=split.test.head(5),
        features=features,
        metrics=m,
        tags=tags,
        profile=profile,
        params={**DEFAULT_PARAMS, **params},
        gate_tags=gate_tags,
        selftest=selftest,
        promote=promote,
        why=decision.summary if not forced else f"forced by ops (gate: {decision.summary})",
    )


def _close_abandoned(c: MlflowClient, name: str) -> list[str]:
    """Versions of ``name`` a dead run left ``pending`` (registered, never made champion): tagged and listed."""
    from cityml.naming import CHAMPION

    try:
        held = c.get_registered_model(name)
    except Exception:  # noqa: BLE001 - a model not registered yet has nothing abandoned
        return []
    champion_version = (held.aliases or {}).get(CHAMPION)
    closed = []
    for mv in c.search_model_versions(f"name='{name}'"):
        if mv.tags.get("promotion") == PENDING and str(mv.version) != str(champion_version):
            c.set_model_version_tag(
                name, str(mv.version), "promotion", "abandoned: its run died before @champion moved"
            )
            closed.append(str(mv.version))
    if closed:
        log.warning("%s: versions %s were left pending by a run that died; tagged abandoned", name, closed)
    return closed


def publish(settings: Settings, reg: Registration) -> tuple[str, list[str]]:
    """Register ``reg`` and, if the gate (or ops) said so, move ``@champion`` to it.

    Returns:
        The new version, and the versions an earlier run left pending and this one closed.
    """
    c = client(settings)
    abandoned = _close_abandoned(c, reg.name)
    version = log_version(
        c,
        experiment_id(c, settings),
        reg.name,
        reg.booster,
        reg.scale,
        reg.example,
        reg.features,
        reg.metrics,
        reg.tags,
        reg.profile,
        reg.params,
        reg.gate_tags,
        reg.selftest,
    )
    if reg.promote:
        set_champion(c, reg.name, version, reg.why)
    return version, abandoned


def _published(settings: Settings, prepared: Prepared) -> dict[str, Any]:
    """A prepared training's result with its version registered (or its failure to register)."""
    result, reg = prepared
    if reg is None:
        return result
    try:
        version, abandoned = publish(settings, reg)
    except Exception as exc:
        log.exception("registering %s failed", reg.name)
        return {**result, "status": "failed", "reason": f"registration: {type(exc).__name__}: {exc}"}
    return {**result, "version": version, **({"abandoned_versions": abandoned} if abandoned else {})}


#: A training's JSON-safe result and, when it produced a model, what registering it needs.
Prepared = tuple[dict[str, Any], Registration | None]


SELFTEST_ROWS = 20


class Stopwatch:
    """Seconds spent per stage of a training, for the throughput benchmark and the logs."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(self.laps.get(stage, 0.0) + now - self._last, 3)
        self._last = now


def _result(name: str, city: str, target: str, status: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"model": name, "city": city, "target": target, "status": status, "reason": reason, **extra}


def train_city(settings: Settings, city: str, target: str, **kwargs: Any) -> dict[str, Any]:
    """Fit, evaluate, gate and register ``<target>-<city>``. Returns a JSON-safe summary (see :func:`prepare_city`)."""
    return _published(settings, prepare_city(settings, city, target, **kwargs))


def prepare_city(
    settings: Settings,
    city: str,
    target: str,
    *,
    until: datetime | None = None,
    run_label: str = "cli",
    force_promote: bool = False,
    training_set: TrainingSet | None = None,
    parity_cache: dict[Any, int] | None = None,
    global_mae: float | None = None,
) -> Prepared:
    """Fit, evaluate and gate ``<target>-<city>``: its JSON-safe summary and its registration, not yet published.

    A fleet run passes what it already knows: the ``training_set`` it built (with the same
    ``until``), a ``parity_cache`` shared by the city's targets, so that the parity check runs
    once per city and feature set, and the ``global_mae`` of the global champion on this city's
    test window when that champion is the run's own global model, which measured it.
    """
    started = time.perf_counter()
    clock = Stopwatch()
    load_catalog(settings.catalog_path).get(city)  # unknown city: a clear error before any work
    name = model_name(target, city)
    ts = training_set if training_set is not None else build_training_set(settings, city, target, until=until)
    clock.lap("dataset")
    if ts.rows < MIN_FIT_ROWS:
        reason = f"too little data: {ts.rows} trips with a {ts.label}, fewer than {MIN_FIT_ROWS} to fit on"
        return _result(name, city, target, "skipped", reason), None
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
        fleet = _pool_base(settings, city, target, ts.features)
        base = None if fleet is None else functools.partial(_base_predictions, fleet, city)
        fitted = fit_model(
            split, ts.features, ts.label, scales, refit=settings.train_refit, threads=settings.train_threads, base=base
        )
        if fitted.pooled and fleet is not None:
            pooled_on = f"{fleet.name}/{fleet.version}"
        clock.lap("fit")
    y = split.test[ts.label].to_numpy()
    test_pred = fitted.predict(split.test)
    m = metrics(y, test_pred)
    rate = RatePerKm.fit(split.train, ts.label)
    m["baseline_mae"] = mae(y, rate.predict(split.test))
    m["linear_baseline_mae"] = mae(y, LinearOnDistance.fit(split.train, ts.label).predict(split.test))
    m["median_mae"] = mae(y, Median.fit(split.train, ts.label).predict(split.test))
    clock.lap("evaluate")

    held = _champion(settings, name)
    champion_mae = _score(held, split.test, ts.label)
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
        global_mae = _score(_champion(settings, model_name(target, GLOBAL)), split.test.assign(city=city), ts.label)
    clock.lap("gate_models")
    parity = _gate_parity(settings, city, target, parity_cache)
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
        "dag_run_id": run_label,
        "refit": "train+valid" if fitted.refit else "no",
        **({BASE_TAG: pooled_on} if pooled_on else {}),
        **_window(split),
    }
    if tuning is not None:
        tags["tuned"] = (
            f"{tuning['trials']} trials in {tuning['seconds']} s, "
            f"valid MAE {tuning['valid_mae']:.4g} (defaults {tuning['default_valid_mae']:.4g})"
        )
    reg = _registration(
        name,
        fitted,
        split,
        ts.features,
        m,
        tags,
        decision,
        force_promote,
        {**fit_params, "baseline_rate_per_km": rate.rate},
        ts.label,
    )
    clock.lap("register")
    promoted = decision.promote or force_promote
    log.info("%s: mae %.4g baseline %.4g -> %s", name, m["mae"], m["baseline_mae"], decision.summary)
    result = _result(
        name,
        city,
        target,
        "promoted" if promoted else "rejected",
        decision.summary,
        forced=force_promote and not decision.promote,
        pooled=fitted.pooled,
        checks=decision.reasons,
        test_window=[tags["test_start"], tags["test_end"]],
        metrics={k: round(v, 6) for k, v in m.items() if np.isfinite(v)},
        seconds=round(time.perf_counter() - started, 2),
        timings=clock.laps,
        **({"tuning": tuning} if tuning is not None else {}),
    )
    return result, reg


def _label_reference(held: LoadedModel | None) -> dict[str, Any] | None:
    """The champion's training labels as its reference profile recorded them (None for versions before that)."""
    if held is None or held.files is None:
        return None
    path = held.files.run_file(PROFILE_FILE)
    if path is None:
        return None
    with open(path) as fh:
        reference = json.load(fh).get("label")
    return reference if isinstance(reference, dict) else None


def _clean_window(held: LoadedModel | None, frame: pd.DataFrame, fitted: Fitted, label: str) -> CleanWindow | None:
    """Challenger and champion on the champion's own test window, re-read from today's training set."""
    start, end = (held.tags.get("test_start"), held.tags.get("test_end")) if held is not None else (None, None)
    if held is None or not start or not end:
        return None
    at = frame["event_timestamp"]
    rows = frame[(at >= pd.Timestamp(start)) & (at <= pd.Timestamp(end))]
    champion_mae = _score(held, rows, label) if len(rows) >= MIN_PER_KM_ROWS else None
    if champion_mae is None:
        return None
    return CleanWindow(start, end, len(rows), mae(rows[label].to_numpy(), fitted.predict(rows)), champion_mae)


def _pool_base(settings: Settings, city: str, target: str, features: list[str]) -> LoadedModel | None:
    """The fleet champion a city model may start from, when pooling is on and it can serve the city."""
    if not settings.train_pool:
        return None
    fleet = _champion(settings, model_name(target, GLOBAL))
    if fleet is None or fleet.base is not None or not fleet.serves(city):
        return None
    if not set(fleet.features) - {CITY_FEATURE} <= set(features):  # trained on another feature set
        return None
    return fleet


def _base_predictions(fleet: LoadedModel, city: str, frame: pd.DataFrame) -> np.ndarray:
    return fleet.predict(frame.assign(**{CITY_FEATURE: city}))


def _gate_parity(settings: Settings, city: str, target: str, cache: dict[Any, int] | None) -> int | None:
    """Mismatches of the gate's parity check (None when disabled), once per city and feature set."""
    if settings.gate_parity_sample <= 0:
        return None
    from cityml.featurestore import get_store
    from training.parity import parity_check, service_signature

    key = (city, service_signature(get_store(settings).get_feature_service(feature_service_name(target))))
    if cache is not None and key in cache:
        return cache[key]
    report = parity_check(
        settings, city, sample=settings.gate_parity_sample, target=target, hours=settings.gate_parity_hours
    )
    mismatches = int(report["mismatches"])
    if cache is not None:
        cache[key] = mismatches
    return mismatches


def train_global(
    settings: Settings,
    target: str,
    cities: list[str],
    *,
    until: datetime | None = None,
    run_label: str = "cli",
    sets: dict[str, TrainingSet] | None = None,
) -> dict[str, Any]:
    """The fleet model ``<target>-global``: every city's rows, the city as a categorical feature.

    It learns a currency-free label (``per_km_city`` in ``cityml.modeling``: the label per km over
    the city's median label per km in its training window) and converts back per city, so a
    rupiah fare and a euro fare teach it the same thing. Zones are left out: their names are
    city-local. Each city contributes its own time windows, so every city's test window is held
    out. The new version is promoted when there is no champion or it is at least as good on the
    union of the test windows (of the cities the champion serves).
    """
    started = time.perf_counter()
    name = model_name(target, GLOBAL)
    catalog = sorted(load_catalog(settings.catalog_path).slugs)
    built = sets if sets is not None else build_training_sets(settings, cities, target, until=until)
    parts: list[tuple[str, Split]] = []
    kept: list[TrainingSet] = []
    rates: dict[str, float] = {}
    for city in cities:
        ts = built[city]
        if ts.rows < MIN_FIT_ROWS:
            continue
        city_split = time_split(ts.frame)
        rate = RatePerKm.fit(city_split.train, ts.label).rate
        if not (np.isfinite(rate) and rate > 0):  # no distances: its label cannot be made unit-free
            log.warning("%s: %s has no positive %s per km; left out", name, city, ts.label)
            continue
        kept.append(ts)
        parts.append((city, city_split))
        rates[city] = rate
    if not parts:
        return _result(name, GLOBAL, target, "skipped", "no city has enough rows")

    def stack(attr: str) -> pd.DataFrame:
        frames = [getattr(s, attr).assign(**{CITY_FEATURE: city}) for city, s in parts]
        out = pd.concat(frames, ignore_index=True)
        out[CITY_FEATURE] = pd.Categorical(out[CITY_FEATURE], categories=catalog)
        return out

    split = Split(stack("train"), stack("valid"), stack("test"))
    features = [*(f for f in kept[0].features if f not in ZONE_FEATURES), CITY_FEATURE]
    label = kept[0].label
    clock = Stopwatch()
    scale = LabelScale("per_km_city", rates)
    fitted = fit_model(split, features, label, [scale], refit=settings.train_refit, threads=settings.train_threads)
    clock.lap("fit")
    y = split.test[label].to_numpy()
    # Each city's test window as train_city will score it (same rows, the city as a plain value);
    # in stacking order, so the pieces make up the fleet's test predictions.
    preds = [fitted.predict(s.test.assign(city=city)) for city, s in parts]
    pred = np.concatenate(preds)
    m = metrics(y, pred)
    m["baseline_mae"] = float(
        np.mean([mae(s.test[label].to_numpy(), RatePerKm.fit(s.train, label).predict(s.test)) for _, s in parts])
    )
    m["median_mae"] = mae(y, np.concatenate([Median.fit(s.train, label).predict(s.test) for _, s in parts]))
    per_city = {city: mae(s.test[label].to_numpy(), p) for (city, s), p in zip(parts, preds, strict=True)}
    held = _champion(settings, name)
    # Compared on the cities both serve: a champion cannot be judged on a city it never learned.
    both = np.concatenate([np.full(len(s.test), held is None or held.serves(city)) for city, s in parts])
    champion_mae = _score(held, split.test[both], label)
    mae_both = mae(y[both], pred[both])
    bar = None if champion_mae is None else champion_mae * (1 - settings.gate_margin)
    decision = Decision(promote=bar is None or mae_both <= bar)
    decision.reasons.append("no champion yet" if bar is None else f"MAE {mae_both:.4g} vs champion {champion_mae:.4g}")
    if not decision.promote:
        decision.failed.append(f"does not beat champion: MAE {mae_both:.4g} > {bar:.4g}")
    if champion_mae is not None:
        m["champion_mae"] = champion_mae
    m.update(best_iteration=float(fitted.rounds), train_rows=float(len(split.train)))
    tags = {
        "city": GLOBAL,
        "target": target,
        "feature_service": kept[0].feature_service,
        "git_sha": git_sha(),
        "feast_registry": feast_registry_version(settings),
        "train_rows": len(split.train),
        "cities": ",".join(c_ for c_, _ in parts),
        "dag_run_id": run_label,
        **_window(split),
    }
    # Each city's test MAE is logged too: realized accuracy compares a city served by the fallback with it.
    logged = {**m, **{f"{CITY_MAE_METRIC}{city}": v for city, v in per_city.items()}}
    reg = _registration(name, fitted, split, features, logged, tags, decision, False, {}, label)
    version, abandoned = publish(settings, reg)
    return _result(
        name,
        GLOBAL,
        target,
        "promoted" if decision.promote else "rejected",
        decision.summary,
        version=version,
        **({"abandoned_versions": abandoned} if abandoned else {}),
        checks=decision.reasons,
        per_city_mae=per_city,  # unrounded: the city models' gate compares with these
        metrics={k: round(v, 6) for k, v in m.items() if np.isfinite(v)},
        seconds=round(time.perf_counter() - started, 2),
        timings=clock.laps,
    )


def isolated(fn: Any, name: str, city: str, target: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one training; a failure is reported with its reason and leaves the champion alone."""
    try:
        result: dict[str, Any] = fn(*args, **kwargs)
        return result
    except Exception as exc:
        log.exception("training %s failed", name)
        return _result(name, city, target, "failed", f"{type(exc).__name__}: {exc}")


def prepare_city_targets(
    settings: Settings,
    city: str,
    sets: dict[str, TrainingSet],
    global_maes: dict[str, float] | None = None,
    **kwargs: Any,
) -> list[Prepared]:
    """Every target of one city, in turn, sharing the parity check; one unit of a fleet run's pool.

    Nothing is registered here: the caller publishes each result (:func:`publish`). A failure is reported with its
    reason and leaves the champion alone.
    """
    cache: dict[Any, int] = {}
    known = global_maes or {}
    out: list[Prepared] = []
    for target, ts in sets.items():
        name = model_name(target, city)
        try:
            out.append(
                prepare_city(
                    settings,
                    city,
                    target,
                    training_set=ts,
                    parity_cache=cache,
                    global_mae=known.get(target),
                    **kwargs,
                )
            )
        except Exception as exc:
            log.exception("training %s failed", name)
            out.append((_result(name, city, target, "failed", f"{type(exc).__name__}: {exc}"), None))
    return out


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Pool worker start-up: the kernel kills this process when the fleet run's process dies (``kill -9``
    included), so no worker goes on fitting, holding memory, or waiting for work that will never come."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):  # not Linux: the pool's broken-pipe handling is all there is
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above ran
        os._exit(1)


def _all_sets(
    settings: Settings, cities: list[str], targets: list[str], until: datetime | None
) -> tuple[dict[str, dict[str, TrainingSet]], dict[str, str]]:
    """Training sets by target and city, one join per target; and why a target's join failed."""
    sets: dict[str, dict[str, TrainingSet]] = {}
    failed: dict[str, str] = {}
    for target in targets:
        try:
            sets[target] = build_training_sets(settings, cities, target, until=until)
        except Exception as exc:
            log.exception("training sets for %s failed", target)
            failed[target] = f"{type(exc).__name__}: {exc}"
    return sets, failed


def _in_pool(
    settings: Settings,
    workers: int,
    per_city: dict[str, dict[str, TrainingSet]],
    known: dict[str, dict[str, float]],
    kwargs: dict[str, Any],
) -> list[dict[str, Any]]:
    """:func:`prepare_city_targets` for every city, ``workers`` cities at once in fresh processes.

    Spawned, not forked: no MLflow or Feast connections are inherited. The cores are shared out
    between the workers so LightGBM threads do not fight over them. Workers only fit and gate;
    this process registers and promotes what they return, and they die with it.
    """
    share = settings.model_copy(update={"train_threads": max(1, settings.train_threads // workers)})
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        futures = {
            city: pool.submit(prepare_city_targets, share, city, sets, known[city], **kwargs)
            for city, sets in per_city.items()
        }
        for city, future in futures.items():
            try:
                results += [_published(settings, prepared) for prepared in future.result()]
            except Exception as exc:  # a worker that died (out of memory, killed): the city's models fail alone
                log.exception("training %s failed in its worker", city)
                results += [
                    _result(model_name(t, city), city, t, "failed", f"worker: {type(exc).__name__}: {exc}")
                    for t in per_city[city]
                ]
    return results


def train_fleet(
    settings: Settings,
    cities: list[str],
    targets: list[str],
    *,
    until: datetime | None = None,
    run_label: str = "cli",
    force_promote: bool = False,
    with_global: bool = True,
    workers: int = 1,
    phases: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """The global models first (the gate compares with them), then every (city, target).

    Training sets are built once per target for all cities and shared by the global and the
    city models. With ``workers > 1`` the cities are fitted in that many processes at once, one
    city (all its targets) per task. ``phases``, when given, receives the wall seconds of each
    phase: ``datasets``, ``global`` and ``cities``.
    """
    results = []
    clock = Stopwatch()
    # The registry's schema and the experiment are created here, once: pool workers opening a new SQLite store
    # at the same moment would each try to migrate it.
    experiment_id(client(settings), settings)
    sets, failed = _all_sets(settings, cities, targets, until)
    clock.lap("datasets")
    for target, reason in failed.items():
        names = [GLOBAL, *cities] if with_global else cities
        results += [_result(model_name(target, c), c, target, "failed", reason) for c in names]
    # The global champion's MAE on each city's test window, where this run's global model is it.
    fleet_mae: dict[str, dict[str, float]] = {}
    if with_global:
        for target in sets:
            results.append(
                isolated(
                    train_global,
                    model_name(target, GLOBAL),
                    GLOBAL,
                    target,
                    settings,
                    target,
                    cities,
                    until=until,
                    run_label=run_label,
                    sets=sets[target],
                )
            )
            if results[-1]["status"] == "promoted":
                fleet_mae[target] = results[-1]["per_city_mae"]
    clock.lap("global")
    per_city = {city: {t: sets[t][city] for t in sets} for city in cities}
    known = {city: {t: fleet_mae[t][city] for t in fleet_mae if city in fleet_mae[t]} for city in cities}
    kwargs = {"until": until, "run_label": run_label, "force_promote": force_promote}
    if workers <= 1 or len(cities) <= 1:
        for city in cities:
            prepared = prepare_city_targets(settings, city, per_city[city], known[city], **kwargs)
            results += [_published(settings, p) for p in prepared]
    else:
        results += _in_pool(settings, workers, per_city, known, kwargs)
    clock.lap("cities")
    if phases is not None:
        phases.update(clock.laps)
    return results
