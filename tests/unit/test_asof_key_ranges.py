"""The point-in-time join reads only the feature rows of its entity rows' key range, and answers the same."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cityml.features.feast_asof import JoinSpec, asof_sql, key_ranges, run_asof


def _table(path: Path, cities: list[str]) -> JoinSpec:
    """A zone-hour table of several cities, sorted by key, one row group per few zones (as cityml writes them)."""
    rng = np.random.default_rng(1)
    keys = [f"{c}:z{z}" for c in cities for z in range(4)]
    stamps = pd.date_range("2026-03-01", periods=48, freq="h", tz="UTC")
    frame = pd.DataFrame(
        {
            "zone_key": np.repeat(keys, len(stamps)),
            "event_timestamp": np.tile(stamps, len(keys)),
            "trips": rng.integers(0, 9, len(keys) * len(stamps)),
        }
    ).astype({"event_timestamp": "datetime64[us, UTC]"})
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=96)
    return JoinSpec(
        str(path),
        {"zone_key": "pickup_zone_key"},
        "event_timestamp",
        None,
        timedelta(hours=3),
        [("trips", "pickup__trips")],
    )


def _entities(keys: list[str], n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    stamps = pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(rng.uniform(-3600, 50 * 3600, n), unit="s")
    return pd.DataFrame(
        {"row": np.arange(n), "pickup_zone_key": rng.choice(keys, n), "event_timestamp": stamps}
    ).astype({"event_timestamp": "datetime64[us, UTC]"})


def _join(entity: pd.DataFrame, spec: JoinSpec, ranged: bool) -> pd.DataFrame:
    ranges = key_ranges(entity, {"pickup_zone_key"}) if ranged else None
    sql = asof_sql([spec], "entity_df", "event_timestamp", ranges=ranges)
    return run_asof(entity, sql).to_pandas().sort_values("row", ignore_index=True)


def test_one_citys_join_reads_its_key_range_and_answers_as_the_whole_table(tmp_path: Path) -> None:
    spec = _table(tmp_path / "zone_hour.parquet", ["ams", "bcn", "lis", "nyc"])
    # Keys of one city, a zone it lacks, a key that sorts before it and a missing key: all at the range's edges.
    entity = _entities(["lis:z0", "lis:z3", "lis:z9", "lis:", None])  # type: ignore[list-item]
    assert key_ranges(entity, {"pickup_zone_key"}) == {"pickup_zone_key": ("lis:", "lis:z9")}
    sql = asof_sql([spec], "entity_df", "event_timestamp", ranges=key_ranges(entity, {"pickup_zone_key"}))
    assert "BETWEEN 'lis:' AND 'lis:z9'" in sql
    ranged, whole = _join(entity, spec, True), _join(entity, spec, False)
    pd.testing.assert_frame_equal(ranged, whole)
    assert ranged["pickup__trips"].notna().sum() > 100  # the join found rows, not only missing values


def test_key_ranges_span_several_cities_and_skip_columns_without_text(tmp_path: Path) -> None:
    spec = _table(tmp_path / "zone_hour.parquet", ["ams", "bcn", "lis", "nyc"])
    entity = _entities(["ams:z1", "nyc:z2", "bcn:z0"])
    ranged, whole = _join(entity, spec, True), _join(entity, spec, False)
    pd.testing.assert_frame_equal(ranged, whole)
    assert key_ranges(entity.assign(pickup_zone_key=None), {"pickup_zone_key"}) == {}
    assert key_ranges(entity.assign(pickup_zone_key=7), {"pickup_zone_key"}) == {}


def test_a_quote_in_a_key_is_text_not_sql(tmp_path: Path) -> None:
    spec = _table(tmp_path / "zone_hour.parquet", ["o'hare"])
    entity = _entities(["o'hare:z1", "o'hare:z2"])
    pd.testing.assert_frame_equal(_join(entity, spec, True), _join(entity, spec, False))
