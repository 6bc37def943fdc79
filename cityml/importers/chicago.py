"""City of Chicago "Taxi Trips" records.

Two layouts are accepted, column names matched case-insensitively:

- the Chicago Data Portal export (column titles ``Trip ID``, ``Trip Start Timestamp``, ``Trip End Timestamp``,
  ``Trip Seconds``, ``Trip Miles``, ``Pickup Community Area``, ``Dropoff Community Area``, ``Fare``,
  ``Pickup Centroid Latitude`` ...). Its timestamps are text like ``01/01/2023 12:00:00 AM`` in Chicago wall-clock
  time (America/Chicago), and its numbers may carry ``$`` and thousands separators;
- the public BigQuery table ``chicago_taxi_trips.taxi_trips`` (``unique_key``, ``trip_start_timestamp``,
  ``trip_seconds``, ``trip_miles``, ``pickup_community_area``, ``pickup_latitude`` ...). Its timestamps, text or
  epoch seconds, are taken as UTC, which is what the BigQuery TIMESTAMP type means. (Some analyses report that the
  table holds Chicago wall-clock times labelled UTC; if that matters for a dataset, convert before importing.)

Both publish times rounded to 15 minutes for privacy, so the trip's own ``Trip Seconds`` is the duration, and where
start and end fall in the same 15-minute slot the dropoff is put ``Trip Seconds`` after the pickup (otherwise every
short trip would look like it ends before it starts). Community areas are the zones; the centroid coordinates are
kept; where metered miles are missing or zero the distance is the straight line between the centroids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cityml.catalog import City
from cityml.importers.common import (
    ISO,
    MILE_KM,
    PORTAL_FORMAT,
    Mapped,
    Variant,
    local_to_utc,
    match_variant,
    numbers,
    parse_times,
    row_ids,
    zone_ids,
)
from cityml.request_features import haversine_km

SOURCE = "chicago"
SOURCE_TZ = "America/Chicago"

_COORDS = ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon")
PORTAL = Variant(
    name="portal",
    required={
        "trip_id": ("Trip ID",),
        "start": ("Trip Start Timestamp",),
        "end": ("Trip End Timestamp",),
        "seconds": ("Trip Seconds",),
        "miles": ("Trip Miles",),
        "pickup_zone": ("Pickup Community Area",),
        "dropoff_zone": ("Dropoff Community Area",),
        "pickup_lat": ("Pickup Centroid Latitude",),
        "pickup_lon": ("Pickup Centroid Longitude",),
        "dropoff_lat": ("Dropoff Centroid Latitude",),
        "dropoff_lon": ("Dropoff Centroid Longitude",),
    },
    optional={"fare": ("Fare",)},
)
BIGQUERY = Variant(
    name="bigquery",
    required={
        "trip_id": ("unique_key",),
        "start": ("trip_start_timestamp",),
        "end": ("trip_end_timestamp",),
        "seconds": ("trip_seconds",),
        "miles": ("trip_miles",),
        "pickup_zone": ("pickup_community_area",),
        "dropoff_zone": ("dropoff_community_area",),
        "pickup_lat": ("pickup_latitude",),
        "pickup_lon": ("pickup_longitude",),
        "dropoff_lat": ("dropoff_latitude",),
        "dropoff_lon": ("dropoff_longitude",),
    },
    optional={"fare": ("fare",)},
)
VARIANTS = [PORTAL, BIGQUERY]


def period_for(path: Path) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """Chicago exports are not monthly files with a fixed name, so no period is implied."""
    return None


def _utc_times(s: pd.Series) -> pd.Series:
    """BigQuery timestamps: epoch seconds or text (``2023-01-01 00:00:00 UTC``), as UTC."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(s):
        return s.dt.tz_localize("UTC")
    epoch = numbers(s) if not pd.api.types.is_numeric_dtype(s) else s.astype("float64")
    out = pd.to_datetime(epoch, unit="s", utc=True, errors="coerce")
    text = s.astype("string").str.strip().str.replace(r"\s*UTC$", "", regex=True)
    todo = out.isna() & epoch.isna() & text.notna()
    if todo.any():
        out.loc[todo] = pd.to_datetime(text[todo], format=ISO, utc=True, errors="coerce")
    return out


def to_trips(raw: pd.DataFrame, city: City, source_name: str) -> Mapped:
    """Canonical trip rows from a Chicago taxi trips table.

    Args:
        raw: The file as read.
        city: The catalog city the trips are stored under (its slug and currency are used).
        source_name: The file name; rows without a trip id get one derived from it and the row number.

    Returns:
        The canonical rows (not yet validated) and the name of the layout found.

    Raises:
        TripSchemaError: The columns match neither layout.
    """
    variant, col = match_variant(raw, VARIANTS, source_name, "Chicago taxi trips")
    raw = raw.reset_index(drop=True)
    if variant is PORTAL:
        start = local_to_utc(parse_times(raw[col["start"]], (PORTAL_FORMAT, ISO)), SOURCE_TZ)
        end = local_to_utc(parse_times(raw[col["end"]], (PORTAL_FORMAT, ISO)), SOURCE_TZ)
    else:
        start, end = _utc_times(raw[col["start"]]), _utc_times(raw[col["end"]])

    seconds = numbers(raw[col["seconds"]])
    duration = seconds.fillna((end - start).dt.total_seconds())
    same_slot = (end == start) & (seconds > 0)
    dropoff = end.where(~same_slot, start + pd.to_timedelta(seconds, unit="s"))

    coords = {c: numbers(raw[col[c]]) for c in _COORDS}
    straight = pd.Series(
        haversine_km(
            coords["pickup_lat"].to_numpy(),
            coords["pickup_lon"].to_numpy(),
            coords["dropoff_lat"].to_numpy(),
            coords["dropoff_lon"].to_numpy(),
        ),
        index=raw.index,
    )
    metered = numbers(raw[col["miles"]]) * MILE_KM
    # A meter reading of 0 is usually a meter not switched on, so the straight line is the better lower bound.
    distance = metered.where(metered > 0, straight.where(straight.notna(), metered))

    ids = raw[col["trip_id"]].astype("string").str.strip()
    ids = ids.where(ids.fillna("") != "", pd.Series(row_ids("chi", source_name, len(raw)).to_numpy(), dtype="string"))
    fare = numbers(raw[col["fare"]]) if "fare" in col else pd.Series(np.nan, index=raw.index)
    trips = pd.DataFrame(
        {
            "city": city.slug,
            "trip_id": ids.astype(object),
            "pickup_ts": start,
            "dropoff_ts": dropoff,
            "pickup_zone": zone_ids(raw[col["pickup_zone"]]),
            "dropoff_zone": zone_ids(raw[col["dropoff_zone"]]),
            **coords,
            "distance_km": distance,
            "duration_s": duration,
            "fare": fare,
            "currency": city.currency,
        }
    )
    return Mapped(trips, variant.name)
