"""Realized accuracy: served predictions joined to the trips that later completed, MAE per city, target and day.

A prediction finds its trip in two ways, in this order:

1. **By trip id**, when the client sent ``trip_id`` with the request and the trips feed carries the same id.
2. **By time and place** otherwise: a trip of the same city, pickup zone and dropoff zone picked up within
   ``labels_tolerance_s`` (default 120 s) of the pickup time the request gave; the nearest such trip. A trip is
   matched to one prediction per target at most (the nearest in time), so a quote refreshed three times for one
   ride counts once. A request without a pickup time was logged with the time it was served, which for a quote
   is close to the pickup; a prediction with no trip within the tolerance stays unmatched and is counted.

Each day's MAE is stored in the metadata database beside the drift scores (table ``realized_accuracy``, one row
per city, target, model version and day, replaced when the day is measured again) and compared with the test MAE
the version was promoted with. A city whose serving version's realized MAE exceeds ``accuracy_factor`` times that
for its last ``accuracy_days`` judged days in the window (days with at least ``accuracy_min_trips`` matches) is
flagged for retraining, whether or not any feature drifted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from cityml.data.trips import read_trips
from cityml.naming import CITY_MAE_METRIC, GLOBAL, LABELS
from cityml.prediction_log import read_predictions
from cityml.settings import Settings


@dataclass(frozen=True)
class RealizedDay:
    """One model version's realized MAE on one day's completed trips, beside the test MAE it was promoted with."""

    city: str
    target: str
    model: str
    version: str
    day: date
    trips: int
    mae: float
    test_mae: float | None

    @property
    def ratio(self) -> float | None:
        return self.mae / self.test_mae if self.test_mae else None


@dataclass(frozen=True)
class AccuracyFlag:
    """A (city, target) whose realized MAE stayed past the factor for the last judged days."""

    city: str
    target: str
    model: str
    days: list[str]
    ratio: float  # the smallest of those days' realized / test MAE

    @property
    def why(self) -> str:
        return f"{self.target} realized MAE {self.ratio:.2f}x test MAE for {len(self.days)} days"


@dataclass(frozen=True)
class LabelsRun:
    """What a join of late labels found: per-day MAEs, flags, and how the predictions were matched."""

    days: list[RealizedDay]
    flagged: list[AccuracyFlag]
    predictions: int
    by_trip_id: int
    by_time: int
    history: list[RealizedDay]  # the stored days of the last HISTORY_DAYS (this run's and earlier runs'), oldest first

    @property
    def unmatched(self) -> int:
        return self.predictions - self.by_trip_id - self.by_time

    def to_json(self) -> dict[str, Any]:
        return {
            "predictions": self.predictions,
            "matched_by_trip_id": self.by_trip_id,
            "matched_by_time_and_zones": self.by_time,
            "unmatched": self.unmatched,
            "days": [{**asdict(d), "day": d.day.isoformat(), "ratio": d.ratio} for d in self.days],
            "flagged": [{**asdict(f), "why": f.why} for f in self.flagged],
        }


def join_outcomes(predictions: pd.DataFrame, trips: pd.DataFrame, tolerance_s: float) -> pd.DataFrame:
    """Predictions of one target with the completed trip each belongs to: ``actual`` and ``matched_by`` added.

    ``predictions``: city, target, model, version, prediction, trip_id, pickup_ts, pickup_zone, dropoff_zone (UTC
    timestamps; one target). ``trips``: canonical trip rows. Unmatched predictions are left out.
    """
    empty = predictions.iloc[:0].assign(actual=pd.Series(dtype=float), matched_by="", day=None)
    if predictions.empty or trips.empty:
        return empty
    label = LABELS[str(predictions["target"].iloc[0])]
    outcome = trips[["city", "trip_id", "pickup_ts", "pickup_zone", "dropoff_zone", label]].rename(
        columns={label: "actual", "pickup_ts": "trip_pickup_ts", "trip_id": "matched_trip"}
    )
    outcome["trip_pickup_ts"] = _utc_ns(outcome["trip_pickup_ts"])
    preds = predictions.reset_index(drop=True).assign(row=lambda d: np.arange(len(d)))
    preds["pickup_ts"] = _utc_ns(preds["pickup_ts"])

    by_id = preds.dropna(subset=["trip_id"]).merge(
        outcome.drop(columns=["pickup_zone", "dropoff_zone"]),
        left_on=["city", "trip_id"],
        right_on=["city", "matched_trip"],
    )
    by_id = by_id.assign(matched_by="trip_id", gap=0.0)

    rest = preds[~preds["row"].isin(by_id["row"])].dropna(subset=["pickup_ts", "pickup_zone", "dropoff_zone"])
    free = outcome[~outcome["matched_trip"].isin(by_id["matched_trip"])].dropna(subset=["pickup_zone", "dropoff_zone"])
    by_time = pd.DataFrame()
    if not rest.empty and not free.empty:
        keys = ["city", "pickup_zone", "dropoff_zone"]
        rest = rest.assign(pickup_zone=rest["pickup_zone"].astype(str), dropoff_zone=rest["dropoff_zone"].astype(str))
        free = free.assign(pickup_zone=free["pickup_zone"].astype(str), dropoff_zone=free["dropoff_zone"].astype(str))
        by_time = pd.merge_asof(
            rest.sort_values("pickup_ts"),
            free.sort_values("trip_pickup_ts"),
            left_on="pickup_ts",
            right_on="trip_pickup_ts",
            by=keys,
            direction="nearest",
            tolerance=pd.Timedelta(seconds=tolerance_s),
        ).dropna(subset=["matched_trip"])
        gap = (by_time["pickup_ts"] - by_time["trip_pickup_ts"]).abs().dt.total_seconds()
        by_time = by_time.assign(matched_by="time_and_zones", gap=gap)
        # One prediction per trip: the nearest in time (a quote refreshed for one ride counts once).
        by_time = by_time.sort_values(["gap", "row"]).drop_duplicates("matched_trip")
    matched = pd.concat([by_id, by_time], ignore_index=True) if not by_time.empty else by_id
    if matched.empty:
        return empty
    day = pd.to_datetime(matched["trip_pickup_ts"], utc=True).dt.date
    return matched.assign(day=day).sort_values("row").drop(columns=["row", "gap", "trip_pickup_ts"])


def _utc_ns(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True).astype("datetime64[ns, UTC]")


def realized_days(matched: pd.DataFrame, test_mae: dict[tuple[str, str, str], ReferenceMae]) -> list[RealizedDay]:
    """MAE per city, target, model version and day, each with the version's test MAE for that kind of day;
    ``test_mae`` by (model, version, city)."""
    if matched.empty:
        return []
    err = matched.assign(err=(matched["prediction"] - matched["actual"]).abs())
    out = []
    for (city, target, model, version, day), g in err.groupby(["city", "target", "model", "version", "day"]):
        out.append(
            RealizedDay(
                city=str(city),
                target=str(target),
                model=str(model),
                version=str(version),
                day=day,
                trips=len(g),
                mae=float(g["err"].mean()),
                test_mae=test_mae.get((str(model), str(version), str(city)), ReferenceMae()).on(day),
            )
        )
    return out


def flag(days: Iterable[RealizedDay], factor: float, bad_days: int, min_trips: int) -> list[AccuracyFlag]:
    """The (city, target) pairs whose serving version's last ``bad_days`` judged days (``min_trips`` or more) were
    all past ``factor`` times its test MAE.

    The serving version is the one of the newest judged day (the highest version when two served that day): a
    retrained city is judged on its new version's days only, never on the days of the version it replaced.
    """
    series: dict[tuple[str, str], list[RealizedDay]] = {}
    for d in sorted(days, key=lambda d: (d.day, _version_key(d.version))):
        if d.trips >= min_trips and d.ratio is not None:
            series.setdefault((d.city, d.target), []).append(d)
    flags = []
    for (city, target), judged in sorted(series.items()):
        serving = (judged[-1].model, judged[-1].version)
        last = [d for d in judged if (d.model, d.version) == serving][-bad_days:]
        if len(last) == bad_days and all((d.ratio or 0.0) > factor for d in last):
            ratios = [d.ratio or 0.0 for d in last]
            flags.append(AccuracyFlag(city, target, serving[0], [d.day.isoformat() for d in last], min(ratios)))
    return flags


def _days_ago(days: int) -> date:
    return (datetime.now(UTC) - timedelta(days=days)).date()


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


_PLACE = ("pickup_ts", "pickup_zone", "dropoff_zone")
HISTORY_DAYS = 90  # of stored days the report plots


def read_logged(settings: Settings, cities: list[str], targets: list[str], since: datetime) -> pd.DataFrame:
    """The prediction log of the cities since a time, as the columns :func:`join_outcomes` takes."""
    rows = [
        {k: r[k] for k in ("city", "target", "model", "version", "prediction", "trip_id", *_PLACE)}
        for city in cities
        for r in read_predictions(settings.predictions_dir, city, since=since)
        if r["target"] in targets
    ]
    columns = ["city", "target", "model", "version", "prediction", "trip_id", *_PLACE]
    frame = pd.DataFrame(rows, columns=columns)
    frame["pickup_ts"] = pd.to_datetime(frame["pickup_ts"], utc=True, format="ISO8601")
    return frame


#: Cities whose predictions and trips a labels run joins at once: its memory is a chunk's, not the fleet's (all of
#: 1,000 small cities' trips of a week at once: 1.7 GB; one city at a time took 2.7 times as long).
LABELS_CHUNK_CITIES = 50


@dataclass(frozen=True)
class _Joined:
    """Some cities' predictions since a time, joined to their trips."""

    matched: pd.DataFrame
    predictions: int
    start: pd.Timestamp  # the earliest of the window's start and the cities' first logged pickup time

    @property
    def versions(self) -> set[tuple[str, str, str]]:
        """The (model, version, city) of the matched predictions."""
        if self.matched.empty:
            return set()
        return set(self.matched[["model", "version", "city"]].itertuples(index=False, name=None))


