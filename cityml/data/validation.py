"""Trip validation: every row is checked before anything is stored.

Two layers, both pandera schemas:

1. *Structure* — the canonical columns (``cityml.data.schema.TRIP_COLUMNS``) exist and cast to their types. A table
   that fails here is refused whole with :class:`TripSchemaError`: a wrong schema is a wrong importer or a wrong
   file, and storing part of it would hide that.
2. *Rows* — one named pandera check per way a single trip can be wrong. Failing rows go to quarantine with the names of
   every check they failed (joined with ``;``); the rest are clean and ready for ``cityml.data.trips.write_trips``.

Reasons (the keys of :attr:`ValidationResult.counts`):

==========================  ===========================================================================
``city``                    the row belongs to another city than the one being imported
``trip_id``                 no trip id
``duplicate_trip_id``       the trip id was already seen earlier in the table
``pickup_ts``               pickup time missing (unparseable, or an ambiguous DST hour), before 2009, or
                            in the future
``out_of_period``           pickup outside the period the source covers (e.g. a monthly file ± slack)
``dropoff_ts``              dropoff time missing
``dropoff_before_pickup``   dropoff not after pickup
``duration_s``              duration missing or outside 60 s – 4 h
``distance_km``             distance missing, not positive or not finite (the models need it)
``speed``                   distance / duration outside 1–150 km/h
``fare``                    fare given but negative or not finite (a missing fare is allowed: some cities
                            have none)
``fare_band``               fare outside the city's plausible band around its meter (``City.fare_rule``):
                            a wrong unit, a typo, a poisoned file
``currency``                a fare in another currency than the city's
``outside_bbox``            a pickup or dropoff point outside the city's bounding box
``unknown_zone``            a pickup or dropoff zone the city's zone table does not have
``no_location``             pickup or dropoff with neither a zone nor coordinates
``malformed_line``          a CSV line that does not parse (wrong number of fields); kept with its line number
==========================  ===========================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
from pandera.engines import pandas_engine
from pandera.errors import SchemaErrors

from cityml.catalog import City
from cityml.data.schema import TRIP_COLUMNS, TRIP_SCHEMA
from cityml.data.trips import atomic_write_table, utc

MIN_DURATION_S = 60.0
MAX_DURATION_S = 4 * 3600.0
MIN_SPEED_KMH = 1.0
MAX_SPEED_KMH = 150.0
# The oldest public trip records (NYC TLC) start in January 2009; anything earlier is a meter clock fault.
EARLIEST_PICKUP = pd.Timestamp("2009-01-01", tz="UTC")

REASONS: tuple[str, ...] = (
    "city",
    "trip_id",
    "duplicate_trip_id",
    "pickup_ts",
    "out_of_period",
    "dropoff_ts",
    "dropoff_before_pickup",
    "duration_s",
    "distance_km",
    "speed",
    "fare",
    "fare_band",
    "currency",
    "outside_bbox",
    "unknown_zone",
    "no_location",
    "malformed_line",
)
# ``line`` and ``raw`` are set for malformed lines only: where the line is in the file and what it said.
QUARANTINE_SCHEMA = pyarrow.schema(
    [
        *TRIP_SCHEMA,
        pyarrow.field("source", pyarrow.string()),
        pyarrow.field("reason", pyarrow.string()),
        pyarrow.field("line", pyarrow.int64()),
        pyarrow.field("raw", pyarrow.string()),
    ]
)

Period = tuple[datetime | pd.Timestamp | str, datetime | pd.Timestamp | str]


class TripSchemaError(ValueError):
    """A table whose columns are missing or do not cast to the trip schema; refused whole.

    The message names the source file and the offending columns.
    """


@dataclass(frozen=True)
class ValidationResult:
    """What :func:`validate_trips` made of one table.

    Attributes:
        clean: Canonical trip rows (``TRIP_COLUMNS``) that passed every check.
        quarantine: The rows that failed, canonical columns plus ``source`` and ``reason`` (``;``-joined).
        counts: Reason -> number of rows failing that check (a row failing two checks counts in both).
        rows_read: Rows in the input table.
        rows_kept: Rows in ``clean``.
    """

    clean: pd.DataFrame
    quarantine: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0
    rows_kept: int = 0

    @property
    def rows_quarantined(self) -> int:
        return len(self.quarantine)


# Structure -------------------------------------------------------------------------------------------


def _blank_to_na(s: pd.Series) -> pd.Series:
    # An empty zone is no zone: treat it as missing so the location check sees it.
    text = s.astype("string").str.strip()
    return s.where(text.fillna("") != "", None)


_UTC_TS = pandas_engine.DateTime(tz="UTC")  # type: ignore[call-arg]
_STRUCTURE = pa.DataFrameSchema(
    {
        "city": pa.Column(str, nullable=True, coerce=True),
        "trip_id": pa.Column(str, nullable=True, coerce=True),
        # Naive timestamps are taken as UTC, like cityml.data.trips.utc does.
        "pickup_ts": pa.Column(_UTC_TS, nullable=True, coerce=True),
        "dropoff_ts": pa.Column(_UTC_TS, nullable=True, coerce=True),
        "pickup_zone": pa.Column(str, nullable=True, coerce=True, parsers=pa.Parser(_blank_to_na)),
        "dropoff_zone": pa.Column(str, nullable=True, coerce=True, parsers=pa.Parser(_blank_to_na)),
        "pickup_lat": pa.Column(float, nullable=True, coerce=True),
        "pickup_lon": pa.Column(float, nullable=True, coerce=True),
        "dropoff_lat": pa.Column(float, nullable=True, coerce=True),
        "dropoff_lon": pa.Column(float, nullable=True, coerce=True),
        "distance_km": pa.Column(float, nullable=True, coerce=True),
        "duration_s": pa.Column(float, nullable=True, coerce=True),
        "fare": pa.Column(float, nullable=True, coerce=True),
        "currency": pa.Column(str, nullable=True, coerce=True),
    },
    strict=False,
    name="trip structure",
)


def _structure_problem(failures: pd.DataFrame) -> str:
    """A one-line description of structural failures: missing columns, then columns that do not cast."""
    missing = failures.loc[failures["check"] == "column_in_dataframe", "failure_case"].astype(str).unique().tolist()
    parts = []
    if missing:
        parts.append(f"missing columns {', '.join(missing)}")
    bad = failures[failures["check"] != "column_in_dataframe"].dropna(subset=["column"])
    for column, rows in bad.groupby("column", sort=False):
        first = rows.iloc[0]
        parts.append(f"column {column} does not cast ({first['check']}, e.g. {first['failure_case']!r})")
    return "; ".join(parts) or "wrong trip schema"


def _structured(df: pd.DataFrame, source: str) -> pd.DataFrame:
    try:
        typed = _STRUCTURE.validate(df.reset_index(drop=True), lazy=True)
    except SchemaErrors as exc:
        raise TripSchemaError(f"{source}: {_structure_problem(exc.failure_cases)}") from exc
    return typed[TRIP_COLUMNS]


# Row checks ------------------------------------------------------------------------------------------


def _point_present(lat: pd.Series, lon: pd.Series) -> pd.Series:
    return lat.notna() & lon.notna()


def _inside(city: City, lat: pd.Series, lon: pd.Series) -> pd.Series:
    min_lat, min_lon, max_lat, max_lon = city.bbox
    return lat.between(min_lat, max_lat) & lon.between(min_lon, max_lon)


def _row_checks(city: City, period: tuple[pd.Timestamp, pd.Timestamp] | None, now: pd.Timestamp) -> list[pa.Check]:
    """One pandera check per reason; each returns True for the rows that pass.

    Missing values are handled inside each check (``ignore_na=False``) because "missing" means different things:
    a missing fare is fine, a missing duration is not.
    """

    def speed_ok(d: pd.DataFrame) -> pd.Series:
        measured = (d["distance_km"] > 0) & (d["duration_s"] > 0)
        kmh = d["distance_km"] / (d["duration_s"] / 3600.0)
        return ~measured | kmh.between(MIN_SPEED_KMH, MAX_SPEED_KMH)

    def in_period(d: pd.DataFrame) -> pd.Series:
        if period is None:
            return pd.Series(True, index=d.index)
        ts = d["pickup_ts"]
        return ts.isna() | ((ts >= period[0]) & (ts < period[1]))

    def located(d: pd.DataFrame, side: str) -> pd.Series:
        return d[f"{side}_zone"].notna() | _point_present(d[f"{side}_lat"], d[f"{side}_lon"])

    def in_bbox(d: pd.DataFrame, side: str) -> pd.Series:
        lat, lon = d[f"{side}_lat"], d[f"{side}_lon"]
        return ~_point_present(lat, lon) | _inside(city, lat, lon)

    zones = city.grid_zones

    def known_zone(d: pd.DataFrame, side: str) -> pd.Series:
        z = d[f"{side}_zone"]
        return pd.Series(True, index=d.index) if zones is None else z.isna() | z.isin(zones)

    rule = city.fare_rule

    def fare_in_band(d: pd.DataFrame) -> pd.Series:
        if rule is None:
            return pd.Series(True, index=d.index)
        km, minutes, fare = d["distance_km"], d["duration_s"] / 60.0, d["fare"]
        low = rule.band[0] * (rule.base + rule.per_km * km)
        high = rule.band[1] * (rule.base + rule.per_km * km + rule.per_min * minutes)
        # Only judged where the meter can be computed; a bad fare, distance or duration fails its own check.
        judged = (fare >= 0) & (km > 0) & (minutes > 0) & np.isfinite(fare) & np.isfinite(km) & np.isfinite(minutes)
        return ~judged | fare.between(low, high)

    rules: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
        "city": lambda d: d["city"] == city.slug,
        "trip_id": lambda d: d["trip_id"].notna() & (d["trip_id"].astype("string").str.strip() != ""),
        "duplicate_trip_id": lambda d: d["trip_id"].isna() | ~d["trip_id"].duplicated(keep="first"),
        "pickup_ts": lambda d: d["pickup_ts"].between(EARLIEST_PICKUP, now),
        "out_of_period": in_period,
        "dropoff_ts": lambda d: d["dropoff_ts"].notna(),
        "dropoff_before_pickup": lambda d: (
            d["pickup_ts"].isna() | d["dropoff_ts"].isna() | (d["dropoff_ts"] > d["pickup_ts"])
        ),
        "duration_s": lambda d: d["duration_s"].between(MIN_DURATION_S, MAX_DURATION_S),
        "distance_km": lambda d: (d["distance_km"] > 0) & np.isfinite(d["distance_km"]),
        "speed": speed_ok,
        "fare": lambda d: d["fare"].isna() | ((d["fare"] >= 0) & np.isfinite(d["fare"])),
        "fare_band": fare_in_band,
        "currency": lambda d: d["fare"].isna() | (d["currency"] == city.currency),
        "outside_bbox": lambda d: in_bbox(d, "pickup") & in_bbox(d, "dropoff"),
        "unknown_zone": lambda d: known_zone(d, "pickup") & known_zone(d, "dropoff"),
        "no_location": lambda d: located(d, "pickup") & located(d, "dropoff"),
    }
    return [pa.Check(fn, name=reason, ignore_na=False) for reason, fn in rules.items()]


def _failed_rows(typed: pd.DataFrame, checks: list[pa.Check]) -> dict[str, pd.Series]:
    """Reason -> boolean mask of the rows that failed it.

    Each pandera check is run on its own rather than through ``DataFrameSchema.validate(lazy=True)``: the lazy
    report melts every failing row into one line per cell, which costs ~30 s per million rows, while a check's own
    output is the per-row verdict we need, at vectorised speed.
    """
    return {str(check.name): ~check(typed).check_output.fillna(False).astype(bool) for check in checks}


def validate_trips(
    df: pd.DataFrame,
    city: City,
    source: str,
    *,
    period: Period | None = None,
    now: datetime | pd.Timestamp | None = None,
) -> ValidationResult:
    """Split canonical trip rows into clean rows and quarantined rows with reasons.

    Args:
        df: Rows with the canonical trip columns (extra columns are ignored).
        city: The catalog city the rows belong to (slug, currency and bbox are checked).
        source: Where the rows came from (a file name); named in errors and kept in the quarantine.
        period: Optional ``(start, end)`` the pickups must fall in, ``start <= pickup_ts < end`` (naive = UTC),
            e.g. a monthly file's month with some slack.
        now: The present, for the "not in the future" check; defaults to the current time.

    Returns:
        A :class:`ValidationResult`.

    Raises:
        TripSchemaError: A canonical column is missing or does not cast to its type.
    """
    typed = _structured(df, source)
    window = (utc(period[0]), utc(period[1])) if period is not None else None
    present = utc(now) if now is not None else pd.Timestamp.now(tz="UTC")
    failed = _failed_rows(typed, _row_checks(city, window, present))

    reasons = pd.Series("", index=typed.index, dtype=object)
    counts: dict[str, int] = {}
    for reason in REASONS:  # fixed order, so a row's joined reasons read the same every time
        mask = failed.get(reason)
        if mask is not None and mask.any():
            counts[reason] = int(mask.sum())
            reasons[mask] = reasons[mask] + ";" + reason
    bad = reasons != ""

    quarantine = typed[bad].assign(source=source, reason=reasons[bad].str.lstrip(";")).reset_index(drop=True)
    clean = typed[~bad].reset_index(drop=True)
    return ValidationResult(
        clean=clean, quarantine=quarantine, counts=counts, rows_read=len(typed), rows_kept=len(clean)
    )


def with_malformed_lines(
    result: ValidationResult, source: str, lines: list[tuple[int | None, str]]
) -> ValidationResult:
    """``result`` with the lines its file could not parse added to the quarantine (reason ``malformed_line``).

    Args:
        result: The validation of the rows that did parse.
        source: The file, as named in the quarantine.
        lines: (line number in the file, or None if unknown; the line's text, cut to 1,000 characters).
    """
    if not lines:
        return result
    bad = pd.DataFrame(
        {
            "source": source,
            "reason": "malformed_line",
            "line": pd.array([n for n, _ in lines], dtype="Int64"),
            "raw": [text[:1000] for _, text in lines],
        }
    )
    counts = {**result.counts, "malformed_line": result.counts.get("malformed_line", 0) + len(lines)}
    return ValidationResult(
        clean=result.clean,
        quarantine=pd.concat([result.quarantine, bad], ignore_index=True),
        counts={r: counts[r] for r in REASONS if r in counts},
        rows_read=result.rows_read + len(lines),
        rows_kept=result.rows_kept,
    )


def quarantine_path(folder: Path, city: str, source_name: str) -> Path:
    """Where the quarantine of one source file of one city is kept."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source_name).name) or "source"
    return folder / f"city={city}" / f"{safe}.parquet"


def write_quarantine(folder: Path, city: str, source_name: str, quarantine: pd.DataFrame) -> Path | None:
    """Store the quarantined rows of one source as parquet under ``folder/city=<slug>/``.

    The file is named after the source, so importing the same file again replaces its quarantine; an empty
    quarantine removes a stale file and returns None.

    Args:
        folder: The quarantine root (``Settings.quarantine_dir``).
        city: City slug.
        source_name: The source file's name.
        quarantine: ``ValidationResult.quarantine``.

    Returns:
        The file written, or None when there was nothing to quarantine.
    """
    path = quarantine_path(folder, city, source_name)
    if quarantine.empty:
        path.unlink(missing_ok=True)
        return None
    table = pyarrow.Table.from_pandas(
        quarantine.reindex(columns=QUARANTINE_SCHEMA.names), schema=QUARANTINE_SCHEMA, preserve_index=False
    )
    atomic_write_table(table, path)
    return path
