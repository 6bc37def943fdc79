"""The trip store: canonical trip rows as parquet, one file per city and UTC day.

Layout: ``<trips_dir>/city=<slug>/date=<YYYY-MM-DD>/trips.parquet``, where ``city=<slug>`` is a symbolic link
to one *version* of the city, ``<trips_dir>/.versions/city=<slug>/<version>/``. A write builds a whole new
version (the days it changes written, the others hard-linked from the current version, so nothing is copied),
then moves the link in one rename. A reader therefore sees a city's trips before a batch or after it, never half
of it; a write killed at any point leaves the current version as it was, and its unfinished version is removed by
the next write. Writers of one city take turns (a lock file), so two imports cannot lose each other's days.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cityml.data.schema import TRIP_COLUMNS, TRIP_SCHEMA, to_canonical


def utc(value: datetime | date | str) -> pd.Timestamp:
    """A timestamp in UTC; naive values are taken as UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")


def atomic_write_table(table: pa.Table, path: Path, row_group_size: int | None = None) -> None:
    """Write parquet to ``path`` through a temporary file and a rename (row groups of ``row_group_size`` rows,
    or pyarrow's default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


VERSIONS = ".versions"


def _city_link(trips_dir: Path, city: str) -> Path:
    return trips_dir / f"city={city}"


def _next_version(trips_dir: Path, city: str) -> Path:
    root = trips_dir / VERSIONS / f"city={city}"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"v{time.time_ns():020d}-{os.getpid()}"


def _current(link: Path) -> Path | None:
    """The folder a city's trips are read from now: its version, or a plain folder of an older store."""
    return link.resolve() if link.exists() else None


def _publish(link: Path, version: Path) -> None:
    """Point ``link`` at ``version`` in one rename (a plain folder of an older store is moved aside first)."""
    if link.exists() and not link.is_symlink():
        os.rename(link, version.parent / f"v{0:020d}-legacy-{time.time_ns()}")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.lnk")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(version, link.parent))
    os.replace(tmp, link)


def _sweep(root: Path, keep: set[Path]) -> None:
    """Remove a city's versions other than ``keep``: older ones, and those of writes that died."""
    for old in root.iterdir():
        if old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _city_lock(trips_dir: Path, city: str) -> Iterator[None]:
    path = trips_dir / VERSIONS / f"city={city}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_city(trips_dir: Path, city: str, part: pd.DataFrame, merge: bool) -> list[Path]:
    link = _city_link(trips_dir, city)
    with _city_lock(trips_dir, city):
        current = _current(link)
        replaced: set[str] = set()  # day files of the current version that this write replaces
        if merge and current is not None:
            # Read under the lock: stored trips read before it were another import's to replace.
            part, replaced = _merged(current, part)
        days = pd.to_datetime(part["pickup_ts"], utc=True).dt.date
        version = _next_version(trips_dir, city)
        version.mkdir()
        changed = set()
        for day, rows in part.groupby(days, sort=True):
            path = version / f"date={day.isoformat()}" / "trips.parquet"
            atomic_write_table(to_canonical(rows.sort_values("pickup_ts")), path)
            changed.add(path.parent.name)
        if current is not None:
            for old in current.glob("date=*/trips.parquet"):
                if old.parent.name not in changed | replaced:
                    (version / old.parent.name).mkdir()
                    os.link(old, version / old.parent.name / old.name)
        _publish(link, version)
        # The version just replaced stays one write longer: a reader may be in the middle of it.
        _sweep(version.parent, {version.resolve(), *([current] if current is not None else [])})
    return [link / name / "trips.parquet" for name in sorted(changed)]


def _merged(current: Path, new: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """New trips plus the stored trips of the day files they touch, one row per trip id, the new row winning;
    and the day files read (``date=<day>``), which the result replaces whole.

    A stored trip whose id comes again on another day (a source that corrected a pickup time) is moved, not
    kept twice: every day file's ids are read (one column), and a day holding one is rewritten without it.
    """
    new = new[TRIP_COLUMNS].drop_duplicates("trip_id", keep="last")
    new_days = {f"date={d.isoformat()}" for d in pd.to_datetime(new["pickup_ts"], utc=True).dt.date.unique()}
    ids = pa.array(new["trip_id"].astype(str).unique(), type=pa.string())
    kept, replaced = [], set()
    for f in sorted(current.glob("date=*/trips.parquet")):
        day = f.parent.name
        if day not in new_days:
            stored_ids = pq.read_table(f, columns=["trip_id"]).column("trip_id")
            if not pc.any(pc.is_in(stored_ids, value_set=ids)).as_py():
                continue
        stored = pq.read_table(f, schema=TRIP_SCHEMA).to_pandas()
        kept.append(stored[~stored["trip_id"].isin(new["trip_id"])])
        replaced.add(day)
    merged = pd.concat([*kept, new], ignore_index=True) if kept else new.reset_index(drop=True)
    return merged, replaced


def write_trips(trips_dir: Path, df: pd.DataFrame, merge: bool = False) -> list[Path]:
    """Store canonical trips, each city's change at once.

    ``merge=False`` replaces the (city, day) files the rows cover (a generator writing whole days).
    ``merge=True`` (an import) adds them to what is stored, under the city's lock: the other trips of
    those days stay, a stored trip with the same id is replaced (on whichever day it was stored).

    Returns:
        The day files written, as readers see them (through ``city=<slug>``).
    """
    if df.empty:
        return []
    written = []
    for city, part in df.groupby(df["city"], sort=True):
        written += _write_city(trips_dir, str(city), part, merge)
    return written


def stored_cities(trips_dir: Path) -> list[str]:
    """The cities with stored trips, by slug."""
    return sorted(link.name.removeprefix("city=") for link in trips_dir.glob("city=*"))


def trip_files(trips_dir: Path, cities: Iterable[str] | None = None) -> list[Path]:
    """The day files of the given cities (all by default), each city read from one version."""
    files: list[Path] = []
    for city in stored_cities(trips_dir) if cities is None else cities:
        link = _city_link(trips_dir, city)
        # Resolved once: a write that publishes meanwhile does not mix two versions of a city into one read.
        current = _current(link)
        if current is not None:
            files.extend(sorted(current.glob("date=*/trips.parquet")))
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
