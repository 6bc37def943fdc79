"""The Redis online store, selected by configuration only, materialized and read back for real."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest
import redis

from cityml.catalog import load_catalog
from cityml.data.synth import generate_city
from cityml.data.trips import read_trips, write_trips
from cityml.features.feature_tables import build_feature_tables
from cityml.features.featurestore import apply, entity_columns, get_store, materialize
from cityml.settings import Settings
from tests.conftest import require_service

pytestmark = pytest.mark.integration
REDIS_DB = 9  # a database of its own on the shared server; flushed before use


@pytest.fixture
def redis_settings(small_settings: Settings) -> Settings:
    require_service("Redis", "127.0.0.1", 6379)
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    return small_settings.model_copy(update={"online_store": "redis", "redis_url": f"127.0.0.1:6379,db={REDIS_DB}"})


def test_materialize_into_redis_and_read_back(redis_settings: Settings) -> None:
    s = redis_settings
    city = load_catalog(s.catalog_path).get("alpha")
    write_trips(s.trips_dir, generate_city(city, date.today() - timedelta(days=3), 3, seed=5))
    build_feature_tables(s.trips_dir, s.features_dir)
    assert apply(s) == ["demand_v1", "eta_v1", "eta_v2", "price_v1", "price_v2"]
    trips = read_trips(s.trips_dir, ["alpha"])
    end = trips["dropoff_ts"].max().ceil("h").to_pydatetime()
    first = materialize(s, end=end)
    assert all("->" in v for v in first.values())
    again = materialize(s, end=end)
    assert all(v.startswith("up to date") for v in again.values()), again  # idempotent

    assert redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).dbsize() > 0
    store = get_store(s)
    rows = entity_columns(trips.tail(50)).to_dict("records")
    online = store.get_online_features(
        features=store.get_feature_service("eta_v1"), entity_rows=rows, full_feature_names=True
    ).to_df()
    assert online["city_demand__city_trips_1h"].notna().all()
    # The value read back is the last hour's row of the offline table.
    city_hour = pd.read_parquet(s.features_dir / "city_hour.parquet")
    last = city_hour[(city_hour["city"] == "alpha") & (city_hour["event_timestamp"] <= end)].iloc[-1]
    assert online["city_demand__city_trips_1h"].iloc[0] == last["city_trips_1h"]
    assert online["pickup__zone_mean_speed_kmh"].notna().mean() > 0.5
