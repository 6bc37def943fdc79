"""City of Chicago "Taxi Trips" records.

Three layouts are accepted, column names matched case-insensitively:

- the Chicago Data Portal export (column titles ``Trip ID``, ``Trip Start Timestamp``, ``Trip End Timestamp``,
  ``Trip Seconds``, ``Trip Miles``, ``Pickup Community Area``, ``Dropoff Community Area``, ``Fare``,
  ``Pickup Centroid Latitude`` ...). Its timestamps are text like ``01/01/2023 12:00:00 AM`` in Chicago wall-clock
  time (America/Chicago), and its numbers may carry ``$`` and thousands separators;
- the public BigQuery table ``chicago_taxi_trips.taxi_trips`` (``unique_key``, ``trip_start_timestamp``,
  ``trip_seconds``, ``trip_miles``, ``pickup_community_area``, ``pickup_latitude`` ...). Its timestamps, text or
  epoch seconds, are taken as UTC, which is what the BigQuery TIMESTAMP type means. (Some analyses report that the
  table holds Chicago wall-clock times labelled UTC; if that matters for a dataset, convert before importing.)
- a subset of that table's columns, as in widely shared Chicago taxi samples: no ``unique_key`` and no
  ``trip_end_timestamp``; ``trip_start_timestamp`` (epoch seconds or text, UTC as above) and ``trip_seconds`` are
  required, with the community-area or the coordinate columns (or both); ``trip_miles`` and ``fare`` may be absent.
  The dropoff is ``trip_seconds`` after the pickup, and as there is no trip id (a ``unique_key``, if present, is
  used) one is hashed from the row's content (city, start, seconds, miles, zones, coordinates, fare, and ``taxi_id``
  when present), so the same row imported again, from any file, replaces its trip. Many rows of these samples lack
  community areas or coordinates: a row with neither at one end is quarantined (``no_location``), not the file
  refused.

All three publish times rounded to 15 minutes for privacy, so the trip's own ``Trip Seconds`` is the duration, and
where start and end fall in the same 15-minute slot the dropoff is put ``Trip Seconds`` after the pickup
(otherwise every short trip would look like it ends before it starts). Community areas are the zones; the centroid
coordinates are kept; where metered miles are missing or zero the distance is the straight line between the
centroids, and where those are missing too the metered miles stand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cityml.catalog import City
from cityml.data.importers.common import (
    ISO,
    MILE_KM,
    PORTAL_FORMAT,
    UNPARSED_FARE,
    Mapped,
    Variant,
    content_ids,
    match_variant,
    numbers,
    utc_times,
    zone_ids,
)
from cityml.geo import haversine_km

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
# The BigQuery table's columns for a trip's length and places, shared by the table and its subset.
_BQ_TRIP = {
    "miles": ("trip_miles",),
    "pickup_zone": ("pickup_community_area",),
    "dropoff_zone": ("dropoff_community_area",),
    "pickup_lat": ("pickup_latitude",),
    "pickup_lon": ("pickup_longitude",),
    "dropoff_lat": ("dropoff_latitude",),
    "dropoff_lon": ("dropoff_longitude",),
}
BIGQUERY = Variant(
    name="bigquery",
    required={
        "trip_id": ("unique_key",),
        "start": ("trip_start_timestamp",),
        "end": ("trip_end_timestamp",),
        "seconds": ("trip_seconds",),
        **_BQ_TRIP,
    },
    optional={"fare": ("fare",)},
)
# Tried after BIGQUERY, whose columns include all of these.
BIGQUERY_SUBSET = Variant(
    name="bigquery_subset",
    required={"start": ("trip_start_timestamp",), "seconds": ("trip_seconds",)},
    optional={"trip_id": ("unique_key",), "taxi_id": ("taxi_id",), **_BQ_TRIP, "fare": ("fare",)},
    any_of=(("pickup_zone", "dropoff_zone"), _COORDS),
)
VARIANTS = [PORTAL, BIGQUERY, BIGQUERY_SUBSET]


def period_for(path: Path) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """Chicago exports are not monthly files with a fixed name, so no period is implied."""
    return None


MAX_EPOCH_S = 7.0e9  # epoch seconds up to the 2190s; beyond, not a time
MAX_TRIP_S = 1.0e7  # 115 days; the validation's speed and duration checks judge what is below


def _utc_times(s: pd.Series) -> pd.Series:
    """BigQuery timestamps: epoch seconds or text (``2023-01-01 00:00:00 UTC``), as UTC."""
    if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s):
        return utc_times(s, "UTC")
    epoch = numbers(s) if not pd.api.types.is_numeric_dtype(s) else s.astype("float64")
    epoch = epoch.where(epoch.abs() < MAX_EPOCH_S)  # 1e20 s: not a time, and past what to_datetime can hold
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
        source_name: The file name, named in errors. Rows without a trip id get one hashed from their content.

    Returns:
        The canonical rows (not yet validated) and the name of the layout found.

    Raises:
        TripSchemaError: The columns match none of the layouts.
    """
    variant, col = match_variant(raw, VARIANTS, source_name, "Chicago taxi trips")
    raw = raw.reset_index(drop=True)

    def column(role: str) -> pd.Series:
        # Only the subset layout may lack a role's column; its values are then all missing.
        return raw[col[role]] if role in col else pd.Series(np.nan, index=raw.index)

    seconds = numbers(column("seconds"))
    seconds = seconds.where(seconds.abs() < MAX_TRIP_S)  # inf or 1e30 s is no duration: the row's times decide
    if variant is PORTAL:
        start = utc_times(column("start"), SOURCE_TZ, (PORTAL_FORMAT, ISO))
        end = utc_times(column("end"), SOURCE_TZ, (PORTAL_FORMAT, ISO))
    elif variant is BIGQUERY:
        start, end = _utc_times(column("start")), _utc_times(column("end"))
    else:
        start = _utc_times(column("start"))
        end = start + pd.to_timedelta(seconds, unit="s")

    duration = seconds.fillna((end - start).dt.total_seconds())
    same_slot = (end == start) & (seconds > 0)
    dropoff = end.where(~same_slot, start + pd.to_timedelta(seconds, unit="s"))

    coords = {c: numbers(column(c)) for c in _COORDS}
    straight = pd.Series(
        haversine_km(
            coords["pickup_lat"].to_numpy(),
            coords["pickup_lon"].to_numpy(),
            coords["dropoff_lat"].to_numpy(),
            coords["dropoff_lon"].to_numpy(),
        ),
        index=raw.index,
    )
    miles = numbers(column("miles"))
    metered = miles * MILE_KM
    # A meter reading of 0 is usually a meter not switched on, so the straight line is the better lower bound.
    distance = metered.where(metered > 0, straight.where(straight.notna(), metered))
    zones = {z: zone_ids(column(z)) for z in ("pickup_zone", "dropoff_zone")}
    fare = numbers(column("fare"), UNPARSED_FARE)

    # Where the source gives no trip id (the subset layout, or a blank id), what the row says makes one, so the
    # same row gets the same id from any file.
    content = {"start": start, "seconds": seconds, "miles": miles, **zones, **coords, "fare": fare}
    taxi = column("taxi_id").astype("string").str.strip()
    fallback = content_ids("chi", {"city": pd.Series(city.slug, index=raw.index), **content, "taxi_id": taxi})
    ids = column("trip_id").astype("string").str.strip()
    ids = ids.where(ids.fillna("") != "", pd.Series(fallback.to_numpy(), dtype="string"))
    trips = pd.DataFrame(
        {
            "city": city.slug,
            "trip_id": ids.astype(object),
            "pickup_ts": start,
            "dropoff_ts": dropoff,
            **zones,
            **coords,
            "distance_km": distance,
            "duration_s": duration,
            "fare": fare,
            "currency": city.currency,
        }
    )
    return Mapped(trips, variant.name)
