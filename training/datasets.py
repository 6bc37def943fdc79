"""Training sets: stored trips joined point-in-time with the target's Feast FeatureService."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from cityml.catalog import Catalog, load_catalog
from cityml.data.trips import read_trips
from cityml.features.featurestore import entity_columns, get_store, service_feature_names
from cityml.features.request_features import REQUEST_FEATURES, CityContexts, request_features
from cityml.naming import LABELS, feature_service_name
from cityml.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore


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
    return build_training_sets(settings, [city], target, start, until)[city]


def build_training_sets(
    settings: Settings,
    cities: list[str],
    target: str,
    start: datetime | None = None,
    until: datetime | None = None,
    *,
    store: FeatureStore | None = None,
    catalog: Catalog | None = None,
) -> dict[str, TrainingSet]:
    """:func:`build_training_set` for many cities with one read and one point-in-time join.

    A fleet run needs every city's set twice (the global model, then the city's own): joining
    them all at once costs about as much as joining one. A run passes the ``store`` and ``catalog`` it opened.
    """
    catalog = catalog or load_catalog(settings.catalog_path)
    label = LABELS[target]
    service_name = feature_service_name(target)
    trips = read_trips(settings.trips_dir, cities, start=start, end=until)
    trips = trips[trips[label].notna()]
    store = store or get_store(settings)
    service = store.get_feature_service(service_name)
    features = [*REQUEST_FEATURES, *service_feature_names(service)]
    columns = ["trip_id", "event_timestamp", *features, label]
    if trips.empty:
        empty = pd.DataFrame(columns=columns)
        return {city: TrainingSet(empty, features, label, service_name) for city in cities}

    tz = catalog.contexts()
    joined = historical_model_input(store, service, trips, tz)
    frame = pd.concat([trips[["trip_id", "city"]], joined, trips[[label]]], axis=1)
    # A trip of unknown length (no points, no distance) says nothing about a pace or a fare per km,
    # and models predict nothing for one: it is left out of training and of the test window alike.
    frame = frame[frame["distance_km"].notna()]
    frame = frame.sort_values(["event_timestamp", "trip_id"], kind="stable")
    by_city = {city: rows for city, rows in frame.groupby("city", sort=False, observed=True)}
    empty = frame.iloc[:0]
    return {
        city: TrainingSet(by_city.get(city, empty)[columns].reset_index(drop=True), features, label, service_name)
        for city in cities
    }


def historical_model_input(
    store: FeatureStore, service: FeatureService, trips: pd.DataFrame, contexts: CityContexts
) -> pd.DataFrame:
    """What a model sees for each trip at its pickup time, on ``trips``'s index.

    Request-time features from ``cityml.features.request_features`` plus the service's features joined
    point-in-time by Feast (the latest row at or before pickup, within the view's TTL), and the
    pickup time as ``event_timestamp``.
    """
    key = pd.Series(range(len(trips)), index=trips.index, name="_row")
    entity_df = pd.concat(
        [
            key,
            entity_columns(trips),
            trips["pickup_ts"].astype("datetime64[us, UTC]").rename("event_timestamp"),
        ],
        axis=1,
    )
    joined = store.get_historical_features(entity_df=entity_df, features=service, full_feature_names=True).to_df()
    joined = joined.set_index("_row").reindex(key.to_numpy())
    joined.index = trips.index
    names = service_feature_names(service)
    return pd.concat([request_features(trips, contexts), joined[names], entity_df["event_timestamp"]], axis=1)
