"""The retrain DAG's trigger form and plan: bad params refused by the form's schema, and a catalog of 1,500
cities planned under Airflow's mapping cap (plans only, trains nothing)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag

from cityml.data.synth import random_catalog
from cityml.settings import PROJECT_ROOT, get_settings
from training.fleet import plan_chunks


def _dag(monkeypatch: pytest.MonkeyPatch, catalog: Path) -> Any:
    monkeypatch.setenv("CITYML_CATALOG_PATH", str(catalog))
    get_settings.cache_clear()
    try:
        bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "retrain_city_models.py"))
        assert bag.import_errors == {}
        return bag.dags["retrain_city_models"]
    finally:
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def big_catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    names = [f"c{i:04d}" for i in range(1500)]
    path = tmp_path_factory.mktemp("plan") / "cities.yaml"
    path.write_text(yaml.safe_dump(random_catalog(names, seed=1, trips_per_day=10)))
    return path, names


def _validated(dag: Any, conf: dict[str, Any]) -> dict[str, Any]:
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return dict(params.validate())


def test_1500_cities_plan_under_the_mapping_cap(monkeypatch: pytest.MonkeyPatch, big_catalog: Any) -> None:
    from airflow.configuration import conf

    path, names = big_catalog
    dag = _dag(monkeypatch, path)
    assert dag.params.get_param("cities").schema["items"]["enum"] == names  # the form's pick list
    monkeypatch.setenv("CITYML_CATALOG_PATH", str(path))
    get_settings.cache_clear()
    chunks = dag.get_task("plan").python_callable(params=_validated(dag, {}))
    assert len(chunks) == get_settings().train_max_tasks < conf.getint("core", "max_map_length")
    assert [c for chunk in chunks for c in chunk] == names  # every city once, in catalog order
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1
    # The setting bounds the tasks; a run of a few cities still maps one city per task.
    monkeypatch.setenv("CITYML_TRAIN_MAX_TASKS", "1000")
    get_settings.cache_clear()
    assert len(dag.get_task("plan").python_callable(params=_validated(dag, {}))) == 1000
    picked = dag.get_task("plan").python_callable(params=_validated(dag, {"cities": names[:3]}))
    get_settings.cache_clear()
    assert picked == [[n] for n in names[:3]]


def test_chunks_are_one_city_each_while_they_fit() -> None:
    assert plan_chunks(["a", "b", "c"], max_tasks=64) == [["a"], ["b"], ["c"]]
    assert plan_chunks([f"x{i}" for i in range(10)], max_tasks=4) == [
        ["x0", "x1", "x2"],
        ["x3", "x4", "x5"],
        ["x6", "x7"],
        ["x8", "x9"],
    ]
    assert plan_chunks([], max_tasks=64) == []


def test_the_form_refuses_bad_params(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    from tests.conftest import SMALL_CATALOG

    dag = _dag(monkeypatch, SMALL_CATALOG)
    ok = _validated(dag, {"cities": ["alpha"], "targets": ["eta"], "train_days": 7, "until": "2026-03-01"})
    assert ok["cities"] == ["alpha"] and ok["force_promote"] is False
    # What the form sends for fields left empty (it lets them be: their types include null).
    empty = _validated(dag, {"cities": None, "until": None, "reason": None})
    assert empty["cities"] is None and empty["until"] is None
    for bad in (
        {"cities": ["gotham"]},  # not in the catalog
        {"cities": "alpha,beta"},  # the old free-text form
        {"cities": ["alpha", "alpha"]},
        {"targets": ["demand"]},
        {"targets": []},
        {"train_days": -1},
        {"until": "next tuesday"},
        {"until": "2026-13-01"},
        {"until": "2026-01-01T99:99"},
        {"until": "0000-00-00"},
        {"until": "2026-01-01T1"},
        {"until": "2026-01-01\n"},
        {"until": "9999-12-31T23:59:59+14:00"},
        {"force_promote": "yes"},
    ):
        with pytest.raises(ParamValidationError):
            _validated(dag, bad)


def test_a_cut_off_the_pattern_lets_through_but_no_calendar_has_fails_the_run_naming_until() -> None:
    import re

    import pendulum
    from airflow.sdk.exceptions import AirflowFailException

    from cityml.dagkit import UNTIL_PATTERN, cut_off

    for good in ("", "2026-03-01", "2026-03-01T08:30", "2026-03-01 08:30:15.5+01:00", "2026-03-01T08:30:00Z"):
        assert re.search(UNTIL_PATTERN, good), good
        if good:
            assert cut_off({"until": good})[1] == "the form"
    assert pendulum.parse(cut_off({"until": "2026-03-01T08:30+01:00"})[0]) == pendulum.datetime(2026, 3, 1, 7, 30)
    with pytest.raises(AirflowFailException, match="until: '2026-02-30' is not a date"):
        cut_off({"until": "2026-02-30"})


def test_a_catalog_broken_after_the_form_was_drawn_fails_the_plan_once_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from tests.conftest import SMALL_CATALOG

    dag = _dag(monkeypatch, SMALL_CATALOG)
    broken = tmp_path / "cities.yaml"
    broken.write_text("cities:\n  - {slug: '../x', timezone: UTC, currency: EUR, bbox: [1, 2, 3, 4]}\n")
    monkeypatch.setenv("CITYML_CATALOG_PATH", str(broken))
    get_settings.cache_clear()
    try:
        with pytest.raises(AirflowFailException, match=r"cities\.0\.slug"):  # failed, not retried
            dag.get_task("plan").python_callable(params=_validated(dag, {}))
    finally:
        get_settings.cache_clear()
