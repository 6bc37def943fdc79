"""The model input at request time: online Feast features plus request-time features.

Serving calls :func:`model_input` for every predict request; the parity check calls the same
function, so what it proves is what serving does.

Feast's online store returns the latest value it holds, however old. Training (Feast's
historical retrieval) sees a value only while it is younger than its view's TTL. To serve what
training saw, a value older than the TTL at the request's pickup time is dropped here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cityml.featurestore import entity_columns
from cityml.request_features import request_features

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

EPOCH = pd.Timestamp(0, tz="UTC")
TS_SUFFIX = "__ts"  # Feast's suffix for a feature's event timestamp (epoch seconds)


def service_ttls(store: FeatureStore, service: FeatureService) -> dict[str, timedelta | None]:
    """Output column name → TTL of the view it comes from."""
    out: dict[str, timedelta | None] = {}
    for projection in service.feature_view_projections:
        ttl = store.get_feature_view(projection.name).ttl or None
        for feature in projection.features:
            out[f"{projection.name_to_use()}__{feature.name}"] = ttl
    return out


def online_features(store: FeatureStore, service: FeatureService, df: pd.DataFrame) -> pd.DataFrame:
    """Online values of ``service`` for rows with city, zones and ``pickup_ts``, TTL applied at pickup time."""
    entities = entity_columns(df)
    raw = store.get_online_features(
        features=service, entity_rows=entities.to_dict("records"), full_feature_names=True
    ).to_dict(include_event_timestamps=True)
    # Epoch seconds, whatever the frame's datetime precision (us from parquet, ns from pandas).
    at = ((pd.to_datetime(df["pickup_ts"], utc=True) - EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype="int64")
    columns: dict[str, np.ndarray] = {}
    for name, ttl in service_ttls(store, service).items():
        # Missing values come back as None; the model wants float NaN, as in training.
        values = pd.to_numeric(pd.Series(raw[name], dtype="object"), errors="coerce").to_numpy(dtype="float64")
        if ttl is not None:
            stamps = np.asarray(raw[name + TS_SUFFIX], dtype="int64")
            values = np.where(at - stamps > ttl.total_seconds(), np.nan, values)
        columns[name] = values
    return pd.DataFrame(columns, index=df.index)


def model_input(
    store: FeatureStore, service: FeatureService, df: pd.DataFrame, timezones: dict[str, str]
) -> pd.DataFrame:
    """Feature rows, on ``df``'s index, for requests with city, pickup_ts, zones and coordinates."""
    return pd.concat([request_features(df, timezones), online_features(store, service, df)], axis=1)
