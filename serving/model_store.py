"""Every city's champion in memory, swapped atomically when an alias moves (hot reload)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cityml.catalog import load_catalog
from cityml.naming import GLOBAL, TARGETS, model_name
from cityml.registry import LoadedModel, champion, client, load_champion
from cityml.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Served:
    city: str
    target: str
    model: LoadedModel
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class ModelStore:
    """Champions keyed by (target, city), plus the fleet's global models when registered."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[tuple[str, str], Served] = {}
        self._lock = threading.Lock()
        self._bases: dict[tuple[str, str], LoadedModel] = {}  # fleet versions pooled city models start from
        self.loaded_once = False

    def get(self, target: str, city: str) -> tuple[Served | None, str | None]:
        """The model answering for a city, and the fallback reason when it is not the city's own.

        The fleet model stands in only for cities it learned: it cannot put a prediction back
        in the units (the currency) of a city it has no rate for.
        """
        models = self._models
        own = models.get((target, city))
        if own is not None:
            return own, None
        fleet = models.get((target, GLOBAL))
        if fleet is not None and fleet.model.serves(city):
            return fleet, f"{model_name(target, city)} has no champion"
        return None, None

    def all(self) -> list[Served]:
        return sorted(self._models.values(), key=lambda s: (s.city, s.target))

    def refresh(self) -> dict[str, str]:
        """Load champions whose alias points at a version other than the one in memory.

        Returns ``{model name: what happened}`` for the models that changed.
        """
        with self._lock:
            c = client(self._settings)
            cities = [*load_catalog(self._settings.catalog_path).slugs, GLOBAL]
            current = dict(self._models)
            changes: dict[str, str] = {}
            for city in cities:
                for target in TARGETS:
                    name = model_name(target, city)
                    mv = champion(c, name)
                    held = current.get((target, city))
                    if mv is None:
                        if held is not None:
                            del current[(target, city)]
                            changes[name] = "unloaded (no champion)"
                        continue
                    if held is not None and held.model.version == str(mv.version):
                        continue
                    try:
                        loaded = load_champion(c, name, self._bases)
                    except Exception as exc:
                        log.exception("loading %s failed; keeping what is served", name)
                        changes[name] = f"load failed: {exc}"
                        continue
                    if loaded is not None:
                        current[(target, city)] = Served(city=city, target=target, model=loaded)
                        changes[name] = f"v{loaded.version}"
            self._models = current  # one assignment: readers see the old or the new set, never half
            self.loaded_once = True
            if changes:
                log.info("model store: %s", changes)
            return changes
