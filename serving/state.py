"""What the running server holds: settings, catalog, online features, champions, prediction log, metrics."""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

from cityml.features.online import OnlineFeatures
from cityml.prediction_log import PredictionLog
from cityml.settings import Settings
from serving.batching import Coalescer
from serving.hot_trees import HotTrees
from serving.model_store import ModelStore, loads
from serving.predicting import Answer, Job, answer
from serving.schemas import MAX_INSTANCES
from serving.signals import ReloadSignals
from serving.webhook import Deliveries

#: Set by ``cityml serve --workers N`` (N > 1): scrapes sum every worker's metrics.
MULTIPROCESS_ENV = "CITYML_METRICS_MULTIPROCESS"


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process).

    Under several uvicorn workers (``cityml serve --workers`` sets :data:`MULTIPROCESS_ENV` and
    ``PROMETHEUS_MULTIPROC_DIR``) every worker writes its values to that folder and a scrape of any
    worker sums them all. ``PROMETHEUS_MULTIPROC_DIR`` alone does not say so: Feast sets it in any
    process that imports ``feast.metrics`` (a materialization does).
    """

    def __init__(self) -> None:
        self.multiprocess = os.environ.get(MULTIPROCESS_ENV) == "1"
        self.registry = CollectorRegistry()
        self.predictions = Counter(
            "cityml_predictions_total", "Predictions served", ["target", "model", "fallback"], registry=self.registry
        )
        self.degraded = Counter(
            "cityml_predictions_degraded_total",
            "Predictions made with an online feature missing, stale or unreadable",
            ["target", "reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "cityml_predict_errors_total", "Refused predict requests", ["reason"], registry=self.registry
        )
        self.server_errors = Counter(
            "cityml_server_errors_total", "Requests that ended in a 500", ["path"], registry=self.registry
        )
        self.latency = Histogram(
            "cityml_predict_seconds",
            "Predict request latency",
            ["target"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.coalesced = Histogram(
            "cityml_predict_requests_per_run",
            "Predict requests that went through the models together (serving.batching)",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.reloads = Counter("cityml_model_reloads_total", "Champion versions loaded", registry=self.registry)
        self.stale = Gauge(
            "cityml_models_stale",
            "Champion versions not served (failed load or self-test)",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.served = Gauge(
            "cityml_models_served", "Models served", registry=self.registry, multiprocess_mode="livemin"
        )
        self.log_pending = Gauge(
            "cityml_prediction_log_pending",
            "Predictions not written yet",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.log_dropped = Counter(
            "cityml_prediction_log_dropped_total", "Predictions not logged: the queue was full", registry=self.registry
        )

    def scrape(self) -> bytes:
        """The text exposition: this process's metrics, or every worker's when there are several."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        summed = CollectorRegistry()
        multiprocess.MultiProcessCollector(summed)
        return generate_latest(summed)


@dataclass
class AppState:
    settings: Settings
    online: OnlineFeatures
    models: ModelStore
    log: PredictionLog
    metrics: Metrics
    signals: ReloadSignals | None = None  # the other workers, under ``cityml serve --workers N``
    deliveries: Deliveries = field(default_factory=Deliveries)  # the registry webhook's, on this worker
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    hot: HotTrees = field(init=False, repr=False)  # flattens the trees of models that answer
    #: The model stage of predict requests, shared by those that arrive together.
    predicts: Coalescer[Job, Answer] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.hot = HotTrees(self.settings.flat_models)
        self.predicts = Coalescer(
            functools.partial(answer, self), size=len, max_rows=MAX_INSTANCES, observe=self.metrics.coalesced.observe
        )

    async def reload(self, names: set[str] | None = None, tell_others: bool = False) -> dict[str, str]:
        """Load the champions that moved (``names`` only, or all), count the loads; the one way every
        caller reloads (startup, polling, a webhook, ``/admin/reload``, another worker's note).

        One at a time, the others waiting on the event loop: a reload holds the store for as long as
        its loads take (44 s for 2,000 models), and each waiting in a worker thread took one of the
        pool's 40 until a burst of webhook deliveries left none for the routes that need one.

        ``tell_others``: the request reached this worker only; the other workers follow.
        """
        async with self._reloading:
            changes = await run_in_threadpool(self.models.refresh, names)
        self.metrics.reloads.inc(loads(changes))
        if tell_others and self.signals is not None:
            self.signals.tell(names)
        return changes
