"""cityml's ASOF offline store returns what Feast's stock DuckDB store returns, row for row.

Training sets come from ``cityml.features.feast_asof.AsofDuckDBOfflineStore`` (``feature_store.yaml``);
Feast's own DuckDB store is the reference for point-in-time semantics. Both run here through
``FeatureStore.get_historical_features`` on the same registry and tables, over entity rows that
sit on the edges: exactly at a feature timestamp, exactly at and just past the TTL, before any
feature row, unknown zones, repeated rows, naive timestamps, and a feature row restated later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from feast import FeatureStore
from feast.errors import FeastEntityDFMissingColumnsError

from cityml.catalog import load_catalog
from cityml.data.synth import generate_city
from cityml.data.trips import read_trips, write_trips
from cityml.features.feast_asof import AsofRetrievalJob
from cityml.features.feature_tables import build_feature_tables
from cityml.features.featurestore import apply, entity_columns, get_store, service_feature_names
from cityml.settings import Settings

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class World:
    settings: Settings
    key: str  # the zone of the restated row
    stamp: pd.Timestamp  # and its hour
    before: float  # that zone's trips in the row before it within the TTL (NaN if none)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from tests.conftest import SMALL_CATALOG

    s = Settings(home=tmp_path_factory.mktemp("asof") / "var", catalog_path=SMALL_CATALOG)
    catalog = load_catalog(s.catalog_path)
    for i, city in enumerate(catalog.cities[:2]):
        write_trips(s.trips_dir, generate_city(city, date(2026, 3, 1), 3, seed=11 + i))
    build_feature_tables(s.trips_dir, s.features_dir)
    # A restated row: same zone and hour as an existing one, created later, other values.
    # Feast's semantics keep the latest created; the ASOF store must too. It is a row whose zone
    # has no newer row for more than the 3 h TTL, so that entity rows can sit on the TTL's edge.
    path = s.features_dir / "zone_hour.parquet"
    table = pd.read_parquet(path).sort_values(["zone_key", "event_timestamp"], ignore_index=True)
    gap = table.groupby("zone_key")["event_timestamp"].shift(-1) - table["event_timestamp"]
    at = int(np.flatnonzero((gap > pd.Timedelta(hours=4)).to_numpy())[0])
    restated = table.iloc[[at]].copy()
    previous = table.iloc[at - 1] if at > 0 else None
    before = (
        float(previous["zone_trips_1h"])
        if previous is not None
        and previous["zone_key"] == restated["zone_key"].iloc[0]
        and restated["event_timestamp"].iloc[0] - previous["event_timestamp"] <= pd.Timedelta(hours=3)
        else float("nan")
    )
    restated["created"] = restated["created"] + pd.Timedelta(minutes=5)
    restated["zone_trips_1h"] = 999
    restated["zone_mean_speed_kmh"] = 1.5
    # Written first, so that a join that merely takes the last row in file order gets it wrong.
    pd.concat([restated, table], ignore_index=True).to_parquet(path, index=False)
    apply(s)
    return World(s, restated["zone_key"].iloc[0], restated["event_timestamp"].iloc[0], before)


def _stock_store(s: Settings, work: Path) -> FeatureStore:
    """The same repo and registry with Feast's own DuckDB offline store."""
    config = yaml.safe_load(get_store(s).repo_path.joinpath("feature_store.yaml").read_text())
    config["offline_store"] = {"type": "duckdb"}
    path = work / "feature_store.stock.yaml"
    path.write_text(yaml.safe_dump(config))
    return FeatureStore(repo_path=str(s.feast_repo_path), fs_yaml_file=path)


def _entities(w: World) -> pd.DataFrame:
    """Trips at their pickup times, plus rows placed on every edge of the join."""
    trips = read_trips(w.settings.trips_dir)
    base = entity_columns(trips).assign(event_timestamp=trips["pickup_ts"].astype("datetime64[us, UTC]"))
    key, stamp = w.key, w.stamp
    other = base.iloc[0]
    edges = []
    for offset in [*EDGES.values(), "-30D"]:  # zone_traffic's TTL is 3 h
        edges.append({**other.to_dict(), "pickup_zone_key": key, "event_timestamp": stamp + pd.Timedelta(offset)})
    edges.append({**other.to_dict(), "pickup_zone_key": "nowhere:z99", "dropoff_zone_key": "nowhere:z98"})
    edges.append({**other.to_dict(), "city": "atlantis"})
    frame = pd.concat([pd.DataFrame(edges), base, base.head(20)], ignore_index=True)  # the last 20 repeat rows
    return frame.assign(row_id=np.arange(len(frame)))


