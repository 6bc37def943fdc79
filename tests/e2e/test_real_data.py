"""Real trips end to end: the NYC TLC sample and a Chicago export are imported, validated, turned
into the same features and trained into per-city models like generated cities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cityml.cli import app
from cityml.settings import get_settings
from tests.conftest import real_tlc_sample

pytestmark = pytest.mark.e2e
CHICAGO = Path(__file__).parent.parent / "fixtures" / "trips" / "chicago_taxi_trips_portal.csv"


def _cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_nyc_sample_imports_validates_and_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sample = real_tlc_sample()
    monkeypatch.setenv("CITYML_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("CITYML_GATE_PARITY_SAMPLE", "10")
    get_settings.cache_clear()
    try:
        report = _cli("data", "import", "nyc-tlc", str(sample), "--city", "nyc")
        assert report["total"]["rows_read"] == 6500 and report["total"]["rows_kept"] > 6000
        assert report["has_fare"]
        chicago = _cli("data", "import", "chicago", str(CHICAGO), "--city", "chicago")
        assert chicago["total"]["rows_kept"] > 0 and chicago["total"]["rows_quarantined"] > 0

        _cli("features", "apply")
        _cli("features", "materialize", "--end", "2019-04-01T00:00:00")
        run = _cli("train", "--cities", "nyc", "--no-global")
        by_target = {r["target"]: r for r in run["models"]}
        for target in ("eta", "price"):
            r = by_target[target]
            assert r["status"] == "promoted", r
            assert r["metrics"]["mae"] < r["metrics"]["baseline_mae"]
            assert r["metrics"]["train_rows"] > 3000
        parity = _cli("features", "parity", "--city", "nyc", "--sample", "30", "--targets", "eta")
        assert parity["mismatches"] == 0
    finally:
        get_settings.cache_clear()


def _chicago_portal_csv(path: Path, days: int = 21) -> int:
    """Synthetic Chicago trips written as a Data Portal "Taxi Trips" export (its titles and formats)."""
    from datetime import date, timedelta

    import pandas as pd

    from cityml.catalog import load_catalog
    from cityml.data.synth import generate_city
    from cityml.settings import Settings

    catalog = load_catalog(Settings().catalog_path)
    like = catalog.get("lisbon").synthetic
    city = catalog.get("chicago").model_copy(update={"synthetic": like})
    t = generate_city(city, date.today() - timedelta(days=days), days, seed=2)
    fmt = "%m/%d/%Y %I:%M:%S %p"  # local time, published rounded to 15 minutes
    start = t["pickup_ts"].dt.floor("15min").dt.tz_convert("America/Chicago")  # whole-hour offsets
    end = t["dropoff_ts"].dt.floor("15min").dt.tz_convert("America/Chicago")
    pd.DataFrame(
        {
            "Trip ID": t["trip_id"],
            "Taxi ID": "cab",
            "Trip Start Timestamp": start.dt.strftime(fmt),
            "Trip End Timestamp": end.dt.strftime(fmt),
            "Trip Seconds": t["duration_s"].astype(int),
            "Trip Miles": (t["distance_km"] / 1.609344).round(2),
            "Pickup Community Area": t["pickup_zone"].str[1:].astype(int) + 1,
            "Dropoff Community Area": t["dropoff_zone"].str[1:].astype(int) + 1,
            "Fare": t["fare"].map(lambda f: f"${f:,.2f}"),
            "Pickup Centroid Latitude": t["pickup_lat"],
            "Pickup Centroid Longitude": t["pickup_lon"],
            "Dropoff Centroid Latitude": t["dropoff_lat"],
            "Dropoff Centroid Longitude": t["dropoff_lon"],
        }
    ).to_csv(path, index=False)
    return len(t)


def test_chicago_export_imports_and_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYML_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("CITYML_GATE_PARITY_SAMPLE", "10")
    get_settings.cache_clear()
    try:
        export = tmp_path / "Taxi_Trips.csv"
        rows = _chicago_portal_csv(export)
        report = _cli("data", "import", "chicago", str(export), "--city", "chicago")
        assert report["total"]["rows_read"] == rows and report["total"]["rows_kept"] > 0.9 * rows
        _cli("features", "apply")
        _cli("features", "materialize")
        run = _cli("train", "--cities", "chicago", "--no-global")
        for r in run["models"]:
            assert r["status"] == "promoted", r
            assert r["metrics"]["mae"] < r["metrics"]["baseline_mae"]
    finally:
        get_settings.cache_clear()
