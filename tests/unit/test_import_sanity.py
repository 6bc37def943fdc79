"""What an import lets in: plausible fares and zones, each trip once, malformed lines set aside, whole batches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cityml.catalog import CatalogError, load_catalog, read_zone_table
from cityml.data.importers import TripFileError, import_files
from cityml.data.trips import VERSIONS, read_trips, trip_files, write_trips
from cityml.settings import Settings
from tests.conftest import FIXTURES

YELLOW = FIXTURES / "trips" / "yellow_tripdata_2024-01.csv"
GOOD_ROWS = 4  # of the fixture's 12 rows


@pytest.fixture
def settings(small_settings: Settings) -> Settings:
    return Settings(home=small_settings.home, catalog_path=FIXTURES / "cities_real.yaml", reload_interval_s=0)


def yellow() -> pd.DataFrame:
    return pd.read_csv(YELLOW)


def test_the_same_trips_under_any_name_are_stored_once(settings: Settings, tmp_path: Path) -> None:
    first = import_files(settings, "nyc-tlc", [YELLOW], "nyc")
    assert first["total"]["rows_kept"] == GOOD_ROWS
    before = read_trips(settings.trips_dir, ["nyc"])
    for i in range(3):  # copies under other names, rows shuffled: the trips' content makes their ids
        copy = tmp_path / f"copy{i}_yellow_tripdata_2024-01.csv"
        yellow().sample(frac=1.0, random_state=i).to_csv(copy, index=False)
        import_files(settings, "nyc-tlc", [copy], "nyc")
    after = read_trips(settings.trips_dir, ["nyc"])
    assert len(after) == GOOD_ROWS
    pd.testing.assert_frame_equal(
        before.sort_values("trip_id", ignore_index=True), after.sort_values("trip_id", ignore_index=True)
    )


def test_a_changed_fare_is_another_trip_but_a_reformatted_number_is_not(settings: Settings, tmp_path: Path) -> None:
    import_files(settings, "nyc-tlc", [YELLOW], "nyc")
    reformatted = tmp_path / "b_yellow_tripdata_2024-01.csv"
    raw = yellow()
    raw["trip_distance"] = raw["trip_distance"].map(lambda x: f"{x:.4f}")  # "2.5000" is 2.5
    raw.to_csv(reformatted, index=False)
    import_files(settings, "nyc-tlc", [reformatted], "nyc")
    assert len(read_trips(settings.trips_dir, ["nyc"])) == GOOD_ROWS
    changed = tmp_path / "c_yellow_tripdata_2024-01.csv"
    yellow().assign(fare_amount=lambda d: d["fare_amount"] + 0.5).to_csv(changed, index=False)
    import_files(settings, "nyc-tlc", [changed], "nyc")
    assert len(read_trips(settings.trips_dir, ["nyc"])) == 2 * GOOD_ROWS


def test_nonsense_values_are_quarantined_with_their_reason(settings: Settings, tmp_path: Path) -> None:
    raw = yellow()
    good = raw.iloc[[0]]
    junk = pd.concat([good] * 7, ignore_index=True)
    junk["fare_amount"] = [1e8, 1e308, float("inf"), 15.6 * 10, 15.6, 15.6, 15.6]
    junk.loc[4, "trip_distance"] = np.nan  # no distance at all
    junk.loc[5, "PULocationID"] = 999  # no such TLC zone
    junk.loc[6, "DOLocationID"] = 0
    junk["tpep_pickup_datetime"] = [f"2024-01-10 08:0{i}:00" for i in range(7)]  # seven different trips
    junk["tpep_dropoff_datetime"] = [
        f"2024-01-10 08:1{5 + i % 5}:00" if i < 5 else f"2024-01-10 08:2{i}:00" for i in range(7)
    ]
    path = tmp_path / "junk_2024-01.csv"
    junk.to_csv(path, index=False)
    report = import_files(settings, "nyc-tlc", [path], "nyc")
    (file,) = report["files"]
    assert file["rows_kept"] == 0
    reasons = pd.read_parquet(file["quarantine_file"])["reason"].tolist()
    assert reasons[:4] == ["fare_band", "fare;fare_band", "fare", "fare_band"] or reasons[:4] == [
        "fare_band",
        "fare_band",
        "fare",
        "fare_band",
    ]
    assert reasons[4:] == ["distance_km", "unknown_zone", "unknown_zone"]
    assert not settings.trips_dir.exists() or read_trips(settings.trips_dir, ["nyc"]).empty


def test_a_fare_ten_times_the_meter_is_refused_and_a_surge_is_not(tmp_path: Path) -> None:
    from cityml.data.validation import validate_trips

    city = load_catalog(FIXTURES / "cities_real.yaml").get("nyc")
    t0 = pd.Timestamp("2024-01-10 13:00", tz="UTC")
    n = 200
    rng = np.random.default_rng(3)
    km = rng.uniform(1, 25, n)
    minutes = km / rng.uniform(10, 40, n) * 60
    meter = 2.5 + 1.553 * km + 0.5 * minutes
    fares = np.concatenate([meter * rng.uniform(0.6, 3.4, n), meter * 10])  # surge up to 3.4x, then poisoned
    df = pd.DataFrame(
        {
            "city": "nyc",
            "trip_id": [f"t{i}" for i in range(2 * n)],
            "pickup_ts": t0,
            "dropoff_ts": t0 + pd.to_timedelta(np.tile(minutes, 2) * 60, unit="s"),
            "pickup_zone": "141",
            "dropoff_zone": "236",
            "pickup_lat": np.nan,
            "pickup_lon": np.nan,
            "dropoff_lat": np.nan,
            "dropoff_lon": np.nan,
            "distance_km": np.tile(km, 2),
            "duration_s": np.tile(minutes, 2) * 60,
            "fare": fares,
            "currency": "USD",
        }
    )
    result = validate_trips(df, city, "x.csv", now=pd.Timestamp("2024-06-01", tz="UTC"))
    assert result.rows_kept == n
    assert result.counts == {"fare_band": n}


def test_a_malformed_line_is_quarantined_by_number_and_the_rest_kept(settings: Settings, tmp_path: Path) -> None:
    lines = YELLOW.read_text().splitlines()
    lines.insert(3, "2,2024-01-10 08:00:00,oops")  # line 4 of the file: 3 fields of 19
    lines.insert(6, lines[1] + ",extra,fields")  # line 7
    path = tmp_path / "yellow_tripdata_2024-01.csv"
    path.write_text("\n".join(lines) + "\n")
    report = import_files(settings, "nyc-tlc", [path], "nyc")
    (file,) = report["files"]
    assert (file["rows_read"], file["rows_kept"]) == (14, GOOD_ROWS)
    assert file["quarantined_by_reason"]["malformed_line"] == 2
    q = pd.read_parquet(file["quarantine_file"])
    bad = q[q["reason"] == "malformed_line"]
    assert bad["line"].tolist() == [4, 7]
    assert bad["raw"].iloc[0] == "2,2024-01-10 08:00:00,oops"


def test_a_file_that_is_mostly_malformed_is_refused(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "yellow_tripdata_2024-01.csv"
    lines = YELLOW.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], *(line.replace(",", ";") for line in lines[2:])]) + "\n")
    with pytest.raises(TripFileError, match=r"yellow_tripdata_2024-01\.csv: 11 of 12 lines do not parse"):
        import_files(settings, "nyc-tlc", [path], "nyc")


def test_a_compressed_csv_is_read_with_its_line_numbers(settings: Settings, tmp_path: Path) -> None:
    import gzip

    lines = YELLOW.read_text().splitlines()
    lines.insert(2, "1,2")
    path = tmp_path / "yellow_tripdata_2024-01.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (file,) = import_files(settings, "nyc-tlc", [path], "nyc")["files"]
    assert file["rows_kept"] == GOOD_ROWS
    assert pd.read_parquet(file["quarantine_file"]).query("reason == 'malformed_line'")["line"].tolist() == [3]


def test_zone_tables(tmp_path: Path) -> None:
    nyc = load_catalog(FIXTURES / "cities_real.yaml").get("nyc")
    assert nyc.grid_zones is not None and len(nyc.grid_zones) == 263 and {"1", "263"} <= nyc.grid_zones
    assert "264" not in nyc.grid_zones  # "unknown" in TLC data
    chicago = load_catalog(FIXTURES / "cities_real.yaml").get("chicago")
    assert chicago.grid_zones == frozenset(str(i) for i in range(1, 78))

    table = tmp_path / "z.csv"
    table.write_text("name,zone_id\na,1\nb,\n")
    with pytest.raises(CatalogError, match=r"z\.csv: line 3 has no zone id"):
        read_zone_table(table)
    table.write_text("zone_id\n1\n1\n")
    with pytest.raises(CatalogError, match=r"z\.csv: zone ids listed twice: 1"):
        read_zone_table(table)
    catalog = tmp_path / "cities.yaml"
    catalog.write_text("cities:\n  - {slug: x, timezone: UTC, currency: EUR, bbox: [0, 0, 1, 1], zones: nowhere.csv}\n")
    with pytest.raises(CatalogError, match=r"nowhere\.csv"):
        load_catalog(catalog)


def test_a_zone_tables_borough_column_gives_the_zone_areas(tmp_path: Path) -> None:
    nyc = load_catalog(FIXTURES / "cities_real.yaml").get("nyc")
    assert nyc.zone_areas is not None
    assert (nyc.zone_areas["132"], nyc.zone_areas["161"], nyc.zone_areas["1"]) == ("Queens", "Manhattan", "EWR")
    assert nyc.context.zone_areas is nyc.zone_areas
    assert load_catalog(FIXTURES / "cities_real.yaml").get("chicago").zone_areas is None  # no area column
    (tmp_path / "z.csv").write_text("zone_id,District\na,north\nb,\nc,south\n")
    catalog = tmp_path / "cities.yaml"
    catalog.write_text("cities:\n  - {slug: x, timezone: UTC, currency: EUR, bbox: [0, 0, 1, 1], zones: z.csv}\n")
    assert load_catalog(catalog).get("x").zone_areas == {"a": "north", "c": "south"}  # b has none
    catalog.write_text(
        "cities:\n  - {slug: x, timezone: UTC, currency: EUR, bbox: [0, 0, 1, 1], zones: [a, b], "
        "zone_areas: {a: n, q: s}}\n"
    )
    with pytest.raises(CatalogError, match=r"zone_areas names zones the city does not have: q"):
        load_catalog(catalog)


def trips_of(day: str, n: int, fare: float = 10.0) -> pd.DataFrame:
    t0 = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=10)
    return pd.DataFrame(
        {
            "city": "nyc",
            "trip_id": [f"{day}-{i}" for i in range(n)],
            "pickup_ts": [t0 + pd.Timedelta(minutes=i) for i in range(n)],
            "dropoff_ts": [t0 + pd.Timedelta(minutes=i + 10) for i in range(n)],
            "pickup_zone": "1",
            "dropoff_zone": "2",
            "pickup_lat": np.nan,
            "pickup_lon": np.nan,
            "dropoff_lat": np.nan,
            "dropoff_lon": np.nan,
            "distance_km": 3.0,
            "duration_s": 600.0,
            "fare": fare,
            "currency": "USD",
        }
    )


def test_a_write_that_dies_midway_leaves_the_city_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cityml.data.trips as trips

    write_trips(tmp_path, pd.concat([trips_of("2024-01-01", 3), trips_of("2024-01-02", 3)]))
    before = read_trips(tmp_path, ["nyc"])
    real = trips.atomic_write_table
    calls = {"n": 0}

    def dies_on_the_second_day(table: object, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(table, path)  # type: ignore[arg-type]

    monkeypatch.setattr(trips, "atomic_write_table", dies_on_the_second_day)
    with pytest.raises(OSError, match="disk full"):
        write_trips(tmp_path, pd.concat([trips_of("2024-01-01", 5, fare=99.0), trips_of("2024-01-02", 5, fare=99.0)]))
    pd.testing.assert_frame_equal(read_trips(tmp_path, ["nyc"]), before)  # neither day changed

    monkeypatch.setattr(trips, "atomic_write_table", real)
    write_trips(tmp_path, trips_of("2024-01-03", 2))
    assert len(read_trips(tmp_path, ["nyc"])) == 8
    # The dead write's version is gone; the current one and the one it replaced are kept.
    assert len(list((tmp_path / VERSIONS / "city=nyc").iterdir())) == 2


def test_a_store_of_plain_folders_is_taken_over(tmp_path: Path) -> None:
    """Stores written before versions existed hold ``city=<slug>`` as a folder; the next write keeps their days."""
    write_trips(tmp_path, trips_of("2024-01-01", 3))
    link = tmp_path / "city=nyc"
    real = link.resolve()
    link.unlink()
    os.rename(real, link)  # what an older store looks like
    assert len(read_trips(tmp_path, ["nyc"])) == 3
    write_trips(tmp_path, trips_of("2024-01-02", 2))
    assert link.is_symlink() and len(read_trips(tmp_path, ["nyc"])) == 5
    assert [f.parent.name for f in trip_files(tmp_path, ["nyc"])] == ["date=2024-01-01", "date=2024-01-02"]
