"""Realized accuracy: predictions joined to completed trips by trip id or by time and zones, MAE per day, flags."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cityml.data.trips import write_trips
from cityml.prediction_log import PredictionBatch, epoch_us, write_batches
from cityml.settings import Settings
from monitoring.accuracy import RealizedDay, flag, join_outcomes, run_labels

T0 = pd.Timestamp("2026-03-02 08:00", tz="UTC")


def _trips(n: int, city: str = "alpha", start: pd.Timestamp = T0, step_s: int = 600) -> pd.DataFrame:
    ts = start + pd.to_timedelta(np.arange(n) * step_s, unit="s")
    return pd.DataFrame(
        {
            "city": city,
            "trip_id": [f"{city}-{i}" for i in range(n)],
            "pickup_ts": ts,
            "dropoff_ts": ts + pd.Timedelta(seconds=900),
            "pickup_zone": [f"z{i % 3:02d}" for i in range(n)],
            "dropoff_zone": "z05",
            "pickup_lat": 38.7,
            "pickup_lon": -9.1,
            "dropoff_lat": 38.72,
            "dropoff_lon": -9.12,
            "distance_km": 4.0,
            "duration_s": 900.0 + np.arange(n),
            "fare": 10.0 + np.arange(n),
            "currency": "EUR",
        }
    )


def _predictions(trips: pd.DataFrame, target: str = "eta", **overrides: Any) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "city": trips["city"],
            "target": target,
            "model": f"{target}-alpha",
            "version": "1",
            "prediction": 1000.0,
            "trip_id": None,
            "pickup_ts": trips["pickup_ts"],
            "pickup_zone": trips["pickup_zone"],
            "dropoff_zone": trips["dropoff_zone"],
        }
    )
    return frame.assign(**overrides)


def test_a_prediction_with_the_clients_trip_id_joins_that_trip() -> None:
    trips = _trips(5)
    preds = _predictions(trips).assign(trip_id=trips["trip_id"], pickup_ts=T0 - pd.Timedelta(days=2))
    matched = join_outcomes(preds, trips, tolerance_s=120)
    assert list(matched["matched_by"]) == ["trip_id"] * 5
    assert list(matched["actual"]) == [900.0, 901.0, 902.0, 903.0, 904.0]


def test_without_an_id_the_nearest_trip_of_the_same_zones_within_the_tolerance_joins() -> None:
    trips = _trips(6)
    preds = _predictions(trips)
    preds["pickup_ts"] = preds["pickup_ts"] + pd.to_timedelta([-60, 90, 119, 121, 0, 0], unit="s")
    preds.loc[4, "dropoff_zone"] = "z01"  # another dropoff zone: never that trip
    matched = join_outcomes(preds, trips, tolerance_s=120)
    assert list(matched["matched_trip"]) == ["alpha-0", "alpha-1", "alpha-2", "alpha-5"]
    assert set(matched["matched_by"]) == {"time_and_zones"}


def test_a_trip_quoted_three_times_counts_once_and_price_reads_the_fare() -> None:
    trips = _trips(1)
    preds = pd.concat([_predictions(trips, "price")] * 3, ignore_index=True)
    preds["pickup_ts"] = preds["pickup_ts"] + pd.to_timedelta([-100, -10, 50], unit="s")
    preds["prediction"] = [1.0, 2.0, 3.0]
    matched = join_outcomes(preds, trips, tolerance_s=120)
    assert list(matched["prediction"]) == [2.0] and list(matched["actual"]) == [10.0]  # the nearest quote


def test_predictions_of_an_older_log_without_pickup_columns_stay_unmatched() -> None:
    trips = _trips(3)
    preds = _predictions(trips, pickup_ts=pd.NaT, pickup_zone=None, dropoff_zone=None)
    assert join_outcomes(preds, trips, tolerance_s=120).empty


def _day(day: int, ratio: float, trips: int = 100, version: str = "1", city: str = "alpha") -> RealizedDay:
    return RealizedDay(city, "eta", f"eta-{city}", version, date(2026, 3, day), trips, 100.0 * ratio, 100.0)


def test_a_city_is_flagged_after_n_bad_days_in_a_row() -> None:
    assert [f.city for f in flag([_day(1, 1.0), _day(2, 1.8), _day(3, 1.6)], 1.5, 2, 30)] == ["alpha"]
    [f] = flag([_day(1, 1.0), _day(2, 1.8), _day(3, 1.6)], 1.5, 2, 30)
    assert f.days == ["2026-03-02", "2026-03-03"] and f.ratio == pytest.approx(1.6)
    assert "1.60x test MAE for 2 days" in f.why
    assert flag([_day(1, 1.8), _day(2, 1.8), _day(3, 1.2)], 1.5, 2, 30) == []  # recovered
    assert flag([_day(2, 1.8)], 1.5, 2, 30) == []  # one day only
    assert flag([_day(2, 1.8), _day(3, 1.8, trips=5)], 1.5, 2, 30) == []  # a thin day is not judged


def test_a_retrained_city_is_judged_on_its_new_versions_days_only() -> None:
    assert flag([_day(2, 1.8), _day(3, 1.8), _day(3, 1.0, version="10")], 1.5, 2, 30) == []
    assert flag([_day(1, 1.8), _day(2, 1.8), _day(3, 1.9, version="2")], 1.5, 2, 30) == []  # one day of v2 yet
    [f] = flag([_day(1, 1.0), _day(2, 1.8, version="2"), _day(3, 1.7, version="2")], 1.5, 2, 30)
    assert f.days == ["2026-03-02", "2026-03-03"]


class _Registry:
    """The one registry call realized accuracy makes: a version's ``mae`` tag."""

    def get_model_version(self, name: str, version: str) -> Any:
        return type("MV", (), {"tags": {"mae": "100.0"}})()


