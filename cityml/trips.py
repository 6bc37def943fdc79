"""The trip store: canonical trip rows as parquet, one file per city and UTC day.

Layout: ``<trips_dir>/city=<slug>/date=<YYYY-MM-DD>/trips.parquet``. Files are written to a
temporary name and renamed, so a reader never sees half a file and a failed write leaves the
previous file in place.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cityml.schema import TRIP_COLUMNS, TRIP_SCHEMA, to_canonical


def utc(value: datetime | date | str) -> pd.Timestamp:
    """A timestamp in UTC; naive values are taken as UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")


def day_path(trips_dir: Path, city: str, day: date) -> Path:
    return trips_dir / f"city={city}" / f"date={day.isoformat()}" / "trips.parquet"


def atomic_write_table(table: pa.Table, path: Path) -> None:
    """Write parquet to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_trips(trips_dir: Path, df: pd.DataFrame) -> list[Path]:
    """Store canonical trips, replacing the (city, day) files they cover. Returns the files."""
    if df.empty:
        return []
    days = pd.to_datetime(df["pickup_ts"], utc=True).dt.date
    written = []
    for (city, day), part in df.groupby([df["city"], days], sort=True):
        path = day_path(trips_dir, str(city), day)
        atomic_write_table(to_canonical(part.sort_values("pickup_ts")), path)
        written.append(path)
    return written


def trip_files(trips_dir: Path, cities: Iterable[str] | None = None) -> list[Path]:
    pattern_dirs = [trips_dir / f"city={c}" for c in cities] if cities is not None else sorted(trips_dir.glob("city=*"))
    files: list[Path] = []
    for d in pattern_dirs:
        files.extend(sorted(d.glob("date=*/trips.parquet")))
    return files


def read_trips(
    trips_dir: Path,
    cities: Iterable[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Canonical trips of the given cities with ``start <= pickup_ts < end`` (UTC)."""
    files = trip_files(trips_dir, cities)
    if start is not None or end is not None:
        lo = pd.Timestamp(start).date() if start is not None else date.min
        hi = pd.Timestamp(end).date() if end is not None else date.max
        files = [f for f in files if lo <= date.fromisoformat(f.parent.name[5:]) <= hi]
    if not files:
        return TRIP_SCHEMA.empty_table().to_pandas()
    df = pa.concat_tables([pq.read_table(f, schema=TRIP_SCHEMA) for f in files]).to_pandas()
    if start is not None:
        df = df[df["pickup_ts"] >= utc(start)]
    if end is not None:
        df = df[df["pickup_ts"] < utc(end)]
    return df[TRIP_COLUMNS].reset_index(drop=True)
