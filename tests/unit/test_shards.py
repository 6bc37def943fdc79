"""The sharding rule (cityml/shards.py): where a city is served, what moves when a shard is added, what a shard's
server loads and answers, and the proxy's generated routes."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cityml.settings import Settings
from cityml.shards import nginx_routes, shard_of
from serving.model_store import ModelStore

CITIES = [f"c{i:05d}" for i in range(10_000)]
#: Shards of 4 as the rule gave them when it was written (one city on each shard).
PINNED = {"lisbon": 3, "nyc": 2, "cairo": 1, "jakarta": 0}


def test_every_city_has_one_shard_and_shards_share_the_cities() -> None:
    assert {shard_of(c, 1) for c in CITIES[:100]} == {0}
    for shards in (2, 4, 8, 16):
        counts = collections.Counter(shard_of(c, shards) for c in CITIES)
        assert set(counts) == set(range(shards))
        fair = len(CITIES) / shards
        assert 0.8 * fair < min(counts.values()) <= max(counts.values()) < 1.2 * fair
    # Pinned: servers and a proxy's routes written by another version of cityml must agree on every city.
    assert {c: shard_of(c, 4) for c in ("lisbon", "nyc", "cairo", "jakarta")} == PINNED
    with pytest.raises(ValueError, match="shards must be >= 1"):
        shard_of("lisbon", 0)


@pytest.mark.parametrize("shards", [1, 2, 4, 7])
def test_adding_a_shard_moves_only_cities_to_it_about_one_in_r_plus_one(shards: int) -> None:
    before = {c: shard_of(c, shards) for c in CITIES}
    after = {c: shard_of(c, shards + 1) for c in CITIES}
    moved = [c for c in CITIES if before[c] != after[c]]
    assert {after[c] for c in moved} == {shards}  # to the new shard, never between old ones
    assert abs(len(moved) / len(CITIES) - 1 / (shards + 1)) < 0.05


def test_a_shard_out_of_range_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="serve_shard: 3 is not a shard of serve_shards=3"):
        Settings(home=tmp_path, serve_shards=3, serve_shard=3)
    with pytest.raises(ValidationError, match="serve_shards"):
        Settings(home=tmp_path, serve_shards=0)


def _catalog(tmp_path: Path, cities: list[str]) -> Path:
    import yaml

    from cityml.data.synth import random_catalog

    path = tmp_path / "cities.yaml"
    path.write_text(yaml.safe_dump(random_catalog(cities, seed=1, trips_per_day=10)))
    return path


def test_a_shard_loads_its_cities_champions_and_the_global_ones_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a registry where every city has both champions: each shard asks for its own cities' and the global
    models, and the shards together load every model once (the global ones on each)."""
    import serving.model_store as ms

    cities = [f"city-{i:02d}" for i in range(40)]
    catalog = _catalog(tmp_path, cities)
    registry = {f"{t}-{c}": "1" for c in [*cities, "global"] for t in ("eta", "price")}
    monkeypatch.setattr(ms, "client", lambda settings: None)
    monkeypatch.setattr(ms, "champions", lambda c: dict(registry))
    loaded: dict[int, set[str]] = {}
    for shard in range(3):
        store = ModelStore(Settings(home=tmp_path, catalog_path=catalog, serve_shards=3, serve_shard=shard))
        asked: list[str] = []

        def load(c: Any, name: str, mv: Any, asked: list[str] = asked) -> tuple[None, str, bool]:
            asked.append(name)
            return None, "not loaded in this test", False

        monkeypatch.setattr(store, "_load", load)
        store.refresh()
        loaded[shard] = set(asked)
        own = {c for c in cities if shard_of(c, 3) == shard}
        assert loaded[shard] == {f"{t}-{c}" for c in [*own, "global"] for t in ("eta", "price")}
        assert store.owns("global") and all(store.owns(c) == (c in own) for c in cities)
    city_models = [n for names in loaded.values() for n in names if not n.endswith("-global")]
    assert sorted(city_models) == sorted(n for n in registry if not n.endswith("-global"))


def test_the_proxy_routes_name_every_city_with_its_shard() -> None:
    text = nginx_routes(CITIES[:300], 4, server="api-{shard}:8000")
    for shard in range(4):
        assert f"upstream cityml_shard_{shard} {{\n    server api-{shard}:8000;" in text
    entries = [line.split() for line in text.splitlines() if line.startswith("    c")]
    assert {city: upstream.rstrip(";") for city, upstream in entries} == {
        c: f"cityml_shard_{shard_of(c, 4)}" for c in CITIES[:300]
    }
    with pytest.raises(ValueError, match="must contain"):
        nginx_routes(CITIES[:3], 2, server="api:8000")
    resolving = nginx_routes(CITIES[:3], 2, resolve=True)
    assert "    zone cityml_shard_1 64k;\n    server api-1:8000 resolve;" in resolving