def _join(settings: Settings, cities: list[str], targets: list[str], since: datetime) -> _Joined:
    logged = read_logged(settings, cities, targets, since)
    # The trips of the pickup times the predictions were for (a quote is for now, a replay or a booking not).
    first = logged["pickup_ts"].min()
    start = min(first, pd.Timestamp(since)) if pd.notna(first) else pd.Timestamp(since)
    slack = pd.Timedelta(seconds=settings.labels_tolerance_s)
    trips = read_trips(settings.trips_dir, cities, start=(start - slack).to_pydatetime()) if len(logged) else None
    parts = [
        join_outcomes(logged[logged["target"] == t], trips, settings.labels_tolerance_s)
        for t in targets
        if trips is not None and (logged["target"] == t).any()
    ]
    matched = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return _Joined(matched, len(logged), start)


def run_labels(
    settings: Settings,
    cities: list[str],
    targets: list[str],
    since: datetime,
    client: Any | None = None,
    chunk_cities: int = LABELS_CHUNK_CITIES,
) -> LabelsRun:
    """Join the completed trips to the predictions served since ``since``; store each day's MAE; flag cities.

    ``chunk_cities`` cities at a time: a run holds a chunk's predictions and trips, whatever the size of the fleet.
    Flags read the stored days of the window, not only this run's: a city two bad days in a row is flagged even
    when the days were measured by two runs; days before the window (a version long gone, a city that stopped
    sending traffic) are not judged again.
    """
    from cityml.registry import client as make_client
    from monitoring import history

    days: list[RealizedDay] = []
    predictions = by_trip_id = by_time = 0
    first_day = pd.Timestamp(since).date()
    c = client
    for i in range(0, len(cities), chunk_cities):
        joined = _join(settings, cities[i : i + chunk_cities], targets, since)
        if joined.versions and c is None:
            c = make_client(settings)
        days += realized_days(joined.matched, {key: _test_mae(c, *key) for key in joined.versions})
        counts = joined.matched["matched_by"].value_counts() if len(joined.matched) else pd.Series(dtype=int)
        predictions += joined.predictions
        by_trip_id += int(counts.get("trip_id", 0))
        by_time += int(counts.get("time_and_zones", 0))
        first_day = min(first_day, joined.start.date())
    history.record_accuracy(settings.metadata_db, days)
    stored = history.read_accuracy(settings.metadata_db, cities, since=_days_ago(HISTORY_DAYS))
    flagged = flag(
        [d for d in stored if d.target in targets and d.day >= first_day],
        settings.accuracy_factor,
        settings.accuracy_days,
        settings.accuracy_min_trips,
    )
    return LabelsRun(
        days=days, flagged=flagged, predictions=predictions, by_trip_id=by_trip_id, by_time=by_time, history=stored
    )


