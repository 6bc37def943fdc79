"""Synthetic cityml state for the benchmarks: trips, feature tables and an applied Feast registry.

The data goes through the same code cityml runs (`generate_city`, `write_trips`,
`build_feature_tables`, `featurestore.apply`), so the feature tables have the shape and the
size per city-day that training sees.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from cityml.catalog import load_catalog
from cityml.data.synth import generate_city
from cityml.data.trips import read_trips, write_trips
from cityml.features.feature_tables import CITY_HOUR_FILE, ZONE_HOUR_FILE, build_feature_tables
from cityml.features.featurestore import apply, entity_columns
from cityml.settings import Settings

log = logging.getLogger(__name__)

START = date(2025, 1, 6)  # fixed, so the same seed gives the same tables on every run
SEED = 7
ENTITY_COLUMNS = ["row_id", "city", "pickup_zone_key", "dropoff_zone_key", "event_timestamp"]


@dataclass
class Fixture:
    """A cityml home holding trips and feature tables, with the Feast definitions applied."""

    settings: Settings
    days: int
    trips: int
    table_rows: dict[str, int]
    build_s: float

    @property
    def zone_table(self) -> Path:
        return self.settings.features_dir / ZONE_HOUR_FILE

    @property
    def city_table(self) -> Path:
        return self.settings.features_dir / CITY_HOUR_FILE

    def describe(self) -> dict[str, object]:
        return {"cities": 4, "days": self.days, "trips": self.trips, "table_rows": self.table_rows}


def build(home: Path, days: int) -> Fixture:
    """Generate every synthetic catalog city for ``days`` days under ``home`` and apply the Feast repo."""
    t0 = time.perf_counter()
    settings = Settings(home=home, online_store="sqlite")
    catalog = load_catalog(settings.catalog_path)
    trips = 0
    for city in catalog.cities:
        if city.synthetic is None:
            continue
        frame = generate_city(city, START, days, SEED)
        write_trips(settings.trips_dir, frame)
        trips += len(frame)
    rows = build_feature_tables(settings.trips_dir, settings.features_dir)
    apply(settings)
    fixture = Fixture(settings, days, trips, rows, time.perf_counter() - t0)
    log.info("fixture: %d trips, tables %s, %.1f s", trips, rows, fixture.build_s)
    return fixture


def entity_frame(settings: Settings, rows: int, seed: int = 1) -> pd.DataFrame:
    """``rows`` training entity rows: (city, zones, pickup time) of stored trips, drawn with replacement.

    ``row_id`` is a stand-in for ``trip_id`` (training sets carry one); it lets results be compared
    row by row. Timestamps are microseconds in UTC, as `training.datasets` sends them.
    """
    trips = read_trips(settings.trips_dir)
    trips = trips.dropna(subset=["pickup_zone", "dropoff_zone"])
    pick = np.random.default_rng(seed).integers(0, len(trips), rows)
    t = trips.iloc[pick].reset_index(drop=True)
    keys = entity_columns(t)
    return pd.DataFrame(
        {
            "row_id": np.arange(rows, dtype="int64"),
            "city": keys["city"],
            "pickup_zone_key": keys["pickup_zone_key"],
            "dropoff_zone_key": keys["dropoff_zone_key"],
            "event_timestamp": t["pickup_ts"].astype("datetime64[us, UTC]"),
        }
    )
