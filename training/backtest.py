"""Backtests: score the registered champion (and the fleet model, and the baseline) on any window."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cityml.catalog import load_catalog
from cityml.data.trips import read_trips, utc
from cityml.features.featurestore import get_store
from cityml.naming import GLOBAL, LABELS, feature_service_name, model_name
from cityml.registry import client, load_champion
from cityml.settings import Settings
from training.datasets import historical_model_input
from training.evaluate import RatePerKm, mae


def evaluate_champion(settings: Settings, city: str, target: str, start: datetime, end: datetime) -> dict[str, Any]:
    """Champion, global and baseline MAE on trips picked up in ``[start, end]``, point-in-time features."""
    catalog = load_catalog(settings.catalog_path)
    catalog.get(city)
    label = LABELS[target]
    c = client(settings)
    name = model_name(target, city)
    champion = load_champion(c, name)
    if champion is None:
        raise LookupError(f"{name} has no champion")
    trips = read_trips(settings.trips_dir, [city], start=start)
    trips = trips[(trips["pickup_ts"] <= utc(end)) & trips[label].notna()].reset_index(drop=True)
    if trips.empty:
        raise ValueError(f"no {city} trips with a {label} between {start} and {end}")
    store = get_store(settings)
    service = store.get_feature_service(champion.tags.get("feature_service", feature_service_name(target)))
    frame = historical_model_input(store, service, trips, catalog.contexts())
    frame[label] = trips[label]
    y = trips[label].to_numpy()
    run = c.get_run(champion.run_id) if champion.run_id else None
    rate = float(run.data.params.get("baseline_rate_per_km", "nan")) if run else float("nan")
    fleet = load_champion(c, model_name(target, GLOBAL))
    return {
        "city": city,
        "target": target,
        "model": name,
        "version": champion.version,
        "from": utc(start).isoformat(),
        "to": utc(end).isoformat(),
        "rows": len(trips),
        "mae": mae(y, champion.predict(frame)),
        "baseline_mae": mae(y, RatePerKm(rate).predict(frame)),
        "global_mae": (
            mae(y, fleet.predict(frame.assign(city=city))) if fleet is not None and fleet.serves(city) else None
        ),
    }
