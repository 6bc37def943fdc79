from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from cityml.catalog import load_catalog
from cityml.data.schema import TRIP_COLUMNS
from cityml.data.synth import Slowdown, central_zones, generate_city
from cityml.data.trips import read_trips, write_trips
from tests.conftest import SMALL_CATALOG

CATALOG = load_catalog(SMALL_CATALOG)


def test_same_seed_same_trips_other_seed_other_trips() -> None:
    city = CATALOG.get("alpha")
    a = generate_city(city, date(2026, 3, 1), 2, seed=1)
    b = generate_city(city, date(2026, 3, 1), 2, seed=1)
    c = generate_city(city, date(2026, 3, 1), 2, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a["duration_s"].equals(c["duration_s"])


def test_a_slowdown_slows_its_zones_from_its_day_and_changes_nothing_else() -> None:
    city = CATALOG.get("alpha")
    zones = central_zones(city)
    assert zones == {"z01", "z02", "z05", "z06", "z09", "z10"}  # 40% of the 4x4 grid, nearest the centre
    plain = generate_city(city, date(2026, 3, 1), 4, seed=1)
    slowed = generate_city(city, date(2026, 3, 1), 4, seed=1, slowdown=Slowdown(date(2026, 3, 3), zones, 0.7))
    assert len(plain) == len(slowed) and (plain["trip_id"] == slowed["trip_id"]).all()
    day = plain["trip_id"].str[6:14]
    touched = plain["pickup_zone"].isin(zones) | plain["dropoff_zone"].isin(zones)
    before = day < "20260303"
    pd.testing.assert_frame_equal(plain[before | ~touched], slowed[before | ~touched])
    ratio = (slowed["duration_s"] / plain["duration_s"])[~before & touched]
    assert ratio.median() == pytest.approx(1 / 0.7, rel=0.1) and (ratio >= 1).all()


def test_trips_are_canonical_and_plausible() -> None:
    df = generate_city(CATALOG.get("beta-city"), date(2026, 3, 1), 3, seed=1)
    assert set(TRIP_COLUMNS) <= set(df.columns)
    assert df["duration_s"].between(60, 4 * 3600).all()
    assert (df["dropoff_ts"] > df["pickup_ts"]).all()
    assert (df["fare"] > 0).all() and (df["currency"] == "IDR").all()
    assert df["trip_id"].is_unique


def test_cities_differ_in_speed() -> None:
    speeds = {}
    for slug in ("alpha", "beta-city"):
        df = generate_city(CATALOG.get(slug), date(2026, 3, 2), 3, seed=1)
        speeds[slug] = (df["distance_km"] / (df["duration_s"] / 3600)).median()
    assert speeds["alpha"] > speeds["beta-city"] * 1.2


def test_write_read_roundtrip_and_window(tmp_path: Path) -> None:
    df = generate_city(CATALOG.get("alpha"), date(2026, 3, 1), 3, seed=1)
    files = write_trips(tmp_path, df)
    assert len(files) >= 3
    back = read_trips(tmp_path, ["alpha"])
    assert len(back) == len(df)
    window = read_trips(
        tmp_path, ["alpha"], start=pd.Timestamp("2026-03-02", tz="UTC"), end=pd.Timestamp("2026-03-03", tz="UTC")
    )
    assert len(window) > 0
    assert window["pickup_ts"].min() >= pd.Timestamp("2026-03-02", tz="UTC")
    assert window["pickup_ts"].max() < pd.Timestamp("2026-03-03", tz="UTC")


def test_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    df = generate_city(CATALOG.get("alpha"), date(2026, 3, 1), 1, seed=1)
    write_trips(tmp_path, df)
    before = read_trips(tmp_path, ["alpha"])

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("cityml.data.trips.pq.write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_trips(tmp_path, df.assign(fare=0.0))
    pd.testing.assert_frame_equal(read_trips(tmp_path, ["alpha"]), before)
    assert not list(tmp_path.rglob("*.tmp"))
