"""A retrain of many cities holds a chunk of cities' training sets at a time, never the whole catalog's.

The units themselves (joins, fits, the registry) are replaced by recorders: these tests are about the order
of the run, what each unit is given and what a failing chunk takes down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

import training.fleet as fleet
from cityml.settings import Settings
from training.results import TrainResult


@dataclass
class _Catalog:
    slugs: list[str]

    def get(self, slug: str) -> str:
        if slug not in self.slugs:
            raise KeyError(f"unknown city {slug!r}")
        return slug


@dataclass
class _Ctx:
    settings: Settings
    catalog: _Catalog
    client: Any = None
    experiment: str = "0"

    def champion(self, name: str) -> None:
        return None

    def for_worker(self, **update: Any) -> _Ctx:
        return self


@dataclass
class _Recorder:
    joins: list[list[str]] = field(default_factory=list)
    global_given: list[Any] = field(default_factory=list)
    fitted: list[tuple[str, Any]] = field(default_factory=list)
    bad: str = ""


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    rec = _Recorder()

    def city_sets(ctx: Any, cities: list[str], targets: list[str]) -> dict[str, dict[str, str]]:
        rec.joins.append(list(cities))
        if rec.bad in cities:
            raise OSError(f"feature table unreadable for {rec.bad}")
        return {c: {t: f"{t}-set-of-{c}" for t in targets} for c in cities}

    def train_global(ctx: Any, target: str, given: Any) -> TrainResult:
        rec.global_given.append(given)
        per_city = {c: 1.0 for c in ctx.catalog.slugs}
        return TrainResult(f"{target}-global", "global", target, "promoted", "ok", per_city_mae=per_city)

    def prepare_city(ctx: Any, city: str, targets: list[str], inputs: Any) -> list[tuple[TrainResult, None]]:
        rec.fitted.append((city, inputs))
        return [(TrainResult(f"{t}-{city}", city, t, "promoted", "ok"), None) for t in targets]

    monkeypatch.setattr(fleet, "city_sets", city_sets)
    monkeypatch.setattr(fleet, "train_global", train_global)
    monkeypatch.setattr(fleet, "prepare_city", prepare_city)
    monkeypatch.setattr(fleet, "publish", lambda ctx, result, reg: result)
    return rec


def _ctx(tmp_path: Any, cities: list[str], chunk: int) -> Any:
    return _Ctx(Settings(home=tmp_path, train_chunk_cities=chunk), _Catalog(cities))


def test_a_catalog_larger_than_a_chunk_is_joined_and_fitted_a_chunk_at_a_time(rec: _Recorder, tmp_path: Any) -> None:
    cities = [f"c{i}" for i in range(7)]
    results = fleet.train_fleet(_ctx(tmp_path, cities, 3), cities, ["eta", "price"])
    assert rec.joins == [["c0", "c1", "c2"], ["c3", "c4", "c5"], ["c6"]]
    assert rec.global_given == [None, None]  # the global unit joins the catalog itself, chunk by chunk
    assert [c for c, _ in rec.fitted] == cities
    _, inputs = rec.fitted[4]
    assert inputs.sets == {"eta": "eta-set-of-c4", "price": "price-set-of-c4"}
    assert inputs.global_mae == {"eta": 1.0, "price": 1.0}  # the gate still compares each city with the global
    assert [r.model for r in results[:2]] == ["eta-global", "price-global"]
    assert len(results) == 2 + 2 * 7 and all(r.status == "promoted" for r in results)


def test_a_run_that_fits_in_one_chunk_joins_once_and_shares_the_sets(rec: _Recorder, tmp_path: Any) -> None:
    cities = ["a", "b", "c"]
    fleet.train_fleet(_ctx(tmp_path, cities, 50), cities, ["eta"])
    assert rec.joins == [cities]
    assert rec.global_given == [{"a": "eta-set-of-a", "b": "eta-set-of-b", "c": "eta-set-of-c"}]
    assert [inputs.sets for _, inputs in rec.fitted] == [{"eta": f"eta-set-of-{c}"} for c in cities]


def test_a_chunk_whose_join_fails_fails_its_cities_alone(rec: _Recorder, tmp_path: Any) -> None:
    cities = [f"c{i}" for i in range(5)]
    rec.bad = "c3"
    results = fleet.train_fleet(_ctx(tmp_path, cities, 2), cities, ["eta"], with_global=False)
    by_city = {r.city: r for r in results}
    assert [by_city[c].status for c in cities] == ["promoted", "promoted", "failed", "failed", "promoted"]
    assert "feature table unreadable for c3" in by_city["c2"].reason
    assert rec.global_given == []


def test_an_unknown_city_is_refused_before_any_work(rec: _Recorder, tmp_path: Any) -> None:
    with pytest.raises(KeyError, match="gotham"):
        fleet.train_fleet(_ctx(tmp_path, ["a"], 2), ["a", "gotham"], ["eta"])
    assert rec.joins == []


def test_the_chunk_size_is_a_setting_of_at_least_one_city(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="train_chunk_cities"):
        Settings(home=tmp_path, train_chunk_cities=0)


def test_a_mapped_tasks_cities_are_joined_a_chunk_at_a_time_and_a_join_error_raises(
    rec: _Recorder, tmp_path: Any
) -> None:
    """The DAG's city task (``join_errors="raise"``): a join reads its cities' key range of every feature table, so
    joining each city of a 16-city chunk alone read those tables 16 times (~5 s a city at 1,000 cities); a join
    that fails raises, so Airflow retries the task instead of registering nothing for its cities."""
    cities = [f"c{i}" for i in range(5)]
    results = fleet.train_fleet(
        _ctx(tmp_path, cities, 2), cities, ["eta", "price"], with_global=False, join_errors="raise"
    )
    assert rec.joins == [["c0", "c1"], ["c2", "c3"], ["c4"]]
    assert [(c, inputs.sets) for c, inputs in rec.fitted][3] == (
        "c3",
        {"eta": "eta-set-of-c3", "price": "price-set-of-c3"},
    )
    assert [r.model for r in results] == [f"{t}-{c}" for c in cities for t in ("eta", "price")]
    rec.bad = "c3"
    with pytest.raises(OSError, match="unreadable for c3"):
        fleet.train_fleet(_ctx(tmp_path, cities, 2), cities, ["eta"], with_global=False, join_errors="raise")
    with pytest.raises(OSError, match="unreadable for c3"):  # one chunk: the sets are joined before any fit
        fleet.train_fleet(_ctx(tmp_path, cities, 8), cities, ["eta"], with_global=False, join_errors="raise")
