"""The feature tables never use a trip that ends after the feature's timestamp."""

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from cityml.catalog import load_catalog
from cityml.data.synth import generate_city
from cityml.features.feature_tables import city_hour, zone_day, zone_hour, zone_pair_day
from tests.conftest import SMALL_CATALOG


def _trip(pickup: str, dropoff: str, zone: str = "z01", km: float = 5.0) -> dict[str, object]:
    p, d = pd.Timestamp(pickup, tz="UTC"), pd.Timestamp(dropoff, tz="UTC")
    return {
        "city": "alpha",
        "pickup_zone": zone,
        "pickup_ts": p,
        "dropoff_ts": d,
        "distance_km": km,
        "duration_s": (d - p).total_seconds(),
    }


def test_trip_counts_at_the_end_of_the_hour_it_ended_in() -> None:
    trips = pd.DataFrame([_trip("2026-03-01 09:50", "2026-03-01 10:20"), _trip("2026-03-01 10:05", "2026-03-01 10:35")])
    out = zone_hour(trips)
    assert out["event_timestamp"].tolist() == [pd.Timestamp("2026-03-01 11:00", tz="UTC")]
    row = out.iloc[0]
    assert row["zone_trips_1h"] == 2
    assert row["zone_mean_duration_s"] == pytest.approx(1800)
    assert row["zone_mean_speed_kmh"] == pytest.approx(10.0)
    assert row["zone_key"] == "alpha:z01"


def test_no_feature_row_uses_a_trip_that_ends_after_it() -> None:
    trips = generate_city(load_catalog(SMALL_CATALOG).get("alpha"), date(2026, 3, 1), 3, seed=3)
    feats = zone_hour(trips)
    # Recount every row from the trips that ended strictly before its timestamp, in its hour.
    for _, row in feats.sample(50, random_state=0).iterrows():
        zone = row["zone_key"].split(":", 1)[1]
        t = row["event_timestamp"]
        used = trips[
            (trips["pickup_zone"] == zone)
            & (trips["dropoff_ts"] < t)
            & (trips["dropoff_ts"] >= t - pd.Timedelta(hours=1))
        ]
        assert len(used) == row["zone_trips_1h"]
        assert (used["dropoff_ts"] < t).all()


def test_city_hour_fills_quiet_hours_and_compares_with_the_same_weekday_hour() -> None:
    trips = generate_city(load_catalog(SMALL_CATALOG).get("alpha"), date(2026, 3, 1), 31, seed=3)
    out = city_hour(trips)
    stamps = out["event_timestamp"]
    assert (stamps.diff().dropna() == pd.Timedelta(hours=1)).all()
    assert out["city_trips_1h"].sum() == len(trips)
    early = out[stamps < stamps.min() + pd.Timedelta(days=28)]
    late = out[stamps >= stamps.min() + pd.Timedelta(days=28)]
    assert early["city_demand_ratio_4w"].isna().all()
    assert late["city_demand_ratio_4w"].notna().mean() > 0.9
    row = late.iloc[12]
    weeks = [
        out[stamps == row["event_timestamp"] - pd.Timedelta(days=7 * w)]["city_trips_1h"].iloc[0] for w in (1, 2, 3, 4)
    ]
    assert row["city_demand_ratio_4w"] == pytest.approx(row["city_trips_1h"] / (sum(weeks) / 4))


def _priced(pickup: str, dropoff: str, zone: str, to: str, km: float, fare: float) -> dict[str, object]:
    return {**_trip(pickup, dropoff, zone, km), "dropoff_zone": to, "fare": fare}


def test_pair_history_is_stamped_at_the_end_of_the_day_over_the_28_days_before() -> None:
    trips = pd.DataFrame(
        [
            _priced("2026-03-01 08:00", "2026-03-01 08:10", "z01", "z02", 5.0, 10.0),  # 600 s, 30 km/h, 2/km
            _priced("2026-03-01 09:00", "2026-03-01 09:20", "z01", "z02", 5.0, 20.0),  # 1200 s, 15 km/h, 4/km
            _priced("2026-03-01 23:30", "2026-03-01 23:59", "z01", "z02", 0.2, 5.0),  # short: no fare per km
            _priced("2026-03-03 10:00", "2026-03-03 10:30", "z01", "z02", 5.0, 30.0),  # 1800 s
            _priced("2026-03-03 10:00", "2026-03-03 10:30", "z02", "z01", 5.0, 30.0),  # the way back: another pair
            _priced("2026-04-05 10:00", "2026-04-05 10:15", "z01", "z02", 5.0, 10.0),  # 33 days later: alone
        ]
    )
    out = zone_pair_day(trips).set_index(["zone_pair_key", "event_timestamp"])
    day = pd.Timestamp("2026-03-02", tz="UTC")
    first = out.loc[("alpha:z01>z02", day)]
    assert first["pair_trips_28d"] == 3
    assert first["pair_median_duration_s"] == pytest.approx(1200)
    assert first["pair_median_fare_per_km"] == pytest.approx(3.0)  # the 0.2 km trip has none
    assert out.loc[("alpha:z01>z02", pd.Timestamp("2026-03-04", tz="UTC"))]["pair_trips_28d"] == 4
    assert out.loc[("alpha:z02>z01", pd.Timestamp("2026-03-04", tz="UTC"))]["pair_trips_28d"] == 1
    late = out.loc[("alpha:z01>z02", pd.Timestamp("2026-04-06", tz="UTC"))]
    assert late["pair_trips_28d"] == 1 and late["pair_median_duration_s"] == pytest.approx(900)
    assert len(out) == 4  # a row per pair and day with trips, none for quiet days


