"""Training sets: stored trips joined point-in-time with the target's Feast FeatureService."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from cityml.catalog import load_catalog
from cityml.featurestore import entity_columns, get_store, service_feature_names
from cityml.naming import LABELS, feature_service_name
from cityml.request_features import REQUEST_FEATURES, request_features
from cityml.settings import Settings
from cityml.trips import read_trips


@dataclass
class TrainingSet:
    """Rows sorted by pickup time: ids, features, label."""

    frame: pd.DataFrame
    features: list[str]
    label: str
    feature_service: str

    @property
    def rows(self) -> int:
        return len(self.frame)


def build_training_set(
    settings: Settings,
    city: str,
    target: str,
    start: datetime | None = None,
    until: datetime | None = None,
) -> TrainingSet:
    """Trips of ``city`` with ``start <= pickup_ts < until`` and their point-in-time features.

    The entity timestamp is the pickup time: Feast joins, for each trip, the latest feature
    row stamped at or before it, within the view's TTL.
    """
    catalog = load_catalog(settings.catalog_path)
    label = LABELS[target]
    service_name = feature_service_name(target)
    trips = read_trips(settings.trips_dir, [city], start=start, end=until)
    trips = trips[trips[label].notna()]
    store = get_store(settings)
    service = store.get_feature_service(service_name)
    fs_features = service_feature_names(service)
    features = [*REQUEST_FEATURES, *fs_features]
    if trips.empty:
        return TrainingSet(
            pd.DataFrame(columns=["trip_id", "event_timestamp", *features, label]), features, label, service_name
        )

    tz = {c.slug: c.timezone for c in catalog.cities}
    entity_df = pd.concat(
        [
            trips[["trip_id"]],
            entity_columns(trips),
            trips[["pickup_ts"]].rename(columns={"pickup_ts": "event_timestamp"}),
            request_features(trips, tz),
            trips[[label]],
        ],
        axis=1,
    )
    entity_df["event_timestamp"] = entity_df["event_timestamp"].astype("datetime64[us, UTC]")
    joined = store.get_historical_features(entity_df=entity_df, features=service, full_feature_names=True).to_df()
    joined = joined.sort_values(["event_timestamp", "trip_id"], kind="stable").reset_index(drop=True)
    frame = joined[["trip_id", "event_timestamp", *features, label]]
    return TrainingSet(frame, features, label, service_name)
