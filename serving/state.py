"""What the running server holds: settings, catalog, feature store, champions, prediction log, metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram

from cityml.catalog import Catalog
from cityml.prediction_log import PredictionLogger
from cityml.settings import Settings
from serving.model_store import ModelStore

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.predictions = Counter(
            "cityml_predictions_total", "Predictions served", ["target", "model", "fallback"], registry=self.registry
        )
        self.errors = Counter(
            "cityml_predict_errors_total", "Refused predict requests", ["reason"], registry=self.registry
        )
        self.latency = Histogram(
            "cityml_predict_seconds",
            "Predict request latency",
            ["target"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.reloads = Counter("cityml_model_reloads_total", "Champion versions loaded", registry=self.registry)


class Services:
    """FeatureService objects by name, fetched from the Feast registry once."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store
        self._cache: dict[str, FeatureService] = {}

    def get(self, name: str) -> FeatureService:
        if name not in self._cache:
            self._cache[name] = self._store.get_feature_service(name)
        return self._cache[name]


@dataclass
class AppState:
    settings: Settings
    catalog: Catalog
    store: FeatureStore
    models: ModelStore
    log: PredictionLogger
    metrics: Metrics
    services: Services
