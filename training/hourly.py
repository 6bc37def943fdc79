"""Per-city models of a city-hour quantity (a demand forecast, say): one row per city and hour, not per trip.

A data scientist declares such a model as an :class:`HourlyTarget` (what each hour's label aggregates, which Feast
FeatureService it reads) and commits one DAG file that hands it to ``cityml.dagkit.hourly_retrain_dag``. The unit
here is the same as the trip models' (training/city.py): the city's training set built once, point-in-time
correct, fitted and early-stopped on a time split, scored against baselines, gated and registered as
``<name>-<city>`` with the lineage tags of every cityml version.

The point-in-time rule: the row of hour ``h`` is what is known at ``h`` (its features are joined by Feast at
``event_timestamp = h``) and its label is what happens in ``[h, h + 1 h)``, so a model never learns from a
feature that summarises the hour it predicts.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

import numpy as np
import pandas as pd

from cityml.data.trips import read_trips
from cityml.features.featurestore import service_feature_names
from cityml.features.request_features import holiday_flags, local_calendar
from cityml.modeling import LabelScale
from cityml.naming import model_name
from cityml.targets import HourlyTarget
from training.city import MIN_FIT_ROWS, Stopwatch, window
from training.context import RunContext
from training.datasets import TrainingSet
from training.evaluate import mae, metrics, score_model
from training.fit import fit_model, time_split
from training.gate import GateInputs, decide
from training.publish import publish, registration
from training.registry import day_kind_mae, feast_registry_version, git_sha
from training.results import TrainResult

log = logging.getLogger(__name__)

#: Calendar features every hourly model gets, in the city's local time (the same function trip requests use).
CALENDAR_FEATURES = ["local_hour", "local_weekday", "is_weekend", "is_holiday"]


def hourly_labels(
    trips: pd.DataFrame, target: HourlyTarget, start: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """One row per hour of one city's ``trips``: ``event_timestamp`` (the hour's start, UTC) and the label.

    Every hour from the first trip's to the last *complete* one is present (a count of 0 where no trip started;
    NaN for a mean of nothing): without ``until`` the hour the data ends in is left out (its trips are not all
    stored yet); with it, the hours before it, up to the one of the newest trip. An hour that ``start`` or
    ``until`` cuts through is left out.
    """
    columns = ["event_timestamp", target.label]
    if trips.empty:
        return pd.DataFrame(columns=columns)
    hour = trips["pickup_ts"].dt.floor("h")
    first = hour.min() if start is None else max(hour.min(), pd.Timestamp(start).ceil("h"))
    # Without a cut-off the newest hour is still filling (its trips of the first minutes only): left out. With
    # one, every hour before it is complete, up to the hour after the newest trip.
    last = hour.max()
    if until is not None:
        last = min(last + pd.Timedelta(hours=1), pd.Timestamp(until).floor("h"))
    hours = pd.date_range(first, last, freq="h", inclusive="left")
    if target.aggregate == "count":
        values = hour.value_counts().reindex(hours, fill_value=0).astype("float64")
    else:
        values = trips[target.column].groupby(hour).agg(target.aggregate).reindex(hours)
    return pd.DataFrame({"event_timestamp": hours, target.label: values.to_numpy(dtype="float64")})


def build_hourly_set(ctx: RunContext, city: str, target: HourlyTarget) -> TrainingSet:
    """``city``'s hours in the run's window with their labels, calendar features and the service's features as
    Feast's point-in-time join gives them at each hour's start."""
    service = ctx.store.get_feature_service(target.feature_service)
    features = [*CALENDAR_FEATURES, *service_feature_names(service)]
    trips = read_trips(ctx.settings.trips_dir, [city], start=ctx.start, end=ctx.until)
    labels = hourly_labels(trips, target, ctx.start, ctx.until)
    labels = labels[labels[target.label].notna()].reset_index(drop=True)
    if labels.empty:
        empty = pd.DataFrame(columns=["city", "event_timestamp", *features, target.label])
        return TrainingSet(empty, features, target.label, service.name)
    at = labels["event_timestamp"].astype("datetime64[us, UTC]")
    entity_df = pd.DataFrame({"_row": np.arange(len(labels)), "city": city, "event_timestamp": at})
    joined = ctx.store.get_historical_features(entity_df=entity_df, features=service, full_feature_names=True).to_df()
    joined = joined.set_index("_row").reindex(np.arange(len(labels)))
    seconds = at.astype("int64").to_numpy() // 1_000_000
    context = ctx.catalog.get(city).context
    hour, weekday = local_calendar(seconds, context.timezone)
    frame = pd.DataFrame(
        {
            "city": city,
            "event_timestamp": at,
            "local_hour": hour,
            "local_weekday": weekday,
            "is_weekend": (weekday >= 5).astype("int64"),
            "is_holiday": holiday_flags(seconds, context),
        }
    )
    for name in features[len(CALENDAR_FEATURES) :]:
        frame[name] = joined[name].to_numpy()
    frame[target.label] = labels[target.label].to_numpy()
    return TrainingSet(frame, features, target.label, service.name)


def hour_of_week_baseline(train: pd.DataFrame, label: str, rows: pd.DataFrame) -> np.ndarray:
    """The seasonal baseline a forecast must beat: the training window's mean label for the same local hour of
    the same weekday (the training median where that hour was never seen)."""
    means = train.groupby(["local_weekday", "local_hour"])[label].mean()
    keys = pd.MultiIndex.from_arrays([rows["local_weekday"], rows["local_hour"]])
    out = means.reindex(keys).to_numpy(dtype="float64")
    return np.where(np.isnan(out), float(np.median(train[label])), out)


def train_hourly_city(ctx: RunContext, city: str, target: HourlyTarget) -> TrainResult:
    """The unit: ``<target>-<city>`` trained, gated and registered; a failure is reported, never raised, so one
    city's trouble leaves the others going."""
    name = model_name(target.name, city)
    try:
        ctx.catalog.get(city)
        return _train(ctx, city, target, name)
    except Exception as exc:
        log.exception("training %s failed", name)
        return TrainResult.failure(name, city, target.name, exc)


