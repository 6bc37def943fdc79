"""The canonical trip row every importer and the generator produce (see DESIGN.md)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

TRIP_SCHEMA = pa.schema(
    [
        ("city", pa.string()),
        ("trip_id", pa.string()),
        ("pickup_ts", pa.timestamp("us", tz="UTC")),
        ("dropoff_ts", pa.timestamp("us", tz="UTC")),
        ("pickup_zone", pa.string()),
        ("dropoff_zone", pa.string()),
        ("pickup_lat", pa.float64()),
        ("pickup_lon", pa.float64()),
        ("dropoff_lat", pa.float64()),
        ("dropoff_lon", pa.float64()),
        ("distance_km", pa.float64()),
        ("duration_s", pa.float64()),
        ("fare", pa.float64()),
        ("currency", pa.string()),
    ]
)
TRIP_COLUMNS: list[str] = TRIP_SCHEMA.names


class SchemaError(ValueError):
    """A table does not have the canonical trip columns; the message names them."""


def check_columns(df: pd.DataFrame, source: str) -> None:
    """Refuse a table whose columns are not the canonical ones, naming what is missing."""
    missing = [c for c in TRIP_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"{source}: missing trip columns {', '.join(missing)}")


def to_canonical(df: pd.DataFrame) -> pa.Table:
    """Cast a frame holding the canonical columns to the trip schema (extra columns dropped)."""
    return pa.Table.from_pandas(df[TRIP_COLUMNS], schema=TRIP_SCHEMA, preserve_index=False)