#: The first rows of ``_entities``: the restated zone row's timestamp plus these offsets.
EDGES = {"at": "0s", "just after": "1us", "at the TTL": "3h", "past the TTL": "3h1us", "just before": "-1us"}


def _compare(ours: pd.DataFrame, stock: pd.DataFrame, columns: list[str]) -> None:
    assert len(ours) == len(stock)
    a = ours.set_index("row_id").sort_index()
    b = stock.set_index("row_id").sort_index()
    assert a.index.equals(b.index)
    for column in columns:
        x, y = a[column].to_numpy(dtype="float64"), b[column].to_numpy(dtype="float64")
        same = np.isclose(x, y, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert same.all(), f"{column}: {int((~same).sum())} of {len(x)} differ, e.g. row {a.index[~same][0]}"
    assert (a["event_timestamp"] == b["event_timestamp"]).all()


@pytest.mark.parametrize("service_name", ["eta_v1", "price_v1"])
def test_same_rows_and_values_as_feasts_duckdb_store(world: World, tmp_path: Path, service_name: str) -> None:
    ours_store = get_store(world.settings)
    stock_store = _stock_store(world.settings, tmp_path)
    service = ours_store.get_feature_service(service_name)
    entity = _entities(world)

    job = ours_store.get_historical_features(entity_df=entity.copy(), features=service, full_feature_names=True)
    assert isinstance(job, AsofRetrievalJob)  # feature_store.yaml selects the ASOF store
    ours = job.to_df()
    stock = stock_store.get_historical_features(
        entity_df=entity.copy(), features=stock_store.get_feature_service(service_name), full_feature_names=True
    ).to_df()

    columns = service_feature_names(service)
    _compare(ours, stock, columns)
    edges = ours.set_index("row_id").sort_index()["pickup__zone_trips_1h"].iloc[: len(EDGES) + 1]
    got = dict(zip([*EDGES, "a month before"], edges.tolist(), strict=True))
    assert got["at"] == got["just after"] == got["at the TTL"] == 999  # the restated row, not the first version
    assert np.isnan(got["past the TTL"]) and np.isnan(got["a month before"])
    assert got["just before"] == pytest.approx(world.before, nan_ok=True)  # the previous row, not the restated


def test_naive_entity_timestamps_are_utc(world: World) -> None:
    store = get_store(world.settings)
    service = store.get_feature_service("eta_v1")
    entity = _entities(world)
    naive = entity.assign(event_timestamp=entity["event_timestamp"].dt.tz_localize(None))
    a = store.get_historical_features(entity_df=naive, features=service, full_feature_names=True).to_df()
    b = store.get_historical_features(entity_df=entity, features=service, full_feature_names=True).to_df()
    _compare(a, b, service_feature_names(service))


def test_an_entity_frame_without_a_join_key_is_refused_by_name(world: World) -> None:
    store = get_store(world.settings)
    entity = _entities(world).drop(columns="dropoff_zone_key")
    with pytest.raises(FeastEntityDFMissingColumnsError, match="dropoff_zone_key"):
        store.get_historical_features(
            entity_df=entity, features=store.get_feature_service("eta_v1"), full_feature_names=True
        ).to_df()


@pytest.mark.parametrize("service_name", ["eta_v2", "price_v2"])
def test_one_citys_rows_read_only_its_key_range_and_answer_as_the_stock_store(
    world: World, tmp_path: Path, service_name: str
) -> None:
    """A retrain task of one city reads the feature rows of that city's keys only (cityml's tables are sorted
    by ``<city>:...`` keys), and Feast's own store, which reads everything, gets the same values."""
    ours_store = get_store(world.settings)
    stock_store = _stock_store(world.settings, tmp_path)
    entity = _entities(world)
    city = entity["city"].iloc[-1]
    entity = entity[(entity["city"] == city) & entity["pickup_zone_key"].str.startswith(f"{city}:")]
    assert 0 < len(entity) < len(_entities(world))
    job = ours_store.get_historical_features(
        entity_df=entity.copy(), features=ours_store.get_feature_service(service_name), full_feature_names=True
    )
    assert f"BETWEEN '{city}:" in job.to_sql()  # every zone view reads its key range, not the whole table
    stock = stock_store.get_historical_features(
        entity_df=entity.copy(), features=stock_store.get_feature_service(service_name), full_feature_names=True
    ).to_df()
    _compare(job.to_df(), stock, service_feature_names(ours_store.get_feature_service(service_name)))
