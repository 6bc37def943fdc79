"""Real trips end to end: the NYC TLC sample and a Chicago export are imported, validated, turned
into the same features and trained into per-city models like generated cities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cityml.cli import app
from cityml.settings import PROJECT_ROOT, get_settings
from tests.conftest import IN_CI

pytestmark = pytest.mark.e2e
REAL_SAMPLE = Path(PROJECT_ROOT).parent / "shared" / "data" / "nyc_tlc_sample_2019-03.csv"
CHICAGO = Path(__file__).parent.parent / "fixtures" / "trips" / "chicago_taxi_trips_portal.csv"


def _cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_nyc_sample_imports_validates_and_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not REAL_SAMPLE.exists():
        if IN_CI:
            pytest.fail(f"{REAL_SAMPLE} is missing, and CI=true requires it")
        pytest.skip(f"{REAL_SAMPLE} not found")
    monkeypatch.setenv("CITYML_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("CITYML_GATE_PARITY_SAMPLE", "10")
    get_settings.cache_clear()
    try:
        report = _cli("data", "import", "nyc-tlc", str(REAL_SAMPLE), "--city", "nyc")
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
