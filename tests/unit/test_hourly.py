"""Models of a city-hour quantity (training.hourly, cityml.targets): the label of each hour and the spec's checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cityml.naming import model_name
from cityml.targets import HourlyTarget
from training.hourly import hour_of_week_baseline, hourly_labels

DEMAND = HourlyTarget(name="demand", feature_service="demand_v1")


def _trips(*stamps: str, fares: list[float] | None = None) -> pd.DataFrame:
    ts = pd.to_datetime(list(stamps), utc=True)
    return pd.DataFrame({"pickup_ts": ts, "fare": fares if fares is not None else [1.0] * len(ts)})


def test_each_hour_counts_the_trips_picked_up_in_it_and_quiet_hours_count_zero() -> None:
    trips = _trips("2026-03-01 10:05", "2026-03-01 10:59", "2026-03-01 12:00", "2026-03-01 13:30")
    labels = hourly_labels(trips, DEMAND)
    assert labels["event_timestamp"].dt.hour.tolist() == [10, 11, 12]  # 13:00 is the hour the data ends in
    assert labels["trips"].tolist() == [2.0, 0.0, 1.0]


def test_the_window_never_keeps_an_hour_it_cuts_through() -> None:
    trips = _trips(*(f"2026-03-01 {h:02d}:{m:02d}" for h in range(6, 12) for m in (10, 40)))
    start, until = pd.Timestamp("2026-03-01 07:30", tz="UTC"), pd.Timestamp("2026-03-01 10:15", tz="UTC")
    labels = hourly_labels(trips[(trips.pickup_ts >= start) & (trips.pickup_ts < until)], DEMAND, start, until)
    assert labels["event_timestamp"].dt.hour.tolist() == [8, 9]
    assert labels["trips"].tolist() == [2.0, 2.0]
    # A cut-off on the hour: the hour before it is complete and kept, nothing after the newest trip's hour.
    until = pd.Timestamp("2026-03-01 10:00", tz="UTC")
    labels = hourly_labels(trips[trips.pickup_ts < until], DEMAND, None, until)
    assert labels["event_timestamp"].dt.hour.tolist() == [6, 7, 8, 9]
    far = pd.Timestamp("2026-03-09", tz="UTC")
    assert hourly_labels(trips, DEMAND, None, far)["event_timestamp"].dt.hour.tolist() == [6, 7, 8, 9, 10, 11]


def test_an_aggregate_of_a_trip_column_is_missing_in_an_hour_without_trips() -> None:
    spec = HourlyTarget(name="fares", feature_service="demand_v1", aggregate="mean", column="fare", unit="USD")
    trips = _trips("2026-03-01 10:05", "2026-03-01 10:20", "2026-03-01 12:00", "2026-03-01 13:00", fares=[2, 4, 9, 1])
    labels = hourly_labels(trips, spec)
    assert spec.label == "mean_fare"
    assert labels["mean_fare"].tolist()[0] == 3.0 and np.isnan(labels["mean_fare"].iloc[1])
    assert labels["mean_fare"].iloc[2] == 9.0


def test_no_trips_no_hours() -> None:
    assert hourly_labels(_trips(), DEMAND).empty


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "Demand"}, "name"),
        ({"name": "eta"}, "name"),
        ({"name": "global"}, "name"),
        ({"aggregate": "max"}, "aggregate"),
        ({"column": "fare"}, "column"),
        ({"aggregate": "mean"}, "column"),
        ({"aggregate": "mean", "column": "currency"}, "column"),
        ({"feature_service": ""}, "feature_service"),
    ],
)
def test_a_bad_spec_is_refused_naming_its_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        HourlyTarget(**{"name": "demand", "feature_service": "demand_v1", **kwargs})


def test_a_spec_survives_an_airflow_task_argument_and_names_its_models() -> None:
    assert HourlyTarget.from_dict(DEMAND.to_dict()) == DEMAND
    assert model_name(DEMAND.name, "lisbon") == "demand-lisbon"
    with pytest.raises(ValueError, match="target"):
        model_name("De mand", "lisbon")


def test_the_seasonal_baseline_is_the_mean_of_the_same_local_hour_and_weekday() -> None:
    train = pd.DataFrame({"local_weekday": [0, 0, 0, 1], "local_hour": [8, 8, 9, 8], "trips": [10.0, 20.0, 5.0, 7.0]})
    rows = pd.DataFrame({"local_weekday": [0, 1, 2], "local_hour": [8, 8, 8]})
    assert hour_of_week_baseline(train, "trips", rows).tolist() == [15.0, 7.0, 8.5]  # unseen: the median
