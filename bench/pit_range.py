"""A retrain task's point-in-time join: one city's trips against the feature tables of a whole fleet.

A retrain maps its cities into tasks, each joining its own cities' trips with Feast. The feature
tables hold every city's rows; a join that reads them whole costs each task time in proportion to
the fleet, so the run grows with the square of the cities. cityml's tables are sorted by key (keys
begin with the city) in row groups of ``ROW_GROUP_ROWS``, and the ASOF store reads only the key
range of its entity rows (``cityml.features.feast_asof.key_ranges``). Measured here on a zone-hour
table (the largest: a row per zone per hour) of 10, 100 and 1,000 synthetic cities, written by the
same writer, against one city's month of trips: the same join with and without the range, the same
answer checked, round-robin in one process.
"""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from pathlib import Path
from statistics import median

import numpy as np
import pandas as pd
import pyarrow as pa

from bench import report

ZONES = 30
DAYS = 30
TRIPS_PER_DAY = 300


def _zone_hour(path: Path, cities: int) -> int:
    from cityml.data.trips import atomic_write_table
    from cityml.features.feature_tables import ROW_GROUP_ROWS

    rng = np.random.default_rng(0)
    keys = np.array([f"c{c:04d}:z{z:02d}" for c in range(cities) for z in range(ZONES)])
    stamps = pd.date_range("2026-01-01", periods=DAYS * 24, freq="h", tz="UTC")
    n = len(keys) * len(stamps)
    frame = pd.DataFrame(
        {
            "zone_key": np.repeat(keys, len(stamps)),
            "event_timestamp": np.tile(stamps, len(keys)),
            "zone_trips_1h": rng.integers(0, 20, n),
            "zone_median_speed_kmh": rng.normal(22.0, 5.0, n),
        }
    )
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    atomic_write_table(pa.Table.from_pandas(frame, preserve_index=False), path, ROW_GROUP_ROWS)
    return n


def _trips(city: str) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = DAYS * TRIPS_PER_DAY
    seconds = rng.uniform(0, DAYS * 86400, n)
    return pd.DataFrame(
        {
            "row": np.arange(n),
            "pickup_zone_key": [f"{city}:z{z:02d}" for z in rng.integers(0, ZONES, n)],
            "event_timestamp": (pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(seconds, unit="s")).as_unit(
                "us"
            ),
        }
    )


def run(quick: bool) -> report.Section:
    from cityml.features.feast_asof import JoinSpec, asof_sql, key_ranges, run_asof

    sizes = [10, 100] if quick else [10, 100, 1000]
    rounds = 3 if quick else 5
    rows = []
    with tempfile.TemporaryDirectory(prefix="cityml-pit-range-") as tmp:
        for cities in sizes:
            path = Path(tmp) / f"zone_hour_{cities}.parquet"
            table_rows = _zone_hour(path, cities)
            spec = JoinSpec(
                str(path),
                {"zone_key": "pickup_zone_key"},
                "event_timestamp",
                None,
                timedelta(hours=3),
                [("zone_trips_1h", "trips"), ("zone_median_speed_kmh", "speed")],
            )
            entity = _trips(f"c{cities // 2:04d}")
            sqls = {
                "whole table": asof_sql([spec], "entity_df", "event_timestamp"),
                "key range": asof_sql(
                    [spec], "entity_df", "event_timestamp", ranges=key_ranges(entity, {"pickup_zone_key"})
                ),
            }
            times: dict[str, list[float]] = {k: [] for k in sqls}
            answers = {}
            for _ in range(rounds):
                for how, sql in sqls.items():
                    t = time.perf_counter()
                    out = run_asof(entity, sql).to_pandas()
                    times[how].append(time.perf_counter() - t)
                    answers[how] = out.sort_values("row", ignore_index=True)
            same = answers["whole table"].equals(answers["key range"])
            whole, ranged = median(times["whole table"]), median(times["key range"])
            rows.append((cities, table_rows, len(entity), whole, ranged, same))
    lines = [
        "| cities in the table | table rows | one city's trips | whole table s | key range s | whole / range "
        "| same answer |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    failures = []
    for cities, table_rows, trips, whole, ranged, same in rows:
        lines.append(
            f"| {cities:,} | {table_rows:,} | {trips:,} | {whole:.3f} | {ranged:.3f} | **{whole / ranged:.1f}×** | "
            f"{'yes' if same else 'NO'} |"
        )
        if not same:
            failures.append(f"pit_range: the key range changed the answer at {cities} cities")
    body = "\n".join(lines) + (
        f"\n\nMedian of {rounds} round-robin rounds in one process. A zone-hour table of {ZONES} zones × {DAYS} days "
        f"per city, sorted by key in row groups of 65,536 rows; one city's {DAYS * TRIPS_PER_DAY:,} trips joined "
        "point-in-time (3 h TTL). Over a retrain of every city, one task per city, the whole-table join costs "
        "cities × (whole table s): quadratic in the fleet; the key range keeps each task's join near constant."
    )
    raw = {
        "rows": [
            dict(zip(["cities", "table_rows", "trips", "whole_s", "range_s", "same"], r, strict=True)) for r in rows
        ]
    }
    return report.Section(
        key="pit_range", title="Point-in-time join of one city among many", body=body, raw=raw, failures=failures
    )
