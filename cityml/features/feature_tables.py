"""Feature tables built from stored trips: the offline source of every Feast feature view.

Point-in-time rule: the row stamped ``t`` summarises trips that *ended* before ``t`` (in the hour
before it for the traffic tables, in the 28 days before for the history tables). A training row at
pickup time ``t`` therefore never sees a trip that ends after ``t``, and serving at ``t`` sees the
same values once they are materialized.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cityml.data.trips import read_trips, stored_cities
from cityml.naming import zone_key, zone_pair_key

ZONE_HOUR_FILE = "zone_hour.parquet"
CITY_HOUR_FILE = "city_hour.parquet"
ZONE_PAIR_DAY_FILE = "zone_pair_day.parquet"
ZONE_DAY_FILE = "zone_day.parquet"
DEMAND_WEEKS = 4
HISTORY_DAYS = 28
#: Rows per parquet row group of a feature table. Tables are sorted by key, and keys begin with the
#: city, so a group holds a few cities: a point-in-time join for some cities reads only their groups
#: (``cityml.features.feast_asof.key_ranges``) instead of every city's rows.
ROW_GROUP_ROWS = 65_536
#: Trips shorter than this have no meaningful fare per km (a flag fall over 100 m).
FARE_PER_KM_MIN_KM = 0.5


def _hour_end(ts: pd.Series) -> pd.Series:
    """The end of the hour bucket a completed trip falls in (its feature timestamp)."""
    return ts.dt.floor("h") + pd.Timedelta(hours=1)


def zone_hour(trips: pd.DataFrame) -> pd.DataFrame:
    """Traffic per pickup zone and hour: trips completed, mean/median speed, mean duration."""
    t = trips.dropna(subset=["pickup_zone"])
    speed = t["distance_km"] / (t["duration_s"] / 3600.0)
    frame = pd.DataFrame(
        {
            "zone_key": [zone_key(c, z) for c, z in zip(t["city"], t["pickup_zone"], strict=True)],
            "event_timestamp": _hour_end(t["dropoff_ts"]),
            "speed": speed,
            "duration_s": t["duration_s"],
        }
    )
    out = (
        frame.groupby(["zone_key", "event_timestamp"], sort=True)
        .agg(
            zone_trips_1h=("speed", "size"),
            zone_mean_speed_kmh=("speed", "mean"),
            zone_median_speed_kmh=("speed", "median"),
            zone_mean_duration_s=("duration_s", "mean"),
        )
        .reset_index()
    )
    out["zone_trips_1h"] = out["zone_trips_1h"].astype("int64")
    return out


def city_hour(trips: pd.DataFrame) -> pd.DataFrame:
    """Demand per city and hour: trips completed, and the ratio to the same hour of the 4 weeks before.

    "Same hour" is the same hour of the same weekday (7, 14, 21 and 28 days back), so a quiet
    Sunday morning is compared with Sunday mornings. The ratio is missing until all four weeks
    exist: a mean over fewer weeks is a noisier, different feature, and mixing both would read
    as drift once the history fills up. Hours without trips are present with 0.
    """
    frames = []
    for city, t in trips.groupby("city", sort=True):
        counts = _hour_end(t["dropoff_ts"]).value_counts().sort_index()
        full = pd.date_range(counts.index.min(), counts.index.max(), freq="h")
        counts = counts.reindex(full, fill_value=0).astype("float64")
        history = pd.concat([counts.shift(24 * 7 * w, freq="h") for w in range(1, DEMAND_WEEKS + 1)], axis=1)
        history = history.reindex(full)
        mean = history.mean(axis=1)
        ratio = np.where(history.notna().all(axis=1) & (mean > 0), counts / mean, np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "city": city,
                    "event_timestamp": full,
                    "city_trips_1h": counts.to_numpy().astype("int64"),
                    "city_demand_ratio_4w": ratio,
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=["city", "event_timestamp", "city_trips_1h", "city_demand_ratio_4w"])
    return pd.concat(frames, ignore_index=True)


def _history(trips: pd.DataFrame, keys: list[str], key_name: str, prefix: str) -> pd.DataFrame:
    """Trailing statistics of each key (a zone, a zone pair) over the trips that ended in the 28 days before.

    One row per key and UTC day on which the key had a trip, stamped at the end of that day and
    computed at the key's last trip of the day: the trip count and the median duration, speed and
    fare per km of the 28 days up to it. Days without a trip add no row; the view's TTL (28 days)
    keeps the last row in use until the key is quiet for that long. Medians over a sliding window
    are DuckDB window aggregates, one pass over the trips.
    """
    import duckdb

    dist = trips["distance_km"].to_numpy(dtype="float64")
    dur = trips["duration_s"].to_numpy(dtype="float64")
    fare = trips["fare"].to_numpy(dtype="float64") if "fare" in trips else np.full(len(trips), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        speed = np.where((dur > 0) & (dist > 0), dist / (dur / 3600.0), np.nan)
        per_km = np.where(dist >= FARE_PER_KM_MIN_KM, fare / dist, np.nan)
    t = pd.DataFrame(
        {
            "k": keys,
            "t_end": trips["dropoff_ts"].astype("datetime64[us, UTC]"),
            "dur": dur,
            "speed": speed,
            "per_km": per_km,
        }
    )
    n = HISTORY_DAYS
    sql = f"""
        SELECT k, event_timestamp, n AS {prefix}_trips_{n}d, dur AS {prefix}_median_duration_s,
               speed AS {prefix}_median_speed_kmh, per_km AS {prefix}_median_fare_per_km
        FROM (
            SELECT k, date_trunc('day', t_end) + INTERVAL 1 DAY AS event_timestamp,
                   count(*) OVER w AS n, median(dur) OVER w AS dur, median(speed) OVER w AS speed,
                   median(per_km) OVER w AS per_km,
                   row_number() OVER (PARTITION BY k, date_trunc('day', t_end) ORDER BY t_end DESC) AS last
            FROM t
            WINDOW w AS (PARTITION BY k ORDER BY t_end RANGE BETWEEN INTERVAL {n} DAYS PRECEDING AND CURRENT ROW)
        ) WHERE last = 1
        ORDER BY k, event_timestamp
    """
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("t", t)
        out = con.sql(sql).df()
    finally:
        con.close()
    out = out.rename(columns={"k": key_name})
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    out[f"{prefix}_trips_{n}d"] = out[f"{prefix}_trips_{n}d"].astype("int64")
    return out


def zone_pair_day(trips: pd.DataFrame) -> pd.DataFrame:
    """Trip history of each (pickup zone, dropoff zone) pair: what the pair usually takes."""
    t = trips.dropna(subset=["pickup_zone", "dropoff_zone"])
    keys = [zone_pair_key(*v) for v in zip(t["city"], t["pickup_zone"], t["dropoff_zone"], strict=True)]
    return _history(t, keys, "zone_pair_key", "pair")


def zone_day(trips: pd.DataFrame) -> pd.DataFrame:
    """Trip history of each pickup zone: the fallback where the pair is rare or new."""
    t = trips.dropna(subset=["pickup_zone"])
    keys = [zone_key(c, z) for c, z in zip(t["city"], t["pickup_zone"], strict=True)]
    return _history(t, keys, "zone_key", "zone")


#: Cities whose trips a build holds at once. Every table is computed per city (its keys start with the city), so a
#: chunk's rows are final: the build's memory is a chunk's, not the catalog's (all of 1,000 small cities' trips
#: at once peaked at ~9 GB).
BUILD_CHUNK_CITIES = 50
BUILDERS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    ZONE_HOUR_FILE: zone_hour,
    CITY_HOUR_FILE: city_hour,
    ZONE_PAIR_DAY_FILE: zone_pair_day,
    ZONE_DAY_FILE: zone_day,
}


def _arrow(df: pd.DataFrame, created: pd.Timestamp) -> pa.Table:
    # Microsecond timestamps: DuckDB (Feast's offline engine) cannot cast nanosecond ones.
    df = df.assign(event_timestamp=df["event_timestamp"].astype("datetime64[us, UTC]"), created=created)
    return pa.Table.from_pandas(df.astype({"created": "datetime64[us, UTC]"}), preserve_index=False)


def build_feature_tables(trips_dir: Path, features_dir: Path, chunk_cities: int = BUILD_CHUNK_CITIES) -> dict[str, int]:
    """Rebuild the offline feature tables from every stored trip, ``chunk_cities`` cities' trips at a time; each
    table is written to a temporary file and replaces the old one only when every table is complete. Returns rows
    per table.

    Cities go in the order of their keys (``<city>:``), so the tables stay sorted by key across chunks.
    """
    cities = sorted(stored_cities(trips_dir), key=lambda c: f"{c}:")
    created = pd.Timestamp.now(tz="UTC").floor("s")
    features_dir.mkdir(parents=True, exist_ok=True)
    tmp = {name: features_dir / f".{name}.{os.getpid()}.tmp" for name in BUILDERS}
    writers: dict[str, pq.ParquetWriter] = {}
    empty: dict[str, pa.Table] = {}
    rows = dict.fromkeys(BUILDERS, 0)
    try:
        for i in range(0, len(cities), chunk_cities):
            trips = read_trips(trips_dir, cities[i : i + chunk_cities])
            if trips.empty:
                continue
            for name, build in BUILDERS.items():
                table = _arrow(build(trips), created)
                if table.num_rows == 0:
                    empty[name] = table
                    continue
                if name not in writers:
                    writers[name] = pq.ParquetWriter(tmp[name], table.schema)
                writers[name].write_table(table.cast(writers[name].schema), row_group_size=ROW_GROUP_ROWS)
                rows[name] += table.num_rows
        if not writers and not empty:
            raise FileNotFoundError(f"no trips under {trips_dir}: run `cityml data generate` or an import first")
        for name, table in empty.items():
            if name not in writers:  # no city had a row of it: the empty table, as one build of all would write
                pq.write_table(table, tmp[name])
        for writer in writers.values():
            writer.close()
        for name, path in tmp.items():
            os.replace(path, features_dir / name)
    finally:
        for writer in writers.values():
            writer.close()
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return rows
