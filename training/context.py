"""What one retrain run opens once and passes down: settings, the catalog, the Feast store, the MLflow client,
the models it has loaded, and the run's window and labels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cityml.catalog import Catalog, load_catalog
from cityml.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore
    from mlflow import MlflowClient

    from cityml.registry import LoadedModel


@dataclass
class RunContext:
    """Built once per Airflow task or CLI run (:meth:`open`); every stage of a retrain takes it.

    ``until``/``start``: trips picked up in ``[start, until)`` are the run's data (None: unbounded).
    ``forced_by``: who asked to promote whatever the gate says (empty: nobody; the gate decides).
    A pool worker gets a copy without the open store and client (:meth:`for_worker`), which it reopens lazily.
    """

    settings: Settings
    catalog: Catalog
    run_label: str = "cli"
    until: datetime | None = None
    start: datetime | None = None
    forced_by: str = ""
    _store: FeatureStore | None = field(default=None, repr=False)
    _client: MlflowClient | None = field(default=None, repr=False)
    _models: dict[tuple[str, str], LoadedModel] = field(default_factory=dict, repr=False)
    _experiment: str | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        run_label: str = "cli",
        until: datetime | None = None,
        train_days: int = 0,
        forced_by: str = "",
    ) -> RunContext:
        """A run's context. ``train_days`` > 0 keeps only the last that many days before ``until`` (now when
        ``until`` is not given)."""
        if train_days < 0:
            raise ValueError(f"train_days must be >= 0, got {train_days}")
        if train_days and until is None:
            until = datetime.now(UTC)
        start = until - timedelta(days=train_days) if train_days and until is not None else None
        return cls(settings, load_catalog(settings.catalog_path), run_label, until, start, forced_by)

    @property
    def force_promote(self) -> bool:
        return bool(self.forced_by)

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            from cityml.features.featurestore import get_store

            self._store = get_store(self.settings)
        return self._store

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from cityml.registry import client

            self._client = client(self.settings)
        return self._client

    @property
    def experiment(self) -> str:
        """The cityml experiment's id, looked up (or created) once per run, not once per registered version."""
        if self._experiment is None:
            from training.registry import experiment_id

            self._experiment = experiment_id(self.client, self.settings)
        return self._experiment

    def champion(self, name: str) -> LoadedModel | None:
        """``name@champion``, loaded once per version in this run: every city is compared with the same global
        model, which is downloaded and parsed once."""
        from cityml.registry import champion, load_version

        mv = champion(self.client, name)
        if mv is None:
            return None
        key = (name, str(mv.version))
        if key not in self._models:
            self._models[key] = load_version(self.client, mv)
        return self._models[key]

    def for_worker(self, **settings_update: Any) -> RunContext:
        """A copy to send to a pool worker: same run, nothing open, settings updated (its share of threads)."""
        return replace(
            self,
            settings=self.settings.model_copy(update=settings_update),
            _store=None,
            _client=None,
            _models={},
            _experiment=None,
        )

    def describe_window(self) -> str:
        """The run's data window in words, for its summary."""
        if self.until is None:
            return "all stored trips"
        since = f"from {self.start:%Y-%m-%d %H:%M} " if self.start is not None else ""
        return f"trips picked up {since}before {self.until:%Y-%m-%d %H:%M} UTC"
