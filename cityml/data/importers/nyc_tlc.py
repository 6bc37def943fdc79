"""NYC Taxi & Limousine Commission yellow and green trip records.

Two layouts are accepted, column names matched case-insensitively:

- the official one of the monthly CSV/parquet files: ``tpep_pickup_datetime`` / ``tpep_dropoff_datetime`` (yellow)
  or ``lpep_...`` (green), ``PULocationID``, ``DOLocationID``, ``trip_distance`` (miles), ``fare_amount``;
- a snake_case one found in re-publications: ``pickup_datetime``, ``dropoff_datetime``, ``pickup_location_id``,
  ``dropoff_location_id``, ``trip_distance``, ``fare_amount``.

TLC timestamps are New York wall-clock times. Trips are located by TLC taxi zone id only (no coordinates since
mid-2016); zones 264 and 265 mean "unknown" and "outside NYC", so they count as no zone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cityml.catalog import City
from cityml.data.importers.common import (
    MILE_KM,
    UNPARSED_FARE,
    Mapped,
    Variant,
    content_ids,
    match_variant,
    month_period,
    numbers,
    utc_times,
    zone_ids,
)

SOURCE = "nyc-tlc"
SOURCE_TZ = "America/New_York"
UNKNOWN_ZONES = frozenset({"264", "265"})
FARE = ("fare_amount",)

VARIANTS = [
    Variant(
        name="tlc",
        required={
            "pickup": ("tpep_pickup_datetime", "lpep_pickup_datetime"),
            "dropoff": ("tpep_dropoff_datetime", "lpep_dropoff_datetime"),
            "pickup_zone": ("PULocationID",),
            "dropoff_zone": ("DOLocationID",),
            "miles": ("trip_distance",),
        },
        optional={"fare": FARE},
    ),
    Variant(
        name="snake_case",
        required={
            "pickup": ("pickup_datetime",),
            "dropoff": ("dropoff_datetime",),
            "pickup_zone": ("pickup_location_id",),
            "dropoff_zone": ("dropoff_location_id",),
            "miles": ("trip_distance",),
        },
        optional={"fare": FARE},
    ),
]


def period_for(path: Path) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The month a TLC file covers, ± a day, from the ``YYYY-MM`` in its official name."""
    return month_period(path.name, SOURCE_TZ)


def to_trips(raw: pd.DataFrame, city: City, source_name: str) -> Mapped:
    """Canonical trip rows from a TLC table.

    Args:
        raw: The file as read.
        city: The catalog city the trips are stored under (its slug and currency are used).
        source_name: The file name, named in errors.

    Returns:
        The canonical rows (not yet validated) and the name of the layout found.

    Raises:
        TripSchemaError: The columns match neither layout.
    """
    variant, col = match_variant(raw, VARIANTS, source_name, "NYC TLC")
    pickup = utc_times(raw[col["pickup"]], SOURCE_TZ)
    dropoff = utc_times(raw[col["dropoff"]], SOURCE_TZ)
    fare = numbers(raw[col["fare"]], UNPARSED_FARE) if "fare" in col else pd.Series(np.nan, index=raw.index)
    zones = {z: zone_ids(raw[col[z]], UNKNOWN_ZONES) for z in ("pickup_zone", "dropoff_zone")}
    km = numbers(raw[col["miles"]]) * MILE_KM
    # TLC records carry no trip id: the trip's own values make one, so the same trip from any file, under any name
    # or in either layout, is stored once.
    ids = content_ids(
        "tlc",
        {"city": pd.Series(city.slug, index=raw.index), "pickup": pickup, "dropoff": dropoff, **zones, "km": km}
        | {"fare": fare},
    )
    trips = pd.DataFrame(
        {
            "city": city.slug,
            "trip_id": ids.to_numpy(),
            "pickup_ts": pickup,
            "dropoff_ts": dropoff,
            **zones,
            "pickup_lat": np.nan,
            "pickup_lon": np.nan,
            "dropoff_lat": np.nan,
            "dropoff_lon": np.nan,
            "distance_km": km,
            "duration_s": (dropoff - pickup).dt.total_seconds(),
            "fare": fare,
            "currency": city.currency,
        },
        index=raw.index,
    )
    return Mapped(trips.reset_index(drop=True), variant.name)