@dataclass(frozen=True)
class ReferenceMae:
    """A version's test MAE for a city: overall, and on the test window's weekdays and weekend days when it had
    enough of each (``training.registry.DAY_KIND_MAE``)."""

    overall: float | None = None
    weekday: float | None = None
    weekend: float | None = None

    def on(self, day: date) -> float | None:
        """The reference for ``day``: the test MAE of its kind of day, else the overall one."""
        kind = self.weekend if day.weekday() >= 5 else self.weekday
        return kind if kind is not None else self.overall


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _test_mae(c: Any, model: str, version: str, city: str) -> ReferenceMae:
    """The test MAE a version was registered with for a city: its ``mae``, ``mae_weekday`` and ``mae_weekend``
    tags, or for a fleet model serving a city as its fallback, that city's test MAE logged with the version's run
    (its fleet MAE mixes cities)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = c.get_model_version(model, version)
        if model.endswith(f"-{GLOBAL}"):
            metric = c.get_run(mv.run_id).data.metrics.get(f"{CITY_MAE_METRIC}{city}") if mv.run_id else None
            return ReferenceMae(_float(metric))
    except MlflowException:
        return ReferenceMae()
    tags = mv.tags
    return ReferenceMae(_float(tags.get("mae")), _float(tags.get("mae_weekday")), _float(tags.get("mae_weekend")))
