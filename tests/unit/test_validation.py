"""Trip validation: each rule catches its own kind of bad row, wrong tables are refused whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cityml.catalog import load_catalog
from cityml.data.schema import TRIP_COLUMNS
from cityml.data.trips import read_trips, write_trips
from cityml.data.validation import REASONS, TripSchemaError, validate_trips, write_quarantine
from tests.conftest import FIXTURES

CITY = load_catalog(FIXTURES / "cities_real.yaml").get("nyc")
T0 = pd.Timestamp("2024-01-10 13:00", tz="UTC")
NOW = pd.Timestamp("2024-06-01", tz="UTC")


def trip(i: int, **changes: Any) -> dict[str, Any]:
    """A good trip (10 minutes, 3 km, zones and a point inside the bbox), with some fields changed."""
    row = {
        "city": "nyc",
        "trip_id": f"t{i}",
        "pickup_ts": T0 + pd.Timedelta(hours=i),
        "dropoff_ts": T0 + pd.Timedelta(hours=i, minutes=10),
        "pickup_zone": "141",
        "dropoff_zone": "236",
        "pickup_lat": 40.76,
        "pickup_lon": -73.96,
        "dropoff_lat": np.nan,
        "dropoff_lon": np.nan,
        "distance_km": 3.0,
        "duration_s": 600.0,
        "fare": 15.0,
        "currency": "USD",
    }
    row.update(changes)
    return row


def frame(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=TRIP_COLUMNS)


BAD_ROWS: dict[str, dict[str, Any]] = {
    "city": {"city": "chicago"},
    "trip_id": {"trip_id": None},
    "pickup_ts": {"pickup_ts": pd.NaT, "duration_s": 600.0},
    "out_of_period": {"pickup_ts": T0 - pd.Timedelta(days=40), "dropoff_ts": T0 - pd.Timedelta(days=40, minutes=-10)},
    "dropoff_ts": {"dropoff_ts": pd.NaT},
    "duration_s": {"duration_s": 59.0, "distance_km": 0.5},
    "distance_km": {"distance_km": 0.0},
    "speed": {"distance_km": 30.0, "duration_s": 600.0},  # 180 km/h
    "fare": {"fare": -0.01},
    "currency": {"currency": "EUR"},
    "outside_bbox": {"dropoff_lat": 41.0, "dropoff_lon": -74.0},
    "no_location": {"dropoff_zone": None},
}


@pytest.mark.parametrize("reason", list(BAD_ROWS))
def test_each_rule_catches_its_row_and_only_it(reason: str) -> None:
    df = frame(trip(0), trip(1, **BAD_ROWS[reason]), trip(2))
    result = validate_trips(df, CITY, "x.csv", period=("2024-01-01", "2024-02-01"), now=NOW)
    assert result.counts == {reason: 1}
    assert result.quarantine["reason"].tolist() == [reason]
    assert result.quarantine["trip_id"].tolist() == [df["trip_id"][1]]
    assert (result.rows_read, result.rows_kept, result.rows_quarantined) == (3, 2, 1)
    assert result.clean["trip_id"].tolist() == [df["trip_id"][0], "t2"]


def test_bounds_of_duration_speed_and_time() -> None:
    df = frame(
        trip(0, duration_s=60.0, dropoff_ts=T0 + pd.Timedelta(seconds=60), distance_km=0.5),  # 30 km/h
        trip(1, duration_s=4 * 3600.0, distance_km=10.0),  # the longest allowed, 2.5 km/h
        trip(2, duration_s=4 * 3600.0 + 1, distance_km=10.0),
        trip(3, distance_km=0.1, duration_s=600.0),  # 0.6 km/h
        trip(4, pickup_ts=pd.Timestamp("2008-12-31 23:59", tz="UTC"), dropoff_ts=pd.Timestamp("2009-01-01", tz="UTC")),
        trip(5, pickup_ts=NOW + pd.Timedelta(minutes=1), dropoff_ts=NOW + pd.Timedelta(minutes=11)),
        trip(6, distance_km=np.nan),  # distance unknown: the models need it
        trip(7, trip_id="t0"),
    )
    result = validate_trips(df, CITY, "x.csv", now=NOW)
    assert dict(zip(result.quarantine["trip_id"], result.quarantine["reason"], strict=True)) == {
        "t2": "duration_s",
        "t3": "speed",
        "t4": "pickup_ts",
        "t5": "pickup_ts",
        "t6": "distance_km",
        "t0": "duplicate_trip_id",
    }
    assert result.clean["trip_id"].tolist() == ["t0", "t1"]


def test_a_row_failing_several_checks_is_one_row_with_joined_reasons() -> None:
    bad = trip(1, dropoff_ts=T0, duration_s=-600.0, fare=-5.0, pickup_zone=None, pickup_lat=np.nan)
    result = validate_trips(frame(trip(0), bad), CITY, "x.csv", now=NOW)
    assert len(result.quarantine) == 1
    assert result.quarantine["reason"][0] == "dropoff_before_pickup;duration_s;fare;no_location"
    assert result.counts == {"dropoff_before_pickup": 1, "duration_s": 1, "fare": 1, "no_location": 1}
    assert list(result.counts) == [r for r in REASONS if r in result.counts]


def test_missing_fare_and_either_zone_or_point_are_allowed() -> None:
    df = frame(
        trip(0, fare=np.nan, currency=None),
        trip(1, pickup_zone=None),  # a point, no zone
        trip(2, pickup_lat=np.nan, pickup_lon=np.nan),  # a zone, no point
        trip(3, pickup_zone="  ", pickup_lat=np.nan),  # blank zone and half a point: nowhere
    )
    result = validate_trips(df, CITY, "x.csv", now=NOW)
    assert result.clean["trip_id"].tolist() == ["t0", "t1", "t2"]
    assert result.quarantine["reason"].tolist() == ["no_location"]
    assert result.clean["fare"].isna().tolist() == [True, False, False]


def test_clean_rows_are_canonical_and_can_be_stored(tmp_path: Path) -> None:
    naive = frame(trip(0), trip(1)).assign(pickup_ts=lambda d: d["pickup_ts"].dt.tz_localize(None))
    result = validate_trips(naive, CITY, "x.csv", now=NOW)
    assert list(result.clean.columns) == TRIP_COLUMNS
    assert str(result.clean["pickup_ts"].dtype) == "datetime64[ns, UTC]"  # naive taken as UTC
    write_trips(tmp_path, result.clean)
    assert read_trips(tmp_path, ["nyc"])["trip_id"].tolist() == ["t0", "t1"]


def test_missing_columns_refuse_the_table_naming_source_and_columns() -> None:
    df = frame(trip(0)).drop(columns=["fare", "dropoff_zone"])
    with pytest.raises(TripSchemaError, match=r"trips_2024\.csv: missing columns .*dropoff_zone.*fare"):
        validate_trips(df, CITY, "trips_2024.csv", now=NOW)


def test_uncastable_columns_refuse_the_table() -> None:
    df = frame(trip(0), trip(1)).astype({"pickup_ts": object, "distance_km": object})
    df.loc[1, "pickup_ts"] = "yesterday-ish"
    df.loc[0, "distance_km"] = "far"
    with pytest.raises(TripSchemaError) as err:
        validate_trips(df, CITY, "odd.csv", now=NOW)
    message = str(err.value)
    assert message.startswith("odd.csv: ")
    assert "column pickup_ts does not cast" in message and "'yesterday-ish'" in message
    assert "column distance_km does not cast" in message


def test_write_quarantine_is_parquet_under_the_city_and_replaced_on_reimport(tmp_path: Path) -> None:
    result = validate_trips(frame(trip(0), trip(1, fare=-1.0)), CITY, "in/yellow.csv", now=NOW)
    path = write_quarantine(tmp_path, "nyc", "yellow.csv", result.quarantine)
    assert path == tmp_path / "city=nyc" / "yellow.csv.parquet"
    stored = pq.read_table(path).to_pandas()
    assert stored[["trip_id", "source", "reason"]].values.tolist() == [["t1", "in/yellow.csv", "fare"]]
    assert [p.name for p in path.parent.iterdir()] == ["yellow.csv.parquet"]  # no temporary left behind

    clean_again = validate_trips(frame(trip(0)), CITY, "in/yellow.csv", now=NOW)
    assert write_quarantine(tmp_path, "nyc", "yellow.csv", clean_again.quarantine) is None
    assert not path.exists()
