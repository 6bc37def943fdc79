"""Access to the Feast feature store configured by the settings (embedded SQLite or Redis online)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cityml.naming import zone_key, zone_pair_key
from cityml.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

log = logging.getLogger(__name__)

#: Projections named ``...history`` (``zone_pair_history``, ``pickup_history``...) hold trailing
#: 28-day statistics: their values drift slowly by construction, and while a city's first 28 days
#: fill the window they narrow. Drift scores them but does not judge them (``monitoring.drift``).
HISTORY_MARK = "history__"


def is_history_feature(name: str) -> bool:
    """Whether a model input is a trailing-window statistic (see :data:`HISTORY_MARK`)."""
    return HISTORY_MARK in name


#: First materialization of a view without a TTL loads this much history.
NO_TTL_LOOKBACK = timedelta(days=365)


def _export_env(settings: Settings) -> None:
    """Feast reads its YAML placeholders and our source paths from the environment."""
    os.environ.update(settings.feast_env())
    settings.feast_state_dir.mkdir(parents=True, exist_ok=True)


def get_store(settings: Settings) -> FeatureStore:
    """A FeatureStore over ``feature_repo/`` with the online store the settings choose."""
    from feast import FeatureStore

    _export_env(settings)
    return FeatureStore(repo_path=str(settings.feast_repo_path), fs_yaml_file=settings.feast_yaml)


def apply(settings: Settings) -> list[str]:
    """Register every definition in ``feature_repo/`` with ``feast apply``. Returns service names.

    Runs the Feast CLI, exactly as a user would, so that Feast imports the repo's modules
    the way it expects (from the repo folder) and this process stays clean.
    """
    _export_env(settings)
    feast = Path(sys.executable).with_name("feast")
    cmd = [str(feast), "-c", str(settings.feast_repo_path), "-f", str(settings.feast_yaml), "apply"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"feast apply failed in {settings.feast_repo_path}:\n{proc.stderr[-4000:]}")
    log.info("feast apply: %s", proc.stdout.strip().replace("\n", "; "))
    store = get_store(settings)
    return sorted(s.name for s in store.list_feature_services())


def feature_service(store: FeatureStore, name: str) -> FeatureService:
    return store.get_feature_service(name)


def materialize(settings: Settings, end: datetime, start: datetime | None = None) -> dict[str, str]:
    """Load feature values up to ``end`` into the online store; returns what each view did.

    Without ``start`` it is incremental and idempotent: each view continues from where its last
    run stopped (Feast keeps that in the registry) and a view already at or past ``end`` is left
    alone. A view never materialized starts at ``end - ttl``: older rows are past their TTL, so
    serving must not see them (training does not either). Feast's own first incremental run would
    start at ``now - ttl`` instead, which loses everything when ``end`` is in the past.
    """
    store = get_store(settings)
    done: dict[str, str] = {}
    for view in store.list_feature_views():
        last = view.most_recent_end_time
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        begin = start or last or end - (view.ttl or NO_TTL_LOOKBACK)
        if start is None and last is not None and last >= end:
            done[view.name] = f"up to date ({last.isoformat()})"
            continue
        with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress; stdout is for --json
            store.materialize(start_date=begin, end_date=end, feature_views=[view.name])
        done[view.name] = f"{begin.isoformat()} -> {end.isoformat()}"
    return done


def service_feature_names(service: FeatureService) -> list[str]:
    """Column names a service's features get with ``full_feature_names=True``, in service order."""
    return [
        f"{projection.name_to_use()}__{feature.name}"
        for projection in service.feature_view_projections
        for feature in projection.features
    ]


def entity_keys(cities: Iterable[Any], pickups: Iterable[Any], dropoffs: Iterable[Any]) -> dict[str, list[str]]:
    """The Feast join keys of trips or requests: city, pickup and dropoff zone, and the zone pair."""
    cities = [str(c) for c in cities]
    return {
        "city": cities,
        "pickup_zone_key": [zone_key(c, z) for c, z in zip(cities, pickups, strict=True)],
        "dropoff_zone_key": [zone_key(c, z) for c, z in zip(cities, dropoffs, strict=True)],
        "zone_pair_key": [zone_pair_key(c, p, d) for c, p, d in zip(cities, pickups, dropoffs, strict=True)],
    }


def entity_columns(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`entity_keys` of a frame with city and zones, on its index."""
    return pd.DataFrame(entity_keys(df["city"], df["pickup_zone"], df["dropoff_zone"]), index=df.index)
