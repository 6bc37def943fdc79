"""Request instances to model rows: zones from coordinates, refusals that name the field.

The feature vector itself is built by ``cityml.online.model_input`` (online Feast features with
the training TTLs, plus ``cityml.request_features``), shared with the parity check.
"""

from __future__ import annotations

import pandas as pd

from cityml.catalog import Catalog


class RequestError(ValueError):
    """A request instance cannot be answered; ``field`` names what is wrong."""

    def __init__(self, index: int, field: str, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.field = field


def resolve_zones(df: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """Fill missing zones from coordinates with the city's zone grid; refuse what cannot be placed."""
    df = df.copy()
    for i, row in df.iterrows():
        city = catalog.get(row["city"])
        for end in ("pickup", "dropoff"):
            if pd.notna(row.get(f"{end}_zone")):
                continue
            zone = city.zone_of(row[f"{end}_lat"], row[f"{end}_lon"])
            if zone is None:
                raise RequestError(
                    int(str(i)),
                    f"{end}_zone",
                    f"{end} point ({row[f'{end}_lat']}, {row[f'{end}_lon']}) is outside {city.slug}'s zones; "
                    f"give {end}_zone",
                )
            df.at[i, f"{end}_zone"] = zone
    return df