def test_no_history_row_uses_a_trip_that_ends_after_it() -> None:
    trips = generate_city(load_catalog(SMALL_CATALOG).get("alpha"), date(2026, 3, 1), 35, seed=3)
    feats = zone_day(trips)
    # Recount sampled rows from the trips: the zone's trips ended in the 28 days up to its last trip of the day.
    for _, row in feats.sample(40, random_state=0).iterrows():
        zone = row["zone_key"].split(":", 1)[1]
        t = row["event_timestamp"]
        mine = trips[(trips["pickup_zone"] == zone) & (trips["dropoff_ts"] < t)]
        last = mine["dropoff_ts"].max()
        assert last >= t - pd.Timedelta(days=1)  # the row is for a day the zone had a trip
        used = mine[mine["dropoff_ts"] >= last - pd.Timedelta(days=28)]
        assert row["zone_trips_28d"] == len(used)
        assert row["zone_median_duration_s"] == pytest.approx(used["duration_s"].median())


def test_tables_are_sorted_by_key_in_small_row_groups(tmp_path: Path) -> None:
    """What lets a join of a few cities skip the others' rows (``feast_asof.key_ranges``): keys in order, and
    row groups small enough that one holds a few cities."""
    import pyarrow.parquet as pq

    from cityml.data.trips import write_trips
    from cityml.features.feature_tables import ROW_GROUP_ROWS, build_feature_tables

    catalog = load_catalog(SMALL_CATALOG)
    for i, city in enumerate(catalog.cities[:3]):
        write_trips(tmp_path / "trips", generate_city(city, date(2026, 3, 1), 2, seed=i))
    rows = build_feature_tables(tmp_path / "trips", tmp_path / "features")
    for name, n in rows.items():
        meta = pq.ParquetFile(tmp_path / "features" / name).metadata
        assert meta.num_rows == n and all(
            meta.row_group(g).num_rows <= ROW_GROUP_ROWS for g in range(meta.num_row_groups)
        )
        keys = pd.read_parquet(tmp_path / "features" / name).iloc[:, 0]
        assert keys.is_monotonic_increasing, name


def test_a_build_a_city_at_a_time_writes_the_same_tables_and_holds_one_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every table is computed per city, so building ``chunk_cities`` cities at a time (the build's memory: 9 GB
    for all of 1,000 cities' trips at once) writes the rows one build of all would, in key order. Slugs where one
    is the other's prefix (``c1``, ``c1-2``, ``c10``) sort differently as cities and as keys (``c1:`` last)."""
    import pyarrow.parquet as pq

    import cityml.features.feature_tables as ft
    from cityml.data.trips import write_trips

    catalog = load_catalog(SMALL_CATALOG)
    for i, slug in enumerate(["c1", "c1-2", "b0", "c10"]):
        city = catalog.cities[i % len(catalog.cities)].model_copy(update={"slug": slug})
        write_trips(tmp_path / "trips", generate_city(city, date(2026, 3, 1), 2, seed=i).assign(city=slug))
    whole = ft.build_feature_tables(tmp_path / "trips", tmp_path / "whole", chunk_cities=50)
    reads: list[list[str]] = []
    real = ft.read_trips

    def spy(trips_dir: Path, cities: list[str]) -> pd.DataFrame:
        reads.append(list(cities))
        return real(trips_dir, cities)

    monkeypatch.setattr(ft, "read_trips", spy)
    chunked = ft.build_feature_tables(tmp_path / "trips", tmp_path / "chunked", chunk_cities=1)
    assert reads == [["b0"], ["c1-2"], ["c10"], ["c1"]]  # one city each, in key order ("c10:" < "c1:")
    assert chunked == whole and all(n > 0 for n in whole.values())
    for name in whole:
        a = pd.read_parquet(tmp_path / "whole" / name).drop(columns="created")
        b = pd.read_parquet(tmp_path / "chunked" / name).drop(columns="created")
        key = a.columns[0]
        pd.testing.assert_frame_equal(
            a.sort_values([key, "event_timestamp"], ignore_index=True),
            b.sort_values([key, "event_timestamp"], ignore_index=True),
        )
        if name != ft.CITY_HOUR_FILE:  # keyed <city>:...: sorted across chunks
            assert b[key].is_monotonic_increasing, name
        assert pq.ParquetFile(tmp_path / "chunked" / name).metadata.num_rows == whole[name]


def test_a_build_that_fails_leaves_the_tables_it_would_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cityml.features.feature_tables as ft
    from cityml.data.trips import write_trips

    catalog = load_catalog(SMALL_CATALOG)
    for i, city in enumerate(catalog.cities[:2]):
        write_trips(tmp_path / "trips", generate_city(city, date(2026, 3, 1), 2, seed=i))
    features = tmp_path / "features"
    ft.build_feature_tables(tmp_path / "trips", features)
    before = {p.name: p.read_bytes() for p in features.iterdir()}
    calls = []

    def fails_on_the_second_city(trips: pd.DataFrame) -> pd.DataFrame:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return zone_day(trips)

    monkeypatch.setitem(ft.BUILDERS, ft.ZONE_DAY_FILE, fails_on_the_second_city)
    with pytest.raises(OSError, match="disk full"):
        ft.build_feature_tables(tmp_path / "trips", features, chunk_cities=1)
    assert {p.name: p.read_bytes() for p in features.iterdir()} == before  # no table replaced, no temporary left
    with pytest.raises(FileNotFoundError, match="no trips under"):
        ft.build_feature_tables(tmp_path / "nothing", features)
