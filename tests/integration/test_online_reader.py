"""cityml's online reader against Feast's own ``get_online_features``: the same vectors, faults degraded.

Both stores a user would run (SQLite, Redis) are materialized for real from generated trips; the
reader must give what Feast's Python API gives, with the training TTLs applied at pickup time, on
thousands of rows; a dead Redis must answer "missing" at once, never raise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import redis

from cityml.catalog import load_catalog
from cityml.data.synth import generate_city
from cityml.data.trips import read_trips, write_trips
from cityml.features.feature_tables import build_feature_tables
from cityml.features.featurestore import apply, entity_columns, get_store, materialize
from cityml.features.online import OnlineFeatures, OnlineReader
from cityml.settings import Settings
from tests.conftest import require_service

pytestmark = pytest.mark.integration
REDIS_DB = 10


def _feast_path(store: object, service: object, trips: pd.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """What serving did before the reader: Feast's get_online_features, TTL dropped at pickup time.

    Also which rows lack a view's row within its TTL (no timestamp, or an old one).
    """
    raw = store.get_online_features(  # type: ignore[attr-defined]
        features=service, entity_rows=entity_columns(trips).to_dict("records"), full_feature_names=True
    ).to_dict(include_event_timestamps=True)
    at = ((trips["pickup_ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy()
    out = {}
    missing = np.zeros(len(trips), dtype=bool)
    for p in service.feature_view_projections:  # type: ignore[attr-defined]
        ttl = store.get_feature_view(p.name).ttl  # type: ignore[attr-defined]
        for f in p.features:
            name = f"{p.name_to_use()}__{f.name}"
            values = pd.to_numeric(pd.Series(raw[name], dtype="object"), errors="coerce").to_numpy(dtype="float64")
            stamps = pd.to_numeric(pd.Series(raw[name + "__ts"], dtype="object"), errors="coerce").to_numpy()
            absent = np.isnan(stamps) | (stamps <= 0)
            if ttl:
                absent |= at - np.nan_to_num(stamps) > ttl.total_seconds()
                values = np.where(absent, np.nan, values)
            missing |= absent
            out[name] = values
    return out, missing


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    from tests.conftest import SMALL_CATALOG

    s = Settings(home=tmp_path_factory.mktemp(request.param) / "var", catalog_path=SMALL_CATALOG)
    if request.param == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
        s = s.model_copy(update={"online_store": "redis", "redis_url": f"127.0.0.1:6379,db={REDIS_DB}"})
    catalog = load_catalog(s.catalog_path)
    for slug in ("alpha", "beta-city"):
        write_trips(s.trips_dir, generate_city(catalog.get(slug), date(2026, 3, 1), 10, seed=3))
    build_feature_tables(s.trips_dir, s.features_dir)
    apply(s)
    trips = read_trips(s.trips_dir)
    materialize(s, end=(trips["pickup_ts"].max() - timedelta(hours=30)).ceil("h").to_pydatetime())
    yield s


@pytest.mark.parametrize("service", ["eta_v1", "eta_v2"])
def test_the_reader_gives_what_feasts_online_api_gives(world: Settings, service: str) -> None:
    store = get_store(world)
    trips = read_trips(world.trips_dir)
    # Pickups around the materialized end: some within every TTL, some past the 2-3 h ones.
    end = trips["pickup_ts"].max() - pd.Timedelta(hours=30)
    near = trips[
        (trips["pickup_ts"] > end - pd.Timedelta(hours=8)) & (trips["pickup_ts"] < end + pd.Timedelta(hours=6))
    ]
    rows = pd.concat([near.sample(min(2500, len(near)), random_state=1), trips.sample(500, random_state=2)])
    rows = rows.reset_index(drop=True)
    fs = store.get_feature_service(service)
    expected, expected_missing = _feast_path(store, fs, rows)
    reader = OnlineReader(store, fs)
    keys = entity_columns(rows).to_dict("list")
    at = ((rows["pickup_ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy()
    got = reader.read(keys, at)
    assert got.error is None and list(got.columns) == list(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(got.columns[name], values, rtol=0, atol=1e-9, equal_nan=True, err_msg=name)
    np.testing.assert_array_equal(got.missing, expected_missing)
    assert 0 < expected_missing.sum() < len(rows)  # the check saw both kinds of rows

    # A request's few rows take the row-by-row fill: the same values, row for row.
    for start in range(0, 400, 3):
        part = slice(start, start + 3)
        few = reader.read({k: v[part] for k, v in keys.items()}, at[part])
        for name, values in expected.items():
            np.testing.assert_allclose(few.columns[name], values[part], rtol=0, atol=1e-9, equal_nan=True)
        np.testing.assert_array_equal(few.missing, expected_missing[part])


def test_a_dead_redis_degrades_at_once_and_is_left_alone_for_a_while(tmp_path: pytest.TempPathFactory) -> None:
    from tests.conftest import SMALL_CATALOG

    s = Settings(home=tmp_path / "var", catalog_path=SMALL_CATALOG)  # type: ignore[operator]
    s.feast_state_dir.mkdir(parents=True)
    apply(s)  # a registry (on disk); the online store is what is dead
    dead = s.model_copy(update={"online_store": "redis", "redis_url": "127.0.0.1:1"})
    online = OnlineFeatures(get_store(dead), retry_s=30)
    reader = online.reader("eta_v2")
    keys = {
        "city": ["alpha"],
        "pickup_zone_key": ["alpha:z01"],
        "dropoff_zone_key": ["alpha:z02"],
        "zone_pair_key": ["alpha:z01>z02"],
    }
    t = time.perf_counter()
    first = reader.read(keys, np.array([1_770_000_000]))
    assert first.error is not None and first.missing.all()
    assert all(np.isnan(v).all() for v in first.columns.values())
    second = reader.read(keys, np.array([1_770_000_000]))
    assert second.missing.all() and "skipped" in (second.error or "")
    # Not a timing assertion: two reads that waited on redis-py's retries would take seconds each.
    assert time.perf_counter() - t < 30
