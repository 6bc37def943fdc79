"""Every city's champion in memory, swapped atomically when an alias moves (hot reload).

A version serves only after it loaded and passed its self-test (``cityml.registry.self_test``):
it repeats the predictions recorded at registration, from the inputs recorded with them, and its
FeatureService gives every feature it needs. A version that fails leaves the one before it
serving and is reported as stale. A registry that fails to answer changes nothing held; only a
registry that says "no champion" unloads a model.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from cityml.catalog import Catalog, load_catalog
from cityml.features.request_features import REQUEST_FEATURES, ZONE_FEATURES
from cityml.modeling import CITY_FEATURE
from cityml.naming import GLOBAL, TARGETS, model_name
from cityml.registry import (
    LoadedModel,
    RegistryError,
    champion,
    champions,
    choose_serving,
    client,
    load_version,
    redact,
    self_test,
)
from cityml.settings import Settings
from cityml.shards import shard_of

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

#: Names of a FeatureService's columns, by service name (``cityml.features.online.OnlineReader.names``).
ServiceColumns = Callable[[str], list[str]]


@dataclass
class Served:
    city: str
    target: str
    model: LoadedModel
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    self_test: str = "passed"

    @cached_property
    def zones(self) -> frozenset[str] | None:
        """The zones the model learned (None when it takes no zone)."""
        codes = self.model.encoder.codes
        learned = [set(codes[z]) for z in ZONE_FEATURES if z in codes]
        return frozenset().union(*learned) if learned else None


@dataclass
class Stale:
    """A champion version that is not served, and why."""

    name: str
    version: str
    reason: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _usable_cpus() -> int:
    """The CPUs this process may run on (a container's CPU set), where the platform says; else all of them."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 2


def loads(changes: dict[str, str]) -> int:
    """How many versions a :meth:`ModelStore.refresh` put into service (not unloads, not refusals)."""
    return sum(1 for v in changes.values() if v.startswith("v"))


class ModelStore:
    """Champions keyed by (target, city), plus the fleet's global models when registered."""

    def __init__(self, settings: Settings, service_columns: ServiceColumns | None = None) -> None:
        self._settings = settings
        self._service_columns = service_columns
        self._workers = settings.load_workers or min(8, _usable_cpus())
        self._models: dict[tuple[str, str], Served] = {}
        self._lock = threading.Lock()
        self._bases: dict[tuple[str, str], LoadedModel] = {}  # fleet versions pooled city models start from
        self.stale: dict[str, Stale] = {}
        self.registry_error: str | None = None
        self.catalog: Catalog = load_catalog(settings.catalog_path)
        self.loaded_once = False

    def get(self, target: str, city: str) -> tuple[Served | None, str | None]:
        """The model answering for a city, and the fallback reason when it is not the city's own.

        The fleet model stands in only for cities it learned: it cannot put a prediction back
        in the units (the currency) of a city it has no rate for.
        """
        models = self._models
        own, fleet = models.get((target, city)), models.get((target, GLOBAL))
        return choose_serving(target, city, own, fleet, lambda held: held.model.serves(city))

    def shard_of(self, city: str) -> int:
        """The serving shard that holds ``city`` (this one when the fleet is not sharded)."""
        return shard_of(city, self._settings.serve_shards)

    def owns(self, city: str) -> bool:
        """Whether this server holds ``city``'s models (the global fallbacks are held by every shard)."""
        return city == GLOBAL or self.shard_of(city) == self._settings.serve_shard

    def all(self) -> list[Served]:
        return sorted(self._models.values(), key=lambda s: (s.city, s.target))

    def refresh(self, only: set[str] | None = None) -> dict[str, str]:
        """Load champions whose alias points at a version other than the one in memory.

        ``only``: model names to look at (a registry event names one); default every city's.
        Returns ``{model name: what happened}`` for the models that changed or failed.
        """
        with self._lock:
            c = client(self._settings)
            self.catalog = load_catalog(self._settings.catalog_path)  # a new city serves without a restart
            current = dict(self._models)
            changes: dict[str, str] = {}
            wanted: list[tuple[str, str, str, ModelVersion | str]] = []
            errors = []
            listed: dict[str, ModelVersion | str] | None = None
            if only is None:  # every model: one paginated search, then only the versions that changed
                try:
                    listed = champions(c)
                except RegistryError as exc:  # keep what is held: a failing registry is not "no champion"
                    errors.append(str(exc))
            for city in [*filter(self.owns, self.catalog.slugs), GLOBAL]:
                for target in TARGETS:
                    name = model_name(target, city)
                    if (only is not None and name not in only) or (only is None and listed is None):
                        continue
                    mv: ModelVersion | str | None
                    if listed is not None:
                        mv = listed.get(name)
                    else:
                        try:
                            mv = champion(c, name)
                        except RegistryError as exc:
                            errors.append(str(exc))
                            continue
                    held = current.get((target, city))
                    if mv is None:
                        if held is not None:
                            del current[(target, city)]
                            changes[name] = "unloaded (no champion)"
                        self.stale.pop(name, None)
                        continue
                    version = mv if isinstance(mv, str) else str(mv.version)
                    failed = self.stale.get(name)
                    if (held is not None and held.model.version == version) or (
                        failed is not None and failed.version == version
                    ):
                        continue
                    wanted.append((city, target, name, mv))
            with ThreadPoolExecutor(max_workers=max(1, min(self._workers, len(wanted)))) as pool:
                results = list(pool.map(lambda w: self._load(c, w[2], w[3]), wanted))
            for (slug, kind, name, mv), (loaded, reason, transient) in zip(wanted, results, strict=True):
                version = mv if isinstance(mv, str) else str(mv.version)
                if transient:  # the registry failed mid-load: not the version's fault, try again next time
                    errors.append(str(reason))
                    continue
                if loaded is None:
                    self.stale[name] = Stale(name, version, reason or "failed")
                    changes[name] = f"not served: v{version}: {reason}"
                    continue
                current[(kind, slug)] = Served(city=slug, target=kind, model=loaded)
                self.stale.pop(name, None)
                changes[name] = f"v{loaded.version}"
            self._models = current  # one assignment: readers see the old or the new set, never half
            self.registry_error = f"{len(errors)} lookups failed; first: {errors[0]}" if errors else None
            if errors:
                log.warning("model store: registry errors, keeping what is served: %s", self.registry_error)
            self.loaded_once = True
            if changes:
                log.info("model store: %s", changes)
            return changes

    def _load(self, c: MlflowClient, model: str, mv: ModelVersion | str) -> tuple[LoadedModel | None, str | None, bool]:
        """Load one version (an entity, or a number to look up) and self-test it.

        (model, None, False) when it may serve; (None, why, False) when it must not;
        (None, why, True) when the registry failed before the version could be read.
        """
        if isinstance(mv, str):
            try:
                mv = c.get_model_version(model, mv)
            except Exception as exc:  # noqa: BLE001 -- MLflow or the network: the registry, not the version
                return None, f"registry failed on {model} v{mv}: {type(exc).__name__}: {redact(str(exc))[:300]}", True
        name = f"{mv.name} v{mv.version}"
        try:
            loaded = load_version(c, mv, self._bases)
            reason = self._check_features(loaded) or self_test(loaded)
        except RegistryError as exc:  # the registry failed mid-load: try the version again next refresh
            return None, f"{name}: {exc}", True
        except Exception as exc:  # noqa: BLE001 -- any failure to load keeps the old version serving
            reason = f"load failed: {type(exc).__name__}: {redact(str(exc))[:300]}"  # shown on /readyz
        if reason is not None:
            log.error("%s is champion but does not serve: %s", name, reason)
            return None, reason, False
        return loaded, None, False

    def _check_features(self, model: LoadedModel) -> str | None:
        """Why the model's features cannot be served: its FeatureService lacks some, or it has none."""
        if self._service_columns is None:
            return None
        if not model.feature_service:
            return "no feature_service tag"
        try:
            served = {*self._service_columns(model.feature_service), *REQUEST_FEATURES, CITY_FEATURE}
        except Exception as exc:  # noqa: BLE001 -- Feast raises its own errors for an unknown service
            return f"feature service {model.feature_service!r} cannot be read: {type(exc).__name__}: {exc}"
        lacking = [f for f in model.features if f not in served]
        if lacking:
            return f"{model.feature_service} does not give {', '.join(lacking)}"
        return None
