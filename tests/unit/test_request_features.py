import numpy as np
import pandas as pd
import pytest

from cityml.features.request_features import (
    LOOP_ROWS,
    REQUEST_FEATURES,
    local_calendar,
    request_features,
)
from cityml.geo import bearing_deg, haversine_km

TZ = {"alpha": "Europe/Lisbon", "beta": "Asia/Jakarta"}


def test_haversine_lisbon_to_porto_is_about_274_km() -> None:
    d = haversine_km(np.array([38.7223]), np.array([-9.1393]), np.array([41.1579]), np.array([-8.6291]))
    assert d[0] == pytest.approx(274, abs=3)


def test_bearing_points_north_and_east() -> None:
    assert bearing_deg(np.array([0.0]), np.array([0.0]), np.array([1.0]), np.array([0.0]))[0] == pytest.approx(0)
    assert bearing_deg(np.array([0.0]), np.array([0.0]), np.array([0.0]), np.array([1.0]))[0] == pytest.approx(90)


def test_local_hour_and_weekday_follow_each_city_timezone() -> None:
    df = pd.DataFrame(
        {
            "city": ["alpha", "alpha", "beta"],
            # 2026-07-04 is a Saturday; Lisbon is UTC+1 in summer, UTC+0 in winter; Jakarta UTC+7.
            "pickup_ts": pd.to_datetime(["2026-07-03T23:30Z", "2026-01-09T23:30Z", "2026-07-03T20:00Z"]),
            "pickup_lat": [38.7, 38.7, -6.2],
            "pickup_lon": [-9.1, -9.1, 106.8],
            "dropoff_lat": [38.8, 38.8, -6.1],
            "dropoff_lon": [-9.1, -9.1, 106.8],
        }
    )
    out = request_features(df, TZ)
    assert list(out.columns) == list(REQUEST_FEATURES)
    assert out["local_hour"].tolist() == [0, 23, 3]
    assert out["local_weekday"].tolist() == [5, 4, 5]
    assert out["is_weekend"].tolist() == [1, 0, 1]


def test_distance_falls_back_to_given_distance_without_coordinates() -> None:
    df = pd.DataFrame({"city": ["alpha"], "pickup_ts": [pd.Timestamp("2026-07-03T10:00Z")], "distance_km": [4.2]})
    out = request_features(df, TZ)
    assert out["distance_km"].iloc[0] == pytest.approx(4.2)
    assert np.isnan(out["bearing_deg"].iloc[0])


def test_unknown_city_is_named() -> None:
    df = pd.DataFrame({"city": ["gotham"], "pickup_ts": [pd.Timestamp("2026-07-03T10:00Z")], "distance_km": [1.0]})
    with pytest.raises(KeyError, match="gotham"):
        request_features(df, TZ)


@pytest.mark.parametrize("tz", ["Europe/Lisbon", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])
def test_local_calendar_one_by_one_equals_the_vectorized_pass_around_dst_changes(tz: str) -> None:
    """A request (a few rows, datetime) and a training set (pandas) must see the same local hour."""
    rng = np.random.default_rng(3)
    # Every 20 minutes across 2 years (4 DST changes where the zone has them), plus random seconds.
    grid = np.arange(1_700_000_000, 1_700_000_000 + 2 * 365 * 86400, 1200, dtype="int64")
    seconds = np.concatenate([grid, rng.integers(0, 2_000_000_000, 5000)])
    many_hour, many_day = local_calendar(seconds, tz)  # > LOOP_ROWS: pandas
    assert len(seconds) > LOOP_ROWS
    for chunk in np.array_split(np.arange(len(seconds)), len(seconds) // LOOP_ROWS + 1):
        hour, day = local_calendar(seconds[chunk], tz)  # <= LOOP_ROWS: datetime one by one
        np.testing.assert_array_equal(hour, many_hour[chunk])
        np.testing.assert_array_equal(day, many_day[chunk])
