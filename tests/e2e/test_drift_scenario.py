"""The drift scenario end to end: one city slows, only it is flagged and retrained through Airflow, a new
champion serves, and the report shows both versions' realized error (``cityml demo --drift-scenario``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SMALL_CATALOG, bin_path

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    home = tmp_path_factory.mktemp("scenario") / "var"
    env = {
        **os.environ,
        "CITYML_HOME": str(home),
        "CITYML_CATALOG_PATH": str(SMALL_CATALOG),
        "CITYML_GATE_PARITY_SAMPLE": "5",
    }
    env.pop("AIRFLOW_HOME", None)  # the demo's own embedded Airflow under its home, as a user gets it
    proc = subprocess.run(
        [bin_path("cityml"), "demo", "--drift-scenario", "--cities", "2", "--days", "21"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    return proc, home


def test_only_the_slowed_city_is_flagged_retrained_and_served_anew(
    scenario: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, home = scenario
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}"
    s = json.loads((home / "demo" / "scenario.json").read_text())
    assert s["city"] == "alpha" and s["slowdown"]["factor"] == 0.7
    assert s["flagged_before"] == ["alpha"], s["reasons"]
    assert "speed" in s["reasons"]["alpha"] or "realized MAE" in s["reasons"]["alpha"]
    assert s["retrain_conf"]["cities"] == ["alpha"] and s["retrain_conf"]["reason"].startswith("alpha: ")
    new = [m for m in ("eta-alpha", "price-alpha") if s["champions_after"][m] != s["champions_before"][m]]
    assert new, "the drift-triggered retrain promoted no alpha model"
    for m in new:
        assert s["served_after"][m] == [f"{m} v{s['champions_after'][m]}"]
    for m in ("eta-beta-city", "price-beta-city"):
        assert s["champions_after"][m] == s["champions_before"][m]  # the other city was not retrained
    assert "beta-city" not in s["flagged_after"] and s["retrain_after"] == []
    assert s["cooling_down_after"] == ["alpha"]  # still drifting against the new reference: braked, not looped


def test_the_report_shows_realized_error_before_and_after(
    scenario: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, home = scenario
    s = json.loads((home / "demo" / "scenario.json").read_text())
    versions = {(d["model"], d["version"]) for d in s["realized"] if d["model"] == "eta-alpha"}
    assert len(versions) >= 1 and all(d["ratio"] is not None for d in s["realized"])
    new = s["champions_after"]["eta-alpha"]
    if new != s["champions_before"]["eta-alpha"]:
        assert versions == {("eta-alpha", s["champions_before"]["eta-alpha"]), ("eta-alpha", new)}
    html = Path(s["report"]).read_text()
    assert "Realized MAE on completed trips" in html and "alpha:" in html
    gate = sorted((home / "reports" / "gate").glob("gate-*.json"))[-1]
    doc = json.loads(gate.read_text())
    assert doc["reason"].startswith("alpha: ")
    assert {m["city"] for m in doc["models"]} == {"alpha"}  # a one-city run leaves the global models alone
