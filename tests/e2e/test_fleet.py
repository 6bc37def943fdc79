"""A fleet run over 20 synthetic cities: 2 with too little data, 1 whose labels are shuffled noise.

The good cities are promoted; the three others get no champion and are served by the global
model, with the reasons in the gate report. ``cityml evaluate`` reproduces a gate test MAE, and
a rollback moves the alias back, recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cityml.catalog import load_catalog
from cityml.data.synth import generate_city, random_catalog
from cityml.data.trips import write_trips
from cityml.features.feature_tables import build_feature_tables
from cityml.features.featurestore import apply
from cityml.fleet import list_models
from cityml.settings import Settings, get_settings

pytestmark = pytest.mark.e2e
TINY = ("tiny-a", "tiny-b")
NOISE = "noise"


def _catalog(path: Path) -> list[str]:
    """17 good cities, 2 tiny ones and one whose labels will be shuffled."""
    names = [f"city-{i:02d}" for i in range(17)] + [*TINY, NOISE]
    doc = random_catalog(names, seed=0, trips_per_day=400)
    for city in doc["cities"]:  # type: ignore[union-attr]
        if city["slug"] in TINY:
            city["synthetic"]["trips_per_day"] = 10
    path.write_text(yaml.safe_dump(doc))
    return names


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[str, Any]]]:
    from training.context import RunContext
    from training.fleet import train_fleet
    from training.report import write_gate_report

    root = tmp_path_factory.mktemp("fleet")
    catalog_path = root / "cities.yaml"
    names = _catalog(catalog_path)
    # Chunks of 8 of the 20 cities: the global unit joins the catalog chunk by chunk, the city units are joined
    # and fitted a chunk at a time through one pool (what a large catalog does), and the outcomes stay as below.
    settings = Settings(home=root / "var", catalog_path=catalog_path, gate_parity_sample=3, train_chunk_cities=8)
    start = date.today() - timedelta(days=16)
    for city in load_catalog(catalog_path).cities:
        trips = generate_city(city, start, 16, seed=11)
        if city.slug == NOISE:  # a bad data day: outcomes shuffled across trips
            rng = np.random.default_rng(1)
            order = rng.permutation(len(trips))
            trips["duration_s"] = trips["duration_s"].to_numpy()[order]
            trips["fare"] = trips["fare"].to_numpy()[rng.permutation(len(trips))]
            trips["dropoff_ts"] = trips["pickup_ts"] + trips["duration_s"].astype("timedelta64[s]")
        write_trips(settings.trips_dir, trips)
    build_feature_tables(settings.trips_dir, settings.features_dir)
    apply(settings)
    results = train_fleet(RunContext.open(settings, run_label="test-fleet"), names, ["eta", "price"], workers=2)
    report = write_gate_report(settings, results, "test-fleet")
    yield settings, {"results": [r.to_dict() for r in results], "report": report}


def test_good_cities_promoted_others_fall_back_with_reasons(fleet: tuple[Settings, dict[str, Any]]) -> None:
    """Good cities get whichever of their own model and the global one is better on their test
    window; the tiny and the noisy cities are never promoted, each with its reason."""
    settings, run = fleet
    by = {(r["city"], r["target"]): r for r in run["results"]}
    assert len(by) == 42
    promoted = 0
    for target in ("eta", "price"):
        assert by[("global", target)]["status"] == "promoted"
        for i in range(17):
            r = by[(f"city-{i:02d}", target)]
            m = r["metrics"]
            assert m["mae"] < m["baseline_mae"] and m["mae"] < 0.95 * m["median_mae"], r
            if m["mae"] <= m["global_mae"]:
                assert r["status"] == "promoted" and r["reason"] == "all checks passed", r
                promoted += 1
            else:
                assert r["status"] == "rejected" and r["reason"].startswith("global model is better here"), r
        for slug in TINY:
            r = by[(slug, target)]
            assert r["status"] in ("rejected", "skipped") and "too little data" in r["reason"], r
        r = by[(NOISE, target)]
        assert r["status"] == "rejected" and "no skill" in r["reason"], r
    assert promoted >= 8, f"only {promoted} of 34 city models beat the global model"

    fleet_rows = {row["name"]: row for row in list_models(settings)}
    for (city, target), r in by.items():
        row = fleet_rows.get(f"{target}-{city}")
        if city == "global" or row is None:
            continue
        if r["status"] == "promoted":
            assert row["champion_version"] == r["version"] and row["fallback"] is None
        else:  # registered but not promoted: the global model serves, and says why
            assert row["champion_version"] is None and row["fallback"] == f"no champion: {target}-global serves"

    doc = json.loads(Path(run["report"]["path"]).read_text())
    assert len(doc["models"]) == 42
    assert "| noise | eta |" in run["report"]["markdown"] and "no skill" in run["report"]["markdown"]


def test_serving_falls_back_to_the_global_model(fleet: tuple[Settings, dict[str, Any]]) -> None:
    from serving.model_store import ModelStore

    settings, run = fleet
    good = next(x for x in run["results"] if x["city"].startswith("city-") and x["status"] == "promoted")
    store = ModelStore(settings)
    store.refresh()
    served, fallback = store.get("eta", NOISE)
    assert served is not None and served.model.name == "eta-global"
    assert fallback == "eta-noise has no champion"
    own, none = store.get(good["target"], good["city"])
    assert own is not None and own.model.name == good["model"] and none is None


def test_evaluate_reproduces_the_gate_test_mae(
    fleet: tuple[Settings, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, run = fleet
    r = next(x for x in run["results"] if x["city"].startswith("city-") and x["status"] == "promoted")
    monkeypatch.setenv("CITYML_HOME", str(settings.home))
    monkeypatch.setenv("CITYML_CATALOG_PATH", str(settings.catalog_path))
    get_settings.cache_clear()
    from cityml.cli import app

    out = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--city",
            r["city"],
            "--target",
            r["target"],
            "--from",
            r["test_window"][0],
            "--to",
            r["test_window"][1],
            "--json",
        ],
    )
    get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["rows"] == r["metrics"]["test_rows"]
    assert doc["mae"] == pytest.approx(r["metrics"]["mae"], rel=1e-6)
    assert doc["baseline_mae"] == pytest.approx(r["metrics"]["baseline_mae"], rel=1e-6)
    assert doc["global_mae"] == pytest.approx(r["metrics"]["global_mae"], rel=1e-6)


def test_failures_are_isolated_and_rollback_is_recorded(
    fleet: tuple[Settings, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.city
    from cityml.registry import champion, client
    from training.context import RunContext
    from training.fleet import train_fleet
    from training.registry import rollback

    settings, _ = fleet
    ctx = RunContext.open(settings, run_label="again", forced_by="test:ops")
    # An unknown city is refused before any work.
    with pytest.raises(KeyError, match="gotham"):
        train_fleet(ctx, ["city-02", "gotham"], ["eta"])
    # A city whose training breaks fails alone; the others go on.
    real = training.city._prepare

    def breaks_on_noise(ctx: RunContext, city: str, *args: Any) -> Any:
        if city == NOISE:
            raise RuntimeError("broken on purpose")
        return real(ctx, city, *args)

    monkeypatch.setattr(training.city, "_prepare", breaks_on_noise)
    results = train_fleet(ctx, ["city-02", NOISE], ["eta"])
    status = {r.city: r for r in results}
    assert status[NOISE].status == "failed" and "broken on purpose" in status[NOISE].reason
    assert status["city-02"].status == "promoted" and status["city-02"].version == "2"
    assert status["city-02"].forced_by == "test:ops" or status["city-02"].reason == "all checks passed"

    c = client(settings)
    forced = champion(c, "eta-city-02")
    assert forced is not None and str(forced.version) == "2"
    doc = rollback(settings, "eta-city-02", "1")
    after = champion(c, "eta-city-02")
    assert after is not None and str(after.version) == "1" and doc["previous_version"] == "2"
    assert "rollback" in after.tags["promotion"]
    with pytest.raises(LookupError, match="no version '9'"):
        rollback(settings, "eta-city-02", "9")
