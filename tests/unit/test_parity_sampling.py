"""The gate's parity sample: few pickup hours (each costs a materialization), trips in time order."""

from pathlib import Path

import pandas as pd

from training.parity import _city_rows, _pick


def _trips(hours: int, per_hour: int) -> pd.DataFrame:
    start = pd.Timestamp("2026-03-01", tz="UTC")
    stamps = [start + pd.Timedelta(hours=h, minutes=m) for h in range(hours) for m in range(per_hour)]
    return pd.DataFrame({"trip_id": range(len(stamps)), "pickup_ts": stamps})


def test_gate_sample_comes_from_at_most_the_given_hours() -> None:
    picked = _pick(_trips(48, 10), sample=20, hours=4, seed=0)
    assert len(picked) == 20
    assert picked["pickup_ts"].dt.floor("h").nunique() <= 4
    assert picked["pickup_ts"].is_monotonic_increasing


def test_cli_sample_is_drawn_from_any_hour() -> None:
    picked = _pick(_trips(48, 10), sample=40, hours=None, seed=0)
    assert picked["pickup_ts"].dt.floor("h").nunique() > 4


def test_sample_larger_than_the_chosen_hours_takes_all_their_trips() -> None:
    picked = _pick(_trips(48, 3), sample=20, hours=2, seed=1)
    assert len(picked) == 6 and picked["trip_id"].is_unique


def test_the_scratch_store_reads_the_citys_rows_only(tmp_path: Path) -> None:
    """Each sampled hour materializes the scratch store: with every city's rows it grew with the catalog."""
    from datetime import timedelta

    import pyarrow.parquet as pq
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Float64

    table = tmp_path / "zone_hour.parquet"
    # "alpha-2" sorts between "alpha" and "alpha:" ("-" comes before ":"): inside the range read, dropped after.
    keys = ["alpha:z01", "alphabet:z01", "alpha", "alpha-2:z01", "beta-city:z01", "alpha:z02"]
    frame = pd.DataFrame({"zone_key": keys, "event_timestamp": pd.Timestamp("2026-03-01", tz="UTC"), "v": 1.0})
    frame.to_parquet(table, row_group_size=1)  # one row group a key: the range read skips the others
    zone = Entity(name="zone", join_keys=["zone_key"])
    view = FeatureView(
        name="zone_traffic",
        entities=[zone],
        ttl=timedelta(hours=3),
        schema=[Field(name="v", dtype=Float64)],
        source=FileSource(name="s", path=str(table), timestamp_field="event_timestamp"),
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    filtered = _city_rows(view, "alpha", scratch, {"zone": "zone_key"})
    assert filtered.batch_source.path == str(scratch / "zone_traffic.parquet")
    assert pq.read_table(filtered.batch_source.path)["zone_key"].to_pylist() == ["alpha:z01", "alpha", "alpha:z02"]
    assert pq.read_table(table).num_rows == 6  # the live table is left as it is