def _log(folder: Path, trips: pd.DataFrame, prediction: float, trip_ids: bool) -> None:
    n = len(trips)
    write_batches(
        folder,
        [
            PredictionBatch(
                ts_us=np.full(n, epoch_us(datetime.now(UTC))),
                request_ids=["r"] * n,
                target="eta",
                model="eta-alpha",
                version="1",
                cities=list(trips["city"]),
                fallbacks=[None] * n,
                degraded=np.zeros(n, dtype=bool),
                features={"distance_km": np.full(n, 4.0)},
                predictions=trips["duration_s"].to_numpy() + prediction,
                trip_ids=list(trips["trip_id"]) if trip_ids else [None] * n,
                pickup_s=(trips["pickup_ts"].astype("int64") // 10**9).to_numpy(),
                pickup_zones=list(trips["pickup_zone"]),
                dropoff_zones=list(trips["dropoff_zone"]),
            )
        ],
    )


def test_run_labels_stores_each_day_once_and_flags_from_the_stored_history(small_settings: Settings) -> None:
    s = small_settings.model_copy(update={"accuracy_min_trips": 10, "accuracy_factor": 1.5})
    today = pd.Timestamp.now(tz="UTC").floor("D")
    day1 = _trips(40, start=today - pd.Timedelta(days=2), step_s=300)
    day2 = _trips(40, start=today - pd.Timedelta(days=1), step_s=300).assign(trip_id=lambda d: "b" + d["trip_id"])
    write_trips(s.trips_dir, pd.concat([day1, day2], ignore_index=True))
    _log(s.predictions_dir, day1, prediction=170.0, trip_ids=True)  # 1.7x the test MAE of 100
    _log(s.predictions_dir, day2, prediction=-180.0, trip_ids=False)
    since = datetime.now(UTC) - timedelta(days=3)
    first = run_labels(s, ["alpha"], ["eta"], since, client=_Registry())
    assert (first.by_trip_id, first.by_time, first.unmatched) == (40, 40, 0)
    assert [(d.trips, d.mae, d.ratio) for d in first.days] == [(40, 170.0, 1.7), (40, 180.0, 1.8)]
    assert [(f.city, f.target) for f in first.flagged] == [("alpha", "eta")]

    again = run_labels(s, ["alpha"], ["eta"], since, client=_Registry())  # a rerun replaces, never adds
    from monitoring import history

    assert len(history.read_accuracy(s.metadata_db)) == 2 and again.flagged == first.flagged
    assert run_labels(s, ["alpha"], ["price"], since, client=_Registry()).flagged == []
    # A later window without traffic does not judge the stored bad days again (no retrain asked for forever).
    later = run_labels(s, ["alpha"], ["eta"], datetime.now(UTC) + timedelta(hours=1), client=_Registry())
    assert later.flagged == [] and len(later.history) == 2


def test_run_labels_holds_a_chunk_of_cities_trips_at_a_time(
    small_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join reads a chunk of cities' trips at a time (all the cities' week at once was 1.7 GB at 1,000 cities),
    and the days, counts and flags are those of each city's own trips."""
    import monitoring.accuracy as accuracy

    s = small_settings.model_copy(update={"accuracy_min_trips": 10, "accuracy_factor": 1.5})
    today = pd.Timestamp.now(tz="UTC").floor("D")
    alpha = _trips(30, start=today - pd.Timedelta(days=1), step_s=300)
    beta = _trips(20, city="beta", start=today - pd.Timedelta(days=1), step_s=300)
    write_trips(s.trips_dir, pd.concat([alpha, beta], ignore_index=True))
    _log(s.predictions_dir, alpha, prediction=170.0, trip_ids=True)
    _log(s.predictions_dir, beta, prediction=-50.0, trip_ids=False)
    reads: list[list[str]] = []
    real = accuracy.read_trips

    def spy(trips_dir: Path, cities: list[str], **kw: Any) -> pd.DataFrame:
        reads.append(list(cities))
        return real(trips_dir, cities, **kw)

    monkeypatch.setattr(accuracy, "read_trips", spy)
    cities, since = ["alpha", "beta", "gamma"], datetime.now(UTC) - timedelta(days=3)
    run = run_labels(s, cities, ["eta"], since, client=_Registry(), chunk_cities=1)
    assert reads == [["alpha"], ["beta"]]  # gamma logged nothing: no trips read
    assert (run.predictions, run.by_trip_id, run.by_time) == (50, 30, 20)
    assert [(d.city, d.trips, d.mae) for d in run.days] == [("alpha", 30, 170.0), ("beta", 20, 50.0)]
    assert [f.city for f in run.flagged] == []  # one bad day of alpha's: not two yet
    again = run_labels(s, cities, ["eta"], since, client=_Registry(), chunk_cities=2)
    assert reads[2:] == [["alpha", "beta"]] and again.days == run.days


@pytest.mark.integration
def test_realized_accuracy_is_a_postgres_table_when_configured() -> None:
    from monitoring import history
    from tests.conftest import postgres_schema

    with postgres_schema() as url:
        history.record_accuracy(url, [_day(2, 1.8), _day(3, 1.2)])
        history.record_accuracy(url, [_day(3, 2.0)])  # the day measured again
        assert [(d.day.day, d.mae) for d in history.read_accuracy(url, ["alpha"])] == [(2, 180.0), (3, 200.0)]


def test_each_day_is_read_against_the_test_mae_of_its_kind_of_day() -> None:
    """A test window of mostly weekend trips says little about a weekday's error: a weekday is compared with the
    test window's weekdays, a weekend day with its weekend days, and with the overall test MAE where the window
    had too few trips of that kind (or for versions registered before the split was kept)."""
    from monitoring.accuracy import ReferenceMae, realized_days

    monday, saturday = date(2026, 11, 23), date(2026, 11, 28)
    matched = pd.DataFrame(
        {
            "city": "beta",
            "target": "eta",
            "model": "eta-beta",
            "version": "1",
            "day": [monday] * 3 + [saturday] * 3,
            "prediction": [100.0] * 6,
            "actual": [250.0] * 3 + [160.0] * 3,
        }
    )
    split = ReferenceMae(overall=60.0, weekday=120.0, weekend=50.0)
    days = {d.day: d for d in realized_days(matched, {("eta-beta", "1", "beta"): split})}
    assert days[monday].ratio == pytest.approx(150 / 120) and days[saturday].ratio == pytest.approx(60 / 50)
    old = {d.day: d for d in realized_days(matched, {("eta-beta", "1", "beta"): ReferenceMae(overall=60.0)})}
    assert old[monday].ratio == pytest.approx(150 / 60)
    unknown = realized_days(matched, {})
    assert all(d.test_mae is None and d.ratio is None for d in unknown)


def test_day_kind_test_mae_needs_enough_trips_of_the_kind() -> None:
    from training.registry import MIN_DAY_KIND_ROWS, day_kind_mae

    errors = np.arange(100, dtype=float)
    weekend = np.zeros(100, dtype=bool)
    weekend[: MIN_DAY_KIND_ROWS - 1] = True
    assert day_kind_mae(errors, weekend) == {"mae_weekday": pytest.approx(errors[~weekend].mean())}
    weekend[:MIN_DAY_KIND_ROWS] = True
    assert set(day_kind_mae(errors, weekend)) == {"mae_weekday", "mae_weekend"}
