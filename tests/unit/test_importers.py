"""Real-trip importers: NYC TLC and Chicago layouts, dirty rows quarantined, refused batches store nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cityml.catalog import load_catalog
from cityml.data.importers import TripFileError, TripSchemaError, chicago, import_files
from cityml.data.importers.common import month_period
from cityml.data.trips import read_trips, trip_files, write_trips
from cityml.settings import Settings
from tests.conftest import FIXTURES, real_tlc_sample

TRIPS = FIXTURES / "trips"
YELLOW = TRIPS / "yellow_tripdata_2024-01.csv"
GREEN = TRIPS / "green_tripdata_2023-11.csv"
SNAKE = TRIPS / "trips_snake_case.csv"
PORTAL = TRIPS / "chicago_taxi_trips_portal.csv"
BIGQUERY = TRIPS / "chicago_taxi_trips_bigquery.csv"
SUBSET = TRIPS / "chicago_taxi_trips_bigquery_subset.csv"
NOT_TRIPS = TRIPS / "not_trips.csv"


@pytest.fixture
def settings(small_settings: Settings) -> Settings:
    """The small test home, with a catalog holding the real-data cities."""
    return Settings(home=small_settings.home, catalog_path=FIXTURES / "cities_real.yaml", reload_interval_s=0)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_yellow_csv_dirty_rows_are_quarantined_by_reason(settings: Settings) -> None:
    report = import_files(settings, "nyc-tlc", [YELLOW], "nyc")
    (file,) = report["files"]
    assert (file["variant"], file["rows_read"], file["rows_kept"], file["rows_quarantined"]) == ("tlc", 12, 4, 8)
    assert file["quarantined_by_reason"] == {
        "pickup_ts": 1,  # 2008
        "out_of_period": 2,  # 2008 and June 2023 in a January 2024 file
        "dropoff_before_pickup": 1,
        "duration_s": 2,  # the one above and a 5-hour trip
        "distance_km": 1,
        "speed": 1,
        "fare": 1,
        "fare_band": 1,  # 20 miles for $3.70
        "no_location": 1,  # zones 264 -> 265: unknown, outside NYC
    }
    assert file["period"] == ["2023-12-31T05:00:00+00:00", "2024-02-02T05:00:00+00:00"]
    assert report["total"]["rows_kept"] == 4 and report["has_fare"] is True
    json.dumps(report)  # JSON-safe

    stored = read_trips(settings.trips_dir, ["nyc"])
    assert len(stored) == 4
    first = stored.iloc[0]
    # 08:00 New York (EST) is 13:00 UTC; 2.5 miles; TLC zone ids as strings; no coordinates.
    assert first["pickup_ts"] == pd.Timestamp("2024-01-10 13:00", tz="UTC")
    assert first["distance_km"] == pytest.approx(2.5 * 1.609344)
    assert (first["pickup_zone"], first["dropoff_zone"], first["duration_s"]) == ("141", "236", 900.0)
    assert stored["pickup_lat"].isna().all() and (stored["currency"] == "USD").all()
    assert stored["trip_id"].str.fullmatch(r"tlc-[0-9a-f]{20}").all()  # from the trip's content

    quarantine = pd.read_parquet(file["quarantine_file"])
    assert Path(file["quarantine_file"]).parent == settings.quarantine_dir / "city=nyc"
    assert len(quarantine) == 8 and quarantine["reason"].str.len().gt(0).all()
    assert report["quarantine_files_written"] == [file["quarantine_file"]]


def test_green_parquet_with_an_ambiguous_dst_hour(settings: Settings, tmp_path: Path) -> None:
    parquet = tmp_path / "green_tripdata_2023-11.parquet"
    raw = pd.read_csv(GREEN)
    for col in ("lpep_pickup_datetime", "lpep_dropoff_datetime"):
        raw[col] = pd.to_datetime(raw[col])  # the official parquet files hold naive local timestamps
    raw.to_parquet(parquet)

    report = import_files(settings, "nyc-tlc", [parquet], "nyc")
    (file,) = report["files"]
    assert (file["rows_read"], file["rows_kept"]) == (6, 3)
    # 01:30 on 5 Nov 2023 happened twice in New York: it cannot be placed, so the pickup time is bad.
    assert file["quarantined_by_reason"] == {
        "pickup_ts": 1,
        "duration_s": 1,
        "distance_km": 1,
        "fare": 1,
        "no_location": 1,  # no pickup zone
    }
    stored = read_trips(settings.trips_dir, ["nyc"])
    assert stored["pickup_ts"].dt.strftime("%m-%d %H:%M").tolist() == ["11-03 21:00", "11-04 16:00", "11-05 08:00"]


def test_snake_case_layout_a_skipped_dst_hour_and_a_missing_fare(settings: Settings) -> None:
    report = import_files(settings, "nyc-tlc", [SNAKE], "nyc")
    (file,) = report["files"]
    assert (file["variant"], file["rows_kept"], file["period"]) == ("snake_case", 3, None)
    assert file["quarantined_by_reason"] == {"pickup_ts": 1}  # 2099: in the future
    stored = read_trips(settings.trips_dir, ["nyc"]).set_index("pickup_zone")
    # 02:10 on 13 Mar 2022 did not exist in New York: moved to 03:00 EDT, so 01:50 EST -> 03:00 EDT is 10 minutes.
    assert stored.loc["161", "duration_s"] == 600.0
    assert pd.isna(stored.loc["236", "fare"])


def test_column_names_match_case_insensitively(settings: Settings, tmp_path: Path) -> None:
    shouted = tmp_path / "YELLOW_TRIPDATA_2024-01.CSV"
    raw = pd.read_csv(YELLOW)
    raw.columns = [c.upper() for c in raw.columns]
    raw.to_csv(shouted, index=False)
    report = import_files(settings, "nyc-tlc", [shouted], "nyc")
    assert report["total"]["rows_kept"] == 4


def test_chicago_portal_export(settings: Settings) -> None:
    report = import_files(settings, "chicago", [PORTAL], "chicago")
    (file,) = report["files"]
    assert (file["variant"], file["rows_read"], file["rows_kept"]) == ("portal", 11, 4)
    assert file["quarantined_by_reason"] == {
        "duplicate_trip_id": 1,
        "pickup_ts": 1,  # 2008
        "dropoff_before_pickup": 1,
        "duration_s": 1,  # the same row: no Trip Seconds, end before start
        "distance_km": 1,  # 0 metered miles and no centroids to measure between
        "fare": 1,
        "outside_bbox": 1,
        "no_location": 1,
    }
    stored = read_trips(settings.trips_dir, ["chicago"]).set_index("trip_id")
    first = stored.loc["0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"]
    assert first["pickup_ts"] == pd.Timestamp("2023-01-15 14:00", tz="UTC")  # 08:00 AM CST
    assert (first["pickup_zone"], first["dropoff_zone"], first["fare"]) == ("8", "32", 9.25)
    assert first["pickup_lat"] == pytest.approx(41.899602111)
    # Start and end in the same 15-minute slot: the dropoff is put Trip Seconds after the pickup.
    short = stored.loc["1b2c3d4e5f60718293a4b5c6d7e8f90123456789"]
    assert (short["dropoff_ts"] - short["pickup_ts"]).total_seconds() == short["duration_s"] == 420
    # No metered miles: the straight line between the Near North Side and O'Hare centroids, ~24 km.
    unmetered = stored.loc["2c3d4e5f60718293a4b5c6d7e8f9012345678901"]
    assert unmetered["distance_km"] == pytest.approx(24.0, abs=0.5) and unmetered["duration_s"] == 1500
    assert stored.loc["93a4b5c6d7e8f90123456789012a3b4c5d6e7f80", "pickup_ts"].hour == 23  # 5:30 PM CST


def test_chicago_bigquery_epoch_seconds_and_text(settings: Settings) -> None:
    report = import_files(settings, "chicago", [BIGQUERY], "chicago")
    (file,) = report["files"]
    assert (file["variant"], file["rows_read"], file["rows_kept"]) == ("bigquery", 5, 3)
    assert file["quarantined_by_reason"] == {"duration_s": 1, "distance_km": 1}
    stored = read_trips(settings.trips_dir, ["chicago"])
    assert stored["pickup_ts"].dt.strftime("%d %H:%M").tolist() == ["15 14:00", "16 18:00", "17 12:00"]  # UTC as is
    assert stored["pickup_zone"].tolist() == ["8", "28", "6"]  # 8.0 -> "8"
    assert stored["fare"].isna().tolist() == [False, False, True]
    assert stored["trip_id"].tolist() == pd.read_csv(BIGQUERY)["unique_key"][:3].tolist()  # ids are unique_key
    assert report["has_fare"] is True


def test_chicago_bigquery_subset_epoch_seconds_no_ids_and_rows_without_location(
    settings: Settings, tmp_path: Path
) -> None:
    report = import_files(settings, "chicago", [SUBSET], "chicago")
    (file,) = report["files"]
    assert (file["variant"], file["rows_read"], file["rows_kept"]) == ("bigquery_subset", 7, 5)
    # Pickup community area 6 but no dropoff area nor point; no pickup area nor point, dropoff area 8.
    assert file["quarantined_by_reason"] == {"no_location": 2}
    quarantine = pd.read_parquet(file["quarantine_file"])
    assert quarantine["reason"].tolist() == ["no_location", "no_location"]
    assert quarantine["pickup_ts"].dt.strftime("%d %H:%M").tolist() == ["17 15:00", "17 16:00"]

    stored = read_trips(settings.trips_dir, ["chicago"]).sort_values(["pickup_ts", "fare"]).reset_index(drop=True)
    # Epoch seconds, integer or float, as UTC; no end column, so dropoff = pickup + trip_seconds.
    pickups, dropoffs = (stored[c].dt.strftime("%d %H:%M").tolist() for c in ("pickup_ts", "dropoff_ts"))
    assert pickups == ["15 14:00", "15 14:00", "16 18:00", "17 12:00", "17 13:30"]
    assert dropoffs == ["15 14:13", "15 14:13", "16 18:27", "17 12:10", "17 13:45"]
    assert (stored["dropoff_ts"] - stored["pickup_ts"]).dt.total_seconds().tolist() == [780, 780, 1620, 600, 900]
    assert stored["duration_s"].tolist() == [780, 780, 1620, 600, 900]
    assert stored["pickup_zone"].tolist() == ["8", "8", "28", "32", None]
    assert stored["dropoff_zone"].tolist() == ["32", "32", "76", "8", None]
    assert stored["fare"].tolist() == [9.5, 9.5, 33.0, 7.25, 11.0]
    # Zones but no coordinates: kept, distance from trip_miles. Coordinates but no zones nor miles: the straight line.
    assert stored["pickup_lat"].isna().tolist() == [False, False, False, True, False]
    assert stored["distance_km"].tolist() == pytest.approx(
        [2.4 * 1.609344] * 2 + [12.5 * 1.609344, 1.8 * 1.609344, 5.305], abs=1e-3
    )

    # No id column: ids are hashed from the row, the two 14:00 trips (different cabs) have their own.
    ids = stored["trip_id"]
    assert ids.str.fullmatch(r"chi-[0-9a-f]{20}").all() and ids.is_unique
    # Importing the file again, or a copy under another name, replaces the same trips.
    import_files(settings, "chicago", [SUBSET], "chicago")
    copy = tmp_path / "chicago_sample_copy.csv"
    copy.write_bytes(SUBSET.read_bytes())
    import_files(settings, "chicago", [copy], "chicago")
    again = read_trips(settings.trips_dir, ["chicago"])
    assert len(again) == 5 and set(again["trip_id"]) == set(ids)


def test_chicago_bigquery_subset_ids_follow_the_row_content_only() -> None:
    city = load_catalog(FIXTURES / "cities_real.yaml").get("chicago")
    raw = pd.read_csv(SUBSET)

    def ids(frame: pd.DataFrame, name: str = "a.csv") -> list[str]:
        return chicago.to_trips(frame, city, name).trips["trip_id"].tolist()

    first = ids(raw)
    assert len(set(first)) == len(raw)
    # Same rows in another order, from another file, with epoch seconds as integers (the CSV reads floats): same ids.
    assert raw["trip_start_timestamp"].dtype == "float64"
    assert ids(raw.iloc[::-1].reset_index(drop=True), "b.csv") == first[::-1]
    assert ids(raw.astype({"trip_start_timestamp": "int64", "trip_seconds": "int64"}), "c.csv") == first
    # Change one value of the first row at a time: every variant gets its own id.
    changes = {
        "trip_start_timestamp": 1673791200 + 900,
        "trip_seconds": 840,
        "trip_miles": 2.5,
        "pickup_community_area": 9,
        "dropoff_community_area": 33,
        "pickup_latitude": 41.9,
        "dropoff_longitude": -87.6,
        "fare": 9.75,
        "taxi_id": "t99",
    }
    variants = [ids(raw.iloc[[0]].assign(**{column: value}))[0] for column, value in changes.items()]
    assert len({first[0], *variants}) == len(changes) + 1
    # Without a taxi_id column (as in some samples) the ids still tell the other rows apart.
    assert len(set(ids(raw.drop(columns="taxi_id"))[:6])) == 6


def test_chicago_bigquery_subset_needs_zones_or_coordinates(settings: Settings, tmp_path: Path) -> None:
    raw = pd.read_csv(SUBSET)
    coordinates_only = tmp_path / "coordinates_only.csv"
    raw.drop(columns=["pickup_community_area", "dropoff_community_area", "trip_miles", "fare"]).to_csv(
        coordinates_only, index=False
    )
    report = import_files(settings, "chicago", [coordinates_only], "chicago")
    assert (report["files"][0]["variant"], report["total"]["rows_kept"], report["has_fare"]) == (
        "bigquery_subset",
        4,  # the 3 rows without a point at one end go to quarantine
        False,
    )

    neither = tmp_path / "neither.csv"
    raw.drop(columns=["pickup_community_area", "dropoff_community_area", "pickup_latitude"]).to_csv(
        neither, index=False
    )
    with pytest.raises(TripSchemaError, match="bigquery_subset variant lacks pickup_community_area"):
        import_files(settings, "chicago", [neither], "chicago")


def test_a_source_without_fares_reports_has_fare_false(settings: Settings, tmp_path: Path) -> None:
    no_fare = tmp_path / "chicago_no_fare.csv"
    pd.read_csv(BIGQUERY).drop(columns=["fare"]).to_csv(no_fare, index=False)
    report = import_files(settings, "chicago", [no_fare], "chicago")
    assert report["has_fare"] is False and report["files"][0]["has_fare"] is False
    assert report["total"]["rows_kept"] == 3


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("nyc-tlc", ["tpep_pickup_datetime/lpep_pickup_datetime", "PULocationID", "pickup_location_id"]),
        ("chicago", ["Trip ID", "Trip Start Timestamp", "unique_key", "trip_miles"]),
    ],
)
def test_a_file_of_another_layout_is_refused_naming_file_and_columns(
    settings: Settings, source: str, expected: list[str]
) -> None:
    with pytest.raises(TripSchemaError) as err:
        import_files(settings, source, [NOT_TRIPS], "nyc" if source == "nyc-tlc" else "chicago")  # type: ignore[arg-type]
    message = str(err.value)
    assert message.startswith("not_trips.csv: columns match no")
    assert all(column in message for column in expected), message


def test_the_other_source_layout_is_refused(settings: Settings) -> None:
    with pytest.raises(TripSchemaError, match="Trip Start Timestamp"):
        import_files(settings, "chicago", [YELLOW], "chicago")


def test_a_refused_file_leaves_stored_trips_unchanged(settings: Settings, tmp_path: Path) -> None:
    import_files(settings, "nyc-tlc", [YELLOW], "nyc")
    before = snapshot(settings.home)
    assert any(name.startswith("data/trips/") for name in before)

    # Same days as the stored trips (so a partial write would change those files), then a file that is refused.
    again = tmp_path / "yellow_tripdata_2024-01-fix.csv"
    pd.read_csv(YELLOW).assign(fare_amount=1.0).to_csv(again, index=False)
    with pytest.raises(TripSchemaError):
        import_files(settings, "nyc-tlc", [again, NOT_TRIPS], "nyc")
    assert snapshot(settings.home) == before


def test_an_unreadable_file_is_named(settings: Settings, tmp_path: Path) -> None:
    broken = tmp_path / "yellow_tripdata_2024-02.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(TripFileError, match=r"yellow_tripdata_2024-02\.parquet: cannot read as parquet"):
        import_files(settings, "nyc-tlc", [YELLOW, broken], "nyc")
    with pytest.raises(TripFileError, match=r"nowhere\.csv: file not found"):
        import_files(settings, "nyc-tlc", [tmp_path / "nowhere.csv"], "nyc")
    assert not settings.trips_dir.exists()


def test_import_adds_to_trips_already_stored_for_the_same_days(settings: Settings, tmp_path: Path) -> None:
    portal = import_files(settings, "chicago", [PORTAL], "chicago")
    bigquery = import_files(settings, "chicago", [BIGQUERY], "chicago")
    stored = read_trips(settings.trips_dir, ["chicago"])
    assert len(stored) == portal["total"]["rows_kept"] + bigquery["total"]["rows_kept"] == 7

    # Importing a file again replaces its trips instead of doubling them.
    import_files(settings, "chicago", [PORTAL], "chicago")
    assert len(read_trips(settings.trips_dir, ["chicago"])) == 7
    assert len(trip_files(settings.trips_dir, ["chicago"])) == 3  # 15, 16 and 17 Jan, each holding both sources


HEADER = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,PULocationID,DOLocationID,trip_distance,fare_amount"


def _tlc_rows(n: int) -> list[str]:
    """``n`` clean yellow-taxi lines, one a minute from 08:00 on 10 January 2024."""
    return [f"2,2024-01-10 08:{m:02d}:00,2024-01-10 08:{m + 15:02d}:00,141,236,2.5,15.6" for m in range(n)]


@pytest.mark.parametrize(
    ("bad", "reasons"),
    [
        # A quote never closed: that line is bad, the lines after it are still read.
        ('2,2024-01-10 09:00:00,"2024-01-10 09:15:00,141,236,2.5,15.6', {"malformed_line": 1}),
        ("2,2024-01-10 09:00:00,2024-01-10 09:15:00,99999999999999999999999,236,2.5,15.6", {"no_location": 1}),
        ("2,2024-01-10 09:00:00,2024-01-10 09:15:00,1e300,236,2.5,15.6", {"no_location": 1}),
        # A year no timestamp holds: the reader makes it a datetime column, the row is quarantined alone.
        ("2,9999-12-31 09:00:00,2024-01-10 09:15:00,141,236,2.5,15.6", {"pickup_ts": 1, "duration_s": 1}),
    ],
)
def test_one_hostile_line_is_quarantined_alone(settings: Settings, tmp_path: Path, bad: str, reasons: dict) -> None:
    path = tmp_path / "yellow_tripdata_2024-01.csv"
    good = _tlc_rows(12)
    path.write_text("\n".join([HEADER, *good[:2], bad, *good[2:]]) + "\n")
    (file,) = import_files(settings, "nyc-tlc", [path], "nyc")["files"]
    assert (file["rows_kept"], file["quarantined_by_reason"]) == (12, reasons)


def test_a_fare_written_but_not_a_number_is_quarantined_not_kept_as_no_fare(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "yellow_tripdata_2024-01.csv"
    rows = _tlc_rows(6)
    fares = ["abc", "=1+1", "nan", "", "$15.60", "15.6"]  # two bad; "nan" and "" say no fare; "$15.60" is one
    lines = [r.rsplit(",", 1)[0] + "," + f for r, f in zip(rows, fares, strict=True)]
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    (file,) = import_files(settings, "nyc-tlc", [path], "nyc")["files"]
    assert (file["rows_kept"], file["quarantined_by_reason"]) == (4, {"fare": 2})
    fares_kept = read_trips(settings.trips_dir, ["nyc"]).sort_values("pickup_ts")["fare"].tolist()
    assert fares_kept == pytest.approx([float("nan"), float("nan"), 15.6, 15.6], nan_ok=True)


def test_a_bad_line_of_bytes_that_are_not_utf8_or_a_huge_field_do_not_refuse_the_file(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "yellow_tripdata_2024-01.csv"
    good = _tlc_rows(6)
    huge = good[5].replace(",2.5,", ",2.50" + "0" * (3 << 20) + ",")  # a 3 MB field: longer than a parse block
    lines = [HEADER, *good[:3]]
    path.write_bytes(
        ("\n".join(lines) + "\n").encode() + b"1,2,\xff\xfe\n" + ("\n".join([*good[3:5], huge]) + "\n").encode()
    )
    (file,) = import_files(settings, "nyc-tlc", [path], "nyc")["files"]
    assert (file["rows_kept"], file["quarantined_by_reason"]) == (6, {"malformed_line": 1})


def test_times_with_an_offset_are_placed_by_it_among_local_ones(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "yellow_tripdata_2024-01.csv"
    lines = [*_tlc_rows(2), "2,2024-01-10T14:05:00Z,2024-01-10 09:20:00,141,236,2.5,15.6"]  # 09:05 in New York
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    import_files(settings, "nyc-tlc", [path], "nyc")
    stored = read_trips(settings.trips_dir, ["nyc"]).sort_values("pickup_ts")
    assert str(stored["pickup_ts"].iloc[-1]) == "2024-01-10 14:05:00+00:00" and len(stored) == 3


def test_a_column_named_twice_refuses_the_file_naming_it(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "yellow_tripdata_2024-01.csv"
    path.write_text("\n".join([HEADER + ",FARE_AMOUNT", *(r + ",99" for r in _tlc_rows(2))]) + "\n")
    with pytest.raises(TripSchemaError, match="column 'FARE_AMOUNT' appears more than once"):
        import_files(settings, "nyc-tlc", [path], "nyc")
    assert not settings.trips_dir.exists() or read_trips(settings.trips_dir, ["nyc"]).empty
    # Columns no layout reads may repeat: a spreadsheet's empty trailing headers.
    path.write_text("\n".join([HEADER + ",,", *(r + ",," for r in _tlc_rows(2))]) + "\n")
    assert import_files(settings, "nyc-tlc", [path], "nyc")["total"]["rows_kept"] == 2


def test_a_bad_row_holding_a_quoted_line_break_is_one_bad_line(settings: Settings, tmp_path: Path) -> None:
    """Its quotes are closed: nothing ran on to the end of the file, and no row is made of its second half."""
    path = tmp_path / "yellow_tripdata_2024-01.csv"
    bad = '2,"2024-01-10\n09:00:00",2024-01-10 09:15:00,141,236,2.5,15.6,EXTRA'
    good = _tlc_rows(4)
    path.write_text("\n".join([HEADER, *good[:2], bad, *good[2:]]) + "\n")
    (file,) = import_files(settings, "nyc-tlc", [path], "nyc")["files"]
    assert (file["rows_read"], file["rows_kept"], file["quarantined_by_reason"]) == (5, 4, {"malformed_line": 1})


def _stored_trip(trip_id: str, pickup: pd.Timestamp, fare: float | None = None) -> dict[str, Any]:
    return {
        "city": "nyc",
        "trip_id": trip_id,
        "pickup_ts": pickup,
        "dropoff_ts": pickup + pd.Timedelta(minutes=10),
        "pickup_zone": "1",
        "dropoff_zone": "2",
        "pickup_lat": None,
        "pickup_lon": None,
        "dropoff_lat": None,
        "dropoff_lon": None,
        "distance_km": 3.0,
        "duration_s": 600.0,
        "fare": fare,
        "currency": "USD",
    }


def test_a_merged_write_keeps_the_days_other_trips_and_stores_each_trip_id_once(tmp_path: Path) -> None:
    day = pd.Timestamp("2024-01-10 10:00", tz="UTC")
    old = [_stored_trip("a", day, 10.0), _stored_trip("b", day, 11.0), _stored_trip("c", day + pd.Timedelta(days=1))]
    old.append(_stored_trip("e", day + pd.Timedelta(days=2), 13.0))
    write_trips(tmp_path, pd.DataFrame(old))
    # "b" again with a new fare; "d" is new; "e" comes back with a corrected pickup two days earlier.
    new = [_stored_trip("b", day, 99.0), _stored_trip("d", day), _stored_trip("e", day, 14.0)]
    write_trips(tmp_path, pd.DataFrame(new), merge=True)
    stored = read_trips(tmp_path, ["nyc"])
    fares = dict(zip(stored["trip_id"], stored["fare"], strict=True))
    assert len(stored) == 5 and fares == pytest.approx(
        {"a": 10.0, "b": 99.0, "c": float("nan"), "d": float("nan"), "e": 14.0}, nan_ok=True
    )
    # The day "e" left is gone with it; the day nobody touched is the same file (linked, not rewritten).
    assert [f.parent.name for f in trip_files(tmp_path, ["nyc"])] == ["date=2024-01-10", "date=2024-01-11"]
    assert write_trips(tmp_path, pd.DataFrame(new).iloc[0:0], merge=True) == []


def test_imports_of_one_city_at_once_lose_none_of_each_others_trips(tmp_path: Path) -> None:
    """Each merged write reads what is stored under the city's lock: read before it, a second import wrote the day
    back as it was before the first, and the first one's trips were gone."""
    import threading

    day = pd.Timestamp("2024-01-10 10:00", tz="UTC")

    def importer(name: str) -> None:
        for i in range(8):
            trip = _stored_trip(f"{name}{i}", day + pd.Timedelta(minutes=i))
            write_trips(tmp_path, pd.DataFrame([trip]), merge=True)

    threads = [threading.Thread(target=importer, args=(name,)) for name in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(read_trips(tmp_path, ["nyc"])["trip_id"]) == sorted(f"{n}{i}" for n in "xyz" for i in range(8))


def test_the_same_file_twice_in_a_batch_is_kept_once(settings: Settings) -> None:
    report = import_files(settings, "nyc-tlc", [YELLOW, YELLOW], "nyc")
    assert [f["rows_kept"] for f in report["files"]] == [4, 0]
    assert report["files"][1]["quarantined_by_reason"]["duplicate_trip_id"] == 4
    assert len(read_trips(settings.trips_dir, ["nyc"])) == 4
    # One quarantine for the file, holding both reads' rows: the first's 8 dirty ones are not overwritten.
    assert report["quarantine_files_written"] == [report["files"][0]["quarantine_file"]]
    assert len(pd.read_parquet(report["files"][0]["quarantine_file"])) == 8 + 8 + 4


def test_two_different_files_with_one_name_are_refused(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / YELLOW.name
    twin.write_bytes(YELLOW.read_bytes())
    with pytest.raises(ValueError, match=r"share the quarantine 'yellow_tripdata_2024-01\.csv\.parquet'"):
        import_files(settings, "nyc-tlc", [YELLOW, twin], "nyc")
    assert not settings.trips_dir.exists()
    spaced = tmp_path / "yellow tripdata 2024-01.csv"  # kept as yellow_tripdata_2024-01.csv.parquet too
    spaced.write_bytes(YELLOW.read_bytes())
    snake = tmp_path / "b" / "yellow_tripdata_2024-01.csv"
    with pytest.raises(ValueError, match="share the quarantine"):
        import_files(settings, "nyc-tlc", [spaced, snake], "nyc")


def test_month_period_from_tlc_file_names() -> None:
    start, end = month_period("yellow_tripdata_2019-03.parquet", "America/New_York") or (None, None)
    assert (str(start), str(end)) == ("2019-02-28 05:00:00+00:00", "2019-04-02 04:00:00+00:00")
    assert month_period("trips_snake_case.csv", "America/New_York") is None
    assert month_period("Taxi_Trips_2023-01-15.csv", "America/Chicago") is None  # a day, not a month


def real_sample() -> Path:
    return real_tlc_sample()


def test_real_tlc_sample_keeps_the_large_majority(settings: Settings) -> None:
    report = import_files(settings, "nyc-tlc", [real_sample()], "nyc")
    total = report["total"]
    print(json.dumps(total))
    # Measured on the 6,500 March 2019 trips (5,500 yellow, 1,000 green): 97.5% kept. The fare band takes 8 trips
    # no other check does: six $0 fares, $1 for 5 km and $55 for 0.8 km.
    assert (total["rows_read"], total["rows_kept"], total["rows_quarantined"]) == (6500, 6337, 163)
    assert total["quarantined_by_reason"] == {
        "dropoff_before_pickup": 6,
        "duration_s": 102,
        "distance_km": 56,
        "speed": 32,
        "fare": 10,
        "fare_band": 16,
        "no_location": 55,
    }
    stored = read_trips(settings.trips_dir, ["nyc"])
    assert len(stored) == 6337 and stored["trip_id"].is_unique
    assert stored["pickup_ts"].min() >= pd.Timestamp("2019-02-28", tz="UTC")
    assert stored["pickup_ts"].max() < pd.Timestamp("2019-04-02", tz="UTC")
    assert report["has_fare"] is True and stored["fare"].notna().all()
