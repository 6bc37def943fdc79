"""The model input for a batch of requests: online Feast features plus request-time features.

Online features come from the same FeatureService the model was trained with (its version tag);
request-time features come from ``cityml.request_features``, the function training used.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import pandas as pd

from cityml.catalog import Catalog
from cityml.featurestore import entity_columns
from cityml.request_features import request_features

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore


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


@lru_cache(maxsize=32)
def _service(store: FeatureStore, name: str) -> FeatureService:
    return store.get_feature_service(name)


def model_input(store: FeatureStore, service_name: str, df: pd.DataFrame, timezones: dict[str, str]) -> pd.DataFrame:
    """Feature rows, on ``df``'s index, for requests with city, pickup_ts, zones and coordinates."""
    entities = entity_columns(df)
    online = store.get_online_features(
        features=_service(store, service_name),
        entity_rows=entities.to_dict("records"),
        full_feature_names=True,
    ).to_df()
    online.index = df.index
    # Missing online values come back as None; the model wants float NaN, as in training.
    online = online.drop(columns=list(entities.columns)).apply(pd.to_numeric, errors="coerce").astype("float64")
    return pd.concat([request_features(df, timezones), online], axis=1)
