import numpy as np
import pandas as pd
import pytest

from cityml.catalog import CityContext
from cityml.features.request_features import (
    LOOP_ROWS,
    REQUEST_FEATURES,
    holiday_flags,
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


def test_is_holiday_reads_the_local_date_in_the_citys_country_and_is_missing_without_one() -> None:
    # 2026-07-04 (a Saturday) is Independence Day in the US, not in Portugal; 2026-06-10 is Portugal Day.
    # 03:30 UTC on 2026-07-05 is still the 4th in New York (UTC-4).
    contexts = {"ny": CityContext("America/New_York", "US"), "pt": CityContext("Europe/Lisbon", "PT"), "x": "UTC"}
    df = pd.DataFrame(
        {
            "city": ["ny", "ny", "ny", "pt", "pt", "x"],
            "pickup_ts": pd.to_datetime(
                [
                    "2026-07-04T12:00Z",
                    "2026-07-05T03:30Z",
                    "2026-07-05T05:00Z",
                    "2026-07-04T12:00Z",
                    "2026-06-10T12:00Z",
                    "2026-07-04T12:00Z",
                ]
            ),
            "distance_km": [1.0] * 6,
        }
    )
    flags = request_features(df, contexts)["is_holiday"].to_numpy()
    np.testing.assert_array_equal(flags[:5], [1.0, 1.0, 0.0, 0.0, 1.0])
    assert np.isnan(flags[5])  # a city without a holiday calendar: unknown, not "no holiday"


def test_the_area_pair_joins_both_zones_areas_and_is_missing_where_either_has_none() -> None:
    contexts = {"ny": CityContext("America/New_York", zone_areas={"132": "Queens", "161": "Manhattan"}), "x": "UTC"}
    df = pd.DataFrame(
        {
            "city": ["ny", "ny", "ny", "ny", "x"],
            "pickup_ts": pd.to_datetime(["2026-07-04T12:00Z"] * 5),
            "distance_km": [1.0] * 5,
            "pickup_zone": ["132", "161", "132", None, "132"],
            "dropoff_zone": ["161", "161", "999", "161", "161"],
        }
    )
    out = request_features(df, contexts)["area_pair"].tolist()
    assert out == ["Queens>Manhattan", "Manhattan>Manhattan", None, None, None]


def test_holiday_flags_one_by_one_equal_the_vectorized_pass() -> None:
    seconds = np.arange(1_546_300_800, 1_609_459_200, 3_601 * 7, dtype="int64")  # 2019-2020, every ~7 h
    context = CityContext("America/New_York", "US-NY")
    whole = holiday_flags(seconds, context)
    assert len(seconds) > LOOP_ROWS and 0 < whole.sum() < len(seconds)
    by_request = np.concatenate([holiday_flags(seconds[i : i + 8], context) for i in range(0, len(seconds), 8)])
    np.testing.assert_array_equal(by_request, whole)


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