def _train(ctx: RunContext, city: str, target: HourlyTarget, name: str) -> TrainResult:
    settings = ctx.settings
    started = time.perf_counter()
    clock = Stopwatch()
    hs = build_hourly_set(ctx, city, target)
    clock.lap("dataset")
    if hs.rows < MIN_FIT_ROWS:
        reason = f"too little data: {hs.rows} hours with a {hs.label}, fewer than {MIN_FIT_ROWS} to fit on"
        return TrainResult(name, city, target.name, "skipped", reason)
    split = time_split(hs.frame)
    fitted = fit_model(
        split, hs.features, hs.label, [LabelScale("none")], refit=settings.train_refit, threads=settings.train_threads
    )
    clock.lap("fit")
    y = split.test[hs.label].to_numpy(dtype="float64")
    pred = fitted.predict(split.test)
    m = metrics(y, pred)
    m.update(day_kind_mae(np.abs(pred - y), split.test["is_weekend"].to_numpy().astype(bool)))
    m["baseline_mae"] = mae(y, hour_of_week_baseline(split.train, hs.label, split.test))
    m["median_mae"] = mae(y, np.full(len(y), float(np.median(split.train[hs.label]))))
    champion_mae = score_model(ctx.champion(name), split.test, hs.label)
    decision = decide(GateInputs(m["mae"], m["median_mae"], len(split.train), champion_mae=champion_mae), settings)
    decision.reasons.append("no fleet model for hourly targets; no trip-level parity or label checks")
    if champion_mae is not None:
        m["champion_mae"] = champion_mae
    m.update(best_iteration=float(fitted.rounds), train_rows=float(len(split.train)), test_rows=float(len(split.test)))
    clock.lap("evaluate")
    tags = {
        "city": city,
        "target": target.name,
        "rows": "city_hour",
        "label": hs.label,
        "unit": target.unit,
        "feature_service": hs.feature_service,
        "git_sha": git_sha(),
        "feast_registry": feast_registry_version(settings),
        "train_rows": len(split.train),
        "dag_run_id": ctx.run_label,
        "refit": "train+valid" if fitted.refit else "no",
        **window(split),
    }
    reg = registration(name, fitted, split, hs.features, m, tags, decision, ctx.forced_by, {}, hs.label, pred)
    log.info("%s: mae %.4g hour-of-week baseline %.4g -> %s", name, m["mae"], m["baseline_mae"], decision.summary)
    result = TrainResult(
        name,
        city,
        target.name,
        "promoted" if reg.promote else "rejected",
        decision.summary,
        forced=reg.promote and not decision.promote,
        forced_by=ctx.forced_by if reg.promote and not decision.promote else "",
        checks=decision.reasons,
        test_window=[str(tags["test_start"]), str(tags["test_end"])],
        metrics={k: round(v, 6) for k, v in m.items() if np.isfinite(v)},
        timings=clock.laps,
    )
    result = publish(ctx, result, reg)
    result.seconds = round(time.perf_counter() - started, 2)
    return result
